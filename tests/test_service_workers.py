"""Service area, `server.workers`: several worker processes serve one port (uvicorn's supervisor), each with
its share of the cores."""

from __future__ import annotations

import socket

import httpx

from search.http.workers import worker_settings
from search.settings import ServerSettings, Settings, ThreadSettings
from tests.service_support import running_server, settings_for


def test_each_worker_gets_its_share_of_the_cores():
    two = Settings(server=ServerSettings(workers=2))
    assert worker_settings(two, cores=2).threads.cores == 1
    assert worker_settings(two, cores=16).threads.cores == 8
    assert worker_settings(Settings(server=ServerSettings(workers=4)), cores=2).threads.cores == 1  # at least 1
    assert worker_settings(Settings(), cores=16).threads.cores == 0  # one process: its own affinity
    named = Settings(server=ServerSettings(workers=2), threads=ThreadSettings(cores=3))
    assert worker_settings(named, cores=16).threads.cores == 3


def test_two_workers_answer_on_one_port(world, tmp_path):
    """Both workers started (the supervisor announces the port once every worker is ready) and both answer
    searches on the same port: new connections reach two different processes. The settings reach the workers:
    a connection that never sends its headers is closed after `server.header_timeout_s`."""
    settings = settings_for(world, server=ServerSettings(workers=2, header_timeout_s=0.5))
    query = world.queries[0]["query"]
    with running_server(settings, tmp_path / "service.json") as server:
        silent = socket.create_connection(("127.0.0.1", server.port))
        pids = set()
        for _ in range(400):  # a fresh connection each time: the kernel hands it to whichever worker accepts
            with httpx.Client(base_url=server.url, timeout=30) as client:
                pids.add(client.get("/healthz").json()["pid"])
                assert client.get("/search", params={"q": query, "k": 5}).status_code == 200
            if len(pids) == 2:
                break
        assert len(pids) == 2
        assert server.proc.pid not in pids  # the supervisor itself serves nothing
        silent.settimeout(60)  # a bound on the test, not a threshold: the worker closes it after 0.5 s
        assert silent.recv(1) == b""
        silent.close()
