"""One input spec saved with the model: every reader resizes the way the model was trained."""

import json

import keras
import numpy as np
import pytest

import keras_pneumonia as kp
from conftest import DATA, TINY
from keras_pneumonia.images import InputConfig, input_config_of, load_image
from keras_pneumonia.prediction import predict_files

WIDE = DATA / "fullres" / "person1689_bacteria_4474.jpeg"  # 437 x 144: far from square


def test_released_files_load_with_the_defaults_they_were_trained_with():
    for preset in ("pneumonia_cnn_v1", "pneumonia_cnn_v2"):
        spec = kp.PneumoniaCNN.from_preset(preset, compile=False).input_config
        assert spec == InputConfig((160, 160), "grayscale", "squash", "bilinear")


def test_the_resize_mode_is_saved_and_used_by_every_reader(tmp_path):
    from PIL import Image

    # A PNG copy: load_image decodes big JPEGs at a reduced scale, which an array cannot show.
    wide = tmp_path / "wide.png"
    Image.open(WIDE).save(wide)
    model = kp.PneumoniaCNN(**TINY, resize="crop")
    model.save(tmp_path / "crop.keras")
    loaded = keras.saving.load_model(tmp_path / "crop.keras")
    assert loaded.input_config.resize == "crop" and loaded.get_config()["resize"] == "crop"

    cropped = load_image(wide, 32, "grayscale", "crop")
    squashed = load_image(wide, 32, "grayscale", "squash")
    assert not np.array_equal(cropped, squashed)
    np.testing.assert_array_equal(loaded.input_config.load(wide), cropped)
    # predict_files reads with the saved rule: its probability is the cropped image's.
    row = next(predict_files(loaded, [wide]))
    want = loaded.predict(cropped[None].astype("float32"), verbose=0)[0, -1]
    assert row["probability"] == pytest.approx(float(want), abs=1e-6)
    # Grad-CAM too: the image it explains is the cropped one.
    if keras.backend.backend() == "tensorflow":
        from keras_pneumonia.gradcam import _model_input

        np.testing.assert_array_equal(_model_input(loaded, np.asarray(load_image(wide))), cropped)


def test_images_of_the_wrong_size_are_refused_not_misread():
    model = kp.PneumoniaCNN.from_preset("pneumonia_cnn_v2", compile=False)
    x = np.zeros((2, 224, 224, 1), "float32")
    with pytest.raises(ValueError, match=r"images are 224x224 with 1 channel\(s\), but .* takes 160x160"):
        kp.evaluate(model, (x, np.array([0, 1])))
    with pytest.raises(ValueError, match="takes 160x160 with 1"):
        kp.evaluate(model, (np.zeros((2, 160, 160, 3), "float32"), np.array([0, 1])))


def test_input_config_of_any_keras_model_and_bad_values():
    inputs = keras.Input((48, 40, 3))
    plain = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))
    assert input_config_of(plain) == InputConfig((48, 40), "rgb")
    with pytest.raises(ValueError, match="`resize` must be one of"):
        kp.PneumoniaCNN(**TINY, resize="stretch")
    with pytest.raises(ValueError, match="`color_mode` must be one of"):
        InputConfig((8, 8), "cmyk")


@pytest.mark.slow
def test_train_builds_the_model_first_and_reads_the_data_its_way(kaggle_dir, tmp_path):
    from keras_pneumonia.training import train

    # A size the model cannot take fails before any image is decoded (no split.json written).
    with pytest.raises(ValueError, match="too small"):
        train(kaggle_dir, tmp_path / "small", epochs=1, image_size=8, verbose=0)
    assert not (tmp_path / "small" / "split.json").exists()

    train(
        kaggle_dir,
        tmp_path / "run",
        epochs=1,
        image_size=32,
        resize="pad",
        validation_split=0.25,
        verbose=0,
        model_kwargs={"filters": (8,), "dense_units": ()},
    )
    model = keras.saving.load_model(tmp_path / "run" / "model.keras")
    assert model.input_config.resize == "pad"
    assert json.loads((tmp_path / "run" / "run.json").read_text())["arguments"]["resize"] == "pad"
    assert json.loads((tmp_path / "run" / "split.json").read_text())["options"]["resize"] == "pad"
