import json

import keras
import numpy as np
import pytest

import keras_pneumonia as kp
from conftest import FULLRES, KAGGLE, TINY
from keras_pneumonia.cli import main
from keras_pneumonia.data import load_image
from keras_pneumonia.robustness import PERTURBATIONS, evaluate_robustness, perturb

TEST_DIR = KAGGLE / "test"


@pytest.mark.parametrize("name", list(PERTURBATIONS))
def test_each_perturbation_changes_a_real_xray_and_keeps_its_type(name):
    image = load_image(next(FULLRES.glob("*.jpeg")), 200)
    out = perturb(image, name)
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[-1] == 1
    if out.shape == image.shape:
        assert np.mean(out != image) > (0.003 if name == "text" else 0.05)  # text covers a few % of the film
    assert perturb(np.repeat(image, 3, axis=-1), name).shape[-1] == 3


def test_crop_and_pad_sizes():
    image = np.zeros((200, 100, 1), np.uint8)
    assert perturb(image, "crop_10").shape == (160, 80, 1)
    assert perturb(image, "pad_5").shape == (220, 110, 1)


def test_what_real_films_carry():
    image = load_image(next(FULLRES.glob("*.jpeg")), 200)
    np.testing.assert_array_equal(perturb(image, "flip"), image[:, ::-1])
    black, white = perturb(image, "collimation_black"), perturb(image, "collimation_white")
    assert black.shape == white.shape == image.shape
    assert (
        (black[:, :20] == 0).all() and (black[-24:] == 0).all() and (white[:8] == 255).all()
    )  # 10% left, 12% bottom, 4% top
    np.testing.assert_array_equal(black[10:170, 22:186], image[10:170, 22:186])  # the middle untouched
    text = perturb(image, "text")
    assert (text[:40] >= 250).sum() > (image[:40] >= 250).sum() + 50  # white letters at the top
    low = perturb(image, "downsample_2x")
    assert low.shape == image.shape and np.abs(low.astype(int) - image).mean() > 0.5


class _Constant(keras.layers.Layer):
    """Says PNEUMONIA with the same probability for every image."""

    def call(self, x):
        return keras.ops.zeros_like(x[:, :1, 0, 0]) + keras.ops.convert_to_tensor([[0.3, 0.7]])


def _brightness_model():
    """P(PNEUMONIA) grows with the mean grey level: gamma moves it, a crop of a dark border too."""
    inputs = keras.Input((32, 32, 1))
    mean = keras.ops.mean(keras.ops.cast(inputs, "float32"), axis=(1, 2)) / 255.0
    return keras.Model(inputs, keras.ops.concatenate([1 - mean, mean], axis=-1))


def test_a_model_that_ignores_its_input_never_flips():
    inputs = keras.Input((32, 32, 1))
    model = keras.Model(inputs, _Constant()(inputs))
    report = evaluate_robustness(model, TEST_DIR, ["crop_10", "gamma_0.7"])
    assert list(report.results) == ["clean", "crop_10", "gamma_0.7"]
    assert report.n == 8 and report.threshold == 0.5
    for result in report.results.values():
        assert result["flip_rate"] == 0.0 and result["sensitivity"] == 1.0 and result["specificity"] == 0.0


def test_flip_rate_counts_changed_decisions():
    model = _brightness_model()
    images = [load_image(p, 32) for p in sorted(TEST_DIR.glob("*/*.jpeg"))]
    threshold = float(np.median([img.mean() / 255 for img in images]))
    report = evaluate_robustness(model, TEST_DIR, ["gamma_0.7", "gamma_1.4"], threshold=threshold)
    # gamma 0.7 brightens every image: decisions can only flip to PNEUMONIA, and some do.
    brighter, darker = report.results["gamma_0.7"], report.results["gamma_1.4"]
    assert brighter["flips_to_normal"] == 0 and brighter["flips_to_pneumonia"] > 0
    assert darker["flips_to_pneumonia"] == 0 and darker["flips_to_normal"] > 0
    assert brighter["flip_rate"] == brighter["flips_to_pneumonia"] / 8
    assert report.worst_flip_rate == max(brighter["flip_rate"], darker["flip_rate"])


def test_report_outputs_and_unknown_names(tmp_path):
    model = kp.PneumoniaCNN(**TINY)
    report = evaluate_robustness(model, TEST_DIR, ["blur"])
    assert json.loads(report.to_json())["results"]["blur"].keys() >= {"accuracy", "auc", "flip_rate"}
    assert report.to_markdown().splitlines()[2].startswith("| clean |")
    kp.plots.plot_robustness({"a": report, "b": report.to_dict()}, tmp_path / "r.png", title="t")
    kp.plots.plot_perturbations(load_image(next(FULLRES.glob("*.jpeg")), 96), tmp_path / "p.png")
    assert (tmp_path / "r.png").stat().st_size > 10_000 and (tmp_path / "p.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="Unknown perturbation"):
        evaluate_robustness(model, TEST_DIR, ["crop_50"])


def test_the_comparison_plot_shows_every_perturbation_any_report_ran():
    """An old report (fewer perturbations) beside a new one: the new rows are drawn, the old report's gaps empty."""
    row = {"flip_rate": 0.1, "specificity": 0.9, "sensitivity": 0.95}
    old = {"results": {"clean": {**row, "flip_rate": 0.0}, "crop_5": row}}
    new = {"results": {"clean": {**row, "flip_rate": 0.0}, "crop_5": row, "flip": {**row, "flip_rate": 0.2}}}
    figure = kp.plots.plot_robustness({"v1": old, "v3": new})
    flips_axis = figure.axes[0]
    assert [t.get_text() for t in flips_axis.get_yticklabels()] == ["clean", "crop_5", "flip"]
    labels = [t.get_text() for t in flips_axis.texts]
    assert labels.count("20.0") == 1 and labels.count("10.0") == 2 and "nan" not in labels


def test_evaluate_cli_robustness(tmp_path, capsys):
    model = kp.PneumoniaCNN(**TINY)
    model.save(tmp_path / "m.keras")
    argv = ["evaluate", str(TEST_DIR), "--weights", str(tmp_path / "m.keras"), "--robustness"]
    assert main([*argv, "--perturbations", "crop_5,pad_5", "--report-dir", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "| crop_5 |" in out and "| pad_5 |" in out and "flip rate" in out
    assert {p.name for p in (tmp_path / "r").iterdir()} == {"robustness.json", "robustness.md", "robustness.png"}
    assert main([*argv, "--perturbations", "crop_5", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["robustness"]["results"]) == {"clean", "crop_5"}
    with pytest.raises(SystemExit) as error:
        main([*argv, "--perturbations", "crop_7"])
    assert error.value.code == 2
