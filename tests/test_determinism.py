"""The released model is deterministic: every way of calling it gives one answer."""

import keras
import numpy as np
import pytest

import keras_pneumonia as kp
from conftest import TINY
from keras_pneumonia.export import sample_batch as _samples  # the bundled sample X-rays, decoded for a model


@pytest.mark.parametrize("augmentation", [False, True])
@pytest.mark.slow
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
