"""keras-pneumonia: detect pneumonia in chest X-rays with Keras 3.

The public API::

    import keras_pneumonia as kp

    model = kp.PneumoniaCNN.from_pretrained()      # released weights, offline
    data = kp.load_chest_xray("chest_xray/")       # patient-disjoint split
    report = kp.evaluate(model, data.val)          # accuracy, AUC, sensitivity...
    heatmaps = kp.gradcam(model, images)           # why it decided

Heavy optional modules (matplotlib, tf-keras-vis, Pillow) are imported only when used.
"""

import os as _os
import sys as _sys

from keras_pneumonia._version import __version__ as __version__

# Public name -> the module that defines it ("" for a submodule of its own).
_EXPORTS = {
    "Augmentation": "keras_pneumonia.augmentation",
    "BadImageError": "keras_pneumonia.data",
    "ChestXrayData": "keras_pneumonia.data",
    "CropUniformBorders": "keras_pneumonia.layers",
    "EvaluationReport": "keras_pneumonia.evaluation",
    "FillDarkCorners": "keras_pneumonia.layers",
    "FillDarkEdges": "keras_pneumonia.layers",
    "LayoutError": "keras_pneumonia.data",
    "PerImageStandardization": "keras_pneumonia.layers",
    "PneumoniaCNN": "keras_pneumonia.models",
    "RobustnessReport": "keras_pneumonia.robustness",
    "SparseAUC": "keras_pneumonia.metrics",
    "SquashResize": "keras_pneumonia.layers",
    "Unmirror": "keras_pneumonia.mirror",
    "callbacks": "",
    "check_input": "keras_pneumonia.input_check",
    "download_chest_xray": "keras_pneumonia.data",
    "evaluate": "keras_pneumonia.evaluation",
    "evaluate_robustness": "keras_pneumonia.robustness",
    "explanation_figure": "keras_pneumonia.plots",
    "gradcam": "keras_pneumonia.gradcam",
    "upload_preset": "keras_pneumonia.hub",
    "load_chest_xray": "keras_pneumonia.data",
    "load_image": "keras_pneumonia.images",
    "overlay": "keras_pneumonia.plots",
    "plots": "",
    "weights": "",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str):
    """Imports a public name on first use (PEP 562); see `_launched_as_cli`."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'keras_pneumonia' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(_EXPORTS[name] or f"keras_pneumonia.{name}")
    value = module if not _EXPORTS[name] else getattr(module, name)
    globals()[name] = value
    return value


def _launched_as_cli() -> bool:
    """True when this import starts the command line (``keras-pneumonia``, ``python -m keras_pneumonia``).

    The command line parses its arguments before anything needs Keras, so
    ``--help`` and ``--version`` answer in a fraction of a second and without
    TensorFlow's log lines; each command imports what it uses. Every other
    import loads the whole API at once, so that Keras knows the model classes
    (``keras.saving.load_model`` finds ``PneumoniaCNN`` right after ``import
    keras_pneumonia``).
    """
    argv0 = _os.path.basename(_sys.argv[0]) if _sys.argv else ""
    if argv0 in ("keras-pneumonia", "keras-pneumonia.exe"):
        return True
    # While `python -m keras_pneumonia` imports the package, sys.argv[0] is "-m".
    return argv0 == "-m" and "keras_pneumonia" in getattr(_sys, "orig_argv", [])


if not _launched_as_cli():
    for _name in _EXPORTS:
        __getattr__(_name)
