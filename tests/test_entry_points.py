"""Both CLIs' entry points as a newcomer meets them: a missing FAISS build, a busy or bad port and a reader
that goes away each end in one line on stderr and no traceback, before any slow start-up."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.indexer_support import REPO

# a meta-path finder that makes `import faiss` fail as it does in an install without the [cpu]/[gpu] extra
NO_FAISS = """
import importlib.abc, sys
class NoFaiss(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "faiss":
            raise ModuleNotFoundError("No module named 'faiss'", name="faiss")
        return None
sys.meta_path.insert(0, NoFaiss())
sys.argv[0] = sys.argv[1]
from {module}.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _run(args: list[str], env: dict[str, str] | None = None, stdout: int = subprocess.PIPE,
         stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, stdout=stdout, stderr=subprocess.PIPE, text=True,
                          input=stdin, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_serve_without_faiss_names_the_extras(tmp_path: Path):
    result = _run(["-c", NO_FAISS.format(module="search"), "search", "serve", "--store", str(tmp_path)])
    assert result.returncode == 2
    line = _one_line(result.stderr)
    assert "FAISS is not installed" in line and "[serve,cpu]" in line and "[serve,gpu]" in line


def test_indexer_build_without_faiss_names_the_extras(tmp_path: Path):
    (tmp_path / "images").mkdir()
    result = _run(["-c", NO_FAISS.format(module="indexer"), "indexer", "build", "--images",
                   str(tmp_path / "images"), "--store", str(tmp_path / "store"), "--model", "tiny"])
    assert result.returncode == 2
    assert "[serve,cpu]" in _one_line(result.stderr)


@pytest.fixture()
def busy_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


def test_a_busy_port_fails_before_start_up(busy_port: int, tmp_path: Path):
    # the store does not exist: a check made after start-up would fail on the store instead
    result = _run(["-m", "search", "serve", "--store", str(tmp_path / "no-store"), "--port", str(busy_port)])
    assert result.returncode == 2
    line = _one_line(result.stderr)
    assert f"127.0.0.1:{busy_port}" in line and "already in use" in line


def test_port_comes_from_the_environment(busy_port: int, tmp_path: Path):
    result = _run(["-m", "search", "serve", "--store", str(tmp_path)], env={"PORT": str(busy_port)})
    assert result.returncode == 2 and f":{busy_port}:" in _one_line(result.stderr)
    result = _run(["-m", "search", "serve", "--store", str(tmp_path)], env={"PORT": "eighty"})
    assert result.returncode == 2 and "PORT must be a port number" in _one_line(result.stderr)


def _status_store(tmp_path: Path) -> Path:
    from indexer.storage.store import DB_NAME, MetadataStore, connect

    db = MetadataStore(connect(tmp_path / DB_NAME))
    db.migrate()
    db.close()
    return tmp_path


@pytest.mark.parametrize("args", [
    ["-m", "indexer", "status", "--store", "{store}", "--json"],
    ["-m", "search", "hash-key"],
])
def test_a_closed_pipe_ends_quietly(args: list[str], tmp_path: Path):
    """`python -m indexer status --json | head -1`: the reader is gone before the command writes (its end of a
    real pipe is closed first, so every write meets EPIPE): no traceback, no 'Exception ignored' line."""
    store = _status_store(tmp_path)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = _run([a.format(store=store) for a in args], stdout=write_end, stdin="a key\n")
    finally:
        os.close(write_end)
    assert result.stderr == ""
    assert result.returncode == 1
