"""Fine-tuning and features: `~keras_pneumonia.PneumoniaCNN` as a feature extractor and a head.

`FineTuning` is mixed into `~keras_pneumonia.PneumoniaCNN`: freeze the feature
extractor, unfreeze its top blocks, and take its pooled features for a head of
your own (``model.features(x)``, ``model.feature_extractor``), as KerasHub's
backbones and timm's ``forward_features`` offer.

Example:

>>> import numpy as np
>>> import keras_pneumonia as kp
>>> model = kp.PneumoniaCNN(image_size=64, filters=(8, 16), dense_units=(16,))
>>> model.features(np.zeros((3, 64, 64, 1), "uint8")).shape
(3, 16)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import keras
import numpy as np

from keras_pneumonia.images import check_batch

#: The names of the layer whose output is "the features", the global pooling (or flattening) that starts the head.
POOLING_LAYERS = ("avg_pool", "max_pool", "flatten")


# For the type checker only: the mixin's methods run on a keras.Model.
if TYPE_CHECKING:
    from keras import Model as _ModelBase
else:
    _ModelBase = object


class FineTuning(_ModelBase):
    """Mixin for `~keras_pneumonia.PneumoniaCNN`: the feature extractor's blocks, freezing, features.

    It reads the model's ``backbone``, ``filters``, ``convs_per_block`` and
    ``_feature_layers`` (the feature extractor's layer names, set by the model).
    """

    backbone: str | None
    filters: tuple[int, ...]
    convs_per_block: int
    _feature_layers: list[str]

    @property
    def backbone_blocks(self) -> tuple[tuple[str, ...], ...]:
        """Layer-name prefixes of the feature extractor's blocks, input to output (what `unfreeze` counts)."""
        from keras_pneumonia.backbones import BACKBONES

        if self.backbone is not None:
            return BACKBONES[self.backbone]["blocks"]
        return tuple((f"block{b}",) for b in range(1, len(self.filters) + 1))

    @property
    def gradcam_layer(self) -> str:
        """The name of the layer Grad-CAM explains by default, the feature extractor's last feature map."""
        from keras_pneumonia.backbones import BACKBONES

        if self.backbone is not None:
            return BACKBONES[self.backbone]["gradcam_layer"]
        return f"block{len(self.filters)}_conv{self.convs_per_block}"

    @property
    def feature_extractor(self) -> keras.Model:
        """A `keras.Model` from the same input to the pooled features (the head's input), sharing the weights.

        Its output is what the head's first layer (``avg_pool``, ``max_pool`` or
        ``flatten``) gives: one vector per image, ``(n, features)``. Training it
        trains this model's layers too. It is built once and kept.
        """
        cached = getattr(self, "_feature_extractor", None)
        if cached is None:
            pooling = next(self.get_layer(name) for name in POOLING_LAYERS if name in self._layer_names())
            cached = keras.Model(self.inputs, pooling.output, name=f"{self.name}_features")
            self._feature_extractor = cached
        return cached

    def features(self, x, batch_size: int = 64) -> np.ndarray:
        """The pooled features of raw images ``x`` ``(n, h, w, channels)``, as a NumPy array ``(n, features)``.

        The input is checked as `~keras_pneumonia.PneumoniaCNN.predict` checks it (size, channels, finite pixels).
        """
        check_batch(self, x)
        return np.asarray(self.feature_extractor.predict(x, batch_size=batch_size, verbose=0))

    def with_classes(self, class_names: Sequence[str]):
        """A new model with this one's trained feature extractor and a fresh head for ``class_names``.

        The layers up to the pooling keep their weights (copied: the two models share
        nothing); the dense layers and the softmax start from a new initialisation.
        The threshold goes back to 0.5 and the temperature to 1.0, and the
        out-of-distribution flag is left out (its statistics are per class): train
        the head, then choose a threshold and fit the flag again
        (`keras_pneumonia.evaluation.choose_threshold`, `keras_pneumonia.ood.fit`).
        With more than two classes the first is the negative one (NORMAL) and the
        threshold decides it against all the others (`keras_pneumonia.evaluation.decide`).

        Example:

        >>> import keras_pneumonia as kp
        >>> base = kp.PneumoniaCNN.from_pretrained(compile=False)
        >>> model = base.with_classes(["NORMAL", "BACTERIAL", "VIRAL"])
        >>> model.output_shape, model.class_names
        ((None, 3), ['NORMAL', 'BACTERIAL', 'VIRAL'])
        >>> import numpy as np
        >>> bool(np.array_equal(model.get_layer("block5_conv2").get_weights()[0],
        ...                     base.get_layer("block5_conv2").get_weights()[0]))
        True
        """
        config = self.get_config()
        config.update(class_names=[str(c) for c in class_names], threshold=0.5, temperature=1.0, ood=None)
        model = type(self).from_config(config)
        names = [layer.name for layer in self.layers]
        head_start = next(names.index(name) for name in POOLING_LAYERS if name in names)
        # By position: keras.applications backbones name some layers anew on every build.
        for old, new in zip(self.layers[:head_start], model.layers[:head_start]):
            new.set_weights(old.get_weights())
        return model

    def freeze_backbone(self) -> None:
        """Freezes the feature extractor (the convolutional blocks, or the backbone); the head stays trainable.

        Compile again afterwards, as after any change of ``trainable``. The
        frozen layers are saved with the model (see `~keras_pneumonia.PneumoniaCNN.get_config`).
        """
        for name in self._feature_layers:
            self.get_layer(name).trainable = False

    def unfreeze(self, n_blocks: int | None = None, *, batch_norm: bool = False) -> None:
        """Makes the top ``n_blocks`` blocks of the feature extractor trainable (all when ``None``).

        The blocks are those of `backbone_blocks`; lower blocks stay (or become)
        frozen, the head stays trainable. Batch-normalization layers stay frozen
        unless ``batch_norm=True``, as Keras' transfer-learning guide advises:
        their statistics come from far more images than a fine-tuning set holds.
        Compile again afterwards with a low learning rate.

        Example:

        >>> import keras_pneumonia as kp
        >>> model = kp.PneumoniaCNN.from_pretrained(compile=False)
        >>> model.freeze_backbone(); model.unfreeze(1)
        >>> len(model.trainable_weights)  # block5's two convolutions, dense1 and predictions
        6
        """
        total = len(self.backbone_blocks)
        if n_blocks is None:
            n_blocks = total
        if not 0 <= n_blocks <= total:
            raise ValueError(f"`n_blocks` must be between 0 and {total}; received {n_blocks!r}.")
        for name in self._feature_layers:
            layer = self.get_layer(name)
            in_top = self._block_index(name) >= total - n_blocks
            is_bn = isinstance(layer, keras.layers.BatchNormalization)
            layer.trainable = in_top and (batch_norm or not is_bn)

    def _block_index(self, layer_name: str) -> int:
        from keras_pneumonia.backbones import block_of

        if self.backbone is not None:
            index = block_of(self.backbone, layer_name)
            return 0 if index is None else index  # unnamed padding/rescaling layers: the stem
        return int(layer_name[len("block") :].split("_")[0]) - 1

    def _layer_names(self) -> set[str]:
        return {layer.name for layer in self.layers}
