"""Shared fixtures: small real X-ray copies, tiny model settings, a local HTTP server."""

from __future__ import annotations

import contextlib
import http.server
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
KAGGLE = DATA / "chest_xray"
FULLRES = DATA / "fullres"

# Small enough to train in seconds on two CPU cores.
TINY = {"image_size": 32, "filters": (8, 16), "dense_units": (16,), "convs_per_block": 1}


@pytest.fixture
def kaggle_dir(tmp_path) -> Path:
    """A writable copy of the 40-image Kaggle-layout folder (train/ and test/)."""
    target = tmp_path / "chest_xray"
    shutil.copytree(KAGGLE, target)
    return target


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files[path]``; ``server.mode[path]`` picks a failure to simulate."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        server = self.server
        server.requests.append(self.path)
        mode = server.modes.get(self.path, "ok")
        body = server.files.get(self.path)
        if mode == "error" or body is None:
            self.send_error(500 if mode == "error" else 404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "truncate":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if mode == "stall":  # half the file, then nothing for 30 s
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            threading.Event().wait(30)
            return
        if mode == "slow":
            for i in range(0, len(body), 4096):
                self.wfile.write(body[i : i + 4096])
                self.wfile.flush()
                threading.Event().wait(0.002)
            return
        self.wfile.write(body)


@pytest.fixture
def http_server():
    """A real HTTP server on 127.0.0.1 (random port) in a thread; yields it with ``.url(path)``."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.files, server.modes, server.requests = {}, {}, []
    server.url = lambda path: f"http://127.0.0.1:{server.server_address[1]}{path}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@contextlib.contextmanager
def running(app):
    """A web app served by uvicorn in a thread on a free port of 127.0.0.1; yields its base URL."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
