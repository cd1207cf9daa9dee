"""Embeddings -> a published version: choose the FAISS index, build and tune it, write the version aside and
publish it atomically."""
