"""Files in: walk the image root (lossless names, symlink-safe), decode in worker processes, read the metadata
files and sidecars carry. The first stage of a run; imports nothing else of the indexer."""
