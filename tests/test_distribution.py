"""Training on two devices and on two workers, for real: logical CPU devices and processes on 127.0.0.1.

TensorFlow fixes its devices and its collective runtime when it starts, so each
case runs in fresh processes.
"""

import csv
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import TINY

MODEL = {k: v for k, v in TINY.items() if k != "image_size"}


def _python(code: str, env=None, timeout=300) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _losses(history_csv):
    with open(history_csv, newline="") as file:
        return [float(row["loss"]) for row in csv.DictReader(file)]


def _one_epoch(kind: str, data, out, devices: int) -> dict:
    """One epoch of ``train(distribute=kind)`` in a fresh process with ``devices`` devices.

    ``"mirrored"``: the CPU split into logical TensorFlow devices; ``"data-parallel"``:
    JAX with that many host devices.
    """
    setup, env = "", None
    if kind == "mirrored":
        setup = f"""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * {devices})"""
    else:
        env = {"KERAS_BACKEND": "jax", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    code = f"""{setup}
        from keras_pneumonia.training import train
        train({str(data)!r}, {str(out)!r}, epochs=1, distribute={kind!r}, image_size={TINY["image_size"]},
              batch_size=8, validation_split=0.25, augmentation="none",
              model_kwargs={{**{MODEL!r}, "dropout": 0.0}}, verbose=0)
    """
    _python(code, env=env)
    return json.loads((out / "run.json").read_text())["distribution"]


def _one_and_two_devices_agree(kind, data, tmp_path):
    one = _one_epoch(kind, data, tmp_path / "one", devices=1)
    two = _one_epoch(kind, data, tmp_path / "two", devices=2)
    assert (one["replicas"], two["replicas"]) == (1, 2)
    losses = [_losses(tmp_path / name / "history.csv") for name in ("one", "two")]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    assert (tmp_path / "two" / "model.keras").exists()


@pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow", reason="tf.distribute")
@pytest.mark.slow
def test_mirrored_on_two_devices_matches_one_device_with_the_same_global_batch(kaggle_dir, tmp_path):
    # Each of the two replicas takes 4 of the 8 images, the gradients are averaged and the
    # batch statistics synchronised: the same arithmetic in another order, so float32
    # rounding only, far below 1e-4. Per-replica batch statistics or another image order
    # would change the arithmetic itself, not only its rounding.
    # Both runs use the strategy: without one, Keras does not peek a batch before the
    # first epoch, so the first epoch would see the next shuffle of the images.
    _one_and_two_devices_agree("mirrored", kaggle_dir, tmp_path)


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _workers(data, out, epochs):
    hosts = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}
        args = ["train", str(data), "--output", str(out), "--epochs", str(epochs), "--validation-split", "0.25"]
        args += ["--distribute", "multi-worker", "--batch-size", "8", "--no-augmentation", "--image-size", "96"]
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "keras_pneumonia", *args],
                env={**os.environ, "TF_CONFIG": json.dumps(tf_config), "TF_CPP_MIN_LOG_LEVEL": "2"},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return processes


def _rows(history):
    if not history.exists():
        return 0
    with open(history, newline="") as file:
        return len(list(csv.DictReader(file)))


@pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow", reason="tf.distribute")
@pytest.mark.slow
def test_two_workers_write_one_run_and_resume_after_a_crash(kaggle_dir, tmp_path):
    out = tmp_path / "run"
    chief, worker = _workers(kaggle_dir, out, epochs=3)
    # Both killed (kill -9) once each has finished its first epoch.
    start = time.time()
    while _rows(out / "history.csv") < 1 or _rows(out / "workers" / "1" / "history.csv") < 1:
        assert chief.poll() is None and worker.poll() is None, (chief.communicate(), worker.communicate())
        assert time.time() - start < 240, "timed out"
        time.sleep(0.05)
    for process in (chief, worker):
        process.kill()
        process.wait()
    assert (out / "backup").exists() and (out / "workers" / "1" / "backup").exists()
    assert not (out / "model.keras").exists()

    # The same commands again: both resume from their checkpoints and finish.
    processes = _workers(kaggle_dir, out, epochs=3)
    for process in processes:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
    # One model, written by the chief; the other worker's checkpoints are gone.
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("model.keras")) == ["model.keras"]
    assert not (out / "workers" / "1").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["epochs_run"] == 3 and _rows(out / "history.csv") == 3
    run = json.loads((out / "run.json").read_text())
    assert run["distribution"] == {"kind": "multi-worker", "replicas": 2, "worker": 0, "is_chief": True}


def test_distribution_errors_name_what_is_missing(monkeypatch):
    import keras

    from keras_pneumonia.distribution import Distribution

    backend = keras.backend.backend()
    monkeypatch.delenv("TF_CONFIG", raising=False)
    if backend == "tensorflow":
        with pytest.raises(ValueError, match="TF_CONFIG"):
            Distribution.create("multi-worker")
        monkeypatch.setenv("TF_CONFIG", "{not json")
        with pytest.raises(ValueError, match="TF_CONFIG is not valid"):
            Distribution.create("multi-worker")
    else:  # the backend is what is missing, and the error says so first
        with pytest.raises(ValueError, match=f"runs on the tensorflow backend; this Keras runs on '{backend}'"):
            Distribution.create("multi-worker")
    if backend != "jax":
        with pytest.raises(ValueError, match="jax backend"):
            Distribution.create("data-parallel")
    with pytest.raises(ValueError, match="one of"):
        Distribution.create("horovod")
    with pytest.raises(ValueError, match="multiple of 3"):
        Distribution("mirrored", replicas=3).check_batch_size(32)


def test_data_parallel_on_two_jax_devices_matches_one(kaggle_dir, tmp_path):
    pytest.importorskip("jax")  # installed by `nox -s extras` and the matrix's jax session
    # JAX computes on the global batch split over two devices (batch statistics too):
    # the same sums in another order, so float32 rounding only, as for "mirrored".
    _one_and_two_devices_agree("data-parallel", kaggle_dir, tmp_path)


def test_data_parallel_batches_split_evenly_over_the_devices():
    import tensorflow as tf

    from keras_pneumonia.distribution import Distribution

    dataset = tf.data.Dataset.range(11).batch(4)  # batches of 4, 4, 3
    sizes = [int(b.shape[0]) for b in Distribution("data-parallel", replicas=2).even_batches(dataset, 11, 4)]
    assert sizes == [4, 4, 2]  # one image left out, every batch even
    assert Distribution("mirrored", replicas=2).even_batches(dataset, 11, 4) is dataset  # TF splits uneven ones
    whole = dataset.take(2)  # 8 images: every batch splits evenly already
    assert Distribution("data-parallel", replicas=2).even_batches(whole, 8, 4) is whole
