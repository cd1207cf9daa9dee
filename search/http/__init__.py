"""HTTP-side pieces of the service (FastAPI/Starlette/ASGI aware); the core `search` modules stay free of them."""
