"""Figures a person opens: history, ROC, reliability, confusion matrix, robustness, Grad-CAM overlays.

Each function returns a `matplotlib.figure.Figure` (built without pyplot, so
nothing pops up and no global state leaks) and saves a PNG when given a path.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from keras_pneumonia.config import CLASS_NAMES


def _figure(width: float, height: float, ncols: int = 1):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    axes = figure.subplots(1, ncols)
    return figure, axes


def _save(figure, path: str | Path | None):
    if path is not None:
        from keras_pneumonia._io import atomic_path

        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png", dpi=120)
    return figure


def read_history(path: str | Path) -> dict[str, list[float]]:
    """Reads a ``CSVLogger`` file into ``{metric: [value per epoch]}``."""
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    return {key: [float(row[key]) for row in rows] for key in (rows[0] if rows else {})}


def plot_history(history: Mapping[str, Sequence[float]] | str | Path, path: str | Path | None = None):
    """Loss, accuracy and AUC per epoch, train against validation.

    Args:
        history: ``model.fit(...).history``, a ``keras.callbacks.History``, or the
            path of a ``history.csv`` written by ``CSVLogger``.
        path: Where to save the PNG (optional).
    """
    if isinstance(history, (str, Path)):
        history = read_history(history)
    history = getattr(history, "history", history)
    metrics = [m for m in ("loss", "accuracy", "auc") if m in history]
    figure, axes = _figure(4.2 * len(metrics), 3.4, len(metrics))
    axes = np.atleast_1d(axes)
    epochs = history.get("epoch")
    for ax, metric in zip(axes, metrics):
        x = np.asarray(epochs) + 1 if epochs is not None else np.arange(1, len(history[metric]) + 1)
        ax.plot(x, history[metric], marker="o", ms=3, label="train")
        if f"val_{metric}" in history:
            ax.plot(x, history[f"val_{metric}"], marker="o", ms=3, label="validation")
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(figure, path)


def plot_roc(y_true, probabilities, path: str | Path | None = None, threshold: float | None = None):
    """ROC curve with its AUC, and the operating point of ``threshold`` if given."""
    from keras_pneumonia.evaluation import EvaluationReport, roc_auc, roc_curve

    fpr, tpr, _ = roc_curve(y_true, probabilities)
    figure, ax = _figure(4.6, 4.4)
    ax.plot(fpr, tpr, label=f"AUC = {roc_auc(y_true, probabilities):.3f}")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    if threshold is not None:
        report = EvaluationReport.from_predictions(y_true, probabilities, threshold)
        ax.plot(1 - report.specificity, report.sensitivity, "o", color="C3", label=f"threshold {threshold:.3f}")
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _save(figure, path)


def plot_reliability(
    y_true, probabilities: Mapping[str, ArrayLike], path: str | Path | None = None, bins: int = 10, title=None
):
    """Reliability diagram: observed fraction of PNEUMONIA against the predicted probability, per bin.

    Args:
        y_true: Integer labels (1 = PNEUMONIA).
        probabilities: ``{label: P(PNEUMONIA) per image}``, e.g. before and
            after calibration; each curve is labelled with its ECE.
        path: Where to save the PNG.
        bins: Equal-width bins on [0, 1], as `~keras_pneumonia.evaluation.expected_calibration_error` uses.
        title: Figure title.
    """
    from keras_pneumonia.evaluation import expected_calibration_error

    y_true = np.asarray(y_true, dtype=float).reshape(-1)
    figure, ax = _figure(4.8, 4.6)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    edges = np.linspace(0, 1, bins + 1)
    for label, scores in probabilities.items():
        p = np.asarray(scores, dtype=float).reshape(-1)
        index = np.minimum((p * bins).astype(int), bins - 1)
        filled = [b for b in range(bins) if (index == b).any()]
        mean_p = [p[index == b].mean() for b in filled]
        observed = [y_true[index == b].mean() for b in filled]
        sizes = [20 + 180 * (index == b).mean() for b in filled]
        ece = expected_calibration_error(y_true, p, bins)
        (line,) = ax.plot(mean_p, observed, "-", lw=1.2, label=f"{label}: ECE {ece:.3f}")
        ax.scatter(mean_p, observed, s=sizes, color=line.get_color(), alpha=0.7)
    ax.set_xticks(edges[:: max(1, bins // 5)])
    ax.set_xlabel("predicted P(PNEUMONIA), bin mean (dot area: share)")
    ax.set_ylabel("observed fraction PNEUMONIA")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(figure, path)


def plot_confusion_matrix(confusion_matrix, class_names: Sequence[str] = CLASS_NAMES, path: str | Path | None = None):
    """The confusion matrix as a heatmap with counts and row percentages."""
    matrix = np.asarray(confusion_matrix)
    figure, ax = _figure(4.4, 3.8)
    image = ax.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=ax)
    rows = matrix.sum(axis=1, keepdims=True)
    for (i, j), count in np.ndenumerate(matrix):
        share = count / rows[i, 0] if rows[i, 0] else 0.0
        color = "white" if count > matrix.max() / 2 else "black"
        ax.text(j, i, f"{count}\n{share:.1%}", ha="center", va="center", color=color)
    ax.set_xticks(range(len(class_names)), class_names)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return _save(figure, path)


def plot_robustness(reports, path: str | Path | None = None, title: str | None = None):
    """Flip rate and sensitivity/specificity under each perturbation, one or several models side by side.

    Args:
        reports: A `keras_pneumonia.robustness.RobustnessReport`, its ``to_dict()``,
            or a mapping ``{label: report}`` to compare models (e.g. v1 against v2).
        path: Where to save the PNG (optional).
        title: Figure title, e.g. which data set (``"test_dev (used for choices)"``).
    """
    if hasattr(reports, "results") or (isinstance(reports, Mapping) and "results" in reports):
        reports = {"": reports}
    reports = {label: getattr(r, "results", None) or r["results"] for label, r in reports.items()}
    # Every perturbation any report has, in order: older reports ran fewer (a gap where one lacks it).
    names = list(dict.fromkeys(name for results in reports.values() for name in results))
    y = np.arange(len(names))
    figure, (ax_flip, ax_rate) = _figure(11, 0.36 * len(names) + 1.6, 2)
    height = 0.8 / len(reports)
    for i, (label, results) in enumerate(reports.items()):
        offset = (i - (len(reports) - 1) / 2) * height
        flips = [100 * results[n]["flip_rate"] if n in results else np.nan for n in names]
        bars = ax_flip.barh(y + offset, flips, height=height, color=f"C{i}", label=label or None)
        ax_flip.bar_label(bars, labels=[f"{f:.1f}" if np.isfinite(f) else "" for f in flips], fontsize=7, padding=2)
        marker = "os^v"[i % 4]
        for metric, color in (("specificity", "C3"), ("sensitivity", "C2")):
            ax_rate.plot(
                [results[n][metric] if n in results else np.nan for n in names],
                y,
                marker,
                color=color,
                alpha=max(0.3, 0.9 - 0.3 * i),
                label=f"{metric} {label}".strip(),
            )
    ax_flip.axvline(5, color="grey", ls="--", lw=1)
    ax_flip.set_xlabel("flip rate (% of images whose decision changes)")
    ax_rate.set_xlabel("sensitivity / specificity at the model's threshold")
    ax_rate.set_xlim(min(0.4, ax_rate.get_xlim()[0]), 1.01)
    for ax in (ax_flip, ax_rate):
        ax.set_yticks(y, names)
        ax.invert_yaxis()
        ax.grid(alpha=0.3, axis="x")
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=8, loc="best")
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def plot_perturbations(image, path: str | Path | None = None, perturbations: Sequence[str] | None = None):
    """One X-ray under each named perturbation, resized as the model sees it (what the robustness report tests).

    Args:
        image: A ``uint8`` image ``(h, w, c)`` at its original resolution.
        path: Where to save the PNG (optional).
        perturbations: Names (default: all of `keras_pneumonia.robustness.PERTURBATIONS`).
    """
    from keras_pneumonia.images import COLOR_MODE_OF, InputConfig
    from keras_pneumonia.robustness import PERTURBATIONS, _resize, perturb

    names = ["clean", *(perturbations or PERTURBATIONS)]
    columns = 5
    rows = -(-len(names) // columns)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(2.2 * columns, 2.4 * rows), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    # Each perturbed image squashed back to the original's size, as a model's reader would.
    spec = InputConfig(image.shape[:2], COLOR_MODE_OF[image.shape[-1]])
    for ax, name in zip(axes, names):
        shown = image if name == "clean" else _resize(perturb(image, name), spec)
        ax.imshow(shown[..., 0] if shown.shape[-1] == 1 else shown, cmap="gray", vmin=0, vmax=255)
        ax.set_title(name, fontsize=9)
    for ax in axes:
        ax.axis("off")
    return _save(figure, path)


def overlay(image, heatmap: np.ndarray, alpha: float = 0.4, colormap: str = "jet") -> np.ndarray:
    """Blends a heatmap over an X-ray.

    Args:
        image: The X-ray, ``uint8`` ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)``.
        heatmap: Values in ``[0, 1]``; resized to the image if needed.
        alpha: Weight of the heatmap (0 shows only the X-ray).
        colormap: A matplotlib colormap name.

    Returns:
        An RGB ``uint8`` image of the X-ray's size.

    >>> import numpy as np
    >>> from keras_pneumonia import overlay
    >>> overlay(np.zeros((4, 4), "uint8"), np.ones((2, 2))).shape
    (4, 4, 3)
    """
    import matplotlib

    from keras_pneumonia.images import as_rgb_uint8, resize_float

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1]; received {alpha}.")
    rgb = as_rgb_uint8(image).astype(np.float32)
    heat = resize_float(np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0), *rgb.shape[:2])
    colors = matplotlib.colormaps[colormap](heat)[..., :3] * 255.0
    return np.clip((1 - alpha) * rgb + alpha * colors, 0, 255).astype(np.uint8)


def explanation_figure(
    image,
    heatmap: np.ndarray,
    *,
    label: str,
    probability: float,
    title: str | None = None,
    path: str | Path | None = None,
    alpha: float = 0.4,
):
    """The X-ray and its Grad-CAM overlay side by side, with the label and probability.

    Args:
        image: The X-ray (``uint8`` array).
        heatmap: Its heatmap in ``[0, 1]``.
        label: The predicted class name.
        probability: The probability of PNEUMONIA.
        title: Optional title (e.g. the file name).
        path: Where to save the PNG (optional).

    Returns:
        The `matplotlib.figure.Figure`.
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.figure import Figure

    from keras_pneumonia.images import as_rgb_uint8

    rgb = as_rgb_uint8(image)
    figure = Figure(figsize=(8.0, 4.4), layout="constrained")
    left, right = figure.subplots(1, 2)
    left.imshow(rgb)
    left.set_title("X-ray")
    right.imshow(overlay(rgb, heatmap, alpha=alpha))
    right.set_title("Grad-CAM")
    figure.colorbar(ScalarMappable(cmap="jet"), ax=right, fraction=0.046, pad=0.02, label="relevance")
    for ax in (left, right):
        ax.axis("off")
    figure.suptitle(f"{title + ': ' if title else ''}{label}  (P(pneumonia) = {probability:.3f})")
    if path is not None:
        from keras_pneumonia._io import atomic_path

        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png", dpi=110)
    return figure
