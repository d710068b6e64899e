"""The released model is deterministic: every way of calling it gives one answer."""

from pathlib import Path

import keras
import numpy as np
import pytest

import keras_pneumonia as kp
from conftest import TINY
from keras_pneumonia.data import load_image

SAMPLES = sorted((Path(kp.__file__).parent / "assets" / "samples").glob("*.jpeg"))


def _samples(model):
    height, width, channels = model.input_shape[1:4]
    return np.stack([load_image(p, (height, width), model.color_mode) for p in SAMPLES]).astype("float32")


@pytest.mark.parametrize("augmentation", [False, True])
def test_call_predict_and_training_false_agree(augmentation):
    model = kp.PneumoniaCNN(**TINY, augmentation=augmentation)
    model.compile()
    x = _samples(model)
    # One step of fit moves the batch-norm statistics away from their initial values.
    model.fit(x, np.array([0, 0, 1, 1]), epochs=1, verbose=0)
    expected = model.predict(x, verbose=0)
    for _ in range(3):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)), expected, atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x, training=False)), expected, atol=1e-5)


@pytest.mark.parametrize("preset", ["pneumonia_cnn_v1", None])
def test_released_models_are_deterministic(preset):
    model = kp.PneumoniaCNN.from_pretrained(preset)
    x = _samples(model)
    expected = model.predict(x, verbose=0)
    calls = [keras.ops.convert_to_numpy(model(x)) for _ in range(3)]
    for probabilities in calls:
        np.testing.assert_allclose(probabilities, expected, atol=1e-5)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="SavedModel/LiteRT export needs TensorFlow")
@pytest.mark.parametrize("preset", ["pneumonia_cnn_v1", None])
def test_saved_model_and_litert_agree_with_predict(preset, tmp_path):
    import tensorflow as tf

    model = kp.PneumoniaCNN.from_pretrained(preset)
    x = _samples(model)
    expected = model.predict(x, verbose=0)
    model.export(str(tmp_path / "saved_model"), format="tf_saved_model", verbose=False)
    served = tf.saved_model.load(str(tmp_path / "saved_model"))
    np.testing.assert_allclose(served.serve(tf.constant(x)).numpy(), expected, atol=1e-5)

    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "saved_model"))
    interpreter = tf.lite.Interpreter(model_content=converter.convert())
    input_index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(input_index, x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(input_index, x)
    interpreter.invoke()
    litert = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(litert, expected, atol=1e-5)
