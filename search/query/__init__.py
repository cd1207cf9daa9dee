"""The query path: cache, micro-batch admission, ANN, exact rerank, filters, timings. No FastAPI here."""
