"""New heads for other classes: NORMAL / BACTERIAL / VIRAL from the Kaggle file names, end to end."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import keras_pneumonia as kp
from conftest import KAGGLE, TINY
from keras_pneumonia.cli import main
from keras_pneumonia.config import CLASS_SETS
from keras_pneumonia.data import LayoutError, load_image_folder
from keras_pneumonia.evaluation import evaluate
from keras_pneumonia.training import train

SUBTYPES = list(CLASS_SETS["subtype"])


def _expected_label(path: str) -> int:
    name = Path(path).name
    return 0 if "/NORMAL/" in f"/{path}" else (1 if "bacteria" in name else 2)


def test_subtype_labels_come_from_the_file_names_and_the_split_stays_by_patient():
    data = kp.load_chest_xray(KAGGLE, image_size=32, validation_split=0.25, classes="subtype")
    assert data.class_names == SUBTYPES
    entries = [e for split in ("train", "val", "test") for e in data.files[split]]
    assert {e.label for e in entries} == {0, 1, 2}
    assert all(e.label == _expected_label(e.path) for e in entries)
    patients = [{e.patient for e in data.files[s]} for s in ("train", "val")]
    assert not patients[0] & patients[1]
    labels = np.concatenate([np.asarray(y) for _, y in data.val])
    assert sorted(labels.tolist()) == sorted(e.label for e in data.files["val"])
    assert data.options["classes"] == "subtype"


def test_a_pneumonia_file_naming_no_subtype_is_a_clear_error(kaggle_dir):
    source = next((kaggle_dir / "train" / "PNEUMONIA").glob("*bacteria*"))
    shutil.copy(source, kaggle_dir / "train" / "PNEUMONIA" / "person999_unknown_1.jpeg")
    with pytest.raises(LayoutError, match=r"'bacteria' or 'virus'.*person999_unknown_1\.jpeg"):
        kp.load_chest_xray(kaggle_dir, image_size=32, classes="subtype")
    with pytest.raises(ValueError, match="classes"):
        kp.load_chest_xray(kaggle_dir, image_size=32, classes="bacteria")


def test_a_new_head_keeps_the_trained_features_and_starts_the_head_afresh(tmp_path):
    base = kp.PneumoniaCNN.from_pretrained(compile=False)
    model = kp.PneumoniaCNN.from_preset(None, class_names=SUBTYPES)
    assert model.output_shape == (None, 3) and model.class_names == SUBTYPES
    assert model.threshold == 0.5 and model.ood is None and model.optimizer is not None
    for name in ("block1_conv1", "block5_conv2", "block5_bn2"):
        for ours, theirs in zip(model.get_layer(name).get_weights(), base.get_layer(name).get_weights()):
            np.testing.assert_array_equal(ours, theirs)
    assert model.get_layer("dense1").get_weights()[0].shape == base.get_layer("dense1").get_weights()[0].shape
    assert not np.array_equal(model.get_layer("dense1").get_weights()[0], base.get_layer("dense1").get_weights()[0])
    x = load_image_folder(KAGGLE / "test", image_size=160)[0]
    np.testing.assert_allclose(model.features(x), base.features(x), rtol=1e-5, atol=1e-5)
    # The same classes: the preset as it is.
    same = kp.PneumoniaCNN.from_preset(None, class_names=("NORMAL", "PNEUMONIA"))
    np.testing.assert_array_equal(same.predict(x, verbose=0), base.predict(x, verbose=0))
    model.save(tmp_path / "subtype.keras")
    loaded = kp.PneumoniaCNN.from_preset(tmp_path / "subtype.keras")
    assert loaded.class_names == SUBTYPES
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_three_class_decisions_reports_and_predictions(tmp_path, capsys):
    model = kp.PneumoniaCNN(**TINY, class_names=SUBTYPES)
    x, y, entries = load_image_folder(KAGGLE / "train", image_size=32, classes="subtype")
    assert sorted(set(y.tolist())) == [0, 1, 2] and all(e.label == _expected_label(e.path) for e in entries)
    report = evaluate(model, (x, y))
    assert np.array_equal(np.asarray(report.confusion_matrix).sum(axis=1), np.bincount(y, minlength=3))
    assert set(report.per_class) == set(SUBTYPES) and report.per_class["VIRAL"]["n"] == int(np.sum(y == 2))
    assert "| VIRAL |" in report.to_markdown()
    file = tmp_path / "subtype.keras"
    model.save(file)
    image = KAGGLE / "test" / "PNEUMONIA" / sorted(p.name for p in (KAGGLE / "test" / "PNEUMONIA").iterdir())[0]
    assert main(["predict", str(image), "--weights", str(file), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    probabilities = model.predict(model.input_config.load(image)[None], verbose=0)[0]
    assert row["probability"] == pytest.approx(1.0 - probabilities[0], abs=1e-5)  # P(any pneumonia)
    expected = "NORMAL" if 1.0 - probabilities[0] < 0.5 else SUBTYPES[1 + int(np.argmax(probabilities[1:]))]
    assert row["decision"] == expected


@pytest.mark.slow
def test_train_classes_subtype_writes_a_three_class_run(tmp_path):
    model_kwargs = {k: v for k, v in TINY.items() if k != "image_size"}
    report = train(
        KAGGLE, tmp_path / "run", epochs=1, image_size=32, classes="subtype", model_kwargs=model_kwargs, verbose=0
    )
    assert report["val"]["class_names"] == SUBTYPES
    assert len(report["val"]["confusion_matrix"]) == 3 and set(report["val"]["per_class"]) == set(SUBTYPES)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["arguments"]["classes"] == "subtype"
    assert kp.PneumoniaCNN.from_preset(tmp_path / "run" / "model.keras").class_names == SUBTYPES
    assert (tmp_path / "run" / "confusion_val.png").exists() and (tmp_path / "run" / "roc_val.png").exists()
