"""The streaming pipeline: the in-memory pipeline's pixels in its order, caches, bad files, header checks."""

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import keras_pneumonia as kp
from conftest import TINY
from keras_pneumonia.data import bad_image_error_from, check_headers
from keras_pneumonia.training import train

KW = {"image_size": 48, "validation_split": 0.25, "batch_size": 4}


def _batches(dataset):
    return [(x.numpy(), y.numpy()) for x, y in dataset]


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(p[0], q[0]) and np.array_equal(p[1], q[1]) for p, q in zip(a, b))


def test_streaming_gives_the_in_memory_pixels_in_the_same_order(kaggle_dir):
    memory = kp.load_chest_xray(kaggle_dir, pipeline="memory", **KW)
    stream = kp.load_chest_xray(kaggle_dir, pipeline="stream", **KW)
    assert (memory.options["pipeline"], stream.options["pipeline"]) == ("memory", "stream")
    assert memory.files == stream.files
    epoch1 = _batches(memory.train)
    assert _same(epoch1, _batches(stream.train))
    for split in ("val", "test"):
        assert _same(_batches(getattr(memory, split)), _batches(getattr(stream, split))), split
    # Every epoch a new order, the same in both pipelines.
    epoch2 = _batches(stream.train)
    assert not _same(epoch2, epoch1)
    assert _same(epoch2, _batches(memory.train))
    assert int(stream.train.cardinality()) == len(epoch1)


def test_auto_keeps_small_sets_in_memory_and_streams_large_ones(kaggle_dir, monkeypatch):
    assert kp.load_chest_xray(kaggle_dir, **KW).options["pipeline"] == "memory"
    monkeypatch.setattr("keras_pneumonia.data.AUTO_STREAM_BYTES", 40 * 48 * 48 - 1)  # just below these 40 images
    assert kp.load_chest_xray(kaggle_dir, **KW).options["pipeline"] == "stream"
    with pytest.raises(ValueError, match="pipeline"):
        kp.load_chest_xray(kaggle_dir, pipeline="lazy", **KW)
    with pytest.raises(ValueError, match="cache"):
        kp.load_chest_xray(kaggle_dir, pipeline="memory", cache="memory", **KW)


@pytest.mark.parametrize("cache", ["memory", "folder"])
def test_a_cache_holds_the_same_images_and_is_named_by_its_settings(cache, kaggle_dir, tmp_path):
    where = "memory" if cache == "memory" else tmp_path / "cache"
    memory = kp.load_chest_xray(kaggle_dir, pipeline="memory", **KW)
    cached = kp.load_chest_xray(kaggle_dir, pipeline="stream", cache=where, **KW)

    def images(dataset):
        return sorted(x.tobytes() + bytes([y]) for xs, ys in _batches(dataset) for x, y in zip(xs, ys))

    for epoch in range(2):  # the first fills the cache, the second reads it
        assert images(cached.train) == images(memory.train), epoch
        assert _same(_batches(cached.val), _batches(memory.val))
    if cache == "folder":
        names = sorted(p.name for p in where.iterdir())
        assert any(n.startswith("train-") and n.endswith(".index") for n in names), names
        # Another size is another cache, never the 48 px one read back.
        other = kp.load_chest_xray(kaggle_dir, pipeline="stream", cache=where, **{**KW, "image_size": 40})
        assert next(iter(other.train))[0].shape[1:3] == (40, 40)
        assert len([n for n in where.iterdir() if n.name.startswith("train-")]) > len(
            [n for n in names if n.startswith("train-")]
        )


def _break(folder: Path):
    (folder / "empty.jpeg").write_bytes(b"")
    (folder / "notes.png").write_text("this is not an image")
    good = (folder / "IM-0115-0001.jpeg").read_bytes()
    (folder / "IM-9999-0001.jpeg").write_bytes(good[: len(good) // 2])  # a header, then nothing
    # Whole, with its end marker, but its pixel data broken: only decoding finds it.
    buffer = io.BytesIO()
    Image.open(folder / "IM-0115-0001.jpeg").save(buffer, "PNG")
    broken = bytearray(buffer.getvalue())
    start = broken.find(b"IDAT") + 2000
    broken[start : start + 200] = bytes(200)
    (folder / "IM-9998-0001.png").write_bytes(bytes(broken))


def test_headers_are_checked_without_decoding(kaggle_dir):
    folder = kaggle_dir / "train" / "NORMAL"
    _break(folder)
    problems = dict(check_headers(sorted(folder.iterdir())))
    # The file cut short is found by its missing end marker; the broken PNG only by decoding.
    assert {Path(p).name for p in problems} == {"empty.jpeg", "notes.png", "IM-9999-0001.jpeg"}
    # Refused up front by the streaming pipeline with the in-memory pipeline's error, one
    # error listing the bad files of every split (here one more in test/).
    (kaggle_dir / "test" / "PNEUMONIA" / "blank.png").write_bytes(b"")
    with pytest.raises(kp.BadImageError) as info:
        kp.load_chest_xray(kaggle_dir, pipeline="stream", **KW)
    assert sorted(Path(p).name for p, _ in info.value.problems) == [
        "IM-9999-0001.jpeg",
        "blank.png",
        "empty.jpeg",
        "notes.png",
    ]
    assert "empty file" in str(info.value)


@pytest.mark.slow
def test_a_file_broken_inside_is_named_when_streaming_reaches_it(kaggle_dir, tmp_path, caplog):
    _break(kaggle_dir / "train" / "NORMAL")
    data = kp.load_chest_xray(kaggle_dir, pipeline="stream", on_bad_file="skip", **KW)
    with caplog.at_level(logging.WARNING):
        seen = sum(len(y) for _, y in data.train) + sum(len(y) for _, y in data.val)
    assert "IM-9998-0001.png" in caplog.text and "data stream" in caplog.text
    assert seen == len(data.files["train"]) + len(data.files["val"]) - 1
    # With on_bad_file="raise", training stops with the file's name, not TensorFlow's traceback.
    for name in ("empty.jpeg", "notes.png", "IM-9999-0001.jpeg"):
        (kaggle_dir / "train" / "NORMAL" / name).unlink()
    with pytest.raises(kp.BadImageError) as info:
        train(kaggle_dir, tmp_path / "run", epochs=1, pipeline="stream", augmentation="none", **_tiny(), verbose=0)
    assert [Path(p).name for p, _ in info.value.problems] == ["IM-9998-0001.png"]
    assert "data stream" in info.value.problems[0][1]
    assert bad_image_error_from(RuntimeError("something else")) is None


def _tiny():
    return {
        "image_size": TINY["image_size"],
        "batch_size": 8,
        "validation_split": 0.25,
        "model_kwargs": {k: v for k, v in TINY.items() if k != "image_size"},
    }


@pytest.mark.slow
def test_training_on_the_stream_matches_training_in_memory(kaggle_dir, tmp_path):
    reports = {}
    for pipeline in ("memory", "stream"):
        reports[pipeline] = train(
            kaggle_dir, tmp_path / pipeline, epochs=2, pipeline=pipeline, augmentation="none", **_tiny(), verbose=0
        )
    # Same pixels, same order, same seed: the same numbers.
    assert reports["stream"]["val"]["auc"] == pytest.approx(reports["memory"]["val"]["auc"], abs=1e-6)
    memory, stream = (_losses(tmp_path / p / "history.csv") for p in ("memory", "stream"))
    assert stream == pytest.approx(memory, rel=1e-5)


def _losses(history_csv):
    import csv

    with open(history_csv, newline="") as file:
        return [float(row["loss"]) for row in csv.DictReader(file)]


@pytest.mark.slow
def test_a_cache_left_half_written_by_a_killed_process_is_rebuilt(tmp_path):
    import os
    import shutil
    import signal
    import subprocess
    import sys

    from conftest import KAGGLE

    data = tmp_path / "data"
    shutil.copytree(KAGGLE, data)
    # 2,400 more images (hard links), enough that the first epoch is still being cached
    # when the process is killed after its second batch.
    sources = sorted((data / "train" / "PNEUMONIA").iterdir())
    for i in range(2400):
        os.link(sources[i % len(sources)], data / "train" / "PNEUMONIA" / f"person{900 + i}_bacteria_{i}.jpeg")
    cache = tmp_path / "cache"
    code = f"""
import os, keras_pneumonia as kp
data = kp.load_chest_xray({str(data)!r}, pipeline="stream", cache={str(cache)!r}, image_size=160)
for step, _ in enumerate(data.train):
    if step == 2:
        os.kill(os.getpid(), {int(signal.SIGKILL)})
"""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env)
    assert killed.returncode == -signal.SIGKILL
    assert list(cache.glob("train-*.lockfile")) and not list(cache.glob("train-*.index"))  # half-written
    again = kp.load_chest_xray(data, pipeline="stream", cache=cache, image_size=160)
    n = len(again.files["train"])
    for _ in range(2):  # fills the cache, then reads it: every image, each once
        assert sum(int(y.shape[0]) for _, y in again.train) == n
    assert list(cache.glob("train-*.index")) and not list(cache.glob("train-*.lockfile"))
