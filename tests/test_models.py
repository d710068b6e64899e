import warnings

import keras
import numpy as np
import pytest

import keras_pneumonia as kp
from conftest import KAGGLE, TINY
from keras_pneumonia.data import load_image_folder


def test_default_model_builds_with_seed_design():
    model = kp.PneumoniaCNN()
    assert model.input_shape == (None, 160, 160, 1)
    assert model.output_shape == (None, 2)
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"Conv2D", "MaxPooling2D", "Dense"} <= kinds
    assert model.layers[-1].activation.__name__ == "softmax"
    assert model.class_names == ["NORMAL", "PNEUMONIA"]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [32, (48, 40), 64])
@pytest.mark.parametrize("head", ["flatten", "avg", "max"])
def test_shapes_for_channels_sizes_and_heads(channels, size, head):
    model = kp.PneumoniaCNN(image_size=size, channels=channels, filters=(4, 8), dense_units=(8,), head=head)
    hw = (size, size) if isinstance(size, int) else size
    x = np.random.default_rng(0).integers(0, 256, size=(3, *hw, channels), dtype=np.uint8)
    out = model.predict(x, verbose=0)
    assert out.shape == (3, 2)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_uint8_and_float_pixels_give_the_same_prediction():
    model = kp.PneumoniaCNN(**TINY)
    x = np.random.default_rng(1).integers(0, 256, size=(2, 32, 32, 1), dtype=np.uint8)
    np.testing.assert_allclose(
        model.predict(x, verbose=0), model.predict(x.astype("float32"), verbose=0), rtol=1e-5, atol=1e-6
    )


def test_per_image_standardisation_ignores_exposure_and_rescale_does_not():
    rng = np.random.default_rng(3)
    x = rng.integers(20, 120, size=(2, 32, 32, 1)).astype("float32")
    brighter = 2.0 * x + 10.0  # same X-ray, other exposure and contrast
    for normalization, invariant in (("per_image", True), ("rescale", False)):
        model = kp.PneumoniaCNN(normalization=normalization, augmentation=False, **TINY)
        a, b = model.predict(x, verbose=0), model.predict(brighter, verbose=0)
        assert np.allclose(a, b, atol=1e-5) == invariant, normalization


def test_config_round_trip():
    model = kp.PneumoniaCNN(
        image_size=(40, 48),
        channels=3,
        filters=(4, 8, 16),
        convs_per_block=2,
        dense_units=(8, 4),
        dropout=0.2,
        head="flatten",
        normalization="rescale",
        augmentation=False,
        class_names=("healthy", "sick"),
        threshold=0.3,
        name="custom",
    )
    config = model.get_config()
    clone = kp.PneumoniaCNN.from_config(config)
    assert clone.get_config() == config
    assert clone.count_params() == model.count_params()


def test_save_and_load_predict_identically(tmp_path):
    model = kp.PneumoniaCNN(class_names=("A", "B"), threshold=0.37, **TINY)
    model.compile()
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, kp.PneumoniaCNN)
    assert isinstance(loaded.optimizer, keras.optimizers.Adam)
    assert loaded.class_names == ["A", "B"]
    assert loaded.threshold == pytest.approx(0.37)
    x = np.random.default_rng(2).integers(0, 256, size=(4, 32, 32, 1), dtype=np.uint8)
    np.testing.assert_allclose(model.predict(x, verbose=0), loaded.predict(x, verbose=0), rtol=1e-6, atol=1e-7)


def test_compile_defaults_match_the_seed_plus_auc():
    model = kp.PneumoniaCNN(**TINY)
    model.compile()
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert isinstance(model.loss, keras.losses.SparseCategoricalCrossentropy)
    x = np.zeros((2, 32, 32, 1), np.uint8)
    logs = model.evaluate(x, np.array([0, 1]), verbose=0, return_dict=True)
    assert {"loss", "accuracy", "auc"} <= set(logs)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=[])
    assert isinstance(model.optimizer, keras.optimizers.SGD)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_size": 16, "filters": (8, 16, 32, 64, 128)}, "too small for 5 pooling stages"),
        ({"channels": 2}, "`channels` must be 1"),
        ({"filters": ()}, "`filters` must list"),
        ({"filters": (8, 0)}, "`filters` must list"),
        ({"head": "gap"}, "`head` must be one of"),
        ({"dropout": 1.0}, "`dropout`"),
        ({"class_names": ("only",)}, "`class_names`"),
        ({"threshold": 1.0}, "`threshold`"),
        ({"normalization": "none"}, "`normalization`"),
    ],
)
def test_bad_arguments_raise_value_errors_that_say_what_to_change(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kp.PneumoniaCNN(**kwargs)


@pytest.mark.slow
def test_a_few_training_steps_on_real_xrays_lower_the_loss():
    keras.utils.set_random_seed(0)
    images, labels, _ = load_image_folder(KAGGLE / "train", image_size=32)
    model = kp.PneumoniaCNN(augmentation=False, dropout=0.0, **TINY)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    losses = model.fit(images, labels, epochs=15, batch_size=8, verbose=0).history["loss"]
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.slow
def test_frozen_layers_and_optimizer_state_survive_save_and_load(tmp_path):
    model = kp.PneumoniaCNN(**TINY)
    for layer in model.layers:
        layer.trainable = layer.name.startswith(("dense", "predictions"))
    model.compile()
    x = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 1)).astype("uint8")
    y = np.array([0, 1] * 4)
    model.fit(x, y, epochs=2, verbose=0)
    trainable = len(model.trainable_weights)
    assert trainable == 4  # dense1 and predictions: kernel and bias each
    model.save(tmp_path / "m.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "Skipping variable loading for optimizer"
        loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert len(loaded.trainable_weights) == trainable
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 2
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    # Training on does not touch the frozen layers.
    before = loaded.get_layer("block1_conv1").get_weights()[0].copy()
    loaded.fit(x, y, epochs=1, verbose=0)
    np.testing.assert_array_equal(loaded.get_layer("block1_conv1").get_weights()[0], before)


def test_threshold_is_checked_when_set():
    model = kp.PneumoniaCNN(**TINY)
    model.threshold = 0.3
    assert model.get_config()["threshold"] == 0.3
    for bad in (7.0, 0.0, 1.0, float("nan")):
        with pytest.raises(ValueError, match="strictly between 0 and 1"):
            model.threshold = bad
    assert model.threshold == 0.3


@pytest.mark.parametrize(
    ("shape", "fill", "message"),
    [
        ((2, 64, 64, 1), 0.0, "are 64x64 with 1 channel"),
        ((2, 16, 16, 1), 0.0, "are 16x16 with 1 channel"),
        ((2, 32, 32, 3), 0.0, "with 3 channel"),
        ((32, 32), 0.0, r"x\[None, \.\.\., None\]"),
        ((32, 32, 1), 0.0, r"batch axis \(x\[None\]\)"),
        ((0, 32, 32, 1), 0.0, "The batch is empty"),
        ((3, 32, 32, 1), np.nan, r"1 of 3 image\(s\) hold NaN or infinite.*positions \[1\]"),
        ((3, 32, 32, 1), np.inf, r"1 of 3 image\(s\) hold NaN or infinite"),
    ],
)
def test_inputs_the_model_would_answer_for_wrongly_are_refused(shape, fill, message):
    model = kp.PneumoniaCNN(**TINY)
    images = np.full(shape, 100.0, dtype=np.float32)
    if not np.isfinite(fill):
        images[1, 5, 5, 0] = fill
    for call in (model.predict, model.predict_on_batch, model.predict_with_ood):
        with pytest.raises(ValueError, match=message):
            call(images)


def test_right_inputs_still_predict_as_arrays_tensors_and_datasets():
    import tensorflow as tf

    model = kp.PneumoniaCNN(**TINY)
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 1)).astype("float32")
    expected = model.predict(images, verbose=0)
    np.testing.assert_allclose(model.predict_on_batch(tf.constant(images)), expected, atol=1e-5)
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(2)
    np.testing.assert_allclose(model.predict(dataset, verbose=0), expected, atol=1e-5)
    with pytest.raises(ValueError, match="are 16x16"):
        model.predict(tf.data.Dataset.from_tensor_slices(np.zeros((2, 16, 16, 1), "float32")).batch(2))


def test_a_model_that_crops_borders_answers_a_padded_film_as_the_plain_one(tmp_path):
    from keras_pneumonia.images import load_image

    model = kp.PneumoniaCNN(crop_borders=True, **{**TINY, "image_size": 64})
    path = next((KAGGLE / "test" / "NORMAL").iterdir())
    plain = load_image(path, 64).astype("float32")
    padded = np.zeros((80, 80, 1), "uint8")
    padded[8:72, 8:72] = load_image(path, 64)
    padded = np.asarray(keras.ops.image.resize(padded.astype("float32"), (64, 64), interpolation="nearest"))
    seen = keras.Model(model.inputs, model.get_layer("crop_borders").output).predict(np.stack([plain, padded]))
    # The network sees the plain film again, up to resampling (a 64-px film shrunk into the frame and back).
    assert np.abs(seen[1] - seen[0]).mean() < 0.25 * np.abs(padded - plain).mean()
    both = model.predict(np.stack([plain, padded]), verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.crop_borders and loaded.get_layer("crop_borders") is not None
    assert not loaded.fill_dark_edges
    np.testing.assert_allclose(loaded.predict(np.stack([plain, padded]), verbose=0), both, atol=1e-6)


def test_a_model_that_fills_dark_edges_sees_a_tilted_film_without_black_corners(tmp_path):
    from PIL import Image

    from keras_pneumonia.images import load_image

    model = kp.PneumoniaCNN(crop_borders=True, fill_dark_edges=True, **{**TINY, "image_size": 64})
    path = next((KAGGLE / "test" / "NORMAL").iterdir())
    film = load_image(path, 64)[..., 0]
    tilted = np.asarray(Image.fromarray(film).rotate(5.0, fillcolor=0))[None, ..., None].astype("float32")
    assert (tilted <= 8).mean() > 0.01
    seen = keras.Model(model.inputs, model.get_layer("fill_dark_edges").output).predict(tilted, verbose=0)
    # The corners now hold the film's edge: no more black than the upright film has of its own.
    assert (seen <= 8).mean() <= (film <= 8).mean() + 0.002
    expected = model.predict(tilted, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.fill_dark_edges and loaded.get_config()["fill_dark_edges"]
    np.testing.assert_allclose(loaded.predict(tilted, verbose=0), expected, atol=1e-6)


def test_a_model_that_fills_dark_corners_does_it_after_unmirroring_and_keeps_it_when_saved(tmp_path):
    from PIL import Image

    from keras_pneumonia.images import load_image

    model = kp.PneumoniaCNN(crop_borders=True, unmirror=True, fill_dark_corners=True, **{**TINY, "image_size": 64})
    names = [layer.name for layer in model.layers]
    assert names.index("crop_borders") < names.index("unmirror") < names.index("fill_dark_corners")
    film = load_image(next((KAGGLE / "test" / "NORMAL").iterdir()), 64)[..., 0]
    tilted = np.asarray(Image.fromarray(film).rotate(5.0, fillcolor=0))[None, ..., None].astype("float32")
    seen = keras.Model(model.inputs, model.get_layer("fill_dark_corners").output).predict(tilted, verbose=0)
    assert seen[0, 0, 0, 0] > 10 and seen[0, -1, -1, 0] > 10  # the black corners hold the film's mean grey
    expected = model.predict(tilted, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.fill_dark_corners and loaded.get_config()["fill_dark_corners"]
    np.testing.assert_allclose(loaded.predict(tilted, verbose=0), expected, atol=1e-6)


@pytest.mark.parametrize("head", ["flatten", "avg", "max"])
def test_features_are_the_heads_input_and_feed_it_to_the_same_answer(head):
    model = kp.PneumoniaCNN(image_size=32, filters=(4, 8), dense_units=(), head=head, dropout=0.0)
    x = np.random.default_rng(1).integers(0, 256, size=(5, 32, 32, 1), dtype=np.uint8)
    features = model.features(x)
    width = 8 * 8 * 8 if head == "flatten" else 8
    assert features.shape == (5, width)
    # The head alone (its only weights: the softmax layer) on the features gives predict's answer.
    head_output = model.get_layer("predictions")(features)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(head_output), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )
    assert model.feature_extractor is model.feature_extractor  # built once
    assert model.feature_extractor.get_layer("block1_conv1") is model.get_layer("block1_conv1")  # shared, not copied


def test_features_refuse_what_predict_refuses():
    model = kp.PneumoniaCNN(image_size=32, filters=(4, 8), dense_units=(8,))
    with pytest.raises(ValueError, match="32"):
        model.features(np.zeros((2, 64, 64, 1), np.uint8))
