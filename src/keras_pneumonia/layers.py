"""Layers that Keras does not ship but the model needs inside its graph."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_pneumonia")
class PerImageStandardization(keras.layers.Layer):
    """Scales each image to zero mean and unit variance, per channel.

    Written by hand because Keras has no layer for it (``tf.image.per_image_standardization``
    is TensorFlow-only). It makes the model insensitive to global exposure and
    contrast, which differ between X-ray machines and hospital batches.

    Args:
        epsilon: Added to the standard deviation so a blank image gives zeros,
            not NaNs.
        **kwargs: Passed to `keras.layers.Layer`.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> from keras_pneumonia import PerImageStandardization
    >>> layer = PerImageStandardization()
    >>> out = keras.ops.convert_to_numpy(layer(np.full((1, 4, 4, 1), 7.0)))
    >>> float(abs(out).max())
    0.0
    """

    def __init__(self, epsilon: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def call(self, inputs):
        inputs = ops.cast(inputs, self.compute_dtype)
        mean = ops.mean(inputs, axis=(1, 2), keepdims=True)
        std = ops.std(inputs, axis=(1, 2), keepdims=True)
        return (inputs - mean) / (std + self.epsilon)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"epsilon": self.epsilon})
        return config
