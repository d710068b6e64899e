"""Outside its population: a flag for X-rays unlike the ones the model was trained on.

The released models were trained on one hospital's pediatric films. Given an adult
film, a figure cut from a paper, another body part or a photo of a screen, they
still answer, often with P = 1.00. This module gives each image an
**out-of-distribution score**, the Mahalanobis distance of its features from the
training images' features (Lee et al., "A Simple Unified Framework for Detecting
Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018), and flags the
image when the score is above a threshold. The statistics and the threshold travel
with the model (`keras_pneumonia.PneumoniaCNN`'s ``ood`` config and its
``ood_detector`` weights), so every output that shows the input check's warnings
shows this flag too.

How it is fitted (`fit`), on training data only:

* **features**: the mean and the standard deviation over the image of each
  channel of the feature maps at every depth of the network (`default_layers`:
  every ReLU of the default network, two per block), concatenated (992 numbers
  each, twice: 1,984). The means say *what* the network sees, the deviations how
  it is spread: texture, contrast, layout, which differ most between a child's
  film and an adult's or a figure from a paper; and a thumbnail of the input
  itself (`pool_input`: mean and deviation over an 8 x 8 grid, 128 numbers for a
  grayscale model), which keeps the exposure and layout that the network's
  per-image standardisation and pooling take away;
* **statistics**: one mean per class and a covariance shared by the classes, from
  the *training* part of the split, shrunk towards a multiple of the identity
  (``shrinkage``) so that the whitening is stable;
* **threshold**: a high quantile (``quantile``, 0.98) of the scores of the
  *validation* part of the split, patients the statistics never saw: by
  construction about 2% of new images from the training population are flagged
  (the issue's budget for test_dev), fewer of the training images themselves.

From the command line, ``keras-pneumonia fit-ood DATA --weights MODEL --output OUT.keras``
fits it for any model; ``keras-pneumonia train`` fits it after training (``--no-ood-flag``
leaves it out).

Why Mahalanobis and not k-nearest neighbours: both were measured
(``python benchmarks/ood.py``, docs/model_card.md, "Outside its population"); the
Mahalanobis score is a mean per class and a matrix (2,112 x 2,112 floats, 17.8 MB
in the ``.keras`` file) computed with two matrix products inside Keras, where
k-nearest neighbours must carry every training image's features and search them
for each input; and it flagged more of the adult films at the same rate on
test_dev. Why every ReLU and not one per block: the first ReLU of each block
adds low-level texture statistics, which is where adult films and figures from
papers differ most (the same benchmark); the thumbnail flags more of them again
at the same rate on new children's films.

Example:

>>> import numpy as np
>>> from keras_pneumonia.ood import fit_mahalanobis, mahalanobis_scores
>>> rng = np.random.default_rng(0)
>>> features = rng.normal(size=(500, 8))
>>> means, whitening = fit_mahalanobis(features, np.zeros(500, int))
>>> near, far = mahalanobis_scores(np.stack([features[0], features[0] + 10]), means, whitening)
>>> bool(far > 10 * near)
True
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

logger = logging.getLogger(__name__)

#: The quantile of the validation scores above which an image is flagged.
DEFAULT_QUANTILE = 0.98
#: Shrinkage of the covariance towards ``mean(diag) * I``.
DEFAULT_SHRINKAGE = 0.01
#: The grid of the input thumbnail the detector reads by default (`pool_input`; 0: none).
DEFAULT_INPUT_GRID = 8


def default_layers(model) -> list[str]:
    """The layers whose pooled feature maps the detector reads by default.

    For the default network, every ReLU of every block; for a backbone, its
    Grad-CAM layer (the last feature map).
    """
    if getattr(model, "backbone", None) is not None:
        return [model.gradcam_layer]
    blocks, convs = len(model.filters), model.convs_per_block
    return [f"block{b}_relu{c}" for b in range(1, blocks + 1) for c in range(1, convs + 1)]


def default_grid_layers(model) -> list[str]:
    """The layers whose 2 x 2 grid means (`pool_grid`) the detector also reads by default: none yet."""
    return []


def pool(feature_map):
    """Mean and standard deviation over height and width of each channel, concatenated: ``(n, 2c)``."""
    import keras

    feature_map = keras.ops.cast(feature_map, "float32")
    return keras.ops.concatenate(
        [keras.ops.mean(feature_map, axis=(1, 2)), keras.ops.std(feature_map, axis=(1, 2))], axis=-1
    )


def pool_grid(feature_map):
    """The mean of each channel over each quarter of the image (2 x 2 grid): ``(n, 4c)``; where things are."""
    import keras

    feature_map = keras.ops.cast(feature_map, "float32")
    h, w = feature_map.shape[1] // 2, feature_map.shape[2] // 2
    quarters = [feature_map[:, i * h : (i + 1) * h, j * w : (j + 1) * w, :] for i in (0, 1) for j in (0, 1)]
    return keras.ops.concatenate([keras.ops.mean(q, axis=(1, 2)) for q in quarters], axis=-1)


def pool_input(images, grid: int):
    """Mean and standard deviation of the raw input (scaled to 0-1) over each cell of a ``grid`` x ``grid`` grid.

    ``(n, 2 * grid * grid * c)``: a thumbnail of the image and of its local contrast,
    taken before the network's own normalisation (per-image standardisation
    removes the exposure the network sees; the layout of the film survives in
    neither pooled statistic). Rows and columns beyond a multiple of ``grid`` are
    left out.
    """
    import keras

    ops = keras.ops
    x = ops.cast(images, "float32") / 255.0
    h, w, c = x.shape[1] // grid, x.shape[2] // grid, x.shape[3]
    cells = ops.reshape(x[:, : h * grid, : w * grid, :], (-1, grid, h, grid, w, c))
    return ops.concatenate(
        [
            ops.reshape(ops.mean(cells, axis=(2, 4)), (-1, grid * grid * c)),
            ops.reshape(ops.std(cells, axis=(2, 4)), (-1, grid * grid * c)),
        ],
        axis=-1,
    )


def feature_model(model, layers: Sequence[str], grid_layers: Sequence[str] = (), input_grid: int = 0):
    """A Keras model from ``model``'s input to its pooled features (``(n, d)``).

    The features are `pool` of each of ``layers``, `pool_grid` of each of
    ``grid_layers``, then (``input_grid`` > 0) `pool_input` of the input, concatenated.
    """
    import keras

    tensors = [model.get_layer(name).output for name in [*layers, *grid_layers]]
    if input_grid:
        tensors.append(model.inputs[0])
    # One layer, named here, not loose ops: Keras names loose ops from a per-thread counter,
    # so a feature model built in another thread (the web app's worker) would name its
    # first cast "cast", as the model's own graph already does, and Keras refuses the clash.
    pooling = _pooling_class()(len(layers), len(grid_layers), input_grid, name=f"{model.name}_ood_pooling")
    return keras.Model(model.inputs, pooling(tensors), name=f"{model.name}_features")


@functools.cache
def _pooling_class():
    """The layer pooling the feature maps (and the input) as `feature_model` describes; built once, lazily."""
    import keras

    class OutOfDistributionPooling(keras.layers.Layer):
        def __init__(self, pooled: int, gridded: int, input_grid: int, **kwargs):
            super().__init__(**kwargs)
            self.pooled, self.gridded, self.input_grid = pooled, gridded, input_grid

        def call(self, tensors):
            features = [pool(t) for t in tensors[: self.pooled]]
            features += [pool_grid(t) for t in tensors[self.pooled : self.pooled + self.gridded]]
            if self.input_grid:
                features.append(pool_input(tensors[-1], self.input_grid))
            return features[0] if len(features) == 1 else keras.ops.concatenate(features, axis=-1)

    return OutOfDistributionPooling


def _spec(model) -> tuple[list[str], list[str], int]:
    """``(layers, grid_layers, input_grid)`` of a model's flag (older files have no grids: ``[]``, ``0``)."""
    return list(model.ood["layers"]), list(model.ood.get("grid_layers", [])), int(model.ood.get("input_grid", 0))


_JOINT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def joint_model(model):
    """A Keras model giving ``[probabilities, pooled features]`` of ``model`` in one pass (cached per model).

    Kept outside the model (a weak mapping) so that the saved model stays the plain classifier.
    """
    import keras

    if model not in _JOINT:
        features = feature_model(model, *_spec(model))
        _JOINT[model] = keras.Model(model.inputs, [model.outputs[0], features.outputs[0]], name=f"{model.name}_joint")
    return _JOINT[model]


def pooled_features(
    model,
    images,
    layers: Sequence[str] | None = None,
    batch_size: int = 64,
    grid_layers: Sequence[str] = (),
    input_grid: int = 0,
) -> np.ndarray:
    """The pooled features of ``images`` (model-input ``uint8`` ``(n, h, w, c)``, or a batched dataset).

    Args:
        model: A `~keras_pneumonia.PneumoniaCNN`.
        images: The images, or a ``tf.data`` dataset of ``(images, labels)`` batches.
        layers: Layers pooled by `pool` (default: `default_layers`).
        batch_size: Prediction batch size for arrays.
        grid_layers: Layers pooled by `pool_grid`.
        input_grid: The grid of `pool_input` (0: none).

    Returns:
        ``float32`` ``(n, d)``.
    """
    layers = list(layers or default_layers(model))
    if not isinstance(images, np.ndarray):
        return _features_and_labels(model, images, layers, grid_layers, input_grid)[0]
    extractor = feature_model(model, layers, grid_layers, input_grid)
    return np.asarray(extractor.predict(images, batch_size=batch_size, verbose=0), np.float32)


def fit_mahalanobis(
    features: np.ndarray, labels: np.ndarray, shrinkage: float = DEFAULT_SHRINKAGE
) -> tuple[np.ndarray, np.ndarray]:
    """Class means and a whitening matrix ``W`` with ``d(f)^2 = min_c ||(f - mean_c) W||^2``.

    The covariance is the within-class covariance (shared by the classes, as in
    Lee et al. 2018), shrunk: ``(1 - s) * C + s * mean(diag C) * I``.

    Args:
        features: ``(n, d)`` training features.
        labels: ``(n,)`` class indices.
        shrinkage: ``s`` in [0, 1).

    Returns:
        ``means`` ``(k, d)`` and ``whitening`` ``(d, d)``, ``float32``.
    """
    features = np.asarray(features, np.float64)
    labels = np.asarray(labels)
    classes = np.unique(labels)
    means = np.stack([features[labels == c].mean(axis=0) for c in classes])
    centred = features - means[np.searchsorted(classes, labels)]
    covariance = centred.T @ centred / max(1, len(features) - len(classes))
    scale = float(np.mean(np.diag(covariance))) or 1.0
    covariance = (1.0 - shrinkage) * covariance + shrinkage * scale * np.eye(len(covariance))
    # precision = L L^T  =>  (f - m)^T precision (f - m) = ||(f - m) L||^2
    whitening = np.linalg.cholesky(np.linalg.inv(covariance))
    return means.astype(np.float32), whitening.astype(np.float32)


def mahalanobis_scores(features: np.ndarray, means: np.ndarray, whitening: np.ndarray) -> np.ndarray:
    """``min_c ||(f - mean_c) W||^2 / d`` for each row of ``features`` (NumPy; see `OutOfDistribution`)."""
    features = np.asarray(features, np.float32)
    distances = [np.sum(((features - m) @ whitening) ** 2, axis=1) for m in means]
    return np.min(distances, axis=0) / features.shape[1]


@functools.cache
def _layer_class():
    """The layer class, defined (and registered with Keras) once, on first use: Keras loads only then."""
    import keras

    @keras.saving.register_keras_serializable(package="keras_pneumonia")
    class OutOfDistribution(keras.layers.Layer):
        """Holds the detector's statistics as weights; ``call(features)`` gives the scores ``(n,)``.

        The score is the squared Mahalanobis distance to the nearest class mean,
        divided by the feature dimension (about 1 for a typical training image).

        Args:
            dims: Feature dimension ``d``.
            classes: Number of class means.
        """

        def __init__(self, dims: int, classes: int, **kwargs):
            super().__init__(**kwargs)
            self.dims, self.classes = int(dims), int(classes)
            self.means = self.add_weight(
                shape=(self.classes, self.dims), initializer="zeros", trainable=False, name="means"
            )
            self.whitening = self.add_weight(
                shape=(self.dims, self.dims), initializer="identity", trainable=False, name="whitening"
            )
            self.built = True

        def call(self, features):
            import keras

            ops = keras.ops
            centred = ops.expand_dims(ops.cast(features, "float32"), 1) - ops.expand_dims(self.means, 0)
            whitened = ops.einsum("nkd,de->nke", centred, self.whitening)
            return ops.min(ops.sum(ops.square(whitened), axis=-1), axis=1) / float(self.dims)

        def get_config(self):
            return {**super().get_config(), "dims": self.dims, "classes": self.classes}

    return OutOfDistribution


def OutOfDistribution(dims: int, classes: int, **kwargs):  # noqa: N802  (a layer, named as one)
    """A Keras layer holding the detector's statistics; ``layer(features)`` gives the scores ``(n,)``.

    The score is the squared Mahalanobis distance to the nearest class mean,
    divided by the feature dimension (about 1 for a typical training image).

    Args:
        dims: Feature dimension ``d``.
        classes: Number of class means.
    """
    return _layer_class()(dims, classes, **kwargs)


def fit(
    model,
    train,
    validation,
    *,
    layers: Sequence[str] | None = None,
    grid_layers: Sequence[str] | None = None,
    input_grid: int = DEFAULT_INPUT_GRID,
    quantile: float = DEFAULT_QUANTILE,
    shrinkage: float = DEFAULT_SHRINKAGE,
    description: str = "",
):
    """Fits the out-of-distribution flag on training data and returns a copy of ``model`` that carries it.

    Args:
        model: A trained `~keras_pneumonia.PneumoniaCNN`.
        train: ``(images, labels)`` arrays, or a ``tf.data`` dataset of such batches:
            the images whose feature statistics define the population.
        validation: The same for held-out images of the same population (other
            patients), whose ``quantile`` sets the threshold.
        layers: Layers pooled by `pool` (default: `default_layers`).
        grid_layers: Layers pooled by `pool_grid` too (default: `default_grid_layers`).
        input_grid: The grid of the input thumbnail read too (`pool_input`; 0: none).
        quantile: Share of validation images left unflagged.
        shrinkage: Covariance shrinkage (`fit_mahalanobis`).
        description: What the data was, recorded in the config.

    Returns:
        A new `~keras_pneumonia.PneumoniaCNN` with the same weights, ``ood``
        config and fitted ``ood_detector``.
    """
    if not 0.5 <= quantile < 1.0:
        raise ValueError(f"`quantile` must be in [0.5, 1); received {quantile!r}.")
    if not 0.0 < shrinkage < 1.0:
        raise ValueError(f"`shrinkage` must be in (0, 1); received {shrinkage!r}.")
    layers = list(layers or default_layers(model))
    grid_layers = list(default_grid_layers(model) if grid_layers is None else grid_layers)
    if not isinstance(input_grid, int) or not 0 <= input_grid <= min(model.input_config.image_size):
        raise ValueError(f"`input_grid` must be an int from 0 to the image size; received {input_grid!r}.")
    spec = (layers, grid_layers, input_grid)
    train_features, train_labels = _features_and_labels(model, train, *spec)
    val_features, _ = _features_and_labels(model, validation, *spec)
    if len(train_features) == 0 or len(val_features) == 0:
        raise ValueError("Fitting the out-of-distribution flag needs training and validation images.")
    if len(train_features) <= train_features.shape[1]:
        logger.warning(
            "%d training images for %d features: the covariance rests on its shrinkage (%s); "
            "the flag is only as good as that.",
            len(train_features),
            train_features.shape[1],
            shrinkage,
        )
    means, whitening = fit_mahalanobis(train_features, train_labels, shrinkage)
    val_scores = mahalanobis_scores(val_features, means, whitening)
    threshold = float(np.quantile(val_scores, quantile))
    config = {
        "method": "mahalanobis",
        "layers": layers,
        "grid_layers": grid_layers,
        "input_grid": input_grid,
        "threshold": threshold,
        "quantile": quantile,
        "shrinkage": shrinkage,
        "fitted_on": {"train": len(train_features), "validation": len(val_features), "data": description},
    }
    logger.info("Out-of-distribution threshold %.3f (validation quantile %s)", threshold, quantile)
    config["dims"], config["classes"] = int(means.shape[1]), int(means.shape[0])
    new = type(model).from_config({**model.get_config(), "ood": config})  # a PneumoniaCNN (no import: no cycle)
    # By position: the same architecture, and keras.applications names some layers anew each build.
    for layer, fresh in zip(model.layers, new.layers, strict=True):
        fresh.set_weights(layer.get_weights())
    new.ood_detector.means.assign(means)
    new.ood_detector.whitening.assign(whitening)
    return new


def _features_and_labels(model, data, layers, grid_layers=(), input_grid=0) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features and labels of ``(images, labels)`` arrays or of a dataset of such batches."""
    if isinstance(data, tuple):
        images, labels = data[0], data[1]
        pooled = pooled_features(model, np.asarray(images), layers, grid_layers=grid_layers, input_grid=input_grid)
        return pooled, np.asarray(labels)
    features, labels = [], []
    extractor = feature_model(model, layers, grid_layers, input_grid)  # one model for every batch (traced once)
    for batch in data:
        features.append(np.asarray(extractor.predict_on_batch(np.asarray(batch[0])), np.float32))
        labels.append(np.asarray(batch[1]))
    if not features:
        return np.zeros((0, extractor.output_shape[-1]), np.float32), np.zeros(0, int)
    return np.concatenate(features), np.concatenate(labels)


def scores(model, data) -> np.ndarray:
    """Out-of-distribution scores of model-input images (an array) or of a dataset of ``(images, labels)`` batches."""
    if model.ood_detector is None:
        return model.ood_scores(data)  # raises, naming what to do
    if isinstance(data, tuple):
        data = data[0]
    if isinstance(data, np.ndarray):
        return model.ood_scores(data)
    features, _ = _features_and_labels(model, data, *_spec(model))
    return np.asarray(model.ood_detector(features))


def predict_on_batch(model, x) -> tuple[np.ndarray, np.ndarray | None]:
    """``(probabilities, scores)`` of one batch in one pass; ``scores`` is ``None`` for a model without the flag."""
    if getattr(model, "ood_detector", None) is None:
        return np.asarray(model.predict_on_batch(x)), None
    probabilities, features = joint_model(model).predict_on_batch(x)
    return np.asarray(probabilities), np.asarray(model.ood_detector(features))


def warning(model, score: float | None) -> str | None:
    """The warning for one image's score, in plain words, or ``None`` when it is not flagged."""
    if score is None or getattr(model, "ood", None) is None or score <= model.ood["threshold"]:
        return None
    return (
        f"unlike the training population (out-of-distribution score {score:.2f} > {model.ood['threshold']:.2f}): "
        "the model was trained on children's films from one hospital, its answer here is unreliable"
    )


def summary(model, images: np.ndarray, labels: np.ndarray, threshold: float | None = None) -> dict[str, Any] | None:
    """How many images the flag raises on, and the model's accuracy on flagged and unflagged images.

    Args:
        model: A `~keras_pneumonia.PneumoniaCNN`.
        images: Model-input images.
        labels: Their class indices.
        threshold: Decision threshold (default: the model's).

    Returns:
        ``{"n", "flagged", "threshold", "accuracy_flagged", "accuracy_unflagged"}``
        (accuracies ``None`` where no image is in the group), or ``None`` for a
        model without the flag.
    """
    if getattr(model, "ood_detector", None) is None:
        return None
    from keras_pneumonia.evaluation import decide

    probabilities, scores = model.predict_with_ood(images)
    flagged = model.ood_flags(scores)
    correct = decide(probabilities, model.threshold if threshold is None else threshold) == np.asarray(labels)

    def accuracy(mask):
        return float(correct[mask].mean()) if mask.any() else None

    return {
        "n": int(len(flagged)),
        "flagged": int(flagged.sum()),
        "threshold": float(model.ood["threshold"]),
        "accuracy_flagged": accuracy(flagged),
        "accuracy_unflagged": accuracy(~flagged),
    }


def summary_line(outside: dict[str, Any] | None) -> str:
    """`summary` as one line for ``keras-pneumonia evaluate``."""
    if outside is None:
        return "Out-of-distribution flag: this model has none."
    n, count = outside["n"], outside["flagged"]
    if not count:
        return f"Out-of-distribution flag: none of the {n} images is unlike the training population."

    def pct(value):
        return "-" if value is None else f"{value:.3f}"

    return (
        f"Out-of-distribution flag: WARNING {count} of {n} images are unlike the training population "
        f"(accuracy {pct(outside['accuracy_flagged'])} on them, {pct(outside['accuracy_unflagged'])} on the others)."
    )


def describe(config: dict[str, Any] | None) -> str:
    """One line about a model's ``ood`` config, for ``presets`` and the model card."""
    if not config:
        return "no out-of-distribution flag"
    layers = ", ".join(config["layers"])
    grid = config.get("grid_layers") or []
    where = f" and the 2 x 2 grid of {', '.join(grid)}" if grid else ""
    if config.get("input_grid"):
        where += f" and the input's {config['input_grid']} x {config['input_grid']} thumbnail"
    return f"Mahalanobis on pooled {layers}{where}; flagged above {config['threshold']:.3g}"


# For the type checker only: the mixin's methods run on a keras.Model.
if TYPE_CHECKING:
    from keras import Model as _ModelBase
else:
    _ModelBase = object


class OutOfDistributionFlag(_ModelBase):
    """Mixin for `~keras_pneumonia.PneumoniaCNN`: the flag's scores and decisions next to the predictions.

    It reads the model's ``ood`` settings and its ``ood_detector`` layer (``None``
    for a model without the flag), both set by the model from its config.
    """

    ood: dict | None
    ood_detector: Any

    def predict_with_ood(self, images, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray | None]:
        """The probabilities and the out-of-distribution scores of ``images``, in one pass.

        Args:
            images: Model-input images ``(n, h, w, channels)``, raw pixel values.
            batch_size: Images per call.

        Returns:
            ``(probabilities (n, classes), scores (n,))``; ``scores`` is ``None``
            for a model without the flag (``ood`` unset). An image is flagged when
            its score is above ``ood["threshold"]`` (`ood_flags`).
        """
        from keras_pneumonia.images import check_batch

        check_batch(self, images)
        if self.ood_detector is None:
            return np.asarray(self.predict(images, batch_size=batch_size, verbose=0)), None
        probabilities, features = joint_model(self).predict(images, batch_size=batch_size, verbose=0)
        return np.asarray(probabilities), np.asarray(self.ood_detector(features))

    def ood_scores(self, images, batch_size: int = 64) -> np.ndarray:
        """Out-of-distribution scores of model-input ``images`` (higher: less like the training images).

        Raises:
            ValueError: The model carries no flag (see `keras_pneumonia.ood.fit`).
        """
        if self.ood_detector is None:
            raise ValueError(
                f"{self.name} carries no out-of-distribution flag; fit one with keras_pneumonia.ood.fit "
                "or use a preset that has one (pneumonia_cnn_v2_ood)."
            )
        scores = self.predict_with_ood(images, batch_size)[1]
        assert scores is not None  # a model with a detector scores every image
        return scores

    def ood_flags(self, scores) -> np.ndarray:
        """``True`` where a score (`ood_scores`) is above the model's out-of-distribution threshold.

        Raises:
            ValueError: The model carries no flag.
        """
        if self.ood is None:
            raise ValueError(f"{self.name} carries no out-of-distribution flag; see `ood_scores`.")
        return np.asarray(scores) > self.ood["threshold"]
