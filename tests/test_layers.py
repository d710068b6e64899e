"""The model's own layers: SquashResize gives Pillow's pixels (load_image's resize) in the graph."""

from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from keras_pneumonia import load_image
from keras_pneumonia.layers import SquashResize

DATA = Path(__file__).parent / "data"
FILES = sorted((DATA / "fullres").glob("*.jpeg")) + sorted((DATA / "chest_xray").rglob("*.jpeg"))[:4]


def _resize(image: np.ndarray, size, channels) -> np.ndarray:
    image = image[..., None] if image.ndim == 2 else image
    out = SquashResize(*size, channels=channels)(image[None].astype("float32"))
    return keras.ops.convert_to_numpy(out)[0]


@pytest.mark.parametrize("size", [(160, 160), (224, 224), (96, 130), (700, 500)])  # shrink, stretch, grow
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_squash_resize_reproduces_pillow(size, mode):
    for path in FILES:
        with Image.open(path) as image:
            image = image.convert(mode)
            want = np.asarray(image.resize(size[::-1], Image.Resampling.BILINEAR), "float32")
            got = _resize(np.asarray(image), size, 1 if mode == "L" else 3)
        np.testing.assert_array_equal(got, want.reshape(got.shape), err_msg=str(path))


def test_squash_resize_converts_colour_like_pillow():
    with Image.open(DATA / "fullres" / "IM-0314-0001.jpeg") as image:
        rgb = np.asarray(image.convert("RGB"))
    rgb = rgb.copy()
    rgb[..., 0] = rgb[..., 0] // 2  # a real colour image: the channels differ
    want = np.asarray(Image.fromarray(rgb).convert("L").resize((160, 160), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(_resize(rgb, (160, 160), 1)[..., 0], want)
    gray_to_rgb = _resize(np.asarray(Image.fromarray(rgb).convert("L")), (64, 64), 3)
    assert gray_to_rgb.shape == (64, 64, 3) and (gray_to_rgb[..., 0] == gray_to_rgb[..., 2]).all()


def test_squash_resize_matches_load_image_on_a_png(tmp_path):
    """load_image (no JPEG draft decoding for PNG) and the layer give the same model input."""
    png = tmp_path / "xray.png"
    with Image.open(DATA / "fullres" / "person909_virus_1565.jpeg") as image:
        image.convert("L").save(png)
    want = load_image(png, (160, 160)).astype("float32")
    np.testing.assert_array_equal(_resize(np.asarray(Image.open(png)), (160, 160), 1), want)


def test_squash_resize_round_trips_its_config():
    layer = SquashResize(120, 90, channels=3, name="r")
    clone = SquashResize.from_config(layer.get_config())
    assert (clone.height, clone.width, clone.channels, clone.name) == (120, 90, 3, "r")
    with pytest.raises(ValueError, match="`channels` must be 1 or 3"):
        SquashResize(10, 10, channels=2)


def _xray(size=160):
    return load_image(Path(__file__).parent / "data" / "chest_xray" / "test" / "NORMAL" / "IM-0131-0001.jpeg", size)


@pytest.mark.parametrize(("side", "value"), [("top", 0), ("left", 255), ("right", 0), ("bottom", 255)])
def test_crop_uniform_borders_takes_off_a_bar_and_restores_the_framing(side, value):
    from keras_pneumonia.layers import CropUniformBorders

    x = _xray(128).astype("float32")
    barred = x.copy()
    bar = {"top": np.s_[:16], "bottom": np.s_[-16:], "left": np.s_[:, :16], "right": np.s_[:, -16:]}[side]
    barred[bar] = value
    kept = {"top": np.s_[16:], "bottom": np.s_[:-16], "left": np.s_[:, 16:], "right": np.s_[:, :-16]}[side]
    expected = np.asarray(Image.fromarray(x[kept][..., 0].astype("uint8")).resize((128, 128), Image.BILINEAR))
    out = keras.ops.convert_to_numpy(CropUniformBorders()(barred[None]))[0, ..., 0]
    assert np.abs(out - expected).mean() < 2.0  # bilinear resampling either way
    assert np.abs(barred[..., 0] - expected).mean() > 20  # the bar made a real difference


def test_crop_uniform_borders_leaves_an_image_without_borders_alone_and_caps_the_cut():
    from keras_pneumonia.layers import CropUniformBorders

    rng = np.random.default_rng(0)
    textured = rng.uniform(0, 255, (2, 64, 64, 1)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(CropUniformBorders()(textured)), textured, atol=1e-3)
    mostly_black = textured.copy()
    mostly_black[:, :48] = 0  # 75% of the height uniform: at most a quarter is cut
    layer = CropUniformBorders(max_fraction=0.25)
    out = keras.ops.convert_to_numpy(layer(mostly_black))
    assert (out[:, :20] == 0).all() and out[:, -8:].std() > 30
    assert CropUniformBorders.from_config(layer.get_config()).max_fraction == 0.25


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="traces the layer in TensorFlow's graph mode")
def test_crop_uniform_borders_counts_each_run_from_its_end():
    """The run of uniform lines from each end, capped: against a plain Python count, on random flags."""
    from keras_pneumonia.layers import CropUniformBorders

    def run(flags):
        return next((i for i, flag in enumerate(flags) if not flag), len(flags))

    rng = np.random.default_rng(0)
    for length in (1, 2, 7, 30):
        flags = (rng.random((64, length)) < 0.8).astype("float32")
        flags[:4] = 1.0  # every line uniform: the run is the whole length
        start, end = CropUniformBorders()._runs(flags, 5.0)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(start), [min(run(f), 5) for f in flags])
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(end), [min(run(f[::-1]), 5) for f in flags])


def test_crop_uniform_borders_runs_where_height_and_width_are_unknown():
    """As in a training pipeline whose batches have no static size."""
    import tensorflow as tf

    from keras_pneumonia.layers import CropUniformBorders

    layer = CropUniformBorders()
    x = _xray(64).astype("float32")[None]
    x[:, :, :8] = 0
    traced = tf.function(layer.call, input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32)])
    np.testing.assert_allclose(traced(tf.constant(x)).numpy(), keras.ops.convert_to_numpy(layer(x)), atol=1e-4)


def test_fill_dark_edges_hides_a_rotated_films_black_corners():
    from keras_pneumonia.layers import FillDarkEdges

    x = _xray(128)
    rotated = np.asarray(Image.fromarray(x[..., 0]).rotate(5.0, resample=Image.Resampling.BILINEAR, fillcolor=0))
    white = Image.fromarray(np.full(x.shape[:2], 255, "uint8")).rotate(5.0, resample=Image.Resampling.BILINEAR)
    corners = np.asarray(white) <= 8  # the black triangles the rotation left
    assert corners[:8, :8].any() and corners.mean() > 0.01
    out = keras.ops.convert_to_numpy(FillDarkEdges()(rotated[None, ..., None].astype("float32")))[0, ..., 0]
    assert (out[corners] > 8).all()  # every corner pixel now holds image
    bright = rotated > 8
    np.testing.assert_array_equal(out[bright], rotated[bright])  # the film itself is untouched
    # Each filled pixel is its row's nearest image pixel: the first row's left corner repeats its first bright pixel.
    row = rotated[0]
    first = int(np.argmax(row > 8))
    np.testing.assert_array_equal(out[0, :first], np.full(first, row[first], "float32"))


def test_fill_dark_edges_leaves_dark_rows_and_images_without_corners_alone():
    from keras_pneumonia.layers import FillDarkEdges

    x = np.random.default_rng(0).uniform(20, 255, (2, 16, 16, 3)).astype("float32")
    x[1, 3] = 0.0  # a whole black row: nothing to fill it with
    layer = FillDarkEdges()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x)), x)
    assert FillDarkEdges.from_config({**layer.get_config(), "level": 20.0}).level == 20.0


@pytest.mark.parametrize("degrees", [5.0, -5.0, 12.0])
def test_fill_dark_corners_takes_a_tilted_films_black_corners_away(degrees):
    from keras_pneumonia.layers import FillDarkCorners

    x = _xray(128)[..., 0]
    tilted = np.asarray(Image.fromarray(x).rotate(degrees, resample=Image.Resampling.BILINEAR, fillcolor=0))
    white = Image.fromarray(np.full(x.shape, 255, "uint8")).rotate(degrees, resample=Image.Resampling.BILINEAR)
    corners = np.asarray(white) == 0  # the black triangles the rotation left, all four
    assert corners[0, 0] and corners[-1, -1] and corners.mean() > 0.01
    out = keras.ops.convert_to_numpy(FillDarkCorners()(tilted[None, ..., None].astype("float32")))[0, ..., 0]
    filled = out != tilted
    assert filled[corners].all()  # every corner pixel filled...
    assert len(np.unique(out[filled])) == 1  # ...with one grey: the mean of what was not filled
    np.testing.assert_allclose(out[filled][0], tilted[~filled].mean(), rtol=1e-5)
    assert (tilted[filled] <= 10).all()  # only dark pixels change


def test_fill_dark_corners_leaves_dark_pixels_away_from_the_corners_and_treats_both_sides_alike():
    from keras_pneumonia.layers import FillDarkCorners

    x = np.random.default_rng(0).uniform(30, 255, (1, 64, 48, 1)).astype("float32")
    x[0, 20:30, 10:20] = 0.0  # dark, but enclosed by bright pixels
    layer = FillDarkCorners(cell=1)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x)), x)
    x[0, :6, :9] = 0.0  # a dark corner region
    out = keras.ops.convert_to_numpy(layer(x))
    assert (out[0, :6, :9] > 30).all() and (out[0, 20:30, 10:20] == 0).all()
    mirrored = keras.ops.convert_to_numpy(layer(x[:, :, ::-1]))
    np.testing.assert_allclose(mirrored, out[:, :, ::-1], rtol=1e-6)  # a corner on the right is filled alike
    config = FillDarkCorners.from_config({**FillDarkCorners(cell=2).get_config(), "level": 20.0}).get_config()
    assert (config["level"], config["cell"]) == (20.0, 2)
    with pytest.raises(ValueError, match="cell"):
        FillDarkCorners(cell=0)


def test_fill_dark_corners_runs_on_batches_of_any_size_in_a_graph_built_for_one():
    import tensorflow as tf

    import keras_pneumonia as kp

    model = kp.PneumoniaCNN(image_size=64, filters=(8,), dense_units=(8,), fill_dark_corners=True)
    x = np.random.default_rng(1).uniform(0, 255, (3, 64, 64, 1)).astype("float32")
    x[:, :10, :10] = 0.0
    traced = tf.function(model.call, input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32)])
    np.testing.assert_allclose(traced(tf.constant(x)).numpy(), model.predict(x, verbose=0), atol=1e-5)
