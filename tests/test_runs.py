"""Runs that cannot be lost or mixed: a real second training, a real SIGTERM, a real kill -9."""

import csv
import json
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import keras_pneumonia as kp
from keras_pneumonia.callbacks import ResumeBest, best_checkpoint
from keras_pneumonia.cli import main

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")


def _train_command(data, output, epochs):
    # 160 px with the default blocks: about a second an epoch here, slow enough to interrupt.
    args = ["train", str(data), "--output", str(output), "--epochs", str(epochs), "--validation-split", "0.25"]
    return [sys.executable, "-m", "keras_pneumonia", *args]


def _wait_for(predicate, process, timeout=240):
    start = time.time()
    while not predicate():
        assert process.poll() is None, process.communicate()
        assert time.time() - start < timeout, "timed out"
        time.sleep(0.05)


def _rows(history):
    if not history.exists():
        return []
    with open(history, newline="") as file:
        return list(csv.DictReader(file))


@pytest.mark.slow
def test_a_second_training_into_the_same_folder_exits_at_once(kaggle_dir, tmp_path, capsys):
    out = tmp_path / "run"
    first = subprocess.Popen(_train_command(kaggle_dir, out, 2), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for(lambda: (out / ".lock").exists() and (out / ".lock").read_text().strip() == str(first.pid), first)
    started = time.time()
    assert main(["train", str(kaggle_dir), "--output", str(out), "--epochs", "2"]) == 2
    assert time.time() - started < 30
    assert f"in use by another run (PID {first.pid})" in capsys.readouterr().err
    assert first.wait(timeout=300) == 0, first.communicate()
    # The first run is whole: one header in history.csv, a model, a report.
    assert len(_rows(out / "history.csv")) == 2 and (out / "model.keras").exists()
    # The lock died with its process: a later run may use the folder.
    assert main(["train", str(kaggle_dir), "--output", str(out), "--epochs", "2"]) == 2  # finished run
    assert "already holds a finished run" in capsys.readouterr().err


def test_overwrite_never_touches_the_files_of_a_run_that_holds_the_folder(kaggle_dir, tmp_path):
    from keras_pneumonia._io import FolderInUseError, exclusive_lock
    from keras_pneumonia.training import train

    out = tmp_path / "run"
    with exclusive_lock(out):  # another run, in the middle of its work
        (out / "history.csv").write_text("epoch,loss\n0,0.5\n")
        (out / "checkpoints").mkdir()
        (out / "checkpoints" / "epoch_1.keras").write_bytes(b"weights")
        (out / "model.keras").write_bytes(b"a finished run's model")
        with pytest.raises(FolderInUseError):
            train(kaggle_dir, out, epochs=1, overwrite=True, verbose=0)
        assert (out / "history.csv").read_text() == "epoch,loss\n0,0.5\n"
        assert (out / "checkpoints" / "epoch_1.keras").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
@pytest.mark.slow
def test_an_interrupted_run_resumes_with_its_best_epoch_and_counts_every_epoch(sig, kaggle_dir, tmp_path):
    out = tmp_path / "run"
    epochs = 6
    process = subprocess.Popen(_train_command(kaggle_dir, out, epochs), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for(lambda: len(_rows(out / "history.csv")) >= 2, process)
    process.send_signal(sig)
    code = process.wait(timeout=120)
    assert code == (143 if sig == signal.SIGTERM else -signal.SIGKILL)
    if sig == signal.SIGTERM:
        assert "terminated (SIGTERM)" in process.communicate()[1].decode()
    assert (out / "backup").exists() and not (out / "model.keras").exists()
    before = len(_rows(out / "history.csv"))

    resumed = subprocess.run(_train_command(kaggle_dir, out, epochs), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = _rows(out / "history.csv")
    report = json.loads((out / "report.json").read_text())
    assert report["epochs_run"] == len(rows) > before  # the epochs before the interruption count
    assert [int(r["epoch"]) for r in rows] == list(range(len(rows)))  # resumed, not restarted
    # The model kept is the best epoch of the whole run, not of the resumed part.
    model = keras.saving.load_model(out / "model.keras")
    data = kp.load_chest_xray(kaggle_dir, validation_split=0.25)
    model.compile()
    val_loss = model.evaluate(data.val, verbose=0, return_dict=True)["loss"]
    assert val_loss == pytest.approx(min(float(r["val_loss"]) for r in rows), abs=2e-3)


def test_resume_best_hands_the_best_checkpoint_to_the_callbacks(tmp_path):
    model = kp.PneumoniaCNN(image_size=32, filters=(8,), dense_units=())
    model.compile()
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    model.save(folder / "epoch002-val_loss5.1400.keras")
    (folder / "epoch004-val_loss13.4400.keras").write_bytes(b"not read")
    assert best_checkpoint(folder)[:2] == (5.14, 2)
    stopper = keras.callbacks.EarlyStopping(patience=6, restore_best_weights=True)
    checkpoint = keras.callbacks.ModelCheckpoint(str(tmp_path / "x.keras"), save_best_only=True)
    resume = ResumeBest(folder, checkpoint, stopper)
    for callback in (stopper, checkpoint, resume):
        callback.set_model(model)
        callback.on_train_begin()
    resume.on_epoch_begin(5)  # epochs 0-4 done, the best was the second (index 1)
    assert checkpoint.best == stopper.best == 5.14 and stopper.best_epoch == 1 and stopper.wait == 3
    for a, b in zip(stopper.best_weights, model.get_weights()):
        np.testing.assert_array_equal(a, b)
