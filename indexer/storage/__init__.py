"""What a run keeps between stages and runs: the live metadata database (row id == FAISS id) and the float16
embedding shards, each written so that a kill -9 at any moment leaves them consistent."""
