"""Consistency training: the loss it adds, its switch, and a `train` run with it."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

import keras_pneumonia as kp
from conftest import TINY
from keras_pneumonia import training
from keras_pneumonia.cli import main
from keras_pneumonia.consistency import TiltConsistency

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="consistency training runs on the TensorFlow backend only"
)

TINY_CLI = ["--image-size", "32", "--filters", "8,16", "--dense-units", "16", "--convs-per-block", "1"]


class _Mirror(TiltConsistency):
    """A copy that is the mirror image: deterministic, so the loss can be computed by hand."""

    def tilt(self, images):
        return keras.ops.flip(keras.ops.cast(images, "float32"), axis=2)


def _model_and_batch():
    model = kp.PneumoniaCNN(**{**TINY, "dropout": 0.0})  # no dropout: two forward passes agree
    model.compile()
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (6, 32, 32, 1)).astype("float32")
    labels = np.array([0, 1, 0, 1, 1, 0])
    return model, images, labels


def _loss(model, images, labels, training):
    return float(model.compute_loss(images, labels, model(images, training=training), training=training))


def test_the_loss_adds_the_copys_cross_entropy_and_the_weighted_kl():
    model, images, labels = _model_and_batch()
    # The batch and its copy go through the model as one batch (batch normalisation sees both).
    both = keras.ops.convert_to_numpy(model(np.concatenate([images, images[:, :, ::-1]]), training=True))
    upright, mirrored = both[:6], both[6:]
    plain = float(model.compute_loss(images, labels, upright, training=True))
    copy_ce = float(model.compute_loss(images, labels, mirrored, training=True))
    kl = np.mean(np.sum(upright * (np.log(upright + 1e-7) - np.log(mirrored + 1e-7)), axis=-1))
    assert kl > 1e-6  # the mirror moves the untrained model's answers: the term is not empty

    model.consistency = _Mirror(weight=2.5)
    np.testing.assert_allclose(_loss(model, images, labels, training=True), plain + copy_ce + 2.5 * kl, rtol=1e-5)
    # Evaluation (fit's validation, evaluate) keeps the plain loss.
    np.testing.assert_allclose(_loss(model, images, labels, training=False), _loss_plain(images, labels, model))


def _loss_plain(images, labels, model):
    consistency, model.consistency = model.consistency, None
    try:
        return _loss(model, images, labels, training=False)
    finally:
        model.consistency = consistency


def test_a_copy_identical_to_the_batch_doubles_the_cross_entropy_and_adds_no_kl():
    class _Same(TiltConsistency):
        def tilt(self, images):
            return keras.ops.cast(images, "float32")

    model, images, labels = _model_and_batch()
    plain = _loss(model, images, labels, training=True)
    model.consistency = _Same(weight=10.0)
    np.testing.assert_allclose(_loss(model, images, labels, training=True), 2 * plain, rtol=1e-5)


def test_the_copies_are_tilted_with_black_corners():
    tilt = TiltConsistency(max_degrees=20, seed=5)
    image = np.full((4, 64, 64, 1), 200.0, "float32")
    tilted = keras.ops.convert_to_numpy(tilt.tilt(image))
    assert tilted.shape == image.shape
    corners = tilted[:, [0, 0, -1, -1], [0, -1, 0, -1], 0]
    assert (corners < 100).any()  # uncovered corners are black
    assert np.allclose(tilted[:, 28:36, 28:36], 200.0, atol=1.0)  # the centre stays


def test_with_max_crop_the_copies_are_also_zoomed_in():
    # A grey square inside a black frame 10% wide: zooming in pushes the frame out of view.
    image = np.zeros((16, 100, 100, 1), "float32")
    image[:, 10:90, 10:90] = 200.0
    tilt_only = keras.ops.convert_to_numpy(TiltConsistency(max_degrees=0.01, seed=5).tilt(image))
    zoomed = keras.ops.convert_to_numpy(TiltConsistency(max_degrees=0.01, max_crop=0.1, seed=5).tilt(image))
    grey = lambda copies: (copies > 100).mean(axis=(1, 2, 3))  # noqa: E731
    np.testing.assert_allclose(grey(tilt_only), 0.64, atol=0.01)  # 0.01 degrees: the frame as it was
    assert (grey(zoomed) >= 0.63).all() and grey(zoomed).max() > 0.8  # never zoomed out; up to the whole square
    assert np.allclose(zoomed[:, 45:55, 45:55], 200.0, atol=1.0)  # about the centre


def test_the_zoom_is_drawn_independently_of_the_tilt():
    consistency = TiltConsistency(max_degrees=8, max_crop=0.1, seed=5)
    batch = np.zeros((256, 32, 32, 1), "float32")
    angles = keras.ops.convert_to_numpy(consistency._rotation.get_random_transformation(batch)["angle"])
    zooms = keras.ops.convert_to_numpy(consistency._zoom.get_random_transformation(batch)["height_zoom"])[:, 0]
    # Under one seed both layers draw the same numbers: the correlation would be 1.
    assert abs(np.corrcoef(angles, zooms)[0, 1]) < 0.3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"weight": -1.0}, "weight"), ({"max_degrees": 0}, "max_degrees"), ({"max_crop": 0.3}, "max_crop")],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TiltConsistency(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"consistency_weight": -0.5},
        {"consistency_degrees": 90.0},
        {"consistency_degrees": 0.0},
        {"consistency_crop": -0.1},
    ],
)
def test_bad_training_settings_fail_before_any_work(kwargs, tmp_path):
    with pytest.raises(ValueError, match="consistency"):
        training.train(tmp_path / "does-not-exist", tmp_path / "run", **kwargs)
    assert not (tmp_path / "run").exists()


def test_train_with_consistency_records_it_and_saves_a_plain_model(kaggle_dir, tmp_path):
    run = tmp_path / "run"
    argv = ["train", str(kaggle_dir), "--output", str(run), "--epochs", "1", "--validation-split", "0.25"]
    argv += ["--schedule", "cosine", "--threshold", "0.5", "--no-ood-flag", "--consistency-weight", "1.5"]
    assert main([*argv, "--consistency-degrees", "6", "--consistency-crop", "0.1", *TINY_CLI]) == 0
    arguments = json.loads((run / "run.json").read_text())["arguments"]
    assert arguments["consistency_weight"] == 1.5 and arguments["consistency_degrees"] == 6.0
    assert arguments["consistency_crop"] == 0.1
    model = keras.saving.load_model(run / "model.keras")
    assert model.consistency is None  # training only: never saved
    assert "consistency" not in model.get_config()
