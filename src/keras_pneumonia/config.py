"""One home for the defaults and the allowed choices, without Keras.

The library (`~keras_pneumonia.PneumoniaCNN`, `~keras_pneumonia.load_chest_xray`,
`keras_pneumonia.training.train`), the command line and ``run.json`` read them from
here, so changing a default (the input size, the seed) is one edit and every command
follows, and the command line's choices cannot drift from the library's.

Example:

>>> from keras_pneumonia.config import TrainConfig
>>> TrainConfig().image_size, TrainConfig(schedule="cosine").schedule
(160, 'cosine')
>>> TrainConfig(schedule="linear")
Traceback (most recent call last):
...
ValueError: `schedule` must be one of ('plateau', 'cosine'); received 'linear'.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

#: Input height and width of new models and data sets, in pixels.
DEFAULT_IMAGE_SIZE = 160
#: The seed of the patient split, the initialisation, the augmentation and the shuffling.
#: 1337 is the value the project has used since its first script, so runs stay comparable.
DEFAULT_SEED = 1337
#: The largest training input size accepted, in pixels; above it one batch no longer fits
#: a workstation's memory. The smallest depends on the architecture, which checks it.
MAX_IMAGE_SIZE = 1024
#: The allowed values of each model, explanation and export choice (the modules and the
#: command line read them here, so the two cannot drift).
MODEL_CHOICES: dict[str, tuple] = {
    "head": ("flatten", "avg", "max"),
    "normalization": ("per_image", "rescale"),
    "backbone": ("densenet121", "efficientnet_b0", "resnet50"),
    "channels": (1, 3),
    "dtype": ("float32", "mixed_bfloat16", "mixed_float16"),
    "gradcam_method": ("gradcam", "gradcam++", "scorecam"),
    "export_format": ("saved_model", "litert", "onnx"),
}
#: The class names of the released models, in label order.
CLASS_NAMES: tuple[str, ...] = ("NORMAL", "PNEUMONIA")
#: The labellings `keras_pneumonia.load_chest_xray` (``classes=``) and ``train --classes`` know:
#: ``"subtype"`` splits PNEUMONIA by the Kaggle file names' ``bacteria`` / ``virus``.
CLASS_SETS: dict[str, tuple[str, ...]] = {
    "binary": CLASS_NAMES,
    "subtype": ("NORMAL", "BACTERIAL", "VIRAL"),
}
#: The allowed values of each training choice (and of the command line's flags).
CHOICES: dict[str, tuple[str, ...]] = {
    "kaggle_val": ("pool", "keep"),
    "callbacks": ("default", "fine_tune"),
    "augmentation": (
        "strong",
        "mixed",
        "robust",
        "robust_no_flip",
        "robust_reframe",
        "robust_reframe_flip",
        "robust_reframe_tilt",
        "light",
        "none",
    ),
    "schedule": ("plateau", "cosine"),
    "classes": ("binary", "subtype"),
    "resize": ("squash", "crop", "pad"),
    "pipeline": ("auto", "memory", "stream"),
    "distribute": ("none", "mirrored", "multi-worker", "data-parallel"),
    "mixed_precision": ("none", "bfloat16", "float16"),
}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The settings of one training run, with their defaults, checked on creation.

    ``keras_pneumonia.training.train`` takes the same names as keyword arguments and
    records the resolved settings in ``run.json``; ``keras-pneumonia train`` takes
    its defaults and choices from here.

    Args:
        epochs: Maximum number of epochs.
        image_size: Square input size in pixels.
        resize: How images are brought to that size: ``"squash"``, ``"crop"`` or ``"pad"``.
        batch_size: Batch size.
        validation_split: Fraction of the training data, by patient, for validation.
        seed: Seeds the split, the initialisation, the augmentation and the shuffling.
        split_seed: Seeds the split only (``None``: ``seed``).
        kaggle_val: What to do with a ``val/`` folder: ``"pool"`` or ``"keep"``.
        learning_rate: Initial learning rate.
        callbacks: Callback preset (see `keras_pneumonia.callbacks`).
        augmentation: Augmentation preset (see `keras_pneumonia.augmentation`).
        schedule: ``"plateau"`` or ``"cosine"``.
        weight_decay: Decoupled weight decay (AdamW) when above 0.
        ema: Keep an exponential moving average of the weights.
        threshold: ``"youden"`` (chosen on validation) or a number in (0, 1).
        class_weight: Balance the classes in the loss.
        pipeline: ``"auto"``, ``"memory"`` or ``"stream"`` (see `keras_pneumonia.load_chest_xray`).
        distribute: ``"none"``, ``"mirrored"``, ``"multi-worker"`` or ``"data-parallel"``
            (see `keras_pneumonia.distribution`).
        mixed_precision: ``"none"`` (float32), ``"bfloat16"`` or ``"float16"``: the
            model's ``dtype`` becomes ``"mixed_bfloat16"`` or ``"mixed_float16"``.
        ood_flag: Fit the out-of-distribution flag (`keras_pneumonia.ood`) on the
            train and validation parts after training, so the model carries it.
        classes: ``"binary"`` (NORMAL, PNEUMONIA) or ``"subtype"`` (NORMAL, BACTERIAL,
            VIRAL, from the file names; `CLASS_SETS`).
        init_weights: Start from the weights of a trained model (a preset name, a
            ``.keras`` path, a URL or a hub handle) instead of a random initialisation;
            its layers must have the same names and shapes as the new model's (the
            same architecture; ``crop_borders`` and the input size may differ).
        consistency_weight: Above 0: pair each batch with a copy tilted by up to
            ``consistency_degrees`` (black corners in view) and add the copy's
            cross-entropy and this weight times KL(batch || copy) to the loss
            (`keras_pneumonia.consistency`; TensorFlow backend). ``0``: off.
        consistency_degrees: Largest tilt of the copies, in degrees.
        consistency_crop: Above 0: the copies are also zoomed in, cutting up to this
            fraction from each border (``0.1``: as the robustness report's ``crop_10``).
    """

    epochs: int = 30
    image_size: int = DEFAULT_IMAGE_SIZE
    resize: str = "squash"
    batch_size: int = 32
    validation_split: float = 0.1
    seed: int = DEFAULT_SEED
    split_seed: int | None = None
    kaggle_val: str = "pool"
    learning_rate: float = 1e-3
    callbacks: str = "default"
    augmentation: str = "strong"
    schedule: str = "plateau"
    weight_decay: float = 0.0
    ema: bool = False
    threshold: float | str = "youden"
    class_weight: bool = True
    pipeline: str = "auto"
    distribute: str = "none"
    mixed_precision: str = "none"
    ood_flag: bool = True
    classes: str = "binary"
    init_weights: str | Path | None = None
    consistency_weight: float = 0.0
    consistency_degrees: float = 8.0
    consistency_crop: float = 0.0

    @classmethod
    def from_namespace(cls, namespace: Any) -> TrainConfig:
        """The settings of an object with one attribute per field (``keras-pneumonia train``'s parsed arguments)."""
        return cls(**{field.name: getattr(namespace, field.name) for field in dataclasses.fields(cls)})

    def __post_init__(self):
        if self.init_weights is not None:  # a Path too; run.json records it as text
            object.__setattr__(self, "init_weights", str(self.init_weights))
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"`{name}` must be one of {allowed}; received {value!r}.")
        for name in ("epochs", "image_size", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer; received {getattr(self, name)!r}.")
        if self.image_size > MAX_IMAGE_SIZE:
            raise ValueError(
                f"`image_size` must be at most {MAX_IMAGE_SIZE} pixels; received "
                f"{self.image_size} (a batch of {self.batch_size} at that size would need "
                f"{self.batch_size * self.image_size**2 * 4 / 2**30:.1f} GiB for the input alone)."
            )
        if not 0.0 < self.validation_split < 1.0:
            raise ValueError(f"`validation_split` must be in (0, 1); received {self.validation_split!r}.")
        if not self.learning_rate > 0 or self.weight_decay < 0:
            raise ValueError("`learning_rate` must be positive and `weight_decay` non-negative.")
        if not self.consistency_weight >= 0 or not 0 < self.consistency_degrees <= 45:
            raise ValueError(
                "`consistency_weight` must be 0 or more and `consistency_degrees` in (0, 45]; received "
                f"{self.consistency_weight!r} and {self.consistency_degrees!r}."
            )
        if not 0 <= self.consistency_crop <= 0.25:
            raise ValueError(f"`consistency_crop` must be in [0, 0.25]; received {self.consistency_crop!r}.")
        threshold = self.threshold
        if threshold != "youden" and not (isinstance(threshold, (int, float)) and 0.0 < threshold < 1.0):
            raise ValueError(
                f"`threshold` must be 'youden' or a number strictly between 0 and 1; received {threshold!r}."
            )

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict (what ``run.json`` records)."""
        return dataclasses.asdict(self)


#: A `TrainConfig` with every default.
DEFAULTS = TrainConfig()
