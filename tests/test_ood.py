"""The out-of-distribution flag: its arithmetic, how it travels with a model, and where users see it."""

import json
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_pneumonia as kp
from conftest import FULLRES, KAGGLE
from keras_pneumonia import ood
from keras_pneumonia.cli import main
from keras_pneumonia.data import load_image_folder
from keras_pneumonia.prediction import predict_files


def test_the_whitening_gives_the_mahalanobis_distance_to_the_nearest_class_mean():
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(6, 6))
    labels = rng.integers(0, 2, 400)
    features = rng.normal(size=(400, 6)) @ mixing + 3.0 * labels[:, None]
    means, whitening = ood.fit_mahalanobis(features, labels, shrinkage=0.1)
    centred = features - means[labels]
    covariance = centred.T @ centred / (400 - 2)
    covariance = 0.9 * covariance + 0.1 * np.mean(np.diag(covariance)) * np.eye(6)
    precision = np.linalg.inv(covariance)
    queries = rng.normal(size=(5, 6)) * 4
    expected = np.min([np.einsum("nd,de,ne->n", queries - m, precision, queries - m) for m in means], axis=0) / 6
    np.testing.assert_allclose(ood.mahalanobis_scores(queries, means, whitening), expected, rtol=1e-4)
    # The Keras layer computes the same numbers.
    layer = ood.OutOfDistribution(6, 2)
    layer.means.assign(means)
    layer.whitening.assign(whitening)
    np.testing.assert_allclose(np.asarray(layer(queries.astype("float32"))), expected, rtol=1e-4)


@pytest.fixture(scope="module")
def fitted():
    """The v2 weights with a flag fitted on the 40 committed X-rays (a tiny fit: plumbing, not quality)."""
    model = kp.PneumoniaCNN.from_preset("pneumonia_cnn_v2", compile=False)
    train = load_image_folder(KAGGLE / "train", **model.input_config.dataset_kwargs())[:2]
    test = load_image_folder(KAGGLE / "test", **model.input_config.dataset_kwargs())[:2]
    return model, ood.fit(model, train, test, quantile=0.9), test


@pytest.mark.slow
def test_the_flag_travels_with_the_file_and_leaves_the_answers_alone(fitted, tmp_path):
    plain, model, (x, _) = fitted
    assert model.ood["method"] == "mahalanobis" and model.ood["quantile"] == 0.9
    assert model.ood["layers"] == [f"block{b}_relu{c}" for b in range(1, 6) for c in (1, 2)]
    probabilities, scores = model.predict_with_ood(x)
    np.testing.assert_allclose(probabilities, plain.predict(x, verbose=0), atol=1e-6)
    # The threshold is the validation images' 90% quantile: about a tenth of them are flagged.
    assert 0 < model.ood_flags(scores).sum() <= 2
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.ood == model.ood
    np.testing.assert_allclose(loaded.ood_scores(x), scores, rtol=1e-5)


def test_a_copy_without_optimizer_keeps_the_flag(fitted):
    from keras_pneumonia.training import clone_without_optimizer

    _, model, (x, _) = fitted
    copy = clone_without_optimizer(model)
    assert copy.ood == model.ood
    np.testing.assert_allclose(copy.ood_scores(x[:4]), model.ood_scores(x[:4]), rtol=1e-6)


def test_a_model_without_the_flag_says_so(fitted):
    plain, _, (x, _) = fitted
    assert plain.ood is None and plain.predict_with_ood(x[:2])[1] is None
    with pytest.raises(ValueError, match="carries no out-of-distribution flag"):
        plain.ood_scores(x[:2])
    assert ood.summary(plain, x[:2], np.zeros(2)) is None


@pytest.mark.slow
def test_flagged_images_get_a_warning_in_predict_and_a_count_in_evaluate(fitted, tmp_path, capsys):
    _, model, _ = fitted
    files = sorted((KAGGLE / "test").glob("*/*.jpeg"))
    scores = model.ood_scores(np.stack([model.input_config.load(f) for f in files]))
    # A threshold between the lowest score and the others: every file but one is flagged.
    original = model.ood
    model.ood = {**original, "threshold": float(np.sort(scores)[0] + np.sort(scores)[1]) / 2}
    try:
        rows = list(predict_files(model, files))
        path = tmp_path / "flagged.keras"
        model.save(path)
    finally:
        model.ood = original
    warned = [r for r in rows if r["warning"] and "unlike the training population" in r["warning"]]
    assert len(warned) == len(files) - 1 and all(r["probability"] is not None for r in warned)
    assert main(["evaluate", str(KAGGLE / "test"), "--weights", str(path), "--json"]) == 0
    outside = json.loads(capsys.readouterr().out)["ood"]
    assert outside["n"] == len(files) and outside["flagged"] == len(files) - 1
    assert outside["accuracy_unflagged"] in (0.0, 1.0) and 0.0 <= outside["accuracy_flagged"] <= 1.0
    assert main(["predict", str(files[int(np.argmax(scores))]), "--weights", str(path)]) == 0
    assert "WARNING: unlike the training population" in capsys.readouterr().out


def test_fit_checks_its_settings(fitted):
    plain, _, data = fitted
    with pytest.raises(ValueError, match="quantile"):
        ood.fit(plain, data, data, quantile=1.0)
    with pytest.raises(ValueError, match="shrinkage"):
        ood.fit(plain, data, data, shrinkage=0.0)


def _paper_figure(paths, size=512):
    """Two X-rays side by side on white, with panel letters and an arrow: a figure cut from a paper."""
    from PIL import Image, ImageDraw, ImageFont

    figure = Image.new("L", (size, size // 2 + 40), 255)
    draw = ImageDraw.Draw(figure)
    font = ImageFont.load_default(size=28)
    for i, path in enumerate(paths[:2]):
        with Image.open(path) as xray:
            panel = xray.convert("L").resize((size // 2 - 12, size // 2 - 12))
        x = 6 + i * size // 2
        figure.paste(panel, (x, 30))
        draw.text((x + 6, 32), "AB"[i], fill=255, font=font)
        draw.line((x + 150, 120, x + 110, 160), fill=255, width=5)  # an arrow's shaft
        draw.polygon([(x + 110, 160), (x + 112, 140), (x + 128, 152)], fill=255)  # and head
    return figure


@pytest.mark.slow
def test_a_flag_fitted_on_xrays_flags_a_paper_figure_and_not_other_pediatric_films(tmp_path):
    """Fitted on 800 augmented copies of the 20 committed training X-rays (the real training
    split is not in the repository), the flag raises on a figure cut from a paper and on
    none of the films it never saw: the full-resolution originals and the clean test X-rays."""
    import tensorflow as tf

    from keras_pneumonia.augmentation import Augmentation

    model = kp.PneumoniaCNN.from_preset("pneumonia_cnn_v2", compile=False)
    reading = model.input_config.dataset_kwargs()
    x, y = load_image_folder(KAGGLE / "train", **reading)[:2]
    x_val, y_val = load_image_folder(KAGGLE / "test", **reading)[:2]
    augment = Augmentation.preset("strong")
    train = np.concatenate([augment(tf.constant(x), seed=s).numpy() for s in range(40)]), np.tile(y, 40)
    val = np.concatenate([augment(tf.constant(x_val), seed=100 + s).numpy() for s in range(10)]), np.tile(y_val, 10)
    flagged = ood.fit(model, train, val)
    films = sorted((KAGGLE / "test").glob("*/*.jpeg"))
    figure = tmp_path / "figure.png"
    _paper_figure(films).save(figure)
    others = [*sorted(FULLRES.glob("*.jpeg")), *films]
    rows = {Path(r["path"]).name: r for r in predict_files(flagged, [figure, *others])}
    assert "unlike the training population" in (rows["figure.png"]["warning"] or "")
    assert not [f.name for f in others if rows[f.name]["warning"]]


@pytest.mark.slow
def test_fit_ood_command_writes_a_model_with_the_flag(tmp_path, capsys):
    out = tmp_path / "flagged.keras"
    args = ["fit-ood", str(KAGGLE), "--weights", "pneumonia_cnn_v2", "--output", str(out), "--validation-split", "0.3"]
    assert main(args) == 0
    assert "Out-of-distribution flag fitted on" in capsys.readouterr().out
    model = keras.saving.load_model(out)
    assert model.ood["quantile"] == 0.98 and model.ood_detector is not None
    assert main(args) == 2  # refuses to overwrite
    assert "already exists" in capsys.readouterr().err


def test_the_robustness_report_counts_flagged_images_for_a_model_with_the_flag(fitted):
    from keras_pneumonia.robustness import evaluate_robustness

    plain, model, _ = fitted
    report = evaluate_robustness(model, KAGGLE / "test", ["collimation_white"])
    assert all(0.0 <= r["ood_flagged"] <= 1.0 for r in report.results.values())
    assert "flagged out of population" in report.to_markdown()
    assert "ood_flagged" not in evaluate_robustness(plain, KAGGLE / "test", ["flip"]).results["flip"]


def test_grid_features_are_the_quarter_means_and_travel_with_the_file(tmp_path):
    model = kp.PneumoniaCNN(image_size=32, filters=(8, 16), dense_units=(), convs_per_block=1)
    x = np.random.default_rng(0).uniform(0, 255, (6, 32, 32, 1)).astype("float32")
    layer = "block1_relu1"
    maps = np.asarray(keras.Model(model.inputs, model.get_layer(layer).output).predict(x, verbose=0))
    expected = np.concatenate([maps[:, :16, :16].mean((1, 2)), maps[:, :16, 16:].mean((1, 2)),
                               maps[:, 16:, :16].mean((1, 2)), maps[:, 16:, 16:].mean((1, 2))], axis=1)  # fmt: skip
    got = ood.pooled_features(model, x, layers=[layer], grid_layers=[layer])
    np.testing.assert_allclose(got[:, 16:], expected, rtol=1e-5, atol=1e-6)
    labels = np.array([0, 1] * 3)
    fitted = ood.fit(model, (x, labels), (x, labels), grid_layers=[layer], quantile=0.9, shrinkage=0.5)
    # pooled ReLUs (8 and 16 channels, mean and std), the quarter means, the 8 x 8 input thumbnail (mean and std)
    assert fitted.ood["grid_layers"] == [layer] and fitted.ood["dims"] == 2 * 8 + 2 * 16 + 4 * 8 + 2 * 64
    assert fitted.ood["input_grid"] == ood.DEFAULT_INPUT_GRID == 8
    fitted.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.ood_scores(x), fitted.ood_scores(x), rtol=1e-5)
    assert "2 x 2 grid of block1_relu1" in ood.describe(loaded.ood)


def test_the_input_thumbnail_is_the_mean_and_deviation_of_each_cell():
    model = kp.PneumoniaCNN(image_size=32, filters=(8, 16), dense_units=(), convs_per_block=1)
    x = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 1)).astype("uint8")
    got = ood.pooled_features(model, x, layers=["block1_relu1"], input_grid=4)[:, 16:]
    cells = (x.astype("float64") / 255.0).reshape(3, 4, 8, 4, 8, 1)
    expected = np.concatenate([cells.mean((2, 4)).reshape(3, 16), cells.std((2, 4)).reshape(3, 16)], axis=1)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="input_grid"):
        ood.fit(model, (x, np.array([0, 1, 0])), (x, np.array([0, 1, 0])), input_grid=64)


@pytest.mark.parametrize("preset", ["pneumonia_cnn_v2_ood", "pneumonia_cnn_v3"])
def test_the_released_flag_passes_real_films_and_raises_on_figures_inverted_and_blank_images(preset):
    """The released flags: the real X-rays in tests/data pass; the same films made into a paper's
    figure panel (shrunk on white, a panel letter, an arrow), inverted, or a blank image are flagged."""
    from PIL import Image, ImageDraw

    from keras_pneumonia.data import load_image_folder

    model = kp.PneumoniaCNN.from_preset(preset, compile=False)
    films = np.concatenate(
        [load_image_folder(KAGGLE / split, **model.input_config.dataset_kwargs())[0] for split in ("train", "test")]
    )
    assert not model.ood_flags(model.ood_scores(films)).any()

    def figure_panel(film):
        canvas = Image.new("L", (160, 160), 255)
        canvas.paste(Image.fromarray(film[..., 0]).resize((110, 110)), (40, 30))
        draw = ImageDraw.Draw(canvas)
        draw.text((5, 5), "A", fill=0)
        draw.line((20, 120, 60, 90), fill=255, width=3)
        return np.asarray(canvas)[..., None]

    panels = np.stack([figure_panel(f) for f in films[:8]])
    unlike = {"figure panels": panels, "inverted": 255 - films[:8], "blank": np.full_like(films[:2], 128)}
    for name, images in unlike.items():
        assert model.ood_flags(model.ood_scores(images)).all(), name


def test_the_flag_works_when_first_used_in_another_thread_as_the_web_app_uses_it():
    """The web app predicts in a worker thread. Keras names loose ops from a per-thread counter, so the
    feature model, built there, once named an op "cast" like the model's own graph, and Keras refused it."""
    import threading

    model = kp.PneumoniaCNN.from_preset("pneumonia_cnn_v3", compile=False)
    x = load_image_folder(KAGGLE / "test", **model.input_config.dataset_kwargs())[0][:4]
    results, errors = [], []

    def predict():
        try:
            results.append(model.predict_with_ood(x))
        except Exception as error:  # re-raised below, in the test's thread
            errors.append(error)

    thread = threading.Thread(target=predict)
    thread.start()
    thread.join()
    assert not errors, errors
    probabilities, scores = results[0]
    np.testing.assert_allclose(probabilities, model.predict(x, verbose=0), atol=1e-6)
    assert scores.shape == (4,) and not model.ood_flags(scores).any()  # real children's films pass
