"""Run as a script by the serving tests: start the search service (create_app + uvicorn) in this process with
torch, torchvision, open_clip, timm, transformers and sentencepiece imports blocked, send one text and one image
query over HTTP, and print a JSON report (statuses, hit ids, which blocked modules got imported). Uses only the
standard library besides the service itself, so it runs in a virtualenv holding nothing but the `serve` extra.

usage: python serve_probe.py STORE IMAGE QUERY
"""

from __future__ import annotations

import importlib.abc
import json
import socket
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

BLOCKED = ("torch", "torchvision", "open_clip", "timm", "transformers", "sentencepiece")


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} was imported by the serving path")
        return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _call(request: urllib.request.Request) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            body = json.loads(response.read())
            return {"status": response.status, "hits": [h["id"] for h in body["hits"]]}
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, "error": exc.read().decode("utf-8", "replace")}


def _multipart(data: bytes, filename: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def main(store: str, image: str, query: str) -> dict[str, Any]:
    sys.meta_path.insert(0, _Blocker())
    import uvicorn

    from search.http.app import create_app
    from search.settings import ReloadSettings, Settings

    started = threading.Event()

    class _Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            started.set()

    port = _free_port()
    settings = Settings(store=Path(store), reload=ReloadSettings(watch=False))
    server = _Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    started.wait(300)
    base = f"http://127.0.0.1:{port}"
    try:
        text = _call(urllib.request.Request(f"{base}/search?" + urllib.parse.urlencode({"q": query, "k": 5})))
        body, content_type = _multipart(Path(image).read_bytes(), Path(image).name)
        upload = _call(urllib.request.Request(f"{base}/search/image?k=5", data=body, method="POST",
                                              headers={"Content-Type": content_type}))
    finally:
        server.should_exit = True
        thread.join(60)
    return {"started": server.started, "text": text, "image": upload,
            "imported": [m for m in BLOCKED if m in sys.modules], "python": sys.executable}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))
