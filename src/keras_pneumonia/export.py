"""Export a trained model for serving: TensorFlow SavedModel, LiteRT (TFLite) or ONNX, verified.

The exported graph holds the preprocessing (it takes raw 0-255 pixels at the
model's input size, like the Keras model), and a JSON sidecar beside the file
records what a caller needs and the graph cannot say: class names, decision
threshold, input size, colour mode and resize rule.

Each export is loaded back with its own runtime (TensorFlow, the LiteRT
interpreter, onnxruntime) and compared with ``model.predict`` on the bundled
sample X-rays before it is moved into place; a file that disagrees by more than
``1e-4`` is never written.

Example:

>>> import tempfile
>>> import keras_pneumonia as kp
>>> from keras_pneumonia.export import export_model
>>> out = tempfile.mkdtemp() + "/pneumonia.tflite"
>>> info = export_model(kp.PneumoniaCNN.from_pretrained(), out, format="litert")
>>> info["max_abs_difference"] < 1e-4, info["class_names"]
(True, ['NORMAL', 'PNEUMONIA'])
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from keras_pneumonia._io import staging_dir
from keras_pneumonia.config import CLASS_NAMES, MODEL_CHOICES
from keras_pneumonia.presets import MODEL_FILE

logger = logging.getLogger(__name__)

#: The export formats, TensorFlow SavedModel, LiteRT (TFLite) and ONNX.
FORMATS = MODEL_CHOICES["export_format"]
TOLERANCE = 1e-4
_SUFFIXES = {"litert": ".tflite", "onnx": ".onnx"}
_EXTRA = "pip install 'keras-pneumonia[export]'"


class ExportError(RuntimeError):
    """Raised when an export cannot be made or does not agree with the Keras model."""


def sidecar_path(path: str | Path) -> Path:
    """Where the JSON sidecar of an exported file lives: ``<path>.json`` (``model.onnx.json``)."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def sample_images() -> list[Path]:
    """The bundled sample X-rays (JPEG files of several sizes) that exports are verified on."""
    folder = Path(str(resources.files("keras_pneumonia") / "assets" / "samples"))
    return sorted(folder.glob("*.jpeg"))


def decode_as_is(path: str | Path) -> np.ndarray:
    """An 8-bit image file decoded at its own size, ``(height, width, channels)`` float32: what an
    ``any_size`` export takes (grayscale files give 1 channel, colour files 3)."""
    from PIL import Image, ImageOps

    with Image.open(path) as file:
        image = ImageOps.exif_transpose(file)
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        array = np.asarray(image, dtype=np.float32)
    return array[..., None] if array.ndim == 2 else array


def with_resize(model):
    """``model`` behind a `~keras_pneumonia.SquashResize`: a Keras model that takes decoded images of any size."""
    import keras

    from keras_pneumonia.layers import SquashResize

    height, width, channels = model.input_shape[1:4]
    inputs = keras.Input(shape=(None, None, None), name="image")
    outputs = model(SquashResize(height, width, channels, name="squash_resize")(inputs))
    wrapper = keras.Model(inputs, outputs, name=f"{model.name}_any_size")
    wrapper(np.zeros((1, 8, 8, channels), "float32"))  # the ONNX exporter wants a model that has run
    return wrapper


def sample_batch(model) -> np.ndarray:
    """The bundled sample X-rays, decoded for ``model`` (float32 0-255), used to verify exports."""
    from keras_pneumonia.images import input_config_of

    spec = input_config_of(model)
    return np.stack([spec.load(p) for p in sample_images()]).astype("float32")


def _require_tensorflow(what: str):
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ExportError(
            f"{what} export needs the TensorFlow backend (KERAS_BACKEND=tensorflow); "
            f"this process runs {keras.backend.backend()}."
        )
    import tensorflow as tf

    return tf


def _export_saved_model(model, path: Path) -> None:
    _require_tensorflow("SavedModel")
    model.export(str(path), format="tf_saved_model", verbose=False)


def _export_litert(model, path: Path) -> None:
    tf = _require_tensorflow("LiteRT")
    with tempfile.TemporaryDirectory() as tmp:
        model.export(tmp + "/saved_model", format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp + "/saved_model")
        try:
            path.write_bytes(converter.convert())
        except Exception as error:  # tf.lite's ConverterError; its module path differs across versions
            if "ERROR_NEEDS_FLEX_OPS" not in str(error):
                raise
            missing = ", ".join(sorted(set(re.findall(r"'tf\.(\w+)' op is neither", str(error))))) or "some ops"
            raise ExportError(
                f"LiteRT has no built-in op for {missing} of this model: it cannot be exported to LiteRT. "
                "Export it as saved_model or onnx."
            ) from None


def _export_onnx(model, path: Path) -> None:
    _require_tensorflow("ONNX")
    try:
        import onnx  # noqa: F401
        import tf2onnx  # noqa: F401
    except ImportError:
        raise ExportError(f"ONNX export needs tf2onnx and onnx: {_EXTRA}") from None
    model.export(str(path), format="onnx", verbose=False)


def _run_saved_model(path: Path, x: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))  # keep a reference: its variables die with it
    return loaded.serve(tf.constant(x)).numpy()


def _run_litert(path: Path, x: np.ndarray) -> np.ndarray:
    import warnings

    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
        interpreter = tf.lite.Interpreter(model_path=str(path))
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def _run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    try:
        import onnxruntime
    except ImportError:
        raise ExportError(f"verifying an ONNX export needs onnxruntime: {_EXTRA}") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


_EXPORTERS = {"saved_model": _export_saved_model, "litert": _export_litert, "onnx": _export_onnx}
RUNNERS = {"saved_model": _run_saved_model, "litert": _run_litert, "onnx": _run_onnx}


def run_exported(path: str | Path, images: np.ndarray, format: str | None = None) -> np.ndarray:
    """Runs an exported model with its own runtime: ``images`` float32 ``(n, h, w, c)`` -> probabilities.

    Args:
        path: The exported file (or SavedModel folder).
        images: Raw 0-255 pixels at the model's input size.
        format: One of `FORMATS`; read from the sidecar when ``None``.
    """
    path = Path(path)
    if format is None:
        format = json.loads(sidecar_path(path).read_text())["format"]
    return RUNNERS[format](path, np.asarray(images, dtype=np.float32))


def export_model(
    model, path: str | Path, format: str = "saved_model", *, any_size: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Exports ``model``, verifies it with its own runtime, and writes the JSON sidecar.

    Args:
        model: A `~keras_pneumonia.PneumoniaCNN` (e.g. ``PneumoniaCNN.from_pretrained()``).
        path: The output: a folder for ``"saved_model"``, a ``.tflite`` file for
            ``"litert"``, a ``.onnx`` file for ``"onnx"``.
        format: ``"saved_model"``, ``"litert"`` or ``"onnx"``.
        any_size: Put the resize inside the graph (`keras_pneumonia.layers.SquashResize`):
            the export takes a decoded image as it is, any height and width, 1
            or 3 channels, and produces `~keras_pneumonia.load_image`'s pixels itself (one image
            size per batch). Verified on the bundled samples decoded at their own
            sizes against ``model.predict`` on `~keras_pneumonia.load_image`'s pixels. Only for
            models trained on squashed images (the package's default resize).
        overwrite: Replace an existing output.

    Returns:
        The sidecar's content (also written to `sidecar_path` of ``path``), with
        ``max_abs_difference`` against ``model.predict`` on the bundled samples.

    Raises:
        ValueError: Unknown format, or the output exists (without ``overwrite``).
        ExportError: A missing optional dependency, a backend that cannot export
            this format, or an export that disagrees with the Keras model.
    """
    from keras_pneumonia._io import atomic_write_text
    from keras_pneumonia._version import __version__
    from keras_pneumonia.weights import sha256sum

    if format not in FORMATS:
        raise ValueError(f"`format` must be one of {FORMATS}; received {format!r}.")
    path = Path(path)
    if format in _SUFFIXES and path.suffix != _SUFFIXES[format]:
        raise ValueError(f"A {format} export is a {_SUFFIXES[format]} file; received {path}.")
    if (path.exists() or sidecar_path(path).exists()) and not overwrite:
        raise ValueError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it.")

    from keras_pneumonia.images import input_config_of

    spec = input_config_of(model)
    if any_size and spec.resize != "squash":
        raise ValueError(
            f"any_size reproduces the 'squash' resize only; this model was trained with "
            f"resize={spec.resize!r}. Export it without any_size and resize as load_image does."
        )
    x = sample_batch(model)
    expected = np.asarray(model.predict(x, verbose=0))  # also builds a loaded model's graph
    with staging_dir(path) as tmp:
        staged = tmp / path.name
        _EXPORTERS[format](with_resize(model) if any_size else model, staged)
        if any_size:  # each sample at its own size: one run per image
            got = np.concatenate([RUNNERS[format](staged, decode_as_is(p)[None]) for p in sample_images()])
        else:
            got = RUNNERS[format](staged, x)
        difference = float(np.max(np.abs(got - expected)))
        if not difference <= TOLERANCE:
            raise ExportError(
                f"The {format} export disagrees with model.predict by {difference:.2e} (> {TOLERANCE}) on the "
                "bundled samples; nothing was written."
            )
        height, width, channels = model.input_shape[1:4]
        info = {
            "format": format,
            "file": path.name,
            "model": model.name,
            "keras_pneumonia_version": __version__,
            "class_names": list(getattr(model, "class_names", CLASS_NAMES)),
            "threshold": float(getattr(model, "threshold", 0.5)),
            "decision": "the last class when its probability >= threshold, else the first",
            "input": {
                "shape": [None, None, None, None] if any_size else [None, height, width, channels],
                "dtype": "float32",
                "pixels": "raw 0-255 (the graph normalises them)",
                "color_mode": spec.color_mode,
                "resize": (
                    f"inside the graph: any size, 1 or 3 channels, one size per batch; converted to "
                    f"{'grayscale' if channels == 1 else 'rgb'} and squashed to ({height}, {width}) with "
                    "Pillow's bilinear resample (keras_pneumonia.layers.SquashResize)"
                    if any_size
                    else f"{spec.resize} to ({height}, {width}), Pillow bilinear (keras_pneumonia.load_image)"
                ),
                "model_input_size": [height, width],
            },
            "output": "softmax probabilities over class_names, shape [None, len(class_names)]",
            "out_of_distribution": (
                None
                if getattr(model, "ood", None) is None
                else {
                    "in_graph": False,
                    "threshold": model.ood["threshold"],
                    "note": "the exported graph gives the probabilities only; the out-of-distribution flag "
                    "(keras_pneumonia.ood) needs the .keras model: model.predict_with_ood(images)",
                }
            ),
            "max_abs_difference": difference,
            "verified_on": "the bundled sample X-rays (keras_pneumonia/assets/samples)"
            + (", decoded at their own sizes" if any_size else ""),
        }
        if staged.is_file():
            info["sha256"] = sha256sum(staged)
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        staged.rename(path)
    atomic_write_text(sidecar_path(path), json.dumps(info, indent=2) + "\n")
    logger.info("Exported %s (%s), max |difference| %.1e", path, format, difference)
    return info


def export_preset(
    model_path: str | Path,
    name: str | None = None,
    output_dir: str | Path | None = None,
    *,
    description: str = "",
    metrics: dict[str, dict[str, Any]] | None = None,
) -> dict:
    """Writes a trained model as a release file and returns its metadata, ready for the registry.

    The file holds the model without optimizer state (a third of the size). The
    returned metadata has the schema of a preset folder's ``metadata.json``
    (`keras_pneumonia.presets.METADATA_SCHEMA`); add the release ``url`` to its
    ``files["model.keras"]``, paste it into `keras_pneumonia.presets`, and publish
    the file at that url (see ``docs/weights.md``).

    Args:
        model_path: The trained ``.keras`` file (e.g. ``runs/release-v1/model.keras``).
        name: The preset's name, which names the file (default: the default preset).
        output_dir: Defaults to the package's ``assets/`` folder.
        description: One paragraph on what the model is and how it was trained.
        metrics: ``{data set: {metric: value}}``.
    """
    import keras

    from keras_pneumonia._io import atomic_save_model
    from keras_pneumonia.presets import DEFAULT_PRESET

    name = DEFAULT_PRESET if name is None else name
    clean = keras.saving.load_model(model_path, compile=False, safe_mode=True)  # no optimizer state
    folder = Path(output_dir) if output_dir else Path(str(resources.files("keras_pneumonia") / "assets"))
    destination = folder / f"{name}.keras"
    atomic_save_model(clean, destination)
    metadata = preset_metadata(clean, destination, name=name, description=description, metrics=metrics)
    metadata["files"][PRESET_MODEL_FILE]["file_name"] = destination.name
    return metadata


def clone_without_optimizer(model):
    """A copy of ``model`` with the same weights (its out-of-distribution flag's too) and no optimizer state."""
    clone = type(model).from_config(model.get_config())
    clone.set_weights(model.get_weights())
    return clone


#: The files of a preset folder (`save_preset_folder`).
PRESET_MODEL_FILE = MODEL_FILE  # the registry's name for it, one spelling
PRESET_METADATA_FILE = "metadata.json"
PRESET_README_FILE = "README.md"


def save_preset_folder(
    model,
    preset_dir: str | Path,
    *,
    description: str = "",
    metrics: dict[str, dict[str, Any]] | None = None,
    license: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Writes ``model`` as a folder a model hub can hold as is (KerasHub's ``save_to_preset``).

    The folder holds ``model.keras`` (no optimizer state), ``metadata.json`` (name,
    versions, input spec, class names, threshold, temperature, the
    out-of-distribution flag's threshold, metrics with the data they were measured
    on, licence, and the model file's sha256 and size) and a generated
    ``README.md`` model card. `keras_pneumonia.PneumoniaCNN.from_preset` reads the
    folder back and refuses a ``model.keras`` whose sha256 differs from the one
    recorded. The folder is written beside its final place and renamed into it,
    so it is never seen half-written.

    Args:
        model: A `~keras_pneumonia.PneumoniaCNN`.
        preset_dir: The folder to create.
        description: One paragraph on what the model is and how it was trained.
        metrics: ``{data set: {metric: value}}``, e.g. ``{"validation (523 images)": {"auc": 0.998}}``.
        license: The licence of the weights and of the data they were trained on
            (default: the training data's, CC BY 4.0).
        overwrite: Replace an existing folder.

    Returns:
        The metadata written to ``metadata.json``.

    Raises:
        FileExistsError: ``preset_dir`` exists and ``overwrite`` is off.
    """
    from keras_pneumonia._io import atomic_save_model

    preset_dir = Path(preset_dir)
    if preset_dir.exists() and not overwrite:
        raise FileExistsError(f"{preset_dir} already exists; pass overwrite=True to replace it.")
    preset_dir.parent.mkdir(parents=True, exist_ok=True)
    with staging_dir(preset_dir) as staging:
        atomic_save_model(clone_without_optimizer(model), staging / PRESET_MODEL_FILE)
        metadata = preset_metadata(
            model,
            staging / PRESET_MODEL_FILE,
            name=model.name,
            description=description,
            metrics=metrics,
            license=license,
        )
        (staging / PRESET_METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
        (staging / PRESET_README_FILE).write_text(preset_readme(metadata), encoding="utf-8")
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp's folder is private; a preset folder is for sharing
        if preset_dir.exists():
            shutil.rmtree(preset_dir)
        staging.rename(preset_dir)
    return metadata


def preset_metadata(
    model,
    model_path: Path,
    *,
    name: str,
    description: str = "",
    metrics: dict[str, dict[str, Any]] | None = None,
    license: str | None = None,
) -> dict[str, Any]:
    """The metadata of a preset (`keras_pneumonia.presets.METADATA_SCHEMA`): a folder's or a release's.

    Args:
        model: The `~keras_pneumonia.PneumoniaCNN` saved at ``model_path``.
        model_path: Its saved file, whose sha256 and size are recorded.
        name: The preset's name.
        description: One paragraph on the model.
        metrics: ``{data set: {metric: value}}``.
        license: Default: the training data's (CC BY 4.0).
    """
    import keras

    from keras_pneumonia._version import __version__
    from keras_pneumonia.presets import DATA_LICENSE, check_metadata
    from keras_pneumonia.weights import sha256sum

    metadata = {
        "name": name,
        "description": description,
        "keras_pneumonia_version": __version__,
        "keras_version": keras.__version__,
        "params": int(model.count_params()),
        "input": model.input_config.to_dict(),
        "class_names": list(model.class_names),
        "threshold": float(model.threshold),
        "temperature": float(model.temperature),
        "ood_threshold": None if model.ood is None else float(model.ood["threshold"]),
        "metrics": dict(metrics or {}),
        "license": license or DATA_LICENSE,
        "files": {PRESET_MODEL_FILE: {"sha256": sha256sum(model_path), "size": model_path.stat().st_size}},
    }
    return check_metadata(metadata, name)


def preset_readme(metadata: dict[str, Any]) -> str:
    """The model card of a preset folder, in Markdown, from its ``metadata.json``."""
    size = metadata["input"]["image_size"]
    lines = [
        f"# {metadata['name']}",
        "",
        metadata["description"] or "A keras-pneumonia `PneumoniaCNN`.",
        "",
        "Research and education only: not a medical device.",
        "",
        "## Use",
        "",
        "```python",
        "import keras_pneumonia as kp",
        "",
        'model = kp.PneumoniaCNN.from_preset("path/to/this/folder")  # checks model.keras against metadata.json',
        'image = model.input_config.load("xray.jpeg")  # read the way the model was trained',
        "print(model.predict(image[None]))  # [[P(NORMAL), P(PNEUMONIA)]]",
        "```",
        "",
        "## Input and output",
        "",
        f"- input: {size[0]}x{size[1]} {metadata['input']['color_mode']}, raw pixel values 0-255, "
        f"resized by `{metadata['input']['resize']}` (`model.input_config.load` reads a file that way)",
        f"- classes: {', '.join(metadata['class_names'])}; decision threshold {metadata['threshold']:.4g} "
        f"on P({metadata['class_names'][-1]})",
        f"- calibration temperature: {metadata['temperature']:.4g}",
        "- out-of-distribution flag: "
        + (
            "none"
            if metadata["ood_threshold"] is None
            else f"Mahalanobis score above {metadata['ood_threshold']:.4g} (a warning in every output)"
        ),
        f"- parameters: {metadata['params']:,}",
        "",
    ]
    if metadata["metrics"]:
        lines += ["## Metrics", "", "| data | metric | value |", "| --- | --- | --- |"]
        for data, values in metadata["metrics"].items():
            lines += [f"| {data} | {name} | {value:.4g} |" for name, value in values.items()]
        lines.append("")
    lines += [
        "## Licence",
        "",
        metadata["license"],
        "",
        f"Written by keras-pneumonia {metadata['keras_pneumonia_version']} (Keras {metadata['keras_version']}); "
        f"`model.keras` sha256 `{metadata['files'][PRESET_MODEL_FILE]['sha256']}`.",
        "",
    ]
    return "\n".join(lines)
