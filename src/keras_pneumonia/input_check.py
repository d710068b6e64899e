"""Is this plausibly a chest X-ray? A warning flag instead of a confident answer.

A classifier answers whatever it is given: a blank image, noise, a 1x1 file or
an inverted X-ray can all get P(pneumonia) near 1.000. `check_input` measures
a few properties of the image the model sees (its model-input pixels, and its
size on disk) and names each one that no real X-ray of the training data shows.
The answer is still given, with the flag beside it in every output
(``keras-pneumonia predict`` text, JSON and CSV; ``evaluate`` counts;
`~keras_pneumonia.prediction.predict_files` rows).

The limits (`LIMITS`) were set beyond every one of the 5,216 images of the
official training split at 160 px (measured with ``python benchmarks/input_check.py``,
which also reports how many real X-rays each rule flags), with a margin:

==========================  =============================  ==========================
property                    training images (min / max)    flagged when
==========================  =============================  ==========================
side of the file in pixels  224 (the squashed set)          below ``min_side`` (64)
pixel std (0-255)           19.6 / 87.1                    below ``min_std`` (12)
mean (0-255)                60.7 / 221.5                   outside 35-235
roughness                   0.039 / 0.159                  above ``max_roughness`` (0.35)
polarity                    -0.16 / 2.00                   below ``min_polarity`` (-0.3)
colour of the file          0.0 / 0.0                      above ``max_chroma`` (8)
==========================  =============================  ==========================

*Roughness* is the mean absolute difference between neighbouring pixels over
the standard deviation (noise is rough, X-rays are smooth). *Polarity* is the
mean of the central vertical strip (spine and heart) minus that of the two lung
fields, over the standard deviation: positive on an X-ray, negative when
inverted. A weakly contrasted X-ray can invert to a polarity above the limit,
so not every inverted X-ray is caught; every made-up bad input of the tests is. *Colour* is the
mean spread between the red, green and blue values of a pixel of the file
(`~keras_pneumonia.images.chroma`): an X-ray is grey, whatever its file's colour mode,
and a grayscale model would otherwise read a photo or a false-colour picture
without a word.

Example:

>>> import numpy as np
>>> from keras_pneumonia import check_input
>>> check_input(np.full((160, 160, 1), 128, "uint8"))
['near-uniform image (pixel std 0.0 < 12)']
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

#: The limits of `check_input` (see the module docs for how they were measured).
LIMITS: dict[str, float] = {
    "min_side": 64,
    "min_std": 12.0,
    "min_mean": 35.0,
    "max_mean": 235.0,
    "max_roughness": 0.35,
    "min_polarity": -0.3,
    "max_chroma": 8.0,
}


def measure(image: np.ndarray) -> dict[str, float]:
    """The properties `check_input` judges, of one model-input image (``uint8`` ``(h, w)`` or ``(h, w, c)``)."""
    a = np.asarray(image, dtype=np.float32)
    if a.ndim == 3:
        a = a.mean(axis=-1)
    h, w = a.shape
    std = float(a.std())
    gradient = (np.abs(np.diff(a, axis=0)).mean() + np.abs(np.diff(a, axis=1)).mean()) / 2 if min(h, w) > 1 else 0.0
    rows = slice(int(0.2 * h), max(int(0.8 * h), int(0.2 * h) + 1))
    centre = a[rows, int(0.4 * w) : max(int(0.6 * w), int(0.4 * w) + 1)].mean()
    lungs = np.concatenate(
        [a[rows, int(0.1 * w) : max(int(0.3 * w), 1)].ravel(), a[rows, int(0.7 * w) : max(int(0.9 * w), 1)].ravel()]
    ).mean()
    return {
        "mean": float(a.mean()),
        "std": std,
        "roughness": float(gradient / (std + 1e-6)),
        "polarity": float((centre - lungs) / (std + 1e-6)),
    }


def check_input(
    image: np.ndarray,
    original_size: tuple[int, int] | None = None,
    limits: Mapping[str, float] | None = None,
    chroma: float | None = None,
) -> list[str]:
    """The reasons one image is not plausibly a chest X-ray (empty when it is).

    Args:
        image: The model-input image, ``uint8``.
        original_size: ``(height, width)`` of the file before resizing, if known.
        limits: Override some of `LIMITS`.
        chroma: The file's colour (`keras_pneumonia.images.chroma`), if known.
    """
    limits = {**LIMITS, **(limits or {})}
    reasons = []
    if original_size is not None and min(original_size) < limits["min_side"]:
        reasons.append(f"tiny image ({original_size[0]}x{original_size[1]} < {limits['min_side']:g} px)")
    if chroma is not None and chroma > limits["max_chroma"]:
        reasons.append(f"colour image (colour {chroma:.0f} > {limits['max_chroma']:g}); X-rays are grey")
    stats = measure(image)
    if stats["std"] < limits["min_std"]:
        reasons.append(f"near-uniform image (pixel std {stats['std']:.1f} < {limits['min_std']:g})")
        return reasons  # roughness and polarity mean nothing without contrast
    if not limits["min_mean"] <= stats["mean"] <= limits["max_mean"]:
        reasons.append(
            f"exposure out of range (mean {stats['mean']:.0f} outside {limits['min_mean']:g}-{limits['max_mean']:g})"
        )
    if stats["roughness"] > limits["max_roughness"]:
        reasons.append(f"noise-like texture (roughness {stats['roughness']:.2f} > {limits['max_roughness']:g})")
    if stats["polarity"] < limits["min_polarity"]:
        reasons.append(f"inverted polarity? (centre darker than the lung fields, {stats['polarity']:.2f})")
    return reasons


def summarize(images: Iterable[np.ndarray], limits: Mapping[str, float] | None = None) -> dict[str, Any]:
    """How many of ``images`` (model inputs) are not plausibly chest X-rays, and why.

    Returns:
        ``{"n": images, "flagged": flagged images, "reasons": {kind: count}}``,
        a reason's kind being its text before the figures ("tiny image").
    """
    reasons: dict[str, int] = {}
    n = flagged = 0
    for image in images:
        found = check_input(image, limits=limits)
        n += 1
        flagged += bool(found)
        for reason in found:
            kind = reason.split(" (")[0]
            reasons[kind] = reasons.get(kind, 0) + 1
    return {"n": n, "flagged": flagged, "reasons": reasons}


def summary_line(summary: Mapping[str, Any]) -> str:
    """`summarize`'s result as one sentence."""
    if not summary["flagged"]:
        return f"Input check: none of the {summary['n']} images flagged as implausible chest X-rays."
    kinds = ", ".join(f"{k}: {v}" for k, v in sorted(summary["reasons"].items()))
    return (
        f"Input check: WARNING {summary['flagged']} of {summary['n']} images are not plausible chest X-rays ({kinds})."
    )
