"""One indexing run end to end (scan -> plan -> encode -> publish), locally or on Ray Data, and what it leaves
for its operator (run report, progress, nightly exit codes)."""
