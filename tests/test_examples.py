"""The examples run end to end on tiny real data, so they cannot rot."""

import importlib.util
import json
from pathlib import Path

import keras
import pytest

import keras_pneumonia as kp
from conftest import FULLRES, TINY
from keras_pneumonia.evaluation import predict_proba, youden_threshold

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["train", "finetune", "explain"])
def test_help(name, capsys):
    with pytest.raises(SystemExit) as info:
        _load(name).main(["--help"])
    assert info.value.code == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.slow
def test_train_example(kaggle_dir, tmp_path):
    _load("train").main(
        [
            str(kaggle_dir),
            "--output",
            str(tmp_path / "run"),
            "--epochs",
            "2",
            "--image-size",
            "32",
            "--filters",
            "8,16",
            "--validation-split",
            "0.25",
        ]
    )
    model = keras.saving.load_model(tmp_path / "run" / "model.keras")
    data = kp.load_chest_xray(kaggle_dir, image_size=32, validation_split=0.25, seed=1337)
    assert model.threshold == youden_threshold(*predict_proba(model, data.val))
    assert (tmp_path / "run" / "history.png").is_file()


@pytest.mark.slow
def test_finetune_example(kaggle_dir, tmp_path, capsys):
    """The released weights adapted to another folder of real X-rays, in two stages; a rerun resumes."""
    args = [str(kaggle_dir), "--weights", "pneumonia_cnn_v1", "--output", str(tmp_path / "ft")]
    args += ["--head-epochs", "1", "--epochs", "1", "--validation-split", "0.25"]
    _load("finetune").main(args)
    assert "after fine-tuning, validation" in capsys.readouterr().out
    model = keras.saving.load_model(tmp_path / "ft" / "model.keras")
    data = kp.load_chest_xray(kaggle_dir, image_size=160, validation_split=0.25, seed=1337)
    assert model.threshold == pytest.approx(youden_threshold(*predict_proba(model, data.val)))
    # Stage 2 trained the top 2 of 5 blocks and the head; the rest stays frozen in the file.
    assert {w.path.split("/")[0] for w in model.trainable_weights} == {
        "block4_conv1",
        "block4_conv2",
        "block5_conv1",
        "block5_conv2",
        "dense1",
        "predictions",
    }
    head = (tmp_path / "ft" / "head" / "model.keras").stat().st_mtime_ns
    _load("finetune").main(args)  # stage 1 is found done and skipped
    assert (tmp_path / "ft" / "head" / "model.keras").stat().st_mtime_ns == head


@pytest.mark.slow
def test_finetune_example_gives_the_released_features_a_new_head_for_subtypes(kaggle_dir, tmp_path, capsys):
    args = [str(kaggle_dir), "--classes", "subtype", "--output", str(tmp_path / "subtype")]
    args += ["--head-epochs", "1", "--epochs", "1", "--validation-split", "0.25"]
    _load("finetune").main(args)
    out = capsys.readouterr().out
    assert "| true \\ predicted | NORMAL | BACTERIAL | VIRAL |" in out
    model = kp.PneumoniaCNN.from_preset(tmp_path / "subtype" / "model.keras")
    assert model.class_names == ["NORMAL", "BACTERIAL", "VIRAL"] and model.output_shape == (None, 3)
    report = json.loads((tmp_path / "subtype" / "report.json").read_text())
    assert set(report["val"]["per_class"]) == {"NORMAL", "BACTERIAL", "VIRAL"}


@pytest.mark.slow
def test_explain_example(tmp_path, capsys):
    model = tmp_path / "m.keras"
    kp.PneumoniaCNN(**TINY).save(model)
    _load("explain").main([str(FULLRES), "--weights", str(model), "--output", str(tmp_path / "cams")])
    assert len(list((tmp_path / "cams").glob("*_gradcam.png"))) == 3
