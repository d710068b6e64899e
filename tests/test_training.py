import csv
import json
import struct

import keras
import numpy as np
import pytest

import keras_pneumonia as kp
from conftest import TINY
from keras_pneumonia import callbacks, training
from keras_pneumonia.cli import main

TINY_CLI = ["--image-size", "32", "--filters", "8,16", "--dense-units", "16", "--convs-per-block", "1"]


def _png_ok(path) -> bool:
    data = path.read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return False
    width, height = struct.unpack(">II", data[16:24])
    return width > 100 and height > 100


def test_default_preset_contents(tmp_path):
    cbs = callbacks.preset("default", run_dir=tmp_path)
    by_type = {type(c).__name__: c for c in cbs}
    assert set(by_type) == {
        "EarlyStopping",
        "ReduceLROnPlateau",
        "ModelCheckpoint",
        "BackupAndRestore",
        "EpochTime",
        "CSVLogger",
    }
    assert by_type["EarlyStopping"].restore_best_weights
    assert by_type["EarlyStopping"].monitor == "val_loss"
    assert by_type["ModelCheckpoint"].save_best_only
    assert str(by_type["ModelCheckpoint"].filepath).endswith(".keras")
    fine = {type(c).__name__: c for c in callbacks.preset("fine_tune", run_dir=tmp_path, tensorboard=True)}
    assert "TensorBoard" in fine
    assert fine["EarlyStopping"].patience < by_type["EarlyStopping"].patience
    with pytest.raises(ValueError, match="Unknown callback preset"):
        callbacks.preset("fast", run_dir=tmp_path)


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt("simulated kill")


@pytest.mark.slow
def test_interrupted_run_resumes_from_the_right_epoch(kaggle_dir, tmp_path, monkeypatch):
    run = tmp_path / "run"
    original = callbacks.preset
    monkeypatch.setattr(callbacks, "preset", lambda *a, **k: [*original(*a, **k), _Interrupt(epoch=1)])
    args = {
        "epochs": 4,
        "image_size": 32,
        "validation_split": 0.25,
        "model_kwargs": {k: v for k, v in TINY.items() if k != "image_size"},
    }
    with pytest.raises(KeyboardInterrupt):
        training.train(kaggle_dir, run, verbose=0, **args)
    assert not (run / "model.keras").exists()
    with open(run / "history.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1"]
    monkeypatch.setattr(callbacks, "preset", original)
    report = training.train(kaggle_dir, run, verbose=0, **args)
    with open(run / "history.csv") as f:
        epochs = [row["epoch"] for row in csv.DictReader(f)]
    assert epochs == ["0", "1", "2", "3"]  # resumed at epoch 2, nothing redone or lost
    assert report["epochs_run"] == 4  # every epoch of the run, those before the interruption too


@pytest.mark.slow
def test_train_cli_writes_a_complete_run(kaggle_dir, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(
        ["train", str(kaggle_dir), "--output", str(run), "--epochs", "2", "--validation-split", "0.25", *TINY_CLI]
    )
    assert code == 0
    for name in (
        "model.keras",
        "history.csv",
        "history.png",
        "roc_val.png",
        "confusion_val.png",
        "roc_test.png",
        "confusion_test.png",
        "report.json",
        "split.json",
        "run.json",
    ):
        assert (run / name).is_file(), name
    for png in run.glob("*.png"):
        assert _png_ok(png), png
    report = json.loads((run / "report.json").read_text())
    assert {"val", "test", "threshold"} <= set(report)
    assert report["test"]["n"] == 8
    model = keras.saving.load_model(run / "model.keras")
    assert model.threshold == pytest.approx(report["threshold"])  # chosen on validation, stored in the model
    assert report["val"]["threshold"] == pytest.approx(report["threshold"])
    # The out-of-distribution flag is fitted after training and travels in the file.
    assert model.ood["threshold"] == pytest.approx(report["ood"]["threshold"])
    assert set(report["ood"]["flagged"]) == {"val", "test"}
    run_info = json.loads((run / "run.json").read_text())
    assert run_info["command"].startswith("keras-pneumonia train")
    from keras_pneumonia.config import DEFAULTS

    assert set(DEFAULTS.to_dict()) <= set(run_info["arguments"])  # every setting of the run, resolved
    assert "keras" in run_info["versions"] and "tensorflow" in run_info["versions"]
    assert not list(run.glob("*.part"))
    assert "threshold" in capsys.readouterr().out
    # A finished run is not overwritten by accident.
    code = main(["train", str(kaggle_dir), "--output", str(run), "--epochs", "1", *TINY_CLI])
    assert code == 2
    assert "already holds a finished run" in capsys.readouterr().err


@pytest.mark.slow
def test_threshold_is_chosen_on_validation_only(kaggle_dir, tmp_path, monkeypatch):
    from keras_pneumonia import evaluation

    seen = []
    original = evaluation.youden_threshold

    def spy(y, p, **kwargs):
        seen.append(len(y))
        return original(y, p, **kwargs)

    monkeypatch.setattr(evaluation, "youden_threshold", spy)
    report = training.train(
        kaggle_dir,
        tmp_path / "run",
        epochs=1,
        image_size=32,
        validation_split=0.25,
        verbose=0,
        model_kwargs={"filters": (8,), "dense_units": ()},
    )
    assert seen == [report["val"]["n"]]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "{missing}", "--output", "{run}"], "No chest X-ray layout found"),
        (["train", "{empty_class}", "--output", "{run}"], "holds no images"),
        (["evaluate", "{missing}", "--weights", "{model}"], "must hold NORMAL/ and PNEUMONIA/"),
        (["split", "{missing}", "--manifest", "{run}/m.json"], "No chest X-ray layout found"),
        (["train", "{kaggle}", "--output", "{run}", "--init-weights", "{model}"], "has no match in the new model"),
    ],
)
def test_cli_errors_are_one_line_without_traceback(argv, message, kaggle_dir, tmp_path, capsys):
    for f in (kaggle_dir / "train" / "PNEUMONIA").iterdir():
        f.unlink()
    model = tmp_path / "m.keras"
    kp.PneumoniaCNN(**TINY).save(model)
    values = {"missing": tmp_path / "nope", "run": tmp_path / "run", "empty_class": kaggle_dir, "model": model}
    values["kaggle"] = kaggle_dir  # with the default architecture, which the tiny model is not
    code = main([a.format(**values) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "x", "--output", "y", "--epochs", "0"],
        ["train", "x"],
        ["split", "x", "--manifest", "m", "--validation-split", "1.5"],
        ["nosuch"],
    ],
)
def test_cli_bad_options_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


@pytest.mark.slow
def test_train_cli_can_keep_the_kaggle_val_folder(kaggle_dir, tmp_path):
    for name in ("NORMAL", "PNEUMONIA"):
        (kaggle_dir / "val" / name).mkdir(parents=True)
    (kaggle_dir / "train/NORMAL/IM-0115-0001.jpeg").rename(kaggle_dir / "val/NORMAL/IM-0115-0001.jpeg")
    (kaggle_dir / "train/PNEUMONIA/person1_bacteria_1.jpeg").rename(
        kaggle_dir / "val/PNEUMONIA/person1_bacteria_1.jpeg"
    )
    run = tmp_path / "run"
    argv = ["train", str(kaggle_dir), "--output", str(run), "--epochs", "1", "--kaggle-val", "keep", *TINY_CLI]
    assert main(argv) == 0
    split = json.loads((run / "split.json").read_text())
    assert [e["path"] for e in split["val"]] == [
        "val/NORMAL/IM-0115-0001.jpeg",
        "val/PNEUMONIA/person1_bacteria_1.jpeg",
    ]
    assert json.loads((run / "run.json").read_text())["arguments"]["kaggle_val"] == "keep"


def test_split_cli(kaggle_dir, tmp_path, capsys):
    manifest = tmp_path / "split.json"
    assert (
        main(["split", str(kaggle_dir), "--validation-split", "0.25", "--seed", "0", "--manifest", str(manifest)]) == 0
    )
    out = capsys.readouterr().out
    assert "train:" in out and "val:" in out and "test: 8 images" in out
    data = json.loads(manifest.read_text())
    assert {"path", "label", "patient"} <= set(data["train"][0])
    assert not {e["patient"] for e in data["train"]} & {e["patient"] for e in data["val"]}


def test_evaluate_cli_json(kaggle_dir, tmp_path, capsys):
    model = kp.PneumoniaCNN(threshold=0.42, **TINY)
    model.save(tmp_path / "m.keras")
    assert main(["evaluate", str(kaggle_dir), "--weights", str(tmp_path / "m.keras"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"accuracy", "auc", "sensitivity", "specificity", "precision", "threshold", "n", "confusion_matrix"} <= set(
        report
    )
    assert report["n"] == 8 and report["threshold"] == pytest.approx(0.42)
    assert np.sum(report["confusion_matrix"]) == 8
    assert main(["evaluate", str(kaggle_dir / "train"), "--weights", str(tmp_path / "m.keras")]) == 0
    assert "| n | 32 |" in capsys.readouterr().out


@pytest.mark.slow
def test_release_style_run_cosine_ema_monitor_and_fixed_threshold(kaggle_dir, tmp_path):
    run = tmp_path / "run"
    argv = ["train", str(kaggle_dir), "--output", str(run), "--epochs", "3", "--validation-split", "0.25"]
    argv += ["--schedule", "cosine", "--ema", "--augmentation", "mixed", "--threshold", "0.5"]
    assert main([*argv, "--monitor", str(kaggle_dir / "test"), *TINY_CLI]) == 0
    history = list(csv.DictReader((run / "history.csv").open()))
    assert len(history) == 3
    assert {"monitor_accuracy", "monitor_auc", "monitor_sensitivity", "monitor_specificity"} <= set(history[0])
    assert all(float(row["epoch_time_s"]) > 0 for row in history)
    report = json.loads((run / "report.json").read_text())
    assert report["threshold"] == 0.5 and report["threshold_rule"].startswith("fixed at 0.5")
    assert report["monitor"]["n"] == 8 and report["monitor"]["threshold"] == 0.5
    # No early stopping, no plateau: a checkpoint of every epoch, and the last one is the result.
    assert len(list((run / "checkpoints").glob("epoch*.keras"))) == 3
    arguments = json.loads((run / "run.json").read_text())["arguments"]
    assert arguments["schedule"] == "cosine" and arguments["ema"] and arguments["augmentation"] == "mixed"
    model = keras.saving.load_model(run / "model.keras")
    assert model.threshold == 0.5 and not model.augmentation


@pytest.mark.slow
def test_a_run_can_start_from_a_trained_models_weights(kaggle_dir, tmp_path):
    start = kp.PneumoniaCNN(**TINY)
    start.set_weights([np.full(w.shape, 0.01, w.dtype) for w in start.get_weights()])
    start.save(tmp_path / "start.keras")
    run = tmp_path / "run"
    argv = ["train", str(kaggle_dir), "--output", str(run), "--epochs", "1", "--validation-split", "0.25"]
    argv += ["--init-weights", str(tmp_path / "start.keras"), "--learning-rate", "1e-12", "--crop-borders"]
    assert main([*argv, "--fill-dark-edges", "--fill-dark-corners", "--no-ood-flag", *TINY_CLI]) == 0
    trained = keras.saving.load_model(run / "model.keras")
    # The architecture's weights copied into a model that crops borders and fills dark edges and corners.
    assert trained.crop_borders and trained.fill_dark_edges and trained.get_layer("fill_dark_edges")
    assert trained.fill_dark_corners and trained.get_layer("fill_dark_corners")
    for a, b in zip(start.trainable_weights, trained.trainable_weights, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)  # a learning rate of 1e-12 leaves them where they started
    assert json.loads((run / "run.json").read_text())["arguments"]["init_weights"] == str(tmp_path / "start.keras")


def test_init_weights_refuses_a_model_with_layers_the_source_lacks(tmp_path):
    kp.PneumoniaCNN(**TINY).save(tmp_path / "start.keras")
    wider_head = kp.PneumoniaCNN(**{**TINY, "dense_units": (16, 16)})  # every source layer fits; dense2 is new
    with pytest.raises(ValueError, match="the new model's layer 'dense2' has no match"):
        training.copy_weights(tmp_path / "start.keras", wider_head)


def test_fixed_preset_has_no_early_stopping(tmp_path):
    names = [type(c).__name__ for c in callbacks.preset("fixed", run_dir=tmp_path)]
    assert names == ["ModelCheckpoint", "BackupAndRestore", "EpochTime", "CSVLogger"]
    assert not callbacks.preset("fixed", run_dir=tmp_path)[0].save_best_only


def test_atomic_writes_follow_the_umask(tmp_path):
    import os

    from keras_pneumonia._io import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        atomic_write_text(tmp_path / "b.txt", "x")
        assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": 7.0}, "threshold"),
        ({"schedule": "linear"}, "schedule"),
        ({"augmentation": "wild"}, "augmentation"),
    ],
)
def test_bad_training_arguments_fail_before_any_work(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        training.train(tmp_path / "does-not-exist", tmp_path / "run", **kwargs)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_run_that_fails_before_writing_anything_leaves_no_folder(tmp_path):
    import os
    import subprocess
    import sys

    (tmp_path / "data").mkdir()  # no train/ inside: fails while reading the data, inside the run's lock
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "keras_pneumonia", "train", str(tmp_path / "data"), "-o", str(tmp_path / "run")]
    done = subprocess.run([*command, "--epochs", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()
    (tmp_path / "kept").mkdir()  # a folder the user made is never removed
    command[-1] = str(tmp_path / "kept")
    assert subprocess.run([*command, "--epochs", "1"], capture_output=True, env=env, timeout=300).returncode == 2
    assert (tmp_path / "kept").is_dir() and not list((tmp_path / "kept").iterdir())
