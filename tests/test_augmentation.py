import numpy as np
import pytest
import tensorflow as tf

from conftest import KAGGLE
from keras_pneumonia.augmentation import PRESETS, Augmentation
from keras_pneumonia.data import load_image


def _xrays(size=64):
    paths = sorted((KAGGLE / "train" / "NORMAL").glob("*.jpeg"))[:4]
    return np.stack([load_image(p, size) for p in paths])


def test_same_seed_same_batch_and_other_seed_other_batch():
    images = _xrays()
    aug = Augmentation.preset("strong")
    first, again, other = (aug(tf.constant(images), seed=s).numpy() for s in (3, 3, 4))
    assert first.dtype == np.uint8 and first.shape == images.shape
    np.testing.assert_array_equal(first, again)
    assert np.mean(first != other) > 0.5
    assert np.mean(first != images) > 0.5


def test_none_preset_is_the_identity():
    images = _xrays()
    out = Augmentation.preset("none")(tf.constant(images), seed=0).numpy()
    np.testing.assert_array_equal(out, images)


def test_zoom_out_adds_a_black_border_and_zoom_in_does_not():
    white = np.full((2, 40, 40, 1), 255, np.uint8)
    plain = {**PRESETS["none"]}
    zoom_out = Augmentation(**{**plain, "zoom": (0.8, 0.8)})(tf.constant(white), seed=0).numpy()
    zoom_in = Augmentation(**{**plain, "zoom": (1.25, 1.25)})(tf.constant(white), seed=0).numpy()
    assert (zoom_out[:, :2] == 0).all() and (zoom_out[:, :, :2] == 0).all()  # 2.5 px border each side
    assert (zoom_out[:, 18:22, 18:22] == 255).all()
    assert (zoom_in == 255).all()


def test_gamma_follows_the_tone_curve():
    grey = np.full((1, 8, 8, 1), 128, np.uint8)
    out = Augmentation(**{**PRESETS["none"], "gamma": (2.0, 2.0)})(tf.constant(grey), seed=0).numpy()
    assert (out == round(255 * (128 / 255) ** 2)).all()


def test_apply_to_dataset_changes_every_epoch_and_keeps_labels():
    images = _xrays()
    labels = np.arange(4)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(2)
    augmented = Augmentation.preset("strong").apply_to_dataset(dataset, seed=7)
    epoch1 = [(x.numpy(), y.numpy()) for x, y in augmented]
    epoch2 = [(x.numpy(), y.numpy()) for x, y in augmented]
    assert [y.tolist() for _, y in epoch1] == [[0, 1], [2, 3]]
    assert not np.array_equal(epoch1[0][0], epoch2[0][0])


def test_unknown_preset():
    with pytest.raises(ValueError, match="Unknown augmentation preset 'heavy'"):
        Augmentation.preset("heavy")
