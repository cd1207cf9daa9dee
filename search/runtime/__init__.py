"""Serving runtime pieces: the thread budget, the cost model of an encode backend, the device session pool."""
