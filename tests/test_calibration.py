"""Temperature scaling: fitted on validation, folded into the last layer, saved with the model."""

import json

import keras
import numpy as np
import pytest

import keras_pneumonia as kp
from conftest import DATA
from keras_pneumonia.calibration import (
    calibrate,
    compare,
    fit_temperature,
    negative_log_likelihood,
    predict_logits,
    probabilities,
    summary_markdown,
)
from keras_pneumonia.cli import main
from keras_pneumonia.data import load_image_folder
from keras_pneumonia.evaluation import roc_auc


@pytest.fixture(scope="module")
def xrays():
    """32 real X-rays (the committed training subset) at the released model's input."""
    x, y, _ = load_image_folder(DATA / "chest_xray" / "train", image_size=160)
    return x, y


@pytest.mark.slow
def test_fit_temperature_recovers_the_temperature_of_a_calibrated_source():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2.5, size=(20000, 2))
    labels = (rng.random(20000) < probabilities(true_logits)[:, 1]).astype(int)  # calibrated at T=1
    for t in (0.5, 3.0):
        # Logits scaled by t (over-confident for t > 1) are fixed by temperature t.
        assert fit_temperature(true_logits * t, labels) == pytest.approx(t, rel=0.05)
    nll = negative_log_likelihood(true_logits, labels)
    assert nll < negative_log_likelihood(true_logits / 3.0, labels)
    with pytest.raises(ValueError, match="no data"):
        fit_temperature(np.zeros((0, 2)), np.zeros(0))


@pytest.mark.slow
def test_temperature_is_folded_into_predict_and_survives_save_and_load(xrays, tmp_path):
    x, y = xrays
    model = kp.PneumoniaCNN.from_pretrained("pneumonia_cnn_v1", compile=False)
    _, logits = predict_logits(model, (x, y))
    np.testing.assert_allclose(probabilities(logits)[:, 1], model.predict(x, verbose=0)[:, 1], atol=1e-5)
    model.temperature = 2.5
    expected = probabilities(logits, 2.5)
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-5)
    model.save(tmp_path / "t.keras")
    loaded = keras.saving.load_model(tmp_path / "t.keras")
    assert loaded.temperature == 2.5 and loaded.get_config()["temperature"] == 2.5
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, atol=1e-5)  # applied once, not twice
    loaded.temperature = 1.0  # back to the raw logits
    np.testing.assert_allclose(loaded.predict(x, verbose=0), probabilities(logits), atol=1e-5)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive number"):
            loaded.temperature = bad


@pytest.mark.slow
def test_calibrate_keeps_decisions_and_auc_and_is_idempotent(xrays):
    x, y = xrays
    model = kp.PneumoniaCNN.from_pretrained("pneumonia_cnn_v1", compile=False)
    model.threshold = 0.3
    before = model.predict(x, verbose=0)[:, 1]
    result = calibrate(model, (x, y))
    after = model.predict(x, verbose=0)[:, 1]
    assert model.temperature == pytest.approx(result.temperature) and result.n == 32
    assert result.nll_after <= result.nll_before + 1e-12  # the fitted T minimises the NLL
    assert ((before >= 0.3) == (after >= model.threshold)).all()  # same decisions at the moved threshold
    assert roc_auc(y, after) == pytest.approx(roc_auc(y, before), abs=1e-9)  # a monotone change
    again = calibrate(model, (x, y))
    assert again.temperature == pytest.approx(result.temperature, rel=2e-3)
    assert again.previous_temperature == pytest.approx(result.temperature)
    _, curves, summary = compare(model, (x, y))
    assert len(curves) == 2 and set(summary) == {"temperature", "uncalibrated", "calibrated"}
    table = summary_markdown(summary)
    assert table.startswith(f"Calibration (temperature {result.temperature:.3f})") and table.count("\n| at ") == 2
    labels, logits = predict_logits(model, (x, y))  # at the fitted temperature
    refit = calibrate(model, scores=(labels, logits), apply=False)
    before_after = refit.curves(logits)
    np.testing.assert_allclose(before_after["before"], probabilities(logits)[:, -1], rtol=1e-6)
    np.testing.assert_allclose(before_after["after"], after, atol=2e-3)  # refit on the same data: the same T
    assert "temperature" in refit.to_text() and "(same decisions)" in refit.to_text()


def test_calibrate_and_evaluate_cli(tmp_path, capsys, kaggle_dir):
    out = tmp_path / "calibrated.keras"
    args = ["calibrate", str(kaggle_dir), "--weights", "pneumonia_cnn_v1", "--output", str(out)]
    assert main([*args, "--report-dir", str(tmp_path / "report")]) == 0
    printed = capsys.readouterr().out
    assert "temperature 1.000 ->" in printed and "ECE" in printed and out.is_file()
    saved = json.loads((tmp_path / "report" / "calibration.json").read_text())
    assert kp.PneumoniaCNN.from_preset(out).temperature == pytest.approx(saved["temperature"])
    assert (tmp_path / "report" / "reliability.png").stat().st_size > 10_000
    assert main(args) == 2 and "already exists" in capsys.readouterr().err

    folder = kaggle_dir / "train"
    evaluate = ["evaluate", str(folder), "--weights", str(out), "--calibration", "--json"]
    assert main([*evaluate, "--report-dir", str(tmp_path / "eval")]) == 0
    calibration = json.loads(capsys.readouterr().out)["calibration"]
    assert calibration["temperature"] == pytest.approx(saved["temperature"])
    assert {"ece", "nll"} <= set(calibration["calibrated"]) and (tmp_path / "eval" / "reliability.png").is_file()


@pytest.mark.slow
def test_a_calibrated_model_exports_with_its_temperature(xrays, tmp_path):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("exports need TensorFlow")
    from keras_pneumonia.export import export_model, run_exported

    model = kp.PneumoniaCNN.from_pretrained(compile=False)
    model.temperature = 3.0
    export_model(model, tmp_path / "m.tflite", format="litert")
    x = xrays[0][:4].astype("float32")
    np.testing.assert_allclose(run_exported(tmp_path / "m.tflite", x), model.predict(x, verbose=0), atol=1e-5)
