"""Consistency training: a tilted copy of each training image has to get the upright image's answer.

Release v3's experiment log (docs/experiments.md, v3-m and v3-p) found that a 5-degree
rotation moved 4-7% of decisions, that the black corners it leaves decide and not the
tilt, and that more tilted images in the augmentation made it worse. What took the
rotations under 4% was a consistency loss (as in Zheng et al.'s stability training,
2016, and Hendrycks et al.'s AugMix, 2020): each batch is paired with a copy rotated by
up to ``max_degrees``, black corners in view, and the loss becomes

    cross-entropy(batch) + cross-entropy(tilted copy) + weight * KL(p(batch) || p(tilted copy))

with the batch's probabilities held fixed in the KL term, so that the tilted copy is
pulled towards the upright answer and never the other way round.

`ConsistencyTraining` adds it to `~keras_pneumonia.PneumoniaCNN` through Keras'
documented extension point, ``Model.compute_loss``, so ``fit``, its callbacks
(``BackupAndRestore`` included), class weights and metrics work as before; it is active
only while a `TiltConsistency` is set on the model (``keras-pneumonia train
--consistency-weight``, ``train(..., consistency_weight=...)``), and is never saved with it.
"""

from __future__ import annotations

import keras

#: Added inside the logarithms of the KL term, so that a probability of exactly 0 stays finite.
EPSILON = 1e-7


class TiltConsistency:
    """The tilted copy and the weight of its KL term, for `ConsistencyTraining`.

    Args:
        weight: Weight of the KL term (``0``: the copy's cross-entropy only).
        max_degrees: Largest rotation of the copy, either way, about the centre; the
            corners it uncovers are black, as a tilted film's are.
        seed: Seeds the copies' angles (and zooms).
        max_crop: Above 0: after the tilt, the copy is also zoomed in about its centre,
            cutting up to this fraction from each border (a tighter framing, as the
            robustness report's ``crop_10`` is at ``0.1``). ``0``: tilt only.

    Raises:
        ValueError: ``weight`` negative, ``max_degrees`` outside ``(0, 45]`` or
            ``max_crop`` outside ``[0, 0.25]``.
        RuntimeError: Keras is not on the TensorFlow backend (the only one it is tested on:
            under JAX's stateless training step the copies' random angles would repeat every step).

    Example:

    >>> import numpy as np
    >>> import keras_pneumonia as kp
    >>> from keras_pneumonia.consistency import TiltConsistency
    >>> model = kp.PneumoniaCNN(image_size=32, filters=(4,), dense_units=())
    >>> model.compile()
    >>> model.consistency = TiltConsistency(weight=1.0, max_degrees=8, seed=1)
    >>> images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 1)).astype("uint8")
    >>> history = model.fit(images, np.array([0, 1, 0, 1]), epochs=1, verbose=0)
    >>> model.consistency = None  # back to the plain loss
    """

    def __init__(self, weight: float = 1.0, max_degrees: float = 8.0, seed: int | None = None, max_crop: float = 0.0):
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(
                "Consistency training runs on the TensorFlow backend only (the one it is tested on; "
                f"under JAX's stateless training step its random tilts would repeat every step); Keras runs on "
                f"{keras.backend.backend()!r}. Set KERAS_BACKEND=tensorflow, or train without it."
            )
        if not weight >= 0:
            raise ValueError(f"`weight` must be 0 or more; received {weight!r}.")
        if not 0 < max_degrees <= 45:
            raise ValueError(f"`max_degrees` must be in (0, 45]; received {max_degrees!r}.")
        if not 0 <= max_crop <= 0.25:
            raise ValueError(f"`max_crop` must be in [0, 0.25]; received {max_crop!r}.")
        self.weight = float(weight)
        self.max_degrees = float(max_degrees)
        self.max_crop = float(max_crop)
        # keras' RandomRotation takes its range as a fraction of a full turn.
        self._rotation = keras.layers.RandomRotation(
            self.max_degrees / 360.0, fill_mode="constant", fill_value=0.0, seed=seed, dtype="float32"
        )
        # RandomZoom's factor is the change of the view's height: -0.2 shows the middle 80%,
        # which cuts 10% from each border. One factor, so the aspect ratio is kept. Its own
        # seed: under the rotation's, both layers draw the same numbers and every zoom would
        # be a function of its copy's angle.
        self._zoom = None
        if self.max_crop > 0:
            self._zoom = keras.layers.RandomZoom(
                (-2 * self.max_crop, 0.0),
                fill_mode="constant",
                fill_value=0.0,
                seed=None if seed is None else seed + 1,
                dtype="float32",
            )

    def tilt(self, images):
        """The tilted (and, with ``max_crop``, zoomed-in) copies of a batch (float32, the model's raw input scale)."""
        copies = self._rotation(keras.ops.cast(images, "float32"), training=True)
        return copies if self._zoom is None else self._zoom(copies, training=True)

    def kl(self, upright, tilted):
        """Mean KL(upright || tilted) over the batch, the upright answers held fixed."""
        target = keras.ops.stop_gradient(keras.ops.cast(upright, "float32"))
        tilted = keras.ops.cast(tilted, "float32")
        terms = target * (keras.ops.log(target + EPSILON) - keras.ops.log(tilted + EPSILON))
        return keras.ops.mean(keras.ops.sum(terms, axis=-1))


class ConsistencyTraining:
    """Mixin for a `keras.Model`: while ``self.consistency`` is set, training adds its terms to the loss."""

    consistency: TiltConsistency | None = None

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Keras' loss; in training with a `TiltConsistency` set: the batch's, its tilted copy's and the KL term.

        The batch and its copy go through the model together, one batch of twice the
        size, so that batch normalisation sees both (as the experiment log's script did);
        ``y_pred``, the batch alone, then serves the metrics only.
        """
        if not training or self.consistency is None or y_pred is None:
            return super().compute_loss(x, y, y_pred, sample_weight, training=training)
        upright = keras.ops.cast(x, "float32")
        both = self(keras.ops.concatenate([upright, self.consistency.tilt(upright)], axis=0), training=True)
        plain, tilted = keras.ops.split(both, 2, axis=0)
        loss = super().compute_loss(x, y, plain, sample_weight, training=training)
        copy_loss = super().compute_loss(x, y, tilted, sample_weight, training=training)
        return loss + copy_loss + self.consistency.weight * self.consistency.kl(plain, tilted)
