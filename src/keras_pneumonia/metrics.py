"""Training-time metrics for a softmax head over NORMAL and PNEUMONIA (or its subtypes)."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="keras_pneumonia")
class SparseAUC(keras.metrics.AUC):
    """ROC AUC for integer labels and a softmax output.

    `keras.metrics.AUC` expects one probability per sample; our model outputs a
    softmax over classes and trains on integer labels. This subclass feeds it
    the probability of ``positive_index`` (PNEUMONIA) and nothing else changes.

    Args:
        positive_index: Column of the softmax that is the positive class; ``None``:
            every class but the first (any pneumonia subtype against NORMAL).
        **kwargs: Passed to `keras.metrics.AUC` (``name``, ``num_thresholds``...).
    """

    def __init__(self, positive_index: int | None = 1, name: str = "auc", **kwargs):
        super().__init__(name=name, **kwargs)
        self.positive_index = positive_index

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Counts a batch: integer labels ``y_true`` against the probability of ``positive_index``."""
        y_true = keras.ops.reshape(y_true, (-1,))
        if self.positive_index is None:
            y_true = keras.ops.cast(keras.ops.not_equal(y_true, 0), "float32")
            return super().update_state(y_true, 1.0 - y_pred[:, 0], sample_weight)
        y_true = keras.ops.cast(keras.ops.equal(y_true, self.positive_index), "float32")
        return super().update_state(y_true, y_pred[:, self.positive_index], sample_weight)

    def get_config(self):
        config = super().get_config()
        config.update({"positive_index": self.positive_index})
        return config
