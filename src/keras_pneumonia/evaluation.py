"""Evaluation: the report, and the decision threshold chosen on validation data.

The metrics are computed with NumPy from the confusion matrix and the ranked
probabilities, to avoid a scikit-learn dependency for a dozen lines of
arithmetic.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from keras_pneumonia.config import CLASS_NAMES

POSITIVE = 1  # label of PNEUMONIA


def roc_curve(y_true: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False positive rates, true positive rates and thresholds, from high to low.

    Each threshold ``t`` means "predict positive when score >= t"; the first
    point is ``(0, 0)`` with threshold ``inf``.
    """
    y_true = np.asarray(y_true).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    scores, y_true = scores[order], y_true[order]
    distinct = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1] if len(scores) else np.array([], int)
    tps = np.cumsum(y_true)[distinct]
    fps = (distinct + 1) - tps
    n_pos, n_neg = y_true.sum(), (~y_true).sum()
    tpr = np.r_[0.0, tps / n_pos] if n_pos else np.full(len(distinct) + 1, np.nan)
    fpr = np.r_[0.0, fps / n_neg] if n_neg else np.full(len(distinct) + 1, np.nan)
    return fpr, tpr, np.r_[np.inf, scores[distinct]]


def roc_auc(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve (ties count one half); NaN when one class is absent."""
    y_true = np.asarray(y_true).astype(bool)
    n_pos, n_neg = int(y_true.sum()), int((~y_true).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    fpr, tpr, _ = roc_curve(y_true, scores)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def youden_threshold(y_true: np.ndarray, scores: np.ndarray, one_standard_error: bool = True) -> float:
    """The decision threshold chosen by Youden's J = sensitivity + specificity - 1.

    Candidate thresholds are the midpoints between consecutive distinct scores, and
    0.5. With ``one_standard_error`` (the default), every candidate whose J is within
    one standard error of the best J counts as optimal, and the one closest to 0.5 is
    returned: the "one-standard-error rule" of model selection (Breiman et al. 1984).
    A model trained with balanced class weights already puts its equal-cost decision
    at 0.5, so the threshold moves away from 0.5 only when validation shows a clear
    gain, not for a gain of one or two images that would not carry over to new data.
    With ``one_standard_error=False`` the best J wins, ties broken towards 0.5.

    The standard error is that of J at the best threshold,
    ``sqrt(sens (1 - sens) / n_pos + spec (1 - spec) / n_neg)``.

    Args:
        y_true: Labels, 1 for PNEUMONIA.
        scores: Predicted probabilities of PNEUMONIA.
        one_standard_error: Apply the one-standard-error rule.

    Raises:
        ValueError: Only one class is present.
    """
    y_true = np.asarray(y_true).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y_true.sum()), int((~y_true).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("Choosing a threshold needs validation images of both classes.")
    distinct = np.unique(scores)
    candidates = np.unique(np.r_[(distinct[1:] + distinct[:-1]) / 2, distinct[0] / 2, (distinct[-1] + 1) / 2, 0.5])
    predicted = scores[None, :] >= candidates[:, None]
    sensitivity = (predicted & y_true).sum(axis=1) / n_pos
    specificity = (~predicted & ~y_true).sum(axis=1) / n_neg
    j = sensitivity + specificity - 1
    best = int(np.argmax(j))
    tolerance = 1e-12
    if one_standard_error:
        se = sensitivity[best] * (1 - sensitivity[best]) / n_pos + specificity[best] * (1 - specificity[best]) / n_neg
        tolerance += float(np.sqrt(se))
    good = np.flatnonzero(j >= j[best] - tolerance)
    chosen = good[np.argmin(np.abs(candidates[good] - 0.5))]
    return float(np.clip(candidates[chosen], 1e-6, 1 - 1e-6))


def positive_probability(probabilities) -> np.ndarray:
    """P(not the first class) of softmax rows ``(n, classes)``: P(PNEUMONIA), or of any pneumonia subtype.

    With two classes this is exactly the last column.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    return probabilities[:, 1:].sum(axis=1)


def decide(probabilities, threshold: float) -> np.ndarray:
    """The decision rule, in one place: positive when P(not the first class) is at least ``threshold``.

    With two classes (NORMAL, PNEUMONIA) that is the last class. With more (NORMAL,
    BACTERIAL, VIRAL) the threshold decides NORMAL or not, as for two, and a
    positive image gets the most probable of the other classes: the threshold keeps
    its meaning (the trade of sensitivity against specificity for any pneumonia).

    Args:
        probabilities: P(positive) per image, ``(n,)`` (two classes), or softmax rows ``(n, classes)``.
        threshold: The decision threshold (a model's ``threshold``).

    Returns:
        Class indices, ``(n,)``.

    >>> from keras_pneumonia.evaluation import decide
    >>> decide([0.2, 0.5, 0.9], 0.5).tolist()
    [0, 1, 1]
    >>> decide([[0.6, 0.3, 0.1], [0.4, 0.2, 0.4], [0.1, 0.8, 0.1]], 0.5).tolist()
    [0, 2, 1]
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2:
        return np.where(probabilities.reshape(-1) >= threshold, 1, 0).astype(int)
    positive = positive_probability(probabilities) >= threshold
    subtype = 1 + np.argmax(probabilities[:, 1:], axis=1)
    return np.where(positive, subtype, 0).astype(int)


def choose_threshold(model, data=None, *, scores=None, one_standard_error: bool = True, apply: bool = True) -> float:
    """Chooses a model's threshold on validation data (never the test set), by `youden_threshold`.

    Args:
        model: A `~keras_pneumonia.PneumoniaCNN` (or a model with a settable ``threshold``).
        data: Labelled validation data: a dataset of ``(images, labels)`` or an ``(x, y)`` tuple.
        scores: ``(labels, probabilities)`` already predicted on the validation data
            (`predict_proba`), instead of ``data``: the model is not run again.
        one_standard_error: Keep the threshold closest to 0.5 among those within one
            standard error of the best Youden's J (see `youden_threshold`).
        apply: Set ``model.threshold`` to it.

    Returns:
        The chosen threshold.
    """
    labels, probabilities = predict_proba(model, data) if scores is None else scores
    threshold = youden_threshold(labels, probabilities, one_standard_error=one_standard_error)
    if apply:
        model.threshold = threshold
    return threshold


def expected_calibration_error(y_true: ArrayLike, probabilities: ArrayLike, bins: int = 10) -> float:
    """Expected calibration error of the predicted probability of PNEUMONIA.

    Equal-width bins on ``[0, 1]``; the weighted mean of ``|mean(p) - fraction positive|``.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if len(y_true) == 0:
        return float("nan")
    index = np.minimum((probabilities * bins).astype(int), bins - 1)
    error = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            error += mask.mean() * abs(probabilities[mask].mean() - y_true[mask].mean())
    return float(error)


def wilson_interval(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion; ``(nan, nan)`` when ``total`` is 0."""
    if total == 0:
        return (float("nan"), float("nan"))
    p = successes / total
    denominator = 1 + z**2 / total
    centre = (p + z**2 / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z**2 / (4 * total**2)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def _ratio(a: int, b: int) -> float:
    return a / b if b else float("nan")


@dataclasses.dataclass
class EvaluationReport:
    """Metrics of a NORMAL/PNEUMONIA classifier at one threshold.

    ``confusion_matrix[i][j]`` counts images of true class ``i`` predicted as
    class ``j`` (0 = NORMAL, 1 = PNEUMONIA). Undefined ratios (e.g. specificity
    with no NORMAL image) are NaN, written ``null`` in JSON.

    With more than two classes (NORMAL and pneumonia subtypes, `from_probabilities`),
    ``accuracy`` and ``confusion_matrix`` are over every class; sensitivity,
    specificity, precision, F1, AUC and ECE are those of "any pneumonia" against
    NORMAL (the first class), and ``per_class`` gives each class's precision,
    recall, F1 and one-against-the-rest AUC.
    """

    n: int
    threshold: float
    accuracy: float
    sensitivity: float
    specificity: float
    precision: float
    f1: float
    auc: float
    ece: float
    confusion_matrix: list[list[int]]
    class_names: list[str]
    confidence_intervals: dict[str, list[float]]
    per_class: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_predictions(
        cls,
        y_true: ArrayLike,
        probabilities: ArrayLike,
        threshold: float = 0.5,
        class_names: Sequence[str] = CLASS_NAMES,
    ) -> EvaluationReport:
        """Builds the report from labels and predicted probabilities of PNEUMONIA.

        >>> from keras_pneumonia import EvaluationReport
        >>> r = EvaluationReport.from_predictions([0, 0, 1, 1], [0.1, 0.6, 0.7, 0.9])
        >>> r.accuracy, r.sensitivity, r.specificity, r.confusion_matrix
        (0.75, 1.0, 0.5, [[1, 1], [0, 2]])
        """
        labels = np.asarray(y_true, dtype=int).reshape(-1)
        scores = np.asarray(probabilities, dtype=np.float64).reshape(-1)
        if labels.shape != scores.shape:
            raise ValueError(f"{len(labels)} labels but {len(scores)} probabilities.")
        y_true, y_pred = labels, decide(scores, threshold)
        tp = int(np.sum((y_true == 1) & (y_pred == 1)))
        tn = int(np.sum((y_true == 0) & (y_pred == 0)))
        fp = int(np.sum((y_true == 0) & (y_pred == 1)))
        fn = int(np.sum((y_true == 1) & (y_pred == 0)))
        n = len(y_true)
        precision = _ratio(tp, tp + fp)
        sensitivity = _ratio(tp, tp + fn)
        f1 = _ratio(2 * tp, 2 * tp + fp + fn)
        return cls(
            n=n,
            threshold=float(threshold),
            accuracy=_ratio(tp + tn, n),
            sensitivity=sensitivity,
            specificity=_ratio(tn, tn + fp),
            precision=precision,
            f1=f1,
            auc=roc_auc(labels, scores),
            ece=expected_calibration_error(labels, scores),
            confusion_matrix=[[tn, fp], [fn, tp]],
            class_names=list(class_names),
            confidence_intervals={
                "accuracy": list(wilson_interval(tp + tn, n)),
                "sensitivity": list(wilson_interval(tp, tp + fn)),
                "specificity": list(wilson_interval(tn, tn + fp)),
            },
        )

    @classmethod
    def from_probabilities(
        cls,
        y_true: ArrayLike,
        probabilities: ArrayLike,
        threshold: float = 0.5,
        class_names: Sequence[str] = CLASS_NAMES,
    ) -> EvaluationReport:
        """Builds the report from labels and softmax rows ``(n, classes)``, two classes or more.

        >>> from keras_pneumonia import EvaluationReport
        >>> rows = [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.1, 0.6, 0.3]]
        >>> r = EvaluationReport.from_probabilities([0, 1, 2, 2], rows, 0.5, ["NORMAL", "BACTERIAL", "VIRAL"])
        >>> r.accuracy, r.sensitivity, r.confusion_matrix
        (0.75, 1.0, [[1, 0, 0], [0, 1, 0], [0, 1, 1]])
        >>> r.per_class["VIRAL"]["recall"]
        0.5
        """
        labels = np.asarray(y_true, dtype=int).reshape(-1)
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if probabilities.ndim != 2 or probabilities.shape[1] != len(class_names):
            raise ValueError(
                f"Expected probabilities of shape (n, {len(class_names)}); received {probabilities.shape}."
            )
        if len(class_names) == 2:
            return cls.from_predictions(labels, probabilities[:, -1], threshold, class_names)
        binary = cls.from_predictions((labels > 0).astype(int), positive_probability(probabilities), threshold)
        predicted = decide(probabilities, threshold)
        k, n = len(class_names), len(labels)
        confusion = np.zeros((k, k), int)
        np.add.at(confusion, (labels, predicted), 1)
        correct = int(np.trace(confusion))
        per_class = {}
        for i, name in enumerate(class_names):
            tp, true, called = int(confusion[i, i]), int(confusion[i].sum()), int(confusion[:, i].sum())
            per_class[name] = {
                "n": true,
                "precision": _ratio(tp, called),
                "recall": _ratio(tp, true),
                "f1": _ratio(2 * tp, true + called),
                "auc": roc_auc(labels == i, probabilities[:, i]),
            }
        return dataclasses.replace(
            binary,
            accuracy=_ratio(correct, n),
            confusion_matrix=confusion.tolist(),
            class_names=list(class_names),
            confidence_intervals={**binary.confidence_intervals, "accuracy": list(wilson_interval(correct, n))},
            per_class=per_class,
        )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EvaluationReport:
        """The inverse of ``to_dict`` (``None`` becomes NaN again)."""
        return cls(**{k: float("nan") if v is None else v for k, v in values.items()})  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        """The report as plain Python values (NaN becomes ``None``)."""

        def clean(value):
            if isinstance(value, float) and math.isnan(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, list):
                return [clean(v) for v in value]
            return value

        return clean(dataclasses.asdict(self))

    def to_json(self, **kwargs) -> str:
        """The report as a JSON object."""
        return json.dumps(self.to_dict(), **kwargs)

    def to_markdown(self) -> str:
        """A readable Markdown table of the metrics and the confusion matrix."""

        def fmt(value: float) -> str:
            return "n/a" if math.isnan(value) else f"{value:.4f}"

        rows = [("n", str(self.n)), ("threshold", f"{self.threshold:.4f}")]
        for key in ("accuracy", "sensitivity", "specificity"):
            low, high = self.confidence_intervals[key]
            ci = "" if math.isnan(low) else f" (95% CI {low:.3f}-{high:.3f})"
            rows.append((key, fmt(getattr(self, key)) + ci))
        rows += [(k, fmt(getattr(self, k))) for k in ("precision", "f1", "auc", "ece")]
        lines = ["| metric | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows]
        names = self.class_names
        lines += ["", f"| true \\ predicted | {' | '.join(names)} |", "| --- |" + " --- |" * len(names)]
        for name, row in zip(names, self.confusion_matrix):
            lines.append(f"| {name} | {' | '.join(map(str, row))} |")
        if self.per_class:
            lines += ["", "| class | n | precision | recall | f1 | auc |", "| --- | --- | --- | --- | --- | --- |"]
            for name, m in self.per_class.items():
                values = " | ".join(fmt(m[k]) for k in ("precision", "recall", "f1", "auc"))
                lines.append(f"| {name} | {m['n']} | {values} |")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()


def predict_proba(model, data, rows: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities of PNEUMONIA for a dataset of ``(images, labels)`` or a tuple ``(x, y)``.

    For a model of more than two classes, the probability of any class but the
    first (`positive_probability`); ``rows=True`` gives the softmax rows instead.
    Images of another size or channel count than the model's input are refused
    with a clear error (`keras_pneumonia.images.check_batch`), never silently read.
    """
    labels, probabilities = _predict_rows(model, data)
    return labels, (probabilities if rows else positive_probability(probabilities))


def _predict_rows(model, data) -> tuple[np.ndarray, np.ndarray]:
    from keras_pneumonia.images import check_batch

    if isinstance(data, tuple) and len(data) == 2:
        x, y = data
        check_batch(model, np.asarray(x))
        return np.asarray(y).reshape(-1), np.asarray(model.predict(np.asarray(x), verbose=0))
    labels: list[np.ndarray] = []
    rows: list[np.ndarray] = []
    for x, y in data:
        if not labels:
            check_batch(model, x)
        # NumPy, not the tf.data tensor: every Keras backend takes it (JAX cannot take a TF tensor).
        rows.append(np.asarray(model.predict_on_batch(np.asarray(x))))
        labels.append(np.asarray(y).reshape(-1))
    if not labels:
        classes = int(model.output_shape[-1])
        return np.zeros(0, int), np.zeros((0, classes))
    return np.concatenate(labels), np.concatenate(rows)


def evaluate(model, data, threshold: float | None = None) -> EvaluationReport:
    """Evaluates a model on labelled data.

    Args:
        model: A `~keras_pneumonia.PneumoniaCNN` (or any model whose last output column is the
            probability of PNEUMONIA).
        data: A ``tf.data.Dataset`` of ``(images, labels)`` batches, or a tuple
            ``(images, labels)`` of arrays.
        threshold: Decision threshold on the probability of PNEUMONIA; ``None``
            uses the model's own ``threshold`` (chosen on validation data at
            training time), or 0.5 for a model without one.

    Returns:
        An `EvaluationReport`.
    """
    if threshold is None:
        threshold = float(getattr(model, "threshold", 0.5))
    y_true, probabilities = predict_proba(model, data, rows=True)
    class_names = getattr(model, "class_names", CLASS_NAMES)
    if len(class_names) != probabilities.shape[-1]:  # a plain Keras model: only its last column is read
        return EvaluationReport.from_predictions(y_true, probabilities[:, -1], threshold, class_names)
    return EvaluationReport.from_probabilities(y_true, probabilities, threshold, class_names)
