"""`python -m search serve --store STORE [--config FILE] [--host 127.0.0.1] [--port 8000] [--log-format json]`;
`python -m search hash-key < key.txt` prints the digest to put in access.api_keys_file."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m search", description="PhotoStock search service")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP search service (uvicorn)")
    serve.add_argument("--store", required=True, help="store directory holding versions/ and current")
    serve.add_argument("--config", default=None, help="service YAML (default configs/service.yaml)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--log-format", choices=["text", "json"], default=None, help="default: logging.format")
    sub.add_parser("hash-key", help="print the sha256 digest of an API key read from stdin (for the key file)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "hash-key":
        import sys

        from search.http.auth import hash_key

        key = sys.stdin.readline().rstrip("\r\n")
        if not key:
            print("no key on stdin", file=sys.stderr)
            return 2
        print(hash_key(key))
        return 0
    from search.http.app import create_app
    from search.http.logs import configure_logging
    from search.http.server import serve
    from search.settings import load_settings

    settings = load_settings(args.config, store=args.store)
    settings = settings.model_copy(update={"access": settings.access.model_copy(update={"bind_host": args.host})})
    configure_logging(args.log_level, args.log_format or settings.logging.format)
    serve(create_app(settings), args.host, args.port, settings.server, args.log_level)
    return 0
