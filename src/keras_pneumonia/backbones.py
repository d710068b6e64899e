"""ImageNet-pretrained backbones from ``keras.applications``, kept as data.

Most people who fine-tune on chest X-rays start from an ImageNet backbone:
DenseNet-121 as in CheXNet (Rajpurkar et al. 2017), EfficientNet-B0, ResNet-50.
`~keras_pneumonia.PneumoniaCNN` takes one with ``backbone="densenet121"`` (or
``"efficientnet_b0"``, ``"resnet50"``) in place of its own convolutional
blocks. Inside the model, in front of the backbone: a grayscale X-ray is
repeated to the three channels the backbone expects, and the backbone's own
``preprocess_input`` scales the raw 0-255 pixels, so the model still takes raw
pixels and cannot be fed wrongly.

Where the ImageNet weights come from: ``backbone_weights="imagenet"`` lets
``keras.applications`` download the "notop" file of `BACKBONES` (``weights_url``)
into ``$KERAS_HOME/models`` (``~/.keras/models``), verified by its hash. On a
machine without a network (an offline cluster), copy that file there first:
``keras.applications`` then finds it and does not download. Or pass its path:
``backbone_weights="/path/to/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"``.

Example:

>>> import keras_pneumonia as kp
>>> model = kp.PneumoniaCNN(backbone="efficientnet_b0", backbone_weights=None, image_size=64)
>>> model.gradcam_layer, model.backbone_blocks[-1]
('top_activation', ('block7', 'top'))
"""

from __future__ import annotations

from typing import Any

#: Name -> the ``keras.applications`` constructor, its weights file, its blocks and Grad-CAM layer.
BACKBONES: dict[str, dict[str, Any]] = {
    "densenet121": {
        "application": "DenseNet121",
        "module": "densenet",
        "description": "DenseNet-121 (CheXNet's backbone), 7.0 M parameters without the top",
        "weights_file": "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "weights_url": "https://storage.googleapis.com/tensorflow/keras-applications/densenet/",
        # Layer-name prefixes of each block, input to output: what `unfreeze(n)` counts.
        "blocks": (
            ("conv1", "pool1"),
            ("conv2", "pool2"),
            ("conv3", "pool3"),
            ("conv4", "pool4"),
            ("conv5", "bn", "relu"),
        ),
        "gradcam_layer": "relu",  # the last feature map (after the final batch norm)
    },
    "efficientnet_b0": {
        "application": "EfficientNetB0",
        "module": "efficientnet",
        "description": "EfficientNet-B0, 4.0 M parameters without the top (rescales its input itself)",
        "weights_file": "efficientnetb0_notop.h5",
        "weights_url": "https://storage.googleapis.com/keras-applications/",
        "blocks": (
            ("stem",),
            ("block1",),
            ("block2",),
            ("block3",),
            ("block4",),
            ("block5",),
            ("block6",),
            ("block7", "top"),
        ),
        "gradcam_layer": "top_activation",
    },
    "resnet50": {
        "application": "ResNet50",
        "module": "resnet50",
        "description": "ResNet-50, 23.6 M parameters without the top",
        "weights_file": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "weights_url": "https://storage.googleapis.com/tensorflow/keras-applications/resnet/",
        "blocks": (("conv1", "pool1"), ("conv2",), ("conv3",), ("conv4",), ("conv5",)),
        "gradcam_layer": "conv5_block3_out",
    },
}


def build(name: str, x, weights: str | None, dtype: str = "float32"):
    """Builds backbone ``name`` on the float32 RGB tensor ``x`` (raw 0-255) of a functional graph.

    Returns:
        ``(features, layer_names)``: the backbone's last feature map, and the
        names of its layers (for freezing).
    """
    import importlib
    import warnings

    import keras

    spec = BACKBONES[name]
    module = importlib.import_module(f"keras.applications.{spec['module']}")
    x = module.preprocess_input(x)
    # keras.applications builds its layers with the global dtype policy: set it for the build.
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(dtype)
    try:
        with warnings.catch_warnings():
            # Loading a .weights.h5 file warns once per weightless op container of the
            # graph (our preprocessing ops); the weights themselves load (tested).
            warnings.filterwarnings("ignore", message="Skipping nested container")
            backbone = getattr(keras.applications, spec["application"])(
                include_top=False, weights=weights, input_tensor=x
            )
    except ValueError as error:
        reason = str(error).splitlines()[0]  # Keras lists every layer that failed after the first line
        raise ValueError(f"Cannot load the {name} backbone weights {weights!r}: {reason}") from None
    except Exception as error:  # an unreadable file; keras' get_file raises a bare Exception offline
        raise ValueError(
            f"Cannot load the {name} backbone weights {weights!r}: {str(error).splitlines()[0]}. For 'imagenet' "
            f"without a network, place {spec['weights_file']} (from {spec['weights_url']}) in "
            "$KERAS_HOME/models (~/.keras/models), or pass its path as `backbone_weights`."
        ) from None
    finally:
        keras.mixed_precision.set_global_policy(previous)
    names = [layer.name for layer in backbone.layers if not isinstance(layer, keras.layers.InputLayer)]
    return backbone.output, names


def block_of(name: str, layer_name: str) -> int | None:
    """The index of the block (in `BACKBONES` ``blocks``) that a backbone layer belongs to."""
    for index, prefixes in enumerate(BACKBONES[name]["blocks"]):
        if any(layer_name == p or layer_name.startswith(p + "_") or _numbered(layer_name, p) for p in prefixes):
            return index
    return None


def _numbered(layer_name: str, prefix: str) -> bool:
    # EfficientNet names its layers block2a_..., block2b_...: prefix "block2" + a letter.
    rest = layer_name[len(prefix) :]
    return layer_name.startswith(prefix) and len(rest) > 1 and rest[0].isalpha() and rest[1] == "_"
