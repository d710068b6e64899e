"""keras-pneumonia: detect pneumonia in chest X-rays with Keras 3.

The public API::

    import keras_pneumonia as kp

    model = kp.PneumoniaCNN.from_pretrained()      # released weights, offline
    data = kp.load_chest_xray("chest_xray/")       # patient-disjoint split
    report = kp.evaluate(model, data.val)          # accuracy, AUC, sensitivity...
    heatmaps = kp.gradcam(model, images)           # why it decided

Heavy optional modules (matplotlib, tf-keras-vis, Pillow) are imported only when used.
"""

from keras_pneumonia import callbacks, plots, weights
from keras_pneumonia._version import __version__
from keras_pneumonia.augmentation import Augmentation
from keras_pneumonia.data import BadImageError, ChestXrayData, LayoutError, load_chest_xray, load_image
from keras_pneumonia.evaluation import EvaluationReport, evaluate
from keras_pneumonia.gradcam import explanation_figure, gradcam, overlay
from keras_pneumonia.layers import PerImageStandardization, SquashResize
from keras_pneumonia.metrics import SparseAUC
from keras_pneumonia.models import PneumoniaCNN
from keras_pneumonia.robustness import RobustnessReport, evaluate_robustness

__all__ = [
    "Augmentation",
    "BadImageError",
    "ChestXrayData",
    "EvaluationReport",
    "LayoutError",
    "PerImageStandardization",
    "PneumoniaCNN",
    "RobustnessReport",
    "SparseAUC",
    "SquashResize",
    "__version__",
    "callbacks",
    "evaluate",
    "evaluate_robustness",
    "explanation_figure",
    "gradcam",
    "load_chest_xray",
    "load_image",
    "overlay",
    "plots",
    "weights",
]
