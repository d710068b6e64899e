"""Grad-CAM heatmaps, built on tf-keras-vis.

On the TensorFlow backend every method is tf-keras-vis's. On JAX and PyTorch, where
tf-keras-vis cannot take gradients (it uses ``tf.GradientTape``), ``"gradcam"`` is
computed the same way with the backend's own gradient (`native_gradcam`); the tests
check that both give the same heatmaps on TensorFlow.

Their figures (`~keras_pneumonia.overlay`, `~keras_pneumonia.explanation_figure`) are in
`keras_pneumonia.plots`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from keras_pneumonia.config import MODEL_CHOICES

logger = logging.getLogger(__name__)

METHODS = MODEL_CHOICES["gradcam_method"]


def _require_tensorflow(method: str) -> None:
    import keras

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            f"Grad-CAM method {method!r} needs the TensorFlow backend (tf-keras-vis computes gradients with "
            f"tf.GradientTape), but Keras runs on {keras.backend.backend()!r}. On this backend use "
            "method='gradcam', or set KERAS_BACKEND=tensorflow before importing keras."
        )


def native_gradcam(flat, target, batch: np.ndarray, classes) -> np.ndarray:
    """Grad-CAM with the Keras backend's own gradient (JAX, PyTorch or TensorFlow), unnormalized.

    The same steps as tf-keras-vis's ``Gradcam`` with ``ReplaceToLinear`` (the
    gradient of the class's logit with respect to ``target``'s feature maps,
    averaged over the map as the channel weights, their weighted sum, a ReLU, a
    linear zoom to the input size). Written by hand because tf-keras-vis takes
    gradients with ``tf.GradientTape`` only; the model is split at ``target`` into
    two functional models so that each backend differentiates the second.

    Args:
        flat: A single-graph model (from ``gradcam``'s flattening); its last layer's
            activation is set to linear here, so pass a copy.
        target: The layer of ``flat`` to explain.
        batch: Model-input images ``(n, h, w, c)``, float32.
        classes: The class to explain for each image, ``(n,)``.

    Returns:
        ``(n, h, w)`` maps at the input's resolution, not yet scaled to ``[0, 1]``.
    """
    import keras
    from scipy.ndimage import zoom

    flat.layers[-1].activation = keras.activations.linear  # explain the logit, as ReplaceToLinear does
    features = keras.Model(flat.inputs, target.output)
    head = keras.Model(target.output, flat.output)
    maps = features(batch, training=False)
    grads = _class_gradient(lambda a: head(a, training=False), maps, np.asarray(classes, dtype="int32"))
    maps = keras.ops.convert_to_numpy(keras.ops.cast(maps, "float32"))
    weights = grads.mean(axis=(1, 2), keepdims=True)
    cam = np.maximum((maps * weights).sum(axis=-1), 0.0)
    return zoom(cam, (1, batch.shape[1] / cam.shape[1], batch.shape[2] / cam.shape[2]), order=1)


def _class_gradient(head, maps, classes: np.ndarray) -> np.ndarray:
    """d head(maps)[i, classes[i]] / d maps, summed over the batch, with the backend's autodiff."""
    import keras

    rows = np.arange(len(classes))
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        grads = jax.grad(lambda a: head(a)[rows, classes].sum())(maps)
    elif backend == "torch":
        import torch

        maps = maps.detach().clone().requires_grad_(True)
        head(maps)[torch.as_tensor(rows), torch.as_tensor(classes)].sum().backward()
        grads = maps.grad
    elif backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(maps)
            score = tf.reduce_sum(tf.gather(head(maps), classes, axis=1, batch_dims=1))
        grads = tape.gradient(score, maps)
    else:
        raise RuntimeError(f"Grad-CAM has no gradient for the Keras backend {backend!r}.")
    return keras.ops.convert_to_numpy(keras.ops.cast(grads, "float32"))


def _is_graph_model(layer) -> bool:
    """Whether a layer is a model whose graph can be walked (Sequential or functional)."""
    import keras

    return isinstance(layer, keras.Sequential) or (
        isinstance(layer, keras.Model) and hasattr(layer, "_run_through_graph")
    )


def _conv_layers(model, prefix: str = "") -> list[tuple[str, object]]:
    """Every 2D convolution, depth-first in layer order, with its path name."""
    import keras

    found = []
    for layer in model.layers:
        path = f"{prefix}{layer.name}"
        if _is_graph_model(layer):
            found += _conv_layers(layer, prefix=f"{path}/")
        elif isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D | keras.layers.SeparableConv2D):
            found.append((path, layer))
    return found


def find_last_conv_layer(model) -> str:
    """The path (``"outer/inner/conv"`` for nested models) of the last 2D convolution.

    Raises:
        ValueError: The model has no 2D convolution.
    """
    layers = _conv_layers(model)
    if not layers:
        raise ValueError(f"Model {model.name!r} has no Conv2D layer to explain; pass `layer=` explicitly.")
    return layers[-1][0]


def _flat_clone(model, target_path: str):
    """A single-graph copy of ``model`` and the copy of the layer at ``target_path``.

    tf-keras-vis needs the explained layer to be reachable from the model's
    inputs; a layer inside a nested model (a fine-tuned model wrapping
    `PneumoniaCNN` or a ``keras.applications`` backbone) is not, and
    tf-keras-vis fails there. This inlines every nested model, cloning each
    layer with its weights (the original model is left untouched), so the
    layer becomes part of one graph. It walks the graph with Keras' own
    ``Functional._run_through_graph`` (what ``Functional.call`` uses).
    """
    import functools

    import keras

    clones = {}

    def apply(op, path, *args, **kwargs):
        if _is_graph_model(op):
            return inline(op, args[0], f"{path}/")
        if not isinstance(op, keras.layers.Layer):
            return op(*args, **kwargs)  # a keras.ops operation recorded in the graph
        if isinstance(op, keras.layers.InputLayer):
            return args[0]
        config = op.get_config()
        config["name"] = path.replace("/", "__").replace(".", "_")  # PyTorch names cannot hold "."
        clone = type(op).from_config(config)
        kwargs.pop("training", None)
        out = clone(*args, **kwargs)
        clone.set_weights(op.get_weights())
        clones[path] = clone
        return out

    def inline(inner, x, prefix):
        if isinstance(inner, keras.Sequential):
            for layer in inner.layers:
                x = apply(layer, f"{prefix}{layer.name}", x)
            return x
        outputs = inner._run_through_graph(
            [x], operation_fn=lambda op: functools.partial(apply, op, f"{prefix}{op.name}")
        )
        return outputs[0] if isinstance(outputs, list | tuple) else outputs

    inputs = keras.Input(shape=model.input_shape[1:], name="image")
    flat = keras.Model(inputs, inline(model, inputs, ""))
    if target_path not in clones:
        raise ValueError(
            f"Layer {target_path!r} is not on the path from the model's input to its output; "
            f"known convolutions: {[p for p, _ in _conv_layers(model)]}."
        )
    return flat, clones[target_path]


def _model_input(model, image) -> np.ndarray:
    """One raw image (path or array of any size, 1/3/4 channels) resized to the model's input."""
    from PIL import Image

    from keras_pneumonia.images import as_rgb_uint8, convert, input_config_of

    spec = input_config_of(model)
    if isinstance(image, str | Path):
        return spec.load(image)
    array = convert(Image.fromarray(as_rgb_uint8(image)), spec.image_size, spec.color_mode, spec.resize)
    return array[..., None] if array.ndim == 2 else array


def gradcam(
    model,
    images,
    *,
    class_index: int | None = None,
    layer: str | None = None,
    method: str = "gradcam",
):
    """Grad-CAM heatmaps: where in each X-ray the evidence for a class lies.

    Built on tf-keras-vis (``Gradcam``, ``GradcamPlusPlus`` with
    ``ReplaceToLinear``, or ``Scorecam``) on the TensorFlow backend; on JAX and
    PyTorch, ``"gradcam"`` is the same computation with the backend's gradient
    (`keras_pneumonia.gradcam.native_gradcam`). Works on nested models too: a `PneumoniaCNN` or a
    ``keras.applications`` backbone inside a user's model.

    Args:
        model: A Keras model with one image input and a softmax output.
        images: One image or several: file paths, or raw ``uint8`` arrays
            (``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)``) of any size, or a batch
            array ``(n, H, W, C)``. They are resized to the model's input as the
            model expects.
        class_index: The class to explain; ``None`` explains each image's
            predicted class.
        layer: Path of the convolutional layer (``"block5_conv2"``, or
            ``"outer_model/inner_model/conv"``); ``None`` takes the model's
            ``gradcam_layer`` (a `PneumoniaCNN`'s last feature map, the right
            layer of a backbone too), else the last 2D convolution, found
            inside nested models too.
        method: ``"gradcam"`` (every backend), ``"gradcam++"`` or ``"scorecam"``
            (TensorFlow backend).

    Returns:
        Heatmaps in ``[0, 1]`` at each input image's resolution: one ``(H, W)``
        array for one image, an ``(n, H, W)`` array for a batch array, a list
        for a list of inputs.

    Raises:
        RuntimeError: ``"gradcam++"`` or ``"scorecam"`` when Keras is not on the TensorFlow backend.
        ValueError: Unknown method or layer, or an unreadable image.

    Example:

    >>> import numpy as np
    >>> import keras_pneumonia as kp
    >>> model = kp.PneumoniaCNN(image_size=64, filters=(8, 16), dense_units=())
    >>> heatmap = kp.gradcam(model, np.zeros((100, 80), "uint8"))
    >>> heatmap.shape, float(heatmap.min()) >= 0.0, float(heatmap.max()) <= 1.0
    ((100, 80), True, True)
    """
    import keras

    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}; received {method!r}.")
    if method != "gradcam":
        _require_tensorflow(method)
    single = isinstance(images, str | Path) or (isinstance(images, np.ndarray) and images.ndim in (2, 3))
    batch_array = isinstance(images, np.ndarray) and images.ndim == 4
    items = [images] if single else list(images)
    if not items:
        raise ValueError("`images` is empty.")

    originals = [_original_size(item) for item in items]
    batch = np.stack([_model_input(model, item) for item in items]).astype("float32")
    path = layer or getattr(model, "gradcam_layer", None) or find_last_conv_layer(model)
    flat, target = _flat_clone(model, path)
    # A direct call, not predict(): each call builds a new flat model, and predict()
    # would trace a new tf.function for it every time.
    probabilities = keras.ops.convert_to_numpy(flat(batch, training=False))
    if class_index is None:
        classes = probabilities.argmax(axis=-1).tolist()
    else:
        if not 0 <= class_index < probabilities.shape[-1]:
            raise ValueError(f"`class_index` must be in [0, {probabilities.shape[-1]}); received {class_index}.")
        classes = [class_index] * len(items)

    if keras.backend.backend() == "tensorflow":
        cams = _tf_keras_vis_cams(flat, target, batch, classes, method)
    else:
        cams = native_gradcam(flat, target, batch, classes)
    cams = np.asarray(cams, dtype=np.float32).reshape(len(items), *batch.shape[1:3])
    from keras_pneumonia.images import resize_float
    from keras_pneumonia.mirror import turned_round

    # A film the model turned round (PneumoniaCNN(unmirror=True)) was explained as it saw it:
    # turned back, each map lies over the film as given.
    cams = np.where(turned_round(model, batch)[:, None, None], cams[:, :, ::-1], cams)

    heatmaps = []
    for cam, (height, width) in zip(cams, originals):
        cam = resize_float(np.maximum(cam, 0.0), height, width)
        top = cam.max()
        heatmaps.append(np.clip(cam / top, 0.0, 1.0) if top > 0 else np.zeros_like(cam))
    if single:
        return heatmaps[0]
    if batch_array:
        return np.stack(heatmaps)
    return heatmaps


def _tf_keras_vis_cams(flat, target, batch: np.ndarray, classes: list[int], method: str):
    """tf-keras-vis's CAMs of ``batch`` at ``target`` (TensorFlow backend), unnormalized."""
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    if method == "scorecam":
        visualizer = Scorecam(flat, clone=False)
    else:
        cls = Gradcam if method == "gradcam" else GradcamPlusPlus
        visualizer = cls(flat, model_modifier=ReplaceToLinear(), clone=False)
    return visualizer(
        CategoricalScore(classes),
        batch,
        penultimate_layer=target,
        seek_penultimate_conv_layer=False,
        normalize_cam=False,
    )


def _original_size(image) -> tuple[int, int]:
    if isinstance(image, str | Path):
        from keras_pneumonia.images import load_image, original_size

        # From the header; an unreadable file gets load_image's error naming it.
        return original_size(image) or tuple(load_image(image).shape[:2])
    return tuple(np.asarray(image).shape[:2])
