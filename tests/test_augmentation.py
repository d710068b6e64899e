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


def test_zoom_prob_keeps_the_scale_of_the_others_so_their_rotation_corners_stay_in_view():
    white = np.full((32, 40, 40, 1), 255, np.uint8)
    tilted = {**PRESETS["none"], "rotate_deg": 10.0, "zoom": (1.25, 1.25)}
    zoomed = Augmentation(**tilted)(tf.constant(white), seed=0).numpy()
    assert (zoomed == 255).all()  # zooming in by 1.25 hides a rotation's corners
    kept = Augmentation(**{**tilted, "zoom_prob": 0.0})(tf.constant(white), seed=0).numpy()
    assert ((kept == 0).mean(axis=(1, 2, 3)) > 0.002).mean() > 0.7  # black corners in (nearly) every image
    half = Augmentation(**{**tilted, "zoom_prob": 0.5})(tf.constant(white), seed=0).numpy()
    assert 0.2 < (half == 0).any(axis=(1, 2, 3)).mean() < 0.8


def test_gamma_follows_the_tone_curve():
    grey = np.full((1, 8, 8, 1), 128, np.uint8)
    out = Augmentation(**{**PRESETS["none"], "gamma": (2.0, 2.0)})(tf.constant(grey), seed=0).numpy()
    assert (out == round(255 * (128 / 255) ** 2)).all()


@pytest.mark.slow
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


def _only(**settings):
    return Augmentation(**{**PRESETS["none"], **settings})


def test_robust_preset_is_seeded_and_the_other_presets_keep_the_new_steps_off():
    images = _xrays()
    robust = Augmentation.preset("robust")
    first, again = (robust(tf.constant(images), seed=3).numpy() for _ in range(2))
    np.testing.assert_array_equal(first, again)
    assert first.dtype == np.uint8 and first.shape == images.shape
    # The new steps are off in the older presets, so v2's recipe is unchanged.
    for name in ("strong", "mixed", "light"):
        preset = Augmentation.preset(name)
        assert preset.flip_prob == preset.border_prob == preset.text_prob == preset.downsample_prob == 0.0, name


def test_flip_mirrors_every_image_when_always_on():
    images = _xrays()
    out = _only(flip_prob=1.0)(tf.constant(images), seed=0).numpy()
    np.testing.assert_array_equal(out, images[:, :, ::-1])


def test_borders_are_bars_of_one_colour_on_the_edges():
    grey = np.full((8, 50, 50, 1), 128, np.uint8)
    out = _only(border_prob=1.0, border_max=0.3)(tf.constant(grey), seed=1).numpy()
    changed = out != 128
    assert changed.any() and set(np.unique(out[changed])) <= {0, 255}
    assert (out[:, 20:30, 20:30] == 128).all()  # bars of at most 30% never reach the middle
    for image in out:  # one colour per image
        assert len(set(np.unique(image[image != 128]))) <= 1


def test_text_draws_bright_labels_and_downsampling_blurs():
    dark = np.full((8, 160, 160, 1), 40, np.uint8)
    texted = _only(text_prob=1.0)(tf.constant(dark), seed=2).numpy()
    # Most images carry a label of a few dozen bright pixels (some are shifted partly off the film).
    assert sum((image >= 70).sum() > 20 for image in texted) >= 6
    images = _xrays()
    low = _only(downsample_prob=1.0, downsample_factor=(2.0, 2.0))(tf.constant(images), seed=0).numpy()
    roughness = lambda a: np.abs(np.diff(a.astype(int), axis=2)).mean()  # noqa: E731
    assert roughness(low) < 0.9 * roughness(images)
