"""The search fleet on Ray Serve: an ingress running the service's own app, a query-encoder deployment and one
deployment per shard (`app.py`, the only module that imports Ray; `configs/fleet.yaml` starts it)."""
