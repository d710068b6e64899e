"""hf:// handles: the real huggingface_hub client against a local server that answers as the Hub does.

The server implements the two requests ``hf_hub_download`` makes for a file,
``HEAD`` and ``GET`` of ``/{owner}/{name}/resolve/{revision}/{file}``, with the headers
the Hub sends (``X-Repo-Commit``, ``ETag``, ``X-Error-Code``), the way
huggingface_hub's own tests stub the Hub; and the four an upload makes (``POST``
``/api/repos/create``, ``/api/validate-yaml``, ``.../preupload/main``, ``.../commit/main``,
files inline).
The package is run in a subprocess with ``HF_ENDPOINT`` pointing at it, as a user's
process would be.
"""

import base64
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading

import pytest

pytest.importorskip("huggingface_hub", reason="hf:// handles need the [hub] extra (nox -s extras)")

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class _Hub(http.server.BaseHTTPRequestHandler):
    """``server.repos[(owner/name)] = {file: bytes}``; every revision resolves to COMMIT."""

    def log_message(self, *args):
        pass

    def _answer(self, with_body: bool) -> None:
        self.server.requests.append((self.command, self.path))
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            self.send_error(404)
            return
        repo, file = "/".join(parts[:2]), "/".join(parts[4:])
        if repo not in self.server.repos:
            self._error(404, "RepoNotFound")
            return
        body = self.server.repos[repo].get(file)
        if body is None:
            self._error(404, "EntryNotFound")
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def _error(self, status: int, code: str) -> None:
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self):
        self._answer(with_body=False)

    def do_POST(self):
        """The requests an upload makes: create the repository, check README.md, ask how to send each file, commit."""
        self.server.requests.append((self.command, self.path))
        length = int(self.headers.get("Content-Length", 0))
        if self.server.upload_fault == "refuse":
            self.rfile.read(length)
            return self._error(401, "Unauthorized")
        if self.path.endswith("/commit/main") and self.server.upload_fault == "cut":
            self.rfile.read(length // 2)  # half the commit arrives, then the connection drops
            self.close_connection = True
            return
        body = self.rfile.read(length)
        endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        if self.path == "/api/validate-yaml":  # the model card's front matter: accepted
            return self._json({})
        if self.path == "/api/repos/create":
            request = json.loads(body)
            return self._json({"url": f"{endpoint}/{request['organization']}/{request['name']}"})
        repo = "/".join(self.path.split("/")[3:5])
        if "/preupload/" in self.path:  # every file inline in the commit ("regular"), as the Hub allows
            paths = [f["path"] for f in json.loads(body)["files"]]
            modes = [{"path": path, "uploadMode": "regular", "shouldIgnore": False} for path in paths]
            return self._json({"files": modes})
        if "/commit/" in self.path:  # applied whole, as the Hub applies a commit
            lines = [json.loads(line) for line in body.decode().splitlines()]
            files = {i["value"]["path"]: base64.b64decode(i["value"]["content"]) for i in lines if i["key"] == "file"}
            self.server.repos[repo] = {**self.server.repos.get(repo, {}), **files}
            return self._json({"commitUrl": f"{endpoint}/{repo}/commit/{COMMIT}", "commitOid": COMMIT})
        self.send_error(404)

    def _json(self, payload) -> None:
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._answer(with_body=True)


@pytest.fixture
def hub(tmp_path_factory):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    server.repos, server.requests, server.upload_fault = {}, [], None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def preset_folder(tmp_path_factory):
    import keras_pneumonia as kp

    folder = tmp_path_factory.mktemp("preset") / "v2"
    kp.PneumoniaCNN.from_pretrained(compile=False).save_to_preset(folder)
    return folder


def _load(handle: str, hub, hf_home, **env) -> subprocess.CompletedProcess:
    code = (
        "import sys, numpy as np, keras_pneumonia as kp\n"
        "from keras_pneumonia.weights import WeightsError\n"
        "try:\n"
        f"    m = kp.PneumoniaCNN.from_preset({handle!r})\n"
        "except WeightsError as e:\n"
        "    print('WeightsError:', e); sys.exit(3)\n"
        "print(m.name, m.class_names, float(m.predict(np.zeros((1, 160, 160, 1), 'uint8'), verbose=0)[0, 1]))\n"
    )
    environment = {
        **os.environ,
        "HF_ENDPOINT": f"http://127.0.0.1:{hub.server_address[1]}",
        "HF_HOME": str(hf_home),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        **env,
    }
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=300)


def _files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.slow
def test_a_preset_folder_on_the_hub_loads_by_handle_is_cached_and_works_offline(hub, preset_folder, tmp_path):
    import numpy as np

    import keras_pneumonia as kp

    hub.repos["someone/pneumonia-v2"] = _files(preset_folder)
    expected = float(kp.PneumoniaCNN.from_preset(preset_folder).predict(np.zeros((1, 160, 160, 1), "uint8"))[0, 1])
    first = _load("hf://someone/pneumonia-v2", hub, tmp_path / "hf")
    assert first.returncode == 0, first.stdout + first.stderr
    assert abs(float(first.stdout.split()[-1]) - expected) < 1e-6
    assert ("GET", "/someone/pneumonia-v2/resolve/main/model.keras") in hub.requests
    cached = list((tmp_path / "hf").rglob("snapshots/*/model.keras"))
    assert len(cached) == 1 and cached[0].parent.name == COMMIT  # the Hub's own cache layout
    # Offline: from that cache, without one request.
    hub.requests.clear()
    offline = _load("hf://someone/pneumonia-v2", hub, tmp_path / "hf", HF_HUB_OFFLINE="1")
    assert offline.returncode == 0, offline.stdout + offline.stderr
    assert hub.requests == []
    # A revision that is a commit is pinned.
    pinned = _load(f"hf://someone/pneumonia-v2@{COMMIT}", hub, tmp_path / "hf")
    assert pinned.returncode == 0, pinned.stdout + pinned.stderr


@pytest.mark.slow
def test_hub_handles_that_cannot_load_say_why(hub, preset_folder, tmp_path):
    files = _files(preset_folder)
    hub.repos["someone/tampered"] = {**files, "model.keras": files["model.keras"][:-10] + b"0123456789"}
    hub.repos["someone/not-a-preset"] = {"README.md": b"# hello"}
    cases = {
        "hf://someone/missing": "no such model repository",
        "hf://someone/not-a-preset": "not a keras-pneumonia preset folder",
        "hf://someone/tampered": "does not match",
    }
    for handle, message in cases.items():
        run = _load(handle, hub, tmp_path / "hf")
        assert run.returncode == 3 and message in run.stdout, (handle, run.stdout, run.stderr[-2000:])
        assert handle.removeprefix("hf://").split("@")[0] in run.stdout
    offline = _load("hf://someone/never-fetched", hub, tmp_path / "hf", HF_HUB_OFFLINE="1")
    assert offline.returncode == 3 and "not in the Hugging Face cache and offline mode is on" in offline.stdout
    hub.shutdown()  # the Hub unreachable (connection refused), nothing cached
    hub.server_close()
    unreachable = _load("hf://someone/pneumonia-v2", hub, tmp_path / "hf2")
    assert unreachable.returncode == 3 and "could not be reached" in unreachable.stdout, unreachable.stdout


def _upload(folder, hub, **env) -> subprocess.CompletedProcess:
    code = (
        "import sys, keras_pneumonia as kp\n"
        "from keras_pneumonia.weights import WeightsError\n"
        "try:\n"
        f"    print(kp.upload_preset('hf://someone/uploaded', {str(folder)!r}))\n"
        "except WeightsError as e:\n"
        "    print('WeightsError:', e); sys.exit(3)\n"
    )
    environment = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{hub.server_address[1]}", "HF_TOKEN": "hf_test"}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**environment, **env}, timeout=300
    )


@pytest.mark.slow
def test_a_preset_uploaded_by_handle_loads_back_and_predicts_as_the_original(hub, preset_folder, tmp_path):
    import numpy as np

    import keras_pneumonia as kp

    uploaded = _upload(preset_folder, hub)
    assert uploaded.returncode == 0, uploaded.stdout + uploaded.stderr[-3000:]
    assert uploaded.stdout.strip().endswith(f"/someone/uploaded/commit/{COMMIT}")
    assert hub.repos["someone/uploaded"] == _files(preset_folder)  # the three files, byte for byte
    loaded = _load("hf://someone/uploaded", hub, tmp_path / "hf")
    expected = float(kp.PneumoniaCNN.from_preset(preset_folder).predict(np.zeros((1, 160, 160, 1), "uint8"))[0, 1])
    assert loaded.returncode == 0 and abs(float(loaded.stdout.split()[-1]) - expected) < 1e-6, loaded.stdout


@pytest.mark.slow
def test_uploads_that_cannot_finish_say_why_and_commit_nothing(hub, preset_folder, tmp_path):
    hub.upload_fault = "cut"
    cut = _upload(preset_folder, hub)
    assert cut.returncode == 3 and "the upload failed and nothing was committed" in cut.stdout, cut.stdout
    assert "someone/uploaded" not in hub.repos
    hub.upload_fault = "refuse"
    refused = _upload(preset_folder, hub)
    assert refused.returncode == 3 and "refused the upload (401)" in refused.stdout and "HF_TOKEN" in refused.stdout
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name, data in _files(preset_folder).items():
        (damaged / name).write_bytes(data[:-1] + b"!" if name == "model.keras" else data)
    hub.requests.clear()
    run = _upload(damaged, hub)
    assert run.returncode == 3 and "does not match" in run.stdout and hub.requests == []  # refused before a request
