"""Inputs that are not plausibly chest X-rays get a warning flag in every output, real X-rays do not."""

import json

import keras
import numpy as np
import pytest
from PIL import Image

import keras_pneumonia as kp
from conftest import DATA
from keras_pneumonia.cli import main
from keras_pneumonia.images import load_image
from keras_pneumonia.input_check import LIMITS, check_input
from keras_pneumonia.prediction import ResultsFile, find_images, predict_files

REAL = sorted((DATA / "chest_xray").rglob("*.jpeg")) + sorted((DATA / "fullres").glob("*.jpeg"))


@pytest.fixture(scope="module")
def model():
    return kp.PneumoniaCNN.from_preset("pneumonia_cnn_v2", compile=False)


@pytest.fixture
def bad_files(tmp_path):
    """Made-up bad inputs, as files: each must be flagged."""
    rng = np.random.default_rng(0)
    xray = np.asarray(Image.open(DATA / "fullres" / "IM-0314-0001.jpeg").convert("L"))
    images = {
        "blank.png": np.zeros((300, 300), np.uint8),
        "grey.png": np.full((300, 300), 128, np.uint8),
        "noise.png": rng.integers(0, 256, (300, 300)).astype(np.uint8),
        "tiny.png": np.full((1, 1), 90, np.uint8),
        "inverted.png": 255 - xray,
        "overexposed.png": np.clip(xray.astype(int) + 150, 0, 255).astype(np.uint8),
        # Colour: a synthetic gradient, and the X-ray in false colour (a heat-map palette).
        "gradient.png": np.stack(
            [*np.meshgrid(np.linspace(0, 255, 300), np.linspace(255, 0, 300)), np.full((300, 300), 90.0)], axis=-1
        ).astype(np.uint8),
        "false_colour.png": np.stack([xray, np.abs(2 * xray.astype(int) - 255), 255 - xray], axis=-1).astype(np.uint8),
    }
    for name, array in images.items():
        Image.fromarray(array).save(tmp_path / name)
    return tmp_path


def test_real_xrays_are_not_flagged(model, tmp_path):
    from keras_pneumonia.images import chroma

    for path in REAL:
        assert check_input(model.input_config.load(path), chroma=chroma(path)) == [], path
    # A grey X-ray saved as an RGB JPEG is still grey.
    Image.open(REAL[0]).convert("RGB").save(tmp_path / "rgb.jpeg", quality=75)
    assert chroma(tmp_path / "rgb.jpeg") < 1


@pytest.mark.slow
def test_every_made_up_bad_input_is_flagged_in_every_output(model, bad_files, tmp_path, capsys):
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in predict_files(model, find_images([bad_files]))}
    assert set(rows) == {
        "blank.png", "grey.png", "noise.png", "tiny.png", "inverted.png", "overexposed.png", "gradient.png",
        "false_colour.png",
    }  # fmt: skip
    for name, row in rows.items():
        assert row["warning"] and row["probability"] is not None, name  # answered, and flagged
    assert "tiny image (1x1" in rows["tiny.png"]["warning"]
    assert "noise-like" in rows["noise.png"]["warning"]
    assert "inverted polarity" in rows["inverted.png"]["warning"]
    assert "exposure out of range" in rows["overexposed.png"]["warning"]
    assert "colour image" in rows["gradient.png"]["warning"] and "colour image" in rows["false_colour.png"]["warning"]

    # The command line: text, JSON and CSV all carry the flag.
    assert main(["predict", str(bad_files / "noise.png"), str(DATA / "fullres" / "IM-0314-0001.jpeg")]) == 0
    text = capsys.readouterr().out.splitlines()
    assert "WARNING: not a plausible chest X-ray: noise-like texture" in text[0] and "WARNING" not in text[1]
    assert main(["predict", str(bad_files / "blank.png"), "--json"]) == 0
    assert "near-uniform" in json.loads(capsys.readouterr().out)[0]["warning"]
    out = tmp_path / "results.csv"
    assert main(["predict", str(bad_files), "--output", str(out)]) == 0
    assert all(row["warning"] for row in ResultsFile.read(out))


def test_evaluate_counts_flagged_inputs(bad_files, capsys):
    for name in ("NORMAL", "PNEUMONIA"):
        (bad_files / "folder" / name).mkdir(parents=True)
    (bad_files / "noise.png").rename(bad_files / "folder" / "NORMAL" / "noise.png")
    Image.open(DATA / "fullres" / "person909_virus_1565.jpeg").save(bad_files / "folder" / "PNEUMONIA" / "x.png")
    assert main(["evaluate", str(bad_files / "folder"), "--json"]) == 0
    check = json.loads(capsys.readouterr().out)["input_check"]
    assert check["n"] == 2 and check["flagged"] == 1 and check["reasons"] == {"noise-like texture": 1}
    assert main(["evaluate", str(bad_files / "folder")]) == 0
    assert "WARNING 1 of 2 images are not plausible chest X-rays" in capsys.readouterr().out


def test_summarize_counts_flagged_images_by_kind():
    from keras_pneumonia.input_check import summarize, summary_line

    flat = np.full((64, 64, 1), 128, "uint8")
    xray = load_image(DATA / "fullres" / "person909_virus_1565.jpeg", 160, "grayscale")
    summary = summarize([flat, xray, flat])
    assert summary == {"n": 3, "flagged": 2, "reasons": {"near-uniform image": 2}}
    assert summary_line(summary).startswith("Input check: WARNING 2 of 3 images")
    assert "none of the 1 images" in summary_line(summarize([xray]))


def test_the_limits_travel_with_the_model(tmp_path):
    model = kp.PneumoniaCNN(image_size=32, filters=(8,), dense_units=(), input_check={"min_std": 30.0})
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.input_check == {**LIMITS, "min_std": 30.0}
    assert kp.PneumoniaCNN.from_preset("pneumonia_cnn_v1", compile=False).input_check == LIMITS
    flat = np.full((32, 32, 1), 100, np.uint8)
    flat[:, ::2] = 140  # std 20: an X-ray for the default limits' std rule, not for this model's
    assert not any("near-uniform" in r for r in check_input(flat))
    assert any("near-uniform" in r for r in check_input(flat, limits=loaded.input_check))
