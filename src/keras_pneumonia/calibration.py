"""Temperature scaling: probabilities that mean what they say.

A network trained with cross-entropy is often over- (or under-) confident: of
the images it gives P = 0.9, far more or fewer than 90% are PNEUMONIA.
Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural
Networks") divides the logits by one number ``T`` fitted on validation data to
minimise the negative log-likelihood. For two classes it changes no decision
at threshold 0.5 and no ROC AUC (it is monotone); other thresholds move with
the probabilities they are compared with, so `calibrate` moves the model's
threshold to the same decision boundary.

The temperature is folded into the last layer (``softmax(z / T)`` equals the
softmax of the layer with kernel and bias divided by ``T``), and recorded as
``model.temperature`` in the ``.keras`` config: ``predict``, `~keras_pneumonia.evaluate`,
Grad-CAM and every export apply it with no change to the graph.

Example:

>>> import numpy as np
>>> from keras_pneumonia.calibration import fit_temperature
>>> rng = np.random.default_rng(0)
>>> y = rng.integers(0, 2, 2000)
>>> logits = np.stack([np.zeros(2000), 6.0 * (2 * y - 1) + 6.0 * rng.normal(size=2000)], 1)  # overconfident
>>> round(fit_temperature(logits, y), 1) > 1.5
True
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# 1/T on a log grid from 1/20 to 20: the NLL is convex in 1/T, so a grid this fine
# (0.1% steps) finds the minimum to far better than the data can tell; written with
# NumPy rather than pulling in SciPy for a one-dimensional search.
_INVERSE_TEMPERATURES = np.exp(np.linspace(np.log(1 / 20), np.log(20), 6001))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean cross-entropy of ``softmax(logits / temperature)`` against integer ``labels``."""
    logits = np.asarray(logits, np.float64) / temperature
    labels = np.asarray(labels).astype(int).reshape(-1)
    return float(-_log_softmax(logits)[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature ``T`` that minimises the NLL of ``softmax(logits / T)`` (searched in [0.05, 20]).

    Args:
        logits: ``(n, classes)`` logits (log-probabilities work too).
        labels: ``(n,)`` integer labels.
    """
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels).astype(int).reshape(-1)
    if len(labels) == 0:
        raise ValueError("Cannot fit a temperature on no data.")
    picked = logits[np.arange(len(labels)), labels]
    losses = []
    for chunk in np.array_split(_INVERSE_TEMPERATURES, 12):  # (grid, n, classes) in pieces
        scaled = chunk[:, None, None] * logits[None]
        top = scaled.max(axis=-1)
        log_norm = top + np.log(np.exp(scaled - top[..., None]).sum(axis=-1))
        losses.append((log_norm - chunk[:, None] * picked[None]).mean(axis=1))
    return float(1.0 / _INVERSE_TEMPERATURES[int(np.argmin(np.concatenate(losses)))])


def predict_logits(model, data) -> tuple[np.ndarray, np.ndarray]:
    """Labels and logits (with the model's current temperature) for a dataset or an ``(x, y)`` tuple.

    The logits are computed from the last layer's inputs and weights, so they
    are exact where the softmax has saturated to 0 or 1.
    """
    import keras

    head = model.get_layer("predictions")
    features_model = keras.Model(model.inputs, head.input)
    kernel, bias = (keras.ops.convert_to_numpy(w).astype(np.float64) for w in head.weights[:2])

    def logits_of(x):
        return np.asarray(features_model.predict_on_batch(np.asarray(x)), np.float64) @ kernel + bias

    if isinstance(data, tuple) and len(data) == 2:
        x, y = data
        x = np.asarray(x)
        out = [logits_of(x[i : i + 64]) for i in range(0, len(x), 64)]
        return np.asarray(y).reshape(-1), np.concatenate(out) if out else np.zeros((0, 2))
    labels, logits = [], []
    for x, y in data:
        logits.append(logits_of(x))
        labels.append(np.asarray(y).reshape(-1))
    return np.concatenate(labels), np.concatenate(logits)


def probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / temperature)``."""
    return np.exp(_log_softmax(np.asarray(logits, np.float64) / temperature))


@dataclass(frozen=True)
class CalibrationResult:
    """What `calibrate` fitted and what it changed, on the data it was fitted on."""

    temperature: float
    previous_temperature: float
    n: int
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    threshold_before: float
    threshold_after: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def curves(self, logits: np.ndarray) -> dict[str, np.ndarray]:
        """P(PNEUMONIA) ``"before"`` and ``"after"`` the fit, from the logits it was fitted on (for a reliability plot).

        Args:
            logits: The ``(n, classes)`` logits `calibrate` was given (at the model's previous temperature).
        """
        raw = np.asarray(logits) * self.previous_temperature
        return {
            "before": probabilities(raw, self.previous_temperature)[:, -1],
            "after": probabilities(raw, self.temperature)[:, -1],
        }

    def to_text(self) -> str:
        """What changed, one line each: temperature, NLL, ECE and threshold."""
        return (
            f"temperature {self.previous_temperature:.3f} -> {self.temperature:.3f} on {self.n} validation images\n"
            f"  NLL {self.nll_before:.4f} -> {self.nll_after:.4f}\n"
            f"  ECE {self.ece_before:.4f} -> {self.ece_after:.4f}\n"
            f"  threshold {self.threshold_before:.4f} -> {self.threshold_after:.4f} (same decisions)"
        )


def compare(model, data) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    """P(PNEUMONIA) at temperature 1 and at the model's temperature, with ECE and NLL of each.

    Returns:
        ``(labels, curves, summary)``: ``curves`` maps ``"T=1 (uncalibrated)"``
        (and ``"T=<model's> (calibrated)"`` for a calibrated model) to
        probabilities, ready for `keras_pneumonia.plots.plot_reliability`;
        ``summary`` holds ``temperature`` and the ``ece`` and ``nll`` of each.
    """
    from keras_pneumonia.evaluation import expected_calibration_error

    labels, logits = predict_logits(model, data)
    temperature = float(model.temperature)
    raw = logits * temperature
    curves = {"T=1 (uncalibrated)": probabilities(raw)[:, -1]}
    summary: dict[str, Any] = {
        "temperature": temperature,
        "uncalibrated": {
            "ece": expected_calibration_error(labels, curves["T=1 (uncalibrated)"]),
            "nll": negative_log_likelihood(raw, labels),
        },
    }
    if temperature != 1.0:
        label = f"T={temperature:.3f} (calibrated)"
        curves[label] = probabilities(logits)[:, -1]
        summary["calibrated"] = {
            "ece": expected_calibration_error(labels, curves[label]),
            "nll": negative_log_likelihood(logits, labels),
        }
    return labels, curves, summary


def summary_markdown(summary: dict[str, Any]) -> str:
    """`compare`'s summary as a Markdown table of ECE and NLL."""
    rows = [f"Calibration (temperature {summary['temperature']:.3f}):", "", "| | ECE | NLL |", "|---|---:|---:|"]
    for key in ("uncalibrated", "calibrated"):
        if key in summary:
            label = "at T=1" if key == "uncalibrated" else "at the model's temperature"
            rows.append(f"| {label} | {summary[key]['ece']:.4f} | {summary[key]['nll']:.4f} |")
    return "\n".join(rows)


def _moved_threshold(threshold: float, ratio: float) -> float:
    """The probability that lies on the same logit boundary after the logits are multiplied by ``ratio``."""
    margin = np.log(threshold) - np.log1p(-threshold)
    return float(np.clip(1.0 / (1.0 + np.exp(-margin * ratio)), 1e-6, 1 - 1e-6))


def calibrate(model, data=None, *, scores=None, apply: bool = True) -> CalibrationResult:
    """Fits the temperature of a two-class model on ``data`` (its validation split) and applies it.

    Args:
        model: A `~keras_pneumonia.PneumoniaCNN`; its current temperature is taken into account,
            so calibrating twice fits the same ``T``.
        data: Labelled validation data: a ``tf.data.Dataset`` of ``(images,
            labels)`` or an ``(images, labels)`` tuple. Never the test set.
        scores: ``(labels, logits)`` already computed on it by `predict_logits`,
            instead of ``data``: the model is not run again.
        apply: Set ``model.temperature`` (and move ``model.threshold`` to the
            same decision boundary). ``False`` only measures.

    Returns:
        A `CalibrationResult` with the NLL and ECE before and after.
    """
    from keras_pneumonia.evaluation import expected_calibration_error

    if len(model.class_names) != 2:
        raise ValueError("calibrate() keeps the decision boundary of two-class models only.")
    labels, logits = predict_logits(model, data) if scores is None else scores
    previous = float(model.temperature)
    raw = logits * previous  # the logits at T = 1
    temperature = fit_temperature(raw, labels)
    before = probabilities(logits)[:, -1]
    after = probabilities(raw, temperature)[:, -1]
    threshold_after = _moved_threshold(model.threshold, previous / temperature)
    result = CalibrationResult(
        temperature=temperature,
        previous_temperature=previous,
        n=len(labels),
        nll_before=negative_log_likelihood(logits, labels),
        nll_after=negative_log_likelihood(raw, labels, temperature),
        ece_before=expected_calibration_error(labels, before),
        ece_after=expected_calibration_error(labels, after),
        threshold_before=float(model.threshold),
        threshold_after=threshold_after,
    )
    if apply:
        model.temperature = temperature
        model.threshold = threshold_after
        logger.info(
            "Temperature %.3f (was %.3f): validation ECE %.4f -> %.4f",
            temperature,
            previous,
            result.ece_before,
            result.ece_after,
        )
    return result
