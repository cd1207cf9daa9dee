"""Relevance evaluation: pure metric functions (`metrics`) and the synthetic-world evaluation (`world_eval`)."""
