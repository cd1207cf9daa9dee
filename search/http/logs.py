"""Process logging for `serve`: plain text or one JSON object per line (python-json-logger), both carrying the
request id. Uvicorn's own loggers propagate to the same root handler."""

from __future__ import annotations

import logging
import sys

from search.http.request_id import RequestIdFilter

__all__ = ["configure_logging"]

_TEXT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


def configure_logging(level: str, fmt: str) -> None:
    """Replace the root handlers with one stderr handler in `fmt` ('text' | 'json')."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    if fmt == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(request_id)s %(message)s",
                                           rename_fields={"levelname": "level", "asctime": "time"}))
    else:
        handler.setFormatter(logging.Formatter(_TEXT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # faiss's loader logs at INFO each optional build it probes (AVX512, AVX2) with the ImportError of the ones
    # this wheel lacks, which reads like a traceback at every start; its warnings and errors still show
    logging.getLogger("faiss.loader").setLevel(max(logging.WARNING, root.level))
