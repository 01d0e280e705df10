"""A real OpenAI-compatible server on loopback: dreamgym-plugin-hf's server in a
subprocess, serving a tiny Llama-style model saved to a temporary directory."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import pytest

pytest.importorskip("dreamgym_plugin_hf", reason="the loopback server comes from dreamgym-plugin-hf")

CORPUS = [f"Room: {room}. Items: {item}. Action: take {item}." for room in ("kitchen", "garden") for item in ("apple", "key")]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> str:
    import msgspec

    from dreamgym_plugin_hf.config import TinyConfig
    from dreamgym_plugin_hf.tiny import TinyBackend

    config = msgspec.convert(
        {"hidden_size": 64, "layers": 2, "heads": 2, "intermediate_size": 128, "vocab_size": 400, "max_length": 1024},
        type=TinyConfig,
    )
    backend = TinyBackend(config)
    backend.prepare(corpus=CORPUS * 4)
    path = str(tmp_path_factory.mktemp("served") / "model")
    backend.save(path=path)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A server subprocess; ``url`` is its /v1 root."""

    def __init__(self, model_dir: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        command = [sys.executable, "-m", "dreamgym_plugin_hf.serve", "--model-dir", model_dir, "--port", str(self.port)]
        # one torch thread: a tiny model is several times faster so on a shared CPU
        self.proc = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def wait_ready(self, limit: float = 120.0) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2) as response:
                    json.load(response)
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("server did not become ready")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self.proc.stderr.close()


@pytest.fixture
def start_server(model_dir) -> Iterator[Callable[..., Server]]:
    """Start server subprocesses (on ``model_dir`` or another directory); all are killed at teardown."""
    started: list[Server] = []

    def start(directory: str | None = None) -> Server:
        server = Server(directory or model_dir)
        started.append(server)
        server.wait_ready()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.kill()


@pytest.fixture(scope="session")
def server(model_dir) -> Iterator[Server]:
    """One shared server for tests that do not kill it."""
    srv = Server(model_dir)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.kill()


@pytest.fixture(scope="session")
def scripted_server() -> Callable[..., Any]:
    """:func:`serving`, for fixtures that start a stand-in server (a conftest is no module to import)."""
    return serving


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler], server_class: type[ThreadingHTTPServer] = ThreadingHTTPServer) -> Iterator[str]:
    """A stand-in server on loopback answering with ``handler``; its base URL (``.../v1``)."""
    server = server_class(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
