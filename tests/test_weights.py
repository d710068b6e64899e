"""The download path, against a real HTTP server on 127.0.0.1 (no mocks of the transfer)."""

import hashlib
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import keras_pneumonia as kp
from conftest import TINY
from keras_pneumonia import presets, weights
from keras_pneumonia.export import export_preset
from keras_pneumonia.models import load_model


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "tiny.keras"
    kp.PneumoniaCNN(threshold=0.4, **TINY).save(path)
    return path.read_bytes()


@pytest.fixture
def served(http_server, model_bytes, monkeypatch, tmp_path):
    """A preset 'tiny_test' served by the local server; a fresh cache; env cleared."""
    http_server.files["/tiny.keras"] = model_bytes
    monkeypatch.setitem(
        presets.PRESETS,
        "tiny_test",
        {
            **presets.PRESETS["pneumonia_cnn_v1"],  # the schema's other keys
            "name": "tiny_test",
            "description": "test",
            "files": {
                "model.keras": {
                    "file_name": "tiny_test.keras",
                    "url": http_server.url("/tiny.keras"),
                    "sha256": hashlib.sha256(model_bytes).hexdigest(),
                    "size": len(model_bytes),
                }
            },
            "bundled": False,
        },
    )
    for var in ("KERAS_PNEUMONIA_CACHE", "KERAS_PNEUMONIA_OFFLINE", "KERAS_PNEUMONIA_READONLY_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    return http_server


def _cache_entries(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.slow
def test_download_then_cached_call_makes_no_request(served, tmp_path):
    cache = tmp_path / "cache"
    path = weights.get_file("tiny_test", cache_dir=cache)
    assert path == cache / "tiny_test.keras"
    assert served.requests == ["/tiny.keras"]
    assert weights.get_file("tiny_test", cache_dir=cache) == path
    assert served.requests == ["/tiny.keras"]
    model = kp.PneumoniaCNN.from_pretrained("tiny_test", cache_dir=cache)
    assert model.threshold == pytest.approx(0.4)
    assert served.requests == ["/tiny.keras"]
    weights.get_file("tiny_test", cache_dir=cache, force_download=True)
    assert len(served.requests) == 2
    assert _cache_entries(cache) == ["tiny_test.keras"]


def test_default_cache_is_under_keras_home(served, tmp_path, monkeypatch):
    path = weights.get_file("tiny_test")
    assert path == tmp_path / "keras_home" / "keras_pneumonia" / "tiny_test.keras"
    monkeypatch.setenv("KERAS_PNEUMONIA_CACHE", str(tmp_path / "env_cache"))
    assert weights.get_file("tiny_test") == tmp_path / "env_cache" / "tiny_test.keras"


def test_hash_mismatch_leaves_nothing_in_the_cache(served, tmp_path):
    served.files["/tiny.keras"] = b"not the released file"
    cache = tmp_path / "cache"
    with pytest.raises(weights.WeightsError, match="sha256"):
        weights.get_file("tiny_test", cache_dir=cache)
    assert _cache_entries(cache) == []


def test_truncated_transfer_leaves_nothing(served, tmp_path):
    served.modes["/tiny.keras"] = "truncate"
    cache = tmp_path / "cache"
    with pytest.raises(weights.WeightsError, match="Could not download"):
        weights.get_file("tiny_test", cache_dir=cache)
    assert _cache_entries(cache) == []


def test_a_stalled_download_gives_up_after_the_timeout(served, tmp_path, monkeypatch):
    import time

    served.modes["/tiny.keras"] = "stall"  # half the file, then silence for 30 s
    monkeypatch.setenv("KERAS_PNEUMONIA_DOWNLOAD_TIMEOUT", "1")
    cache = tmp_path / "cache"
    started = time.time()
    with pytest.raises(weights.WeightsError, match="Could not download.*timed out"):
        weights.get_file("tiny_test", cache_dir=cache)
    assert time.time() - started < 15 and _cache_entries(cache) == []


def test_server_error(served, tmp_path):
    served.modes["/tiny.keras"] = "error"
    with pytest.raises(weights.WeightsError, match="500"):
        weights.get_file("tiny_test", cache_dir=tmp_path / "cache")
    assert _cache_entries(tmp_path / "cache") == []


def test_server_down(served, tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setitem(presets.model_file("tiny_test"), "url", f"http://127.0.0.1:{port}/tiny.keras")
    with pytest.raises(weights.WeightsError, match="Could not download"):
        weights.get_file("tiny_test", cache_dir=tmp_path / "cache")


def test_offline_mode_never_touches_the_network(served, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_PNEUMONIA_OFFLINE", "1")
    cache = tmp_path / "cache"
    with pytest.raises(weights.WeightsError) as info:
        weights.get_file("tiny_test", cache_dir=cache)
    assert "tiny_test.keras" in str(info.value) and str(cache / "tiny_test.keras") in str(info.value)
    assert served.requests == []
    # With the file placed where the message says, offline loading works.
    monkeypatch.delenv("KERAS_PNEUMONIA_OFFLINE")
    weights.get_file("tiny_test", cache_dir=cache)
    monkeypatch.setenv("KERAS_PNEUMONIA_OFFLINE", "1")
    assert kp.PneumoniaCNN.from_pretrained("tiny_test", cache_dir=cache).threshold == pytest.approx(0.4)
    assert len(served.requests) == 1


def test_readonly_prefilled_cache_is_used_and_never_written(served, tmp_path, monkeypatch, model_bytes):
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    (readonly / "tiny_test.keras").write_bytes(model_bytes)
    readonly.chmod(0o555)
    monkeypatch.setenv("KERAS_PNEUMONIA_READONLY_CACHE", str(readonly))
    cache = tmp_path / "cache"
    assert weights.get_file("tiny_test", cache_dir=cache) == readonly / "tiny_test.keras"
    assert served.requests == [] and not cache.exists()
    assert _cache_entries(readonly) == ["tiny_test.keras"]


def test_unwritable_cache_is_a_clear_error(served, tmp_path):
    blocker = tmp_path / "file_not_folder"
    blocker.write_text("x")
    with pytest.raises(weights.WeightsError, match="Cannot write to the weights cache"):
        weights.get_file("tiny_test", cache_dir=blocker / "cache")


@pytest.mark.slow
def test_two_processes_downloading_at_once(served, tmp_path, model_bytes):
    served.files["/big.keras"] = model_bytes
    served.modes["/tiny.keras"] = "slow"
    cache = tmp_path / "cache"
    code = "import sys; from keras_pneumonia import weights; weights.download(sys.argv[1], sys.argv[2], sys.argv[3])"
    args = [served.url("/tiny.keras"), str(cache / "tiny_test.keras"), hashlib.sha256(model_bytes).hexdigest()]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    procs = [subprocess.Popen([sys.executable, "-c", code, *args], env=env, stderr=subprocess.PIPE) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-2000:]
    assert len(served.requests) == 2
    assert _cache_entries(cache) == ["tiny_test.keras"]
    assert (cache / "tiny_test.keras").read_bytes() == model_bytes


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(weights.WeightsError, match="Unknown preset 'nope'.*pneumonia_cnn_v1"):
        weights.get_file("nope")


def test_local_path_and_missing_path(tmp_path, model_bytes):
    path = tmp_path / "mine.keras"
    path.write_bytes(model_bytes)
    assert kp.PneumoniaCNN.from_pretrained(path).threshold == pytest.approx(0.4)
    with pytest.raises(FileNotFoundError, match="No weights file"):
        kp.PneumoniaCNN.from_pretrained(tmp_path / "missing.keras")


def test_url_download_is_cached(served, tmp_path):
    url = served.url("/tiny.keras")
    first = weights.get_file(url, cache_dir=tmp_path / "c")
    second = weights.get_file(url, cache_dir=tmp_path / "c")
    assert first == second and len(served.requests) == 1


def test_corrupt_local_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"PK\x03\x04 broken zip")
    with pytest.raises(weights.WeightsError, match="bad.keras is not a .keras file: a .keras file is a zip archive"):
        load_model(bad)


def test_default_preset_ships_in_the_package_and_loads_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_PNEUMONIA_OFFLINE", "1")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.delenv("KERAS_PNEUMONIA_CACHE", raising=False)
    preset = presets.PRESETS[presets.DEFAULT_PRESET]
    path = weights.get_file()
    assert path == weights.bundled_path(presets.DEFAULT_PRESET)
    assert weights.sha256sum(path) == presets.model_file(presets.DEFAULT_PRESET)["sha256"]
    # At most 25 MB: the network is 4.9 MB, the out-of-distribution flag's 2,112 x 2,112 matrix 17.8 MB.
    assert path.stat().st_size == presets.model_file(presets.DEFAULT_PRESET)["size"] <= 25 * 1024 * 1024
    model = kp.PneumoniaCNN.from_pretrained()
    assert isinstance(model, kp.PneumoniaCNN)
    assert model.input_config.to_dict() == preset["input"]
    assert model.class_names == preset["class_names"]
    assert model.threshold == pytest.approx(preset["threshold"])
    assert model.ood is not None and model.ood["threshold"] == pytest.approx(preset["ood_threshold"])


def test_download_cli_fills_a_cache_for_air_gapped_machines(tmp_path, capsys):
    from keras_pneumonia.cli import main

    assert main(["download", "--cache-dir", str(tmp_path)]) == 0
    name = presets.model_file(presets.DEFAULT_PRESET)["file_name"]
    assert (tmp_path / name).is_file()
    assert main(["download", "--list"]) == 0
    assert presets.DEFAULT_PRESET in capsys.readouterr().out


def test_wheel_contains_the_default_weights_and_samples(tmp_path):
    pytest.importorskip("hatchling")
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(tmp_path)],
        cwd=root,
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for name, preset in presets.PRESETS.items():  # every bundled preset, the default among them
        assert f"keras_pneumonia/assets/{presets.model_file(name)['file_name']}" in names or not preset.get("bundled")
    assert presets.PRESETS[presets.DEFAULT_PRESET]["bundled"]
    assert sum(n.startswith("keras_pneumonia/assets/samples/") and n.endswith(".jpeg") for n in names) >= 2
    assert "keras_pneumonia/py.typed" in names


@pytest.mark.slow
def test_export_preset_writes_a_loadable_file_without_optimizer_state(tmp_path):
    model = kp.PneumoniaCNN(threshold=0.3, **TINY)
    model.compile()
    model.fit(np.zeros((4, 32, 32, 1), np.uint8), np.array([0, 1, 0, 1]), epochs=1, verbose=0)
    model.save(tmp_path / "trained.keras")
    fields = export_preset(tmp_path / "trained.keras", "my_release", output_dir=tmp_path / "release")
    path = tmp_path / "release" / "my_release.keras"
    file = fields["files"]["model.keras"]
    assert file["file_name"] == path.name
    assert file["sha256"] == weights.sha256sum(path) and file["size"] == path.stat().st_size
    assert presets.check_metadata(fields, "export_preset") == fields  # the registry's schema
    assert fields["threshold"] == pytest.approx(0.3)
    assert path.stat().st_size < (tmp_path / "trained.keras").stat().st_size  # no Adam moments
    exported = kp.PneumoniaCNN.from_pretrained(path, compile=False)
    x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 1), dtype=np.uint8)
    np.testing.assert_allclose(exported.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6, atol=1e-7)


def test_presets_api_in_kerashub_shape(tmp_path, capsys):
    import json

    from keras_pneumonia.cli import main
    from keras_pneumonia.presets import PRESETS
    from keras_pneumonia.weights import WeightsError, bundled_path

    presets = kp.PneumoniaCNN.presets
    assert sorted(presets) == ["pneumonia_cnn_v1", "pneumonia_cnn_v2", "pneumonia_cnn_v2_ood", "pneumonia_cnn_v3"]
    v2, v3 = presets["pneumonia_cnn_v2"], presets["pneumonia_cnn_v3"]
    assert not v2["default"] and v2["input"] == "160x160 grayscale" and v2["size_bytes"] == 4_901_553
    assert v2["params"] == kp.PneumoniaCNN.from_preset("pneumonia_cnn_v2", compile=False).count_params()
    # The default since release v3: the border cut inside the graph and the flag inside the file.
    default = kp.PneumoniaCNN.from_preset("pneumonia_cnn_v3", compile=False)
    assert v3["default"] and v3["ood_flag"] and v3["params"] == default.count_params()
    assert default.get_config()["crop_borders"] and default.unmirror  # borders cut, mirrored films turned back
    assert default.ood["threshold"] == pytest.approx(PRESETS["pneumonia_cnn_v3"]["ood_threshold"])
    # The flagged release: v2's weights and answers, and the flag inside the file.
    flagged = kp.PneumoniaCNN.from_preset("pneumonia_cnn_v2_ood", compile=False)
    assert presets["pneumonia_cnn_v2_ood"]["params"] == flagged.count_params()
    assert flagged.ood["input_grid"] == 8 and flagged.ood["fitted_on"]["train"] == 4693
    plain = kp.PneumoniaCNN.from_preset("pneumonia_cnn_v2", compile=False)
    for a, b in zip(plain.get_weights(), flagged.get_weights()[: len(plain.get_weights())]):
        np.testing.assert_array_equal(a, b)
    (validation, test_dev) = v2["metrics"]
    assert validation.startswith("validation (523 images") and "used for choices" in test_dev
    assert {"accuracy", "auc", "n"} <= set(v2["metrics"][validation]) <= set(v2["metrics"][test_dev])

    # A preset folder holding model.keras (KerasHub's layout) and a file:// URL load the same weights.
    (tmp_path / "my_preset").mkdir()
    (tmp_path / "my_preset" / "model.keras").write_bytes(bundled_path("pneumonia_cnn_v1").read_bytes())
    a = kp.PneumoniaCNN.from_preset(tmp_path / "my_preset", compile=False)
    b = kp.PneumoniaCNN.from_preset(f"file://{bundled_path('pneumonia_cnn_v1')}", compile=False)
    c = kp.PneumoniaCNN.from_pretrained("pneumonia_cnn_v1", compile=False)
    for x, y, z in zip(a.get_weights(), b.get_weights(), c.get_weights()):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)

    with pytest.raises(
        WeightsError, match=r"Unsupported handle.*file://PATH, http://URL, https://URL, hf://.*kaggle://"
    ):
        kp.PneumoniaCNN.from_preset("s3://bucket/v2.keras")
    with pytest.raises(WeightsError, match="Unknown preset 'pneumonia_cnn_v9'.*also supported"):
        kp.PneumoniaCNN.from_preset("pneumonia_cnn_v9")

    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "pneumonia_cnn_v3 (default)" in out and "1,198,034 parameters" in out and "used for choices" in out
    assert "external_dev (134 adult X-rays from other hospitals, used for choices): n=134, 86.6% flagged" in out
    assert "external_dev (134 adult X-rays from other hospitals, used for choices): n=134, 84.3% flagged" in out
    assert main(["presets", "--json"]) == 0
    assert [row["name"] for row in json.loads(capsys.readouterr().out)] == sorted(presets)


def test_a_damaged_shipped_copy_is_named_not_hidden_behind_the_download_error(tmp_path, monkeypatch, http_server):
    from keras_pneumonia.weights import WeightsError

    damaged = tmp_path / "shipped" / presets.model_file("pneumonia_cnn_v2")["file_name"]
    damaged.parent.mkdir()
    damaged.write_bytes(b"PK\x03\x04 truncated by a broken install")
    monkeypatch.setattr(weights, "bundled_path", lambda name: damaged)
    monkeypatch.setitem(presets.model_file("pneumonia_cnn_v2"), "url", http_server.url("/missing.keras"))  # a 404
    with pytest.raises(WeightsError, match=r"shipped in the package, .* does not match its sha256 .*reinstall"):
        weights.get_file("pneumonia_cnn_v2", cache_dir=tmp_path / "cache")
    with pytest.raises(WeightsError, match=r"does not match its sha256.*Offline mode"):
        weights.get_file("pneumonia_cnn_v2", cache_dir=tmp_path / "cache", offline=True)


@pytest.mark.parametrize("command", ["predict", "evaluate"])
@pytest.mark.slow
def test_json_output_stays_clean_while_a_download_reports_progress(served, tmp_path, command):
    """Keras' download messages and progress bar go to stderr, never into `--json` on stdout."""
    target = "tests/data/chest_xray/test/NORMAL/IM-0131-0001.jpeg" if command == "predict" else "tests/data/chest_xray"
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "home"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("KERAS_PNEUMONIA_CACHE", None)
    done = subprocess.run(
        [sys.executable, "-m", "keras_pneumonia", command, target, "--weights", served.url("/tiny.keras"), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert served.requests == ["/tiny.keras"]  # it did download
    assert "Downloading data from" in done.stderr
    json.loads(done.stdout)


def test_what_a_killed_download_left_is_removed_by_the_next_one(served, tmp_path, model_bytes):
    """`kill -9` leaves a staging folder; the next writer removes it (its process is gone), not a live one's."""
    cache = tmp_path / "cache"
    cache.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = cache / f".tiny_test.keras.{int(dead.stdout)}.abc123"
    left.mkdir()
    (left / "tiny_test.keras").write_bytes(model_bytes[:100])
    alive = cache / f".tiny_test.keras.{os.getppid()}.def456"  # a running process (pytest's parent)
    alive.mkdir()
    elsewhere = cache / f".tiny_test.keras.{int(dead.stdout)}@another-host.ghi789"  # a shared cache's
    elsewhere.mkdir()
    weights.get_file("tiny_test", cache_dir=cache)
    assert set(_cache_entries(cache)) == {elsewhere.name, alive.name, "tiny_test.keras"}


def test_what_a_killed_atomic_write_left_is_removed_by_the_next_one(tmp_path):
    from keras_pneumonia._io import atomic_write_text

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / f".report.json.{int(dead.stdout)}.x1y2.json.part").write_text("{half")
    atomic_write_text(tmp_path / "report.json", "{}")
    assert _cache_entries(tmp_path) == ["report.json"]


def test_a_preset_folder_round_trips_and_is_checked_against_its_metadata(tmp_path):
    from keras_pneumonia.weights import WeightsError

    model = kp.PneumoniaCNN.from_preset("pneumonia_cnn_v2", compile=False)
    model.threshold = 0.42
    metrics = {"test_dev (used for choices)": {"auc": 0.99}}
    metadata = model.save_to_preset(tmp_path / "shared", description="v2 at 0.42", metrics=metrics)
    folder = tmp_path / "shared"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "metadata.json", "model.keras"]
    assert json.loads((folder / "metadata.json").read_text()) == metadata
    assert metadata["threshold"] == 0.42 and metadata["class_names"] == ["NORMAL", "PNEUMONIA"]
    assert (
        metadata["files"]["model.keras"]["sha256"] == hashlib.sha256((folder / "model.keras").read_bytes()).hexdigest()
    )
    readme = (folder / "README.md").read_text()
    assert "v2 at 0.42" in readme and "| test_dev (used for choices) | auc | 0.99 |" in readme and "CC BY 4.0" in readme
    loaded = kp.PneumoniaCNN.from_preset(str(folder), compile=False)
    x = np.random.default_rng(0).integers(0, 256, (4, 160, 160, 1)).astype("uint8")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert loaded.threshold == 0.42
    with pytest.raises(FileExistsError, match="already exists"):
        model.save_to_preset(folder)
    # A changed model file is refused, naming both files.
    data = bytearray((folder / "model.keras").read_bytes())
    data[-100] ^= 0xFF
    (folder / "model.keras").write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="does not match .*metadata.json"):
        kp.PneumoniaCNN.from_preset(str(folder))
    assert not list(tmp_path.glob(".shared*"))  # no staging folder left


def test_kaggle_handles_without_kagglehub_say_what_to_install(monkeypatch):
    from keras_pneumonia.kaggle import KaggleError

    monkeypatch.setitem(sys.modules, "kagglehub", None)  # as if not installed: importing it raises ImportError
    with pytest.raises(weights.WeightsError, match=r"^kaggle://a/b/keras/c needs the kagglehub package: pip install"):
        weights.get_file("kaggle://a/b/keras/c")
    with pytest.raises(KaggleError, match=r"^kaggle://a/b needs the kagglehub package: .*keras-pneumonia\[hub\]"):
        kp.load_chest_xray("kaggle://a/b")


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_each_released_presets_metadata_describes_its_file(name):
    """The registry's entry in the preset folders' schema says what the file holds."""
    metadata = presets.PRESETS[name]
    model = kp.PneumoniaCNN.from_preset(name, compile=False)
    assert presets.check_metadata(metadata, name) == metadata
    assert metadata["input"] == model.input_config.to_dict()
    assert metadata["params"] == model.count_params() and metadata["class_names"] == model.class_names
    assert metadata["threshold"] == pytest.approx(model.threshold)
    assert metadata["temperature"] == pytest.approx(model.temperature)
    assert (metadata["ood_threshold"] is None) == (model.ood is None)
    if model.ood is not None:
        assert metadata["ood_threshold"] == pytest.approx(model.ood["threshold"])


def test_a_preset_folder_whose_metadata_breaks_the_schema_is_named(tmp_path):
    import json

    from keras_pneumonia.weights import WeightsError

    folder = tmp_path / "preset"
    kp.PneumoniaCNN(**TINY).save_to_preset(folder)
    metadata = json.loads((folder / "metadata.json").read_text())
    del metadata["class_names"]
    (folder / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(WeightsError, match=r"metadata.json: preset metadata has no 'class_names'"):
        kp.PneumoniaCNN.from_preset(folder)
    (folder / "metadata.json").write_text("{not json")
    with pytest.raises(WeightsError, match=r"metadata.json is not JSON"):
        kp.PneumoniaCNN.from_preset(folder)
