"""`python -m search serve --store STORE [--config FILE] [--host 127.0.0.1] [--port 8000] [--workers N]
[--log-format json]`;
`python -m search hash-key < key.txt` prints the digest to put in access.api_keys_file.

`serve` checks what can fail in one line before the slow start-up (index load, ONNX sessions): a missing FAISS
build, and a port that cannot be bound. The socket it binds is the one uvicorn serves on (no check-then-bind
race). The port comes from --port, else the PORT environment variable, else 8000.
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
from collections.abc import Callable, Sequence

__all__ = ["main", "bind_socket", "quiet_on_closed_pipe"]

DEFAULT_PORT = 8000


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m search", description="PhotoStock search service")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP search service (uvicorn)")
    serve.add_argument("--store", required=True, help="store directory holding versions/ and current")
    serve.add_argument("--config", default=None, help="service YAML (default configs/service.yaml)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=None, help=f"default: $PORT, else {DEFAULT_PORT}")
    serve.add_argument("--workers", type=int, default=None,
                       help="worker processes on the port, each with its share of the cores (default: server.workers)")
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--log-format", choices=["text", "json"], default=None, help="default: logging.format")
    sub.add_parser("hash-key", help="print the sha256 digest of an API key read from stdin (for the key file)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The entry point."""
    return quiet_on_closed_pipe(lambda: _main(argv))


def quiet_on_closed_pipe(run: Callable[[], int]) -> int:
    """`run()`, where a reader that goes away (`... | head`) ends it quietly with exit 1 (the recipe in the Python
    docs' signal module notes: point stdout at devnull so the interpreter's last flush cannot fail again). Both
    CLIs' entry points use it."""
    try:
        try:
            return run()
        finally:
            sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "hash-key":
        from search.http.auth import hash_key

        key = sys.stdin.readline().rstrip("\r\n")
        if not key:
            print("no key on stdin", file=sys.stderr)
            return 2
        print(hash_key(key))
        return 0
    return _serve(args)


def _port(args: argparse.Namespace) -> int:
    if args.port is not None:
        return int(args.port)
    text = os.environ.get("PORT", "").strip()
    if not text:
        return DEFAULT_PORT
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ValueError(f"PORT must be a port number (0-65535), got {text!r}")
    return int(text)


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind (host, port) the way uvicorn would (SO_REUSEADDR, IPv6 for a host with ':'), before start-up, so a
    port in use is one line at once instead of an error after the index and encoders have loaded."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _serve(args: argparse.Namespace) -> int:
    from search.artifact.ann import FaissMissing, require_faiss

    try:
        require_faiss()
        port = _port(args)
        if args.workers is not None and args.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {args.workers}")
    except (FaissMissing, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        sock = bind_socket(args.host, port)
    except OSError as exc:
        reason = "the port is already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        print(f"error: cannot listen on {args.host}:{port}: {reason} (choose another with --port or PORT=...)",
              file=sys.stderr)
        return 2
    from search.http.app import create_app
    from search.http.logs import configure_logging
    from search.http.server import serve
    from search.settings import load_settings

    with sock:
        settings = load_settings(args.config, store=args.store)
        server = settings.server if args.workers is None else settings.server.model_copy(
            update={"workers": args.workers})
        settings = settings.model_copy(update={"access": settings.access.model_copy(
            update={"bind_host": args.host}), "server": server})
        log_format = args.log_format or settings.logging.format
        configure_logging(args.log_level, log_format)
        if server.workers > 1:
            from search.http.workers import serve_workers

            started = serve_workers(settings, sock, args.log_level, log_format)
        else:
            started = serve(create_app(settings), sock, settings.server, args.log_level)
    return 0 if started else 3  # 3: start-up failed, as uvicorn.run exits
