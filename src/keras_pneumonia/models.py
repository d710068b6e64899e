"""`PneumoniaCNN`: the model factory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from keras_pneumonia.config import CLASS_NAMES, DEFAULT_IMAGE_SIZE, MODEL_CHOICES
from keras_pneumonia.consistency import ConsistencyTraining
from keras_pneumonia.distribution import MultiWorkerFit
from keras_pneumonia.finetuning import FineTuning
from keras_pneumonia.hub import Presets, load_model  # noqa: F401  (load_model: its old home)
from keras_pneumonia.images import COLOR_MODE_OF, RESIZE_MODES, InputConfig, as_size, check_batch
from keras_pneumonia.input_check import LIMITS
from keras_pneumonia.layers import CropUniformBorders, FillDarkCorners, FillDarkEdges, PerImageStandardization
from keras_pneumonia.metrics import SparseAUC
from keras_pneumonia.mirror import Unmirror
from keras_pneumonia.ood import OutOfDistributionFlag

#: The layers' dtype policies a `PneumoniaCNN` takes (``dtype=``): float32, or mixed
#: precision with 16-bit computation and float32 weights.
DTYPE_POLICIES = MODEL_CHOICES["dtype"]

HEADS = MODEL_CHOICES["head"]
NORMALIZATIONS = MODEL_CHOICES["normalization"]
DEFAULT_CLASS_NAMES = CLASS_NAMES


@keras.saving.register_keras_serializable(package="keras_pneumonia")
class PneumoniaCNN(MultiWorkerFit, Presets, FineTuning, OutOfDistributionFlag, ConsistencyTraining, keras.Model):
    """A small convolutional network that classifies chest X-rays.

    The network is the design of the original Keras script this package grew from,
    made configurable: blocks of convolution
    (+ batch normalization, ReLU) and max-pooling, a flatten or global-pooling
    head, dense layers with dropout, and a softmax over the classes.

    Preprocessing lives inside the model: it takes **raw pixel values**
    (``0``-``255``, any dtype, any batch size, shape ``(H, W, channels)`` at the
    model's ``image_size``) and rescales them itself, so a saved model cannot be
    fed wrongly. The model is deterministic: ``model(x)``, ``model.predict(x)``
    and an exported SavedModel give the same answer. Training-time augmentation
    belongs to the input pipeline (`keras_pneumonia.augmentation`, used by
    `keras_pneumonia.training.train`).

    The class names and the decision ``threshold`` on the probability of the
    last class (PNEUMONIA) are stored in the config, so they travel with a
    ``.keras`` file.

    Args:
        image_size: Input height and width in pixels (an int for a square).
        channels: 1 for grayscale X-rays, or 3 for RGB.
        filters: Number of filters of each convolutional block; each block ends
            with a 2x2 max-pooling, so ``image_size`` must be at least
            ``2 ** len(filters)``.
        convs_per_block: Convolutions in each block before its pooling.
        dense_units: Units of each hidden dense layer of the head (may be empty).
        dropout: Dropout rate before each dense layer.
        head: ``"flatten"`` (as in the original script), ``"avg"`` or ``"max"`` (global pooling).
        normalization: ``"per_image"`` (zero mean and unit variance per image,
            robust to exposure) or ``"rescale"`` (divide by 255, as in the original script).
        augmentation: Adds 0.1.0's random rotation, translation and zoom layers
            to the graph. They run only when the model is called with
            ``training=True`` passed explicitly (as ``fit`` does), never from
            ``model(x)``, ``predict`` or an export. Kept so that 0.1.0 files
            load; new models leave it off and augment in the data pipeline.
        class_names: Names of the output classes, in label order.
        threshold: Decision threshold on the probability of the last class.
        temperature: Calibration temperature already folded into the weights
            (see the `temperature` property); stored in the config so that it
            travels with a ``.keras`` file. Leave it at ``1.0`` for a new model.
        backbone: ``None`` (the convolutional blocks above) or an ImageNet
            backbone from ``keras.applications`` in their place:
            ``"densenet121"``, ``"efficientnet_b0"`` or ``"resnet50"`` (see
            `keras_pneumonia.backbones`). Grayscale input is repeated to RGB
            and the backbone's own preprocessing runs inside the model; then
            ``filters``, ``convs_per_block`` and ``normalization`` are unused.
        resize: How images are brought to ``image_size`` (``"squash"``,
            ``"crop"`` or ``"pad"``, see `~keras_pneumonia.load_image`); saved with
            the model, so every reader resizes the way it was trained.
        input_check: Limits of the sanity check that flags inputs which are not
            plausibly chest X-rays (`keras_pneumonia.input_check`); saved with the
            model. ``None`` takes `keras_pneumonia.input_check.LIMITS`.
        ood: The out-of-distribution flag's settings (method, layers, threshold,
            dimensions), written by `keras_pneumonia.ood.fit`, which also fills the
            ``ood_detector`` weights. ``None``: no flag (``ood_scores`` refuses).
        backbone_weights: ``"imagenet"`` (downloaded by ``keras.applications``
            into ``$KERAS_HOME/models``, or found there), a path to a weights
            file of the backbone without its top, or ``None`` (random).
        dtype: The layers' dtype policy: ``None`` (Keras' global one, float32
            unless changed), ``"float32"``, ``"mixed_bfloat16"`` or
            ``"mixed_float16"`` (mixed precision: float32 weights, 16-bit
            computation). The per-image standardization and the softmax stay
            float32, so the output is float32 in every case. Saved with the
            model; ``compile`` wraps the optimizer in Keras' loss scaling for
            ``"mixed_float16"``.
        crop_borders: Cut uniform bars (collimation borders, scanner margins,
            padding) off each side of the input and stretch the rest back to the
            input size, inside the graph (`~keras_pneumonia.CropUniformBorders`),
            so borders cannot become a cue. Grad-CAM maps then cover the cropped area.
        fill_dark_edges: Fill each row's black ends (a tilted film's corners) with
            the row's nearest image pixel, inside the graph, after the border cut
            (`~keras_pneumonia.FillDarkEdges`). An experiment of release v3: measured,
            it did not stop black corners from moving decisions (docs: the experiment log, v3-k).
        unmirror: Put mirrored films the right way round inside the graph, after the
            framing layers (`~keras_pneumonia.mirror.Unmirror`): an image and its mirror
            image reach the classifier as the same image. Its small network is trained by
            `keras_pneumonia.mirror.fit` (``keras-pneumonia fit-unmirror``); untrained, it
            still makes the answer mirror-invariant but may show upright films mirrored.
        fill_dark_corners: Fill the dark regions that touch the image's corners (a
            tilted film's black corners, and a film's own dark background there) with
            the mean grey of the rest, inside the graph, after the unmirroring
            (`~keras_pneumonia.FillDarkCorners`). An experiment of release v3: measured, a
            3-epoch fine-tune with it kept more specificity under tilts but lost clean
            accuracy (docs: the experiment log, v3-z).
        **kwargs: Passed to `keras.Model` (``name``...).

    Examples:

    >>> import numpy as np
    >>> import keras_pneumonia as kp
    >>> model = kp.PneumoniaCNN(image_size=64, filters=(8, 16), dense_units=(16,))
    >>> model.compile()
    >>> images = np.random.randint(0, 256, size=(2, 64, 64, 1), dtype="uint8")
    >>> model.predict(images, verbose=0).shape
    (2, 2)
    >>> model.class_names
    ['NORMAL', 'PNEUMONIA']
    """

    def __init__(
        self,
        image_size: int | Sequence[int] = DEFAULT_IMAGE_SIZE,
        channels: int = 1,
        filters: Sequence[int] = (16, 32, 64, 128, 256),
        convs_per_block: int = 2,
        dense_units: Sequence[int] = (64,),
        dropout: float = 0.3,
        head: str = "avg",
        normalization: str = "per_image",
        augmentation: bool = False,
        class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
        threshold: float = 0.5,
        temperature: float = 1.0,
        backbone: str | None = None,
        backbone_weights: str | Path | None = "imagenet",
        resize: str = "squash",
        input_check: dict | None = None,
        ood: dict | None = None,
        dtype: str | None = None,
        crop_borders: bool = False,
        fill_dark_edges: bool = False,
        unmirror: bool = False,
        fill_dark_corners: bool = False,
        **kwargs,
    ):
        from keras_pneumonia import backbones

        image_size = as_size(image_size)
        filters = tuple(int(f) for f in filters)
        dense_units = tuple(int(u) for u in dense_units)
        class_names = [str(c) for c in class_names]
        _validate(
            image_size=image_size,
            channels=channels,
            filters=filters,
            convs_per_block=convs_per_block,
            dropout=dropout,
            head=head,
            normalization=normalization,
            class_names=class_names,
            threshold=threshold,
            temperature=float(temperature),
            backbone=backbone,
            resize=resize,
        )
        policy = _dtype_policy(dtype)

        # === Layers ===
        framing_layers = _framing_layers(crop_borders, fill_dark_edges, unmirror, fill_dark_corners)
        norm_layer = _normalization_layer(normalization)
        aug_layers = _legacy_augmentation_layers() if augmentation else []
        conv_blocks = _conv_blocks(filters, convs_per_block, policy)
        head_layers = _head_layers(head, dense_units, dropout, len(class_names), policy)
        detector = _ood_detector(ood)

        # === Functional Model ===
        inputs = keras.Input(shape=(*image_size, channels), name="image")
        x = keras.ops.cast(inputs, "float32")
        for layer in framing_layers:
            x = layer(x)
        for layer in aug_layers:
            # Recorded with training=False: `fit` overrides it with an explicit
            # training=True; a plain `model(x)` (training=None) keeps it off.
            x = layer(x, training=False)
        if backbone is None:
            x = norm_layer(x)
            for layer in (layer for block in conv_blocks for layer in block):
                x = layer(x)
            feature_layers = [layer.name for block in conv_blocks for layer in block]
        else:
            if channels == 1:
                x = keras.ops.repeat(x, 3, axis=-1)  # the backbone was trained on RGB
            weights = None if backbone_weights is None else str(backbone_weights)
            x, feature_layers = backbones.build(backbone, x, weights, dtype=policy)
        for layer in head_layers:
            x = layer(x)
        super().__init__(inputs=inputs, outputs=x, **kwargs)
        # Set after Model.__init__: on the PyTorch backend a layer is a torch Module,
        # which cannot be assigned to a Module that is not initialised yet.
        self.ood_detector = detector
        if detector is not None and all(layer is not detector for layer in self._layers):
            # Keras before 3.13 rebinds a functional model's layer list in its __init__: a layer
            # set afterwards is saved with the model but left out of `weights` (so of
            # get_weights, set_weights and count_params). Listed here, as later Keras lists it.
            self._layers.append(detector)
        # Functional drops a `dtype` argument; the policy is what `compile` reads to add
        # loss scaling for mixed_float16, and what `get_config` saves.
        try:
            self.dtype_policy = policy
        except AttributeError:  # Keras < 3.2 has no setter
            self._dtype_policy = keras.mixed_precision.DTypePolicy(policy)

        # === Config ===
        self.image_size = image_size
        self.channels = channels
        self.filters = filters
        self.convs_per_block = convs_per_block
        self.dense_units = dense_units
        self.dropout = dropout
        self.head = head
        self.normalization = normalization
        self.augmentation = augmentation
        self.class_names = class_names
        self.threshold = threshold
        # Recorded only: the weights this model will hold (a file's, or a calibrated
        # model's) already have it folded in. See the `temperature` property.
        self._temperature = float(temperature)
        self.backbone = backbone
        self.resize = resize
        self.input_check = {**LIMITS, **(input_check or {})}
        self.ood = dict(ood) if ood else None
        self.crop_borders = bool(crop_borders)
        self.fill_dark_edges = bool(fill_dark_edges)
        self.unmirror = bool(unmirror)
        self.fill_dark_corners = bool(fill_dark_corners)
        self._feature_layers = feature_layers

    def get_config(self):
        """The constructor arguments, so that ``PneumoniaCNN.from_config(config)`` rebuilds the model.

        Layers frozen with ``layer.trainable = False`` are listed under
        ``"frozen_layers"`` (as ``[position, name]``), so a model being fine-tuned keeps them frozen (and its
        optimizer state fits) after ``save``/``load_model`` or a resume.
        """
        config = {
            "name": self.name,
            "trainable": self.trainable,
            "image_size": list(self.image_size),
            "channels": self.channels,
            "filters": list(self.filters),
            "convs_per_block": self.convs_per_block,
            "dense_units": list(self.dense_units),
            "dropout": self.dropout,
            "head": self.head,
            "normalization": self.normalization,
            "augmentation": self.augmentation,
            "class_names": list(self.class_names),
            "threshold": self.threshold,
            "temperature": self.temperature,
            "backbone": self.backbone,
            # The weights travel in the file: rebuilding never downloads ImageNet weights.
            "backbone_weights": None,
            "resize": self.resize,
            "input_check": dict(self.input_check),
            "ood": self.ood,
            "dtype": self.dtype_policy.name,
            "crop_borders": self.crop_borders,
            "fill_dark_edges": self.fill_dark_edges,
            "unmirror": self.unmirror,
            "fill_dark_corners": self.fill_dark_corners,
        }
        # [position, name] pairs: the position finds the layer again, because layers that
        # keras.applications leaves unnamed get a new name ("zero_padding2d_7") every build.
        frozen = [[i, layer.name] for i, layer in enumerate(self.layers) if not layer.trainable]
        if frozen:
            config["frozen_layers"] = frozen
        return config

    @classmethod
    def from_config(cls, config):
        """Rebuilds a model (untrained) from `get_config`'s output, frozen layers included."""
        config = dict(config)
        frozen = config.pop("frozen_layers", ())
        model = cls(**config)
        for entry in frozen:
            if isinstance(entry, str):  # 0.2.0 wrote names only
                model.get_layer(entry).trainable = False
            else:
                model.layers[int(entry[0])].trainable = False
        return model

    @property
    def threshold(self) -> float:
        """Decision threshold on the probability of the last class (saved with the model).

        Setting it checks that it lies strictly between 0 and 1, so a model can
        never be saved with a threshold it would refuse to load.
        """
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self._threshold = _checked_threshold(value)

    def decide(self, probabilities) -> np.ndarray:
        """Class indices for probabilities by this model's threshold (`keras_pneumonia.evaluation.decide`).

        >>> import keras_pneumonia as kp
        >>> kp.PneumoniaCNN.from_pretrained().decide([[0.7, 0.3], [0.2, 0.8]]).tolist()
        [0, 1]
        """
        from keras_pneumonia.evaluation import decide

        return decide(probabilities, self.threshold)

    def predict(self, x, *args, **kwargs):
        """`keras.Model.predict`, after refusing input it would answer for wrongly.

        Arrays, tensors and datasets of another rank, size or channel count than the
        model's input, empty batches and NaN or infinite pixels raise a ``ValueError``
        that says what to do (`keras_pneumonia.images.check_batch`).
        """
        check_batch(self, x)
        return super().predict(x, *args, **kwargs)

    def predict_on_batch(self, x):
        """`keras.Model.predict_on_batch`, with `predict`'s input checks; a TensorFlow tensor works on every backend."""
        check_batch(self, x)
        if keras.backend.backend() != "tensorflow" and type(x).__module__.startswith("tensorflow"):
            x = np.asarray(x)  # JAX and PyTorch cannot take one (`predict` converts tf.data batches itself)
        return super().predict_on_batch(x)

    @property
    def temperature(self) -> float:
        """The calibration temperature ``T`` of the probabilities, ``softmax(logits / T)`` (saved with the model).

        ``1.0`` means uncalibrated. `keras_pneumonia.calibration.calibrate` fits
        it on validation data. It is folded into the last layer's kernel and
        bias, so ``predict``, `keras_pneumonia.evaluate`, Grad-CAM and every
        export apply it with no change to the graph; setting it rescales that
        layer from the old temperature to the new one. Training after
        calibrating trains the folded weights: calibrate again afterwards.
        """
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        value = _checked_temperature(value)
        head = self.get_layer("predictions")
        for weight in head.weights:
            weight.assign(weight * (self._temperature / value))
        self._temperature = value

    @property
    def input_config(self) -> InputConfig:
        """How images must be read for this model (size, colour mode, resize), saved with it.

        Every reader uses it: ``predict``, ``evaluate``, Grad-CAM, exports and
        `keras_pneumonia.training.train`. See `keras_pneumonia.images.InputConfig`.
        """
        return InputConfig(self.image_size, self.color_mode, self.resize)

    @property
    def color_mode(self) -> str:
        """``"grayscale"`` or ``"rgb"``: how images must be decoded for this model."""
        return COLOR_MODE_OF[self.channels]

    def compile(self, optimizer="auto", loss="auto", metrics="auto", **kwargs):
        """Configures the model for training, with the original script's defaults.

        Args:
            optimizer: ``"auto"`` gives ``keras.optimizers.Adam(1e-3)``.
            loss: ``"auto"`` gives sparse categorical cross-entropy (integer labels).
            metrics: ``"auto"`` gives accuracy and the ROC AUC of PNEUMONIA (any class but the first) (``"auc"``).
            **kwargs: Passed to `keras.Model.compile`.
        """
        if optimizer == "auto":
            optimizer = keras.optimizers.Adam(1e-3)
        if loss == "auto":
            loss = keras.losses.SparseCategoricalCrossentropy()
        if metrics == "auto":
            positive = 1 if len(self.class_names) == 2 else None  # None: any class but NORMAL
            metrics = ["accuracy", SparseAUC(positive_index=positive)]
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def compile_from_config(self, config):
        """Re-compiles a loaded model with its saved compile arguments (used by ``load_model``)."""
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)


def _ood_detector(ood: dict | None):
    """The flag's layer, or None until `keras_pneumonia.ood.fit`.

    It lies outside the classification graph: its statistics are weights saved with the
    model, read by `ood_scores` (keras_pneumonia.ood).
    """
    if not ood:
        return None
    from keras_pneumonia.ood import OutOfDistribution

    return OutOfDistribution(ood["dims"], ood["classes"], name="ood_detector")


def _normalization_layer(normalization: str):
    """The input scaling, in float32 whatever the policy: a per-image mean over 25,600 pixels in
    bfloat16 (8-bit mantissa) would be visibly off."""
    if normalization == "per_image":
        return PerImageStandardization(name="standardize", dtype="float32")
    return keras.layers.Rescaling(1.0 / 255.0, name="rescale", dtype="float32")


def _framing_layers(
    crop_borders: bool, fill_dark_edges: bool, unmirror: bool = False, fill_dark_corners: bool = False
) -> list:
    """The input normalisations before everything else: the border cut, the dark-edge fill, the unmirroring,
    the dark-corner fill (after the unmirroring, so ``Unmirror`` sees what it was trained on)."""
    layers = [CropUniformBorders(name="crop_borders", dtype="float32")] if crop_borders else []
    layers += [FillDarkEdges(name="fill_dark_edges", dtype="float32")] if fill_dark_edges else []
    # Trained by keras_pneumonia.mirror.fit alone: frozen, so no fit or weight decay moves it.
    layers += [Unmirror(name="unmirror", dtype="float32", trainable=False)] if unmirror else []
    return layers + ([FillDarkCorners(name="fill_dark_corners", dtype="float32")] if fill_dark_corners else [])


def _legacy_augmentation_layers() -> list:
    """The first release's in-graph augmentation (``augmentation=True``), kept so its files load."""
    return [
        keras.layers.RandomRotation(0.04, fill_mode="constant", name="random_rotation"),
        keras.layers.RandomTranslation(0.06, 0.06, fill_mode="constant", name="random_translation"),
        keras.layers.RandomZoom((-0.1, 0.1), fill_mode="constant", name="random_zoom"),
    ]


def _conv_blocks(filters: Sequence[int], convs_per_block: int, policy: str) -> list[list]:
    """The feature extractor: per block, ``convs_per_block`` x (convolution, batch norm, ReLU), then max-pooling."""
    # Under a tf.distribute strategy, batch statistics over the global batch (as on one
    # device), not over each replica's slice; without a strategy this changes nothing.
    # JAX's DataParallel computes them over the global batch by itself.
    sync_bn = keras.backend.backend() == "tensorflow"
    blocks = []
    for b, f in enumerate(filters, start=1):
        block = []
        for c in range(1, convs_per_block + 1):
            block += [
                keras.layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"block{b}_conv{c}", dtype=policy),
                keras.layers.BatchNormalization(name=f"block{b}_bn{c}", dtype=policy, synchronized=sync_bn),
                keras.layers.ReLU(name=f"block{b}_relu{c}", dtype=policy),
            ]
        block.append(keras.layers.MaxPooling2D(2, name=f"block{b}_pool", dtype=policy))
        blocks.append(block)
    return blocks


def _head_layers(head: str, dense_units: Sequence[int], dropout: float, classes: int, policy: str) -> list:
    """The classifier: flatten or global pooling, dense layers with dropout, a float32 softmax."""
    if head == "flatten":
        layers = [keras.layers.Flatten(name="flatten", dtype=policy)]
    elif head == "avg":
        layers = [keras.layers.GlobalAveragePooling2D(name="avg_pool", dtype=policy)]
    else:
        layers = [keras.layers.GlobalMaxPooling2D(name="max_pool", dtype=policy)]
    for i, units in enumerate(dense_units, start=1):
        layers += [
            keras.layers.Dropout(dropout, name=f"dropout{i}", dtype=policy),
            keras.layers.Dense(units, activation="relu", name=f"dense{i}", dtype=policy),
        ]
    layers.append(keras.layers.Dropout(dropout, name="output_dropout", dtype=policy))
    layers.append(keras.layers.Dense(classes, activation="softmax", dtype="float32", name="predictions"))
    return layers


def _dtype_policy(dtype: str | None) -> str:
    """The policy name for ``dtype``; ``None`` is Keras' global policy. Unknown names fail here."""
    import keras

    name = keras.mixed_precision.global_policy().name if dtype is None else getattr(dtype, "name", dtype)
    if name not in DTYPE_POLICIES:
        raise ValueError(f"`dtype` must be one of {DTYPE_POLICIES} (or None); received {dtype!r}.")
    return name


def _validate(
    *,
    image_size,
    channels,
    filters,
    convs_per_block,
    dropout,
    head,
    normalization,
    class_names,
    threshold,
    temperature,
    backbone,
    resize,
):
    from keras_pneumonia.backbones import BACKBONES

    if resize not in RESIZE_MODES:
        raise ValueError(f"`resize` must be one of {RESIZE_MODES}; received {resize!r}.")

    if backbone is not None and backbone not in BACKBONES:
        raise ValueError(f"`backbone` must be None or one of {tuple(BACKBONES)}; received {backbone!r}.")
    if backbone is not None and min(image_size) < 32:
        raise ValueError(f"A {backbone} backbone needs an `image_size` of at least 32; received {image_size}.")
    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 (grayscale) or 3 (RGB); received {channels!r}.")
    if not filters or any(f <= 0 for f in filters):
        raise ValueError(
            "`filters` must list at least one positive filter count per block, "
            f"e.g. (32, 64, 128); received {filters!r}."
        )
    min_size = 2 ** len(filters)
    if min(image_size) < min_size:
        raise ValueError(
            f"`image_size` {image_size} is too small for {len(filters)} pooling stages: "
            f"use an image_size of at least {min_size} or fewer `filters` blocks."
        )
    if convs_per_block < 1:
        raise ValueError(f"`convs_per_block` must be >= 1; received {convs_per_block!r}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1); received {dropout!r}.")
    if head not in HEADS:
        raise ValueError(f"`head` must be one of {HEADS}; received {head!r}.")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"`normalization` must be one of {NORMALIZATIONS}; received {normalization!r}.")
    if len(class_names) < 2 or len(set(class_names)) != len(class_names):
        raise ValueError(f"`class_names` must hold at least two distinct names; received {class_names!r}.")
    _checked_threshold(threshold)
    _checked_temperature(temperature)


def _checked_threshold(value) -> float:
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"`threshold` must be strictly between 0 and 1; received {value!r}.")
    return value


def _checked_temperature(value) -> float:
    value = float(value)
    if not (value > 0.0 and value < float("inf")):
        raise ValueError(f"`temperature` must be a positive number; received {value!r}.")
    return value
