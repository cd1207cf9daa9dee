"""Decoded images -> embeddings: committed batches through the image tower on a device pool (a primary and
CPU overflow). Imports ingest and storage."""
