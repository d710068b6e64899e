"""Undoing mirrored films inside the model: `Unmirror` and the `fit` that trains it.

A chest X-ray shown mirrored (heart on the image's left) is the same film, and the
answer should not change. A classifier trained on upright films uses the side of the
heart (mirror images in training cost clean AUC in every run of release v3's log), so
instead of teaching it mirrors, ``PneumoniaCNN(unmirror=True)`` puts every film the
right way round before the classifier sees it:

- a small network ``f`` scores how mirrored an image looks;
- the layer compares ``f(x)`` with ``f(mirror(x))`` and passes on whichever of the two
  scores lower.

Because the decision compares an image with its own mirror image, ``x`` and
``mirror(x)`` always become the same image: the classifier's answer cannot depend on the
mirroring, whatever ``f`` has learnt. What ``f`` must get right is which of the two is
upright; when it errs on an upright film, the classifier sees that film mirrored.

``fit`` trains ``f`` on training images only (each one mirrored or not at random, after
the framing augmentation, so that borders and tilt do not fool it), and returns a copy
of the model that carries it. From the command line::

    keras-pneumonia fit-unmirror DATA --weights MODEL --output OUT.keras
"""

from __future__ import annotations

import logging
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_pneumonia.layers import PerImageStandardization

logger = logging.getLogger(__name__)

#: The framing layers a `~keras_pneumonia.PneumoniaCNN` may run before `Unmirror` (its flags and layer names).
FRAMING_LAYERS = ("crop_borders", "fill_dark_edges")

#: The filters of ``f``'s strided convolutions.
DEFAULT_FILTERS = (16, 32, 64)


@keras.saving.register_keras_serializable(package="keras_pneumonia")
class Unmirror(keras.layers.Layer):
    """Flips mirrored images back, inside the graph: ``x`` and ``mirror(x)`` give the same output.

    A small network ``f`` (average pooling, per-image standardisation, strided
    convolutions, one dense unit) scores each image and its mirror image; the
    layer returns the mirror image where it scores lower than the image, else the
    image. So the output for ``x`` and for ``mirror(x)`` is the same image (up to
    exact ties of the two scores). Written by hand because no library layer
    decides between an image and its mirror; every op (pooling, convolution,
    ``flip``, ``where``) is a plain Keras op, so it exports as the rest of the model does.

    Args:
        filters: Filters of the strided 3x3 convolutions of ``f``.
        pool: Average-pooling factor applied first (``f`` needs no detail).
        **kwargs: Passed to `keras.layers.Layer`.

    Example:

    >>> import numpy as np
    >>> from keras_pneumonia.mirror import Unmirror
    >>> layer = Unmirror()
    >>> x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 1)).astype("float32")
    >>> a = keras.ops.convert_to_numpy(layer(x))
    >>> b = keras.ops.convert_to_numpy(layer(x[:, :, ::-1]))
    >>> bool(np.array_equal(a, b))  # an image and its mirror image give one output
    True
    """

    def __init__(self, filters=DEFAULT_FILTERS, pool: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.filters = tuple(int(f) for f in filters)
        self.pool = int(pool)
        frozen = {"trainable": self.trainable}  # a frozen Unmirror's sublayers are born frozen too
        self._layers_f = [
            keras.layers.AveragePooling2D(self.pool, name="pool", dtype="float32", **frozen),
            PerImageStandardization(name="standardize", dtype="float32", **frozen),
            *(
                keras.layers.Conv2D(
                    f, 3, strides=2, padding="same", activation="relu", name=f"conv{i}", dtype="float32", **frozen
                )
                for i, f in enumerate(self.filters, start=1)
            ),
            keras.layers.Flatten(name="flatten", dtype="float32", **frozen),
            keras.layers.Dense(1, name="score", dtype="float32", **frozen),
        ]

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in self._layers_f:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.built = True

    def score(self, x):
        """``f(x)``: how mirrored each image of ``x`` looks, ``(n, 1)`` (higher: more likely mirrored)."""
        x = ops.cast(x, "float32")
        for layer in self._layers_f:
            x = layer(x)
        return ops.cast(x, "float32")

    def mirror_logit(self, x):
        """``f(x) - f(mirror(x))``: positive where ``x`` looks mirrored; antisymmetric under mirroring."""
        return self.score(x) - self.score(ops.flip(x, axis=2))

    def flips(self, x):
        """Which images of ``x`` this layer turns round, ``(n, 1)`` booleans."""
        x = ops.cast(x, "float32")
        return self.score(x) > self.score(ops.flip(x, axis=2))

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        return ops.where(self.flips(x)[:, :, None, None], ops.flip(x, axis=2), x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "filters": list(self.filters), "pool": self.pool}


def turned_round(model, images) -> np.ndarray:
    """Which of ``images`` (model input, ``(n, h, w, c)``) ``model``'s `Unmirror` layer turns round, ``(n,)``.

    All ``False`` for a model without the layer. Grad-CAM uses it to lay each map over the
    image as given, not as the classifier saw it.
    """
    if not getattr(model, "unmirror", False):
        return np.zeros(len(images), dtype=bool)
    x = ops.convert_to_tensor(np.asarray(images, dtype="float32"))
    for name in FRAMING_LAYERS:
        if getattr(model, name, False):
            x = model.get_layer(name)(x)
    return ops.convert_to_numpy(model.get_layer("unmirror").flips(x)).reshape(-1)


def _trainer(model, layer: Unmirror):
    """A model from raw images to ``layer``'s mirror logit, through ``model``'s framing layers.

    Built from ``layer``'s own sublayers, called in the functional graph (a ``Lambda``
    around `Unmirror.mirror_logit` would hide their weights from the optimizer).
    """
    inputs = keras.Input(shape=(*model.image_size, model.channels))
    x = ops.cast(inputs, "float32")
    for name in FRAMING_LAYERS:  # the model's border cut and dark-edge fill, those it has, in graph order
        if getattr(model, name, False):
            x = model.get_layer(name)(x)

    def f(t):
        for sublayer in layer._layers_f:
            t = sublayer(t)
        return t

    return keras.Model(inputs, f(x) - f(ops.flip(x, axis=2)))


def _mirrored_at_random(dataset, seed: int):
    """Maps ``(images, labels, ...)`` batches to ``(images, mirrored)``: each image mirrored with probability 1/2."""
    import tensorflow as tf

    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

    def mirror(batch, batch_seed):
        images = batch[0]
        coin = tf.random.stateless_uniform([tf.shape(images)[0]], tf.cast(batch_seed, tf.int64)) < 0.5
        images = tf.where(coin[:, None, None, None], tf.reverse(images, axis=[2]), images)
        return images, tf.cast(coin, tf.float32)[:, None]

    return tf.data.Dataset.zip(dataset, seeds).map(mirror, num_parallel_calls=tf.data.AUTOTUNE)


def _both_ways(dataset):
    """``(images, mirrored)`` batches holding every image of ``dataset`` upright (0) and mirrored (1)."""
    import tensorflow as tf

    def both(*batch):
        images = batch[0]
        n = tf.shape(images)[0]
        x = tf.concat([images, tf.reverse(images, axis=[2])], axis=0)
        return x, tf.concat([tf.zeros([n, 1]), tf.ones([n, 1])], axis=0)

    return dataset.map(both)


def fit(
    model,
    train,
    validation,
    *,
    epochs: int = 20,
    augmentation: str = "robust_reframe",
    learning_rate: float = 1e-3,
    seed: int = 1337,
) -> tuple[Any, dict[str, float]]:
    """Trains an `Unmirror` layer on training images and returns a copy of ``model`` that carries it.

    Args:
        model: A trained `~keras_pneumonia.PneumoniaCNN` (its weights are copied, not changed).
        train: A batched ``tf.data`` dataset of ``(uint8 images, labels[, weights])`` at the
            model's input size: its images, mirrored at random, teach ``f`` which side is up.
        validation: The same for held-out images (other patients): scored both ways.
        epochs: Passes over ``train``.
        augmentation: The `~keras_pneumonia.augmentation.Augmentation` preset applied
            before the coin flip, so that framing (borders, tilt, crops) does not fool ``f``.
        learning_rate: Adam's initial learning rate (cosine decay to 0 over the epochs).
        seed: Seed of the initialisation, the augmentation and the coin flips.

    Returns:
        ``(new_model, scores)``: the `~keras_pneumonia.PneumoniaCNN` with ``unmirror=True``
        and the same weights otherwise, and the share of validation images ``f`` puts the
        right way round, upright and mirrored (``{"upright": ..., "mirrored": ...}``).
    """
    from keras_pneumonia.augmentation import Augmentation

    keras.utils.set_random_seed(seed)
    new = type(model).from_config({**model.get_config(), "unmirror": True})
    copy_by_name(model, new)
    layer = new.get_layer("unmirror")
    layer.trainable = True  # frozen in the model (keras_pneumonia.models); trained here only
    trainer = _trainer(new, layer)
    data = _mirrored_at_random(Augmentation.preset(augmentation).apply_to_dataset(train, seed=seed), seed)
    steps = int(data.cardinality()) * epochs
    trainer.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(learning_rate, max(steps, 1))),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        metrics=[keras.metrics.BinaryAccuracy(threshold=0.0)],
    )
    trainer.fit(data.prefetch(2), epochs=epochs, verbose=2, shuffle=False)  # the dataset shuffles itself
    layer.trainable = False
    scores = _validation_scores(trainer, validation)
    logger.info("Unmirror: validation images put the right way round: %s", scores)
    return new, scores


def _validation_scores(trainer, validation) -> dict[str, float]:
    """Share of validation images the trained ``f`` leaves upright, and of their mirror images it flips back."""
    logits, mirrored = [], []
    for x, y in _both_ways(validation):
        logits.append(np.asarray(trainer(x, training=False)).ravel())
        mirrored.append(np.asarray(y).ravel())
    logit, truth = np.concatenate(logits), np.concatenate(mirrored)
    right = (logit > 0) == (truth > 0.5)
    return {"upright": float(right[truth < 0.5].mean()), "mirrored": float(right[truth > 0.5].mean())}


def copy_by_name(source, target) -> None:
    """Copies every weighted layer of ``source`` into ``target``'s layer of the same name, and the flag's statistics."""
    for layer in source.layers:
        weights = layer.get_weights()
        if weights:
            target.get_layer(layer.name).set_weights(weights)
    # Kept beside the graph (keras_pneumonia.ood), so not always among `layers`.
    if getattr(source, "ood_detector", None) is not None:
        target.ood_detector.set_weights(source.ood_detector.get_weights())
