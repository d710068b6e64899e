"""kaggle:// handles: the real kagglehub client against a local server that answers as Kaggle's API does.

kagglehub talks to Kaggle through kagglesdk: ``POST /api/v1/{service}/{method}`` with a JSON
body. The server implements the five methods a download makes (``GetDataset`` and
``DownloadDataset`` for a data set; ``GetModelInstance``, ``ListModelInstanceVersionFiles``
and ``DownloadModelInstanceVersion`` for a model), with the ``x-goog-hash`` MD5 header Kaggle's
storage sends. kagglesdk's own test environment (``KAGGLE_API_ENVIRONMENT=TEST``) points the
client at ``http://localhost:7777``, so the server binds that port. The package runs in a
subprocess, as a user's process would.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from conftest import KAGGLE

pytest.importorskip("kagglehub", reason="kaggle:// handles need the [hub] extra (nox -s extras)")

PORT = 7777  # kagglesdk's KaggleEnv.TEST endpoint
DATASET = "paultimothymooney/chest-xray-pneumonia"


class _Kaggle(http.server.BaseHTTPRequestHandler):
    """``server.datasets[owner/slug] = zip bytes``; ``server.models[owner/model/framework/variation] = {file: bytes}``.

    ``server.corrupt`` names files whose MD5 header is wrong; ``server.refused`` handles answered 403.
    """

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        method = self.path.rsplit("/", 1)[-1]
        self.server.requests.append((method, body))
        if method in ("GetDataset", "DownloadDataset"):
            key = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
            if key in self.server.refused:
                return self._error(403, "Permission denied")
            if key not in self.server.datasets:
                return self._error(404, "Not found")
            if method == "GetDataset":
                return self._json({"currentVersionNumber": 3})
            return self._file(self.server.datasets[key], key)
        key = "/".join([body.get("ownerSlug", ""), body.get("modelSlug", ""), "keras", body.get("instanceSlug", "")])
        files = self.server.models.get(key)
        if files is None:
            return self._error(404, "Not found")
        if method == "GetModelInstance":
            return self._json({"versionNumber": 1})
        if method == "ListModelInstanceVersionFiles":
            return self._json({"files": [{"name": name} for name in files], "nextPageToken": ""})
        if method == "DownloadModelInstanceVersion" and body.get("path") in files:
            return self._file(files[body["path"]], f"{key}/{body['path']}")
        return self._error(404, "Not found")

    def _json(self, payload) -> None:
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _file(self, data: bytes, name: str) -> None:
        md5 = hashlib.md5(data if name not in self.server.corrupt else b"other").digest()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-goog-hash", f"md5={base64.b64encode(md5).decode()}")
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        data = json.dumps({"code": status, "message": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def kaggle_server():
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", PORT), _Kaggle)
    except OSError as error:
        pytest.fail(f"port {PORT} (kagglesdk's test endpoint) is busy: {error}")
    server.datasets, server.models, server.requests = {}, {}, []
    server.corrupt, server.refused = set(), set()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def _zipped_data_set() -> bytes:
    """The 40-image Kaggle-layout copy, zipped as Kaggle's download is (chest_xray/..., a __MACOSX folder)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(KAGGLE.rglob("*")):
            if path.is_file():
                archive.write(path, f"chest_xray/{path.relative_to(KAGGLE)}")
        archive.writestr("__MACOSX/chest_xray/._train", b"")
    return buffer.getvalue()


def _run(args: list[str], cache: Path, **env) -> subprocess.CompletedProcess:
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KAGGLE")},
        "KAGGLE_API_ENVIRONMENT": "TEST",
        "KAGGLEHUB_CACHE": str(cache),
        "KAGGLE_CONFIG_DIR": str(cache / "no-credentials"),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        **env,
    }
    return subprocess.run(args, capture_output=True, text=True, env=environment, timeout=300)


def _cli(*args: str, cache: Path, **env) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "keras_pneumonia", *args], cache, **env)


@pytest.mark.slow
def test_the_data_set_by_handle_downloads_once_then_loads_offline(kaggle_server, tmp_path):
    kaggle_server.datasets[DATASET] = _zipped_data_set()
    cache = tmp_path / "kagglehub"
    first = _cli("download-data", cache=cache)
    assert first.returncode == 0, first.stderr[-3000:]
    root = Path(first.stdout.strip())  # stdout holds the folder and nothing else
    assert root == cache / "datasets" / DATASET / "versions" / "3" / "chest_xray"
    assert sorted(p.relative_to(root) for p in root.rglob("*.jpeg")) == sorted(
        p.relative_to(KAGGLE) for p in KAGGLE.rglob("*.jpeg")
    )
    assert [m for m, _ in kaggle_server.requests] == ["GetDataset", "DownloadDataset"]

    # load_chest_xray reads the handle as it reads the folder; offline, from the cache, without a request.
    kaggle_server.requests.clear()
    code = (
        "import keras_pneumonia as kp\n"
        f"a = kp.load_chest_xray('kaggle://{DATASET}', image_size=32, validation_split=0.25)\n"
        f"b = kp.load_chest_xray({str(KAGGLE)!r}, image_size=32, validation_split=0.25)\n"
        "print(a.counts == b.counts, a.counts)\n"
    )
    offline = _run([sys.executable, "-c", code], cache, KERAS_PNEUMONIA_OFFLINE="1")
    assert offline.returncode == 0 and offline.stdout.startswith("True"), offline.stdout + offline.stderr[-3000:]
    assert kaggle_server.requests == []

    # Kaggle unreachable: the cached version is used, with a warning.
    kaggle_server.shutdown()
    kaggle_server.server_close()
    unreachable = _cli("split", f"kaggle://{DATASET}", "--manifest", str(tmp_path / "m.json"), cache=cache)
    assert unreachable.returncode == 0, unreachable.stderr[-3000:]
    assert "could not be reached; using the cached" in unreachable.stderr


@pytest.mark.slow
def test_data_set_handles_that_cannot_load_say_why(kaggle_server, tmp_path):
    kaggle_server.datasets["someone/corrupt"] = _zipped_data_set()
    kaggle_server.corrupt.add("someone/corrupt")
    kaggle_server.refused.add("someone/private")
    kaggle_server.datasets["someone/not-x-rays"] = _zip({"notes.txt": b"hello"})
    cases = {
        "kaggle://someone/missing": "no such dataset on Kaggle",
        "kaggle://someone/private": "Kaggle refused access (403)",
        "kaggle://someone/corrupt": "the download was corrupt",
        "kaggle://someone/not-x-rays": "No chest X-ray layout found",
        "kaggle://no-slash": "is not a Kaggle dataset handle",
    }
    cache = tmp_path / "kagglehub"
    for handle, message in cases.items():
        run = _cli("download-data", handle, cache=cache)
        assert run.returncode == 2 and message in run.stderr, (handle, run.stdout, run.stderr[-2000:])
        assert run.stdout == "" and "Traceback" not in run.stderr
    # Nothing half-written is taken for a download: no completion marker for the corrupt one.
    assert not list(cache.rglob("someone/corrupt/*.complete"))
    offline = _cli("download-data", "kaggle://someone/never-fetched", cache=cache, KERAS_PNEUMONIA_OFFLINE="1")
    assert offline.returncode == 2 and "not in the kagglehub cache" in offline.stderr
    assert "offline mode is on" in offline.stderr
    kaggle_server.shutdown()
    kaggle_server.server_close()
    unreachable = _cli("download-data", "kaggle://someone/elsewhere", cache=cache)
    assert unreachable.returncode == 2 and "Kaggle could not be reached" in unreachable.stderr, unreachable.stderr


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def preset_files(tmp_path_factory) -> dict[str, bytes]:
    import keras_pneumonia as kp

    folder = tmp_path_factory.mktemp("preset") / "v2"
    kp.PneumoniaCNN.from_pretrained(compile=False).save_to_preset(folder)
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _load(handle: str, cache: Path, **env) -> subprocess.CompletedProcess:
    code = (
        "import sys, numpy as np, keras_pneumonia as kp\n"
        "from keras_pneumonia.weights import WeightsError\n"
        "try:\n"
        f"    m = kp.PneumoniaCNN.from_preset({handle!r})\n"
        "except WeightsError as e:\n"
        "    print('WeightsError:', e); sys.exit(3)\n"
        "print(m.name, float(m.predict(np.zeros((1, 160, 160, 1), 'uint8'), verbose=0)[0, 1]))\n"
    )
    return _run([sys.executable, "-c", code], cache, **env)


@pytest.mark.slow
def test_a_preset_folder_as_a_kaggle_model_loads_by_handle_and_says_why_when_it_cannot(
    kaggle_server, preset_files, tmp_path
):
    import numpy as np

    import keras_pneumonia as kp

    kaggle_server.models["someone/pneumonia/keras/v2"] = preset_files
    kaggle_server.models["someone/pneumonia/keras/tampered"] = {
        **preset_files,
        "model.keras": preset_files["model.keras"][:-10] + b"0123456789",
    }
    kaggle_server.models["someone/pneumonia/keras/not-a-preset"] = {"README.md": b"# hello"}
    expected = float(kp.PneumoniaCNN.from_pretrained().predict(np.zeros((1, 160, 160, 1), "uint8"))[0, 1])
    cache = tmp_path / "kagglehub"
    loaded = _load("kaggle://someone/pneumonia/keras/v2", cache)
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr[-3000:]
    assert abs(float(loaded.stdout.split()[-1]) - expected) < 1e-6
    assert (cache / "models/someone/pneumonia/keras/v2/1/model.keras").is_file()  # kagglehub's own cache
    kaggle_server.requests.clear()
    offline = _load("kaggle://someone/pneumonia/keras/v2", cache, KERAS_PNEUMONIA_OFFLINE="1")
    assert offline.returncode == 0 and kaggle_server.requests == [], offline.stdout + offline.stderr[-3000:]
    cases = {
        "kaggle://someone/pneumonia/keras/missing": "no such model on Kaggle",
        "kaggle://someone/pneumonia/keras/tampered": "does not match",
        "kaggle://someone/pneumonia/keras/not-a-preset": "not a keras-pneumonia preset folder",
        "kaggle://someone/pneumonia": "is not a Kaggle model handle",
    }
    for handle, message in cases.items():
        run = _load(handle, cache)
        assert run.returncode == 3 and message in run.stdout and handle in run.stdout, (handle, run.stdout)
