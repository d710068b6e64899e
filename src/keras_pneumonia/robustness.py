"""Robustness report: how a model's answers change when the same X-rays are framed or exposed differently.

Every hospital frames, exposes, compresses and digitises its films differently,
and none of that changes a radiologist's reading. Each named perturbation below
models one such difference. It is applied to the image **at its original
resolution** (as the film would have arrived), which is then resized to the
model's input exactly as clean images are (`keras_pneumonia.load_image`,
``squash``).

=======================  ==========================================================================
name                     what it models
=======================  ==========================================================================
``crop_5``               tighter framing: 5% of the width/height cut from each border
``crop_10``              much tighter framing: 10% cut from each border
``pad_5``                looser framing: a black border of 5% of the size added on each side
``pad_10``               a black border of 10% on each side (letterboxed or small film)
``aspect_+10``           anatomy 10% wider in the same frame (non-square pixels, a different
                         digitiser; the frame's own aspect ratio is undone by the squash resize)
``aspect_-10``           anatomy 10% narrower in the same frame (black side borders)
``gamma_0.7``            a brighter tone curve (``255 * (x / 255) ** 0.7``): another film or LUT
``gamma_1.4``            a darker tone curve (gamma 1.4)
``contrast_+30``         30% more contrast about the mean grey level (clipped to 0-255)
``contrast_-30``         30% less contrast (a flatter, foggier film)
``blur``                 Gaussian blur, sigma 0.6% of the image width (about 1 px at the model's
                         160 px): a softer detector, motion, or a lower-resolution scan
``jpeg_30``              re-saved as JPEG at quality 30 (PACS exports, e-mailed images)
``rotate_+5``            rotated 5 degrees counter-clockwise, black corners (patient positioning)
``rotate_-5``            rotated 5 degrees clockwise
``collimation_black``    uneven black bars over the edges (left 10%, top 4%, right 6%, bottom
                         12%), as a collimator's shutters or a scanner's margin leave them
``collimation_white``    the same bars in white (unexposed film)
``text``                 burned-in text and a side marker in white: ``ER`` top left,
                         ``UPRIGHT 14:32`` top right, a date bottom left (Pillow's default font,
                         6% of the height; strings the training augmentation never draws)
``downsample_2x``        brought to half the width and height and back (a lower-resolution scan)
``flip``                 mirrored left to right (a film scanned back to front)
=======================  ==========================================================================

For each perturbation the report gives accuracy, sensitivity, specificity and
AUC at the model's threshold, and the **flip rate**: the share of images whose
decision differs from the decision on the clean image.

Example:

>>> import keras_pneumonia as kp
>>> from keras_pneumonia.robustness import evaluate_robustness
>>> model = kp.PneumoniaCNN.from_pretrained()
>>> report = evaluate_robustness(model, "tests/data/chest_xray/test", perturbations=["crop_10"])
>>> sorted(report.results)
['clean', 'crop_10']
>>> 0.0 <= report.results["crop_10"]["flip_rate"] <= 1.0
True
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from keras_pneumonia.config import CLASS_NAMES

logger = logging.getLogger(__name__)


def _crop(fraction: float):
    def apply(image):
        width, height = image.size
        dx, dy = round(width * fraction), round(height * fraction)
        return image.crop((dx, dy, width - dx, height - dy))

    return apply


def _pad(fraction: float):
    def apply(image):
        from PIL import ImageOps

        width, height = image.size
        return ImageOps.expand(image, border=(round(width * fraction), round(height * fraction)), fill=0)

    return apply


def _aspect(change: float):
    def apply(image):
        from PIL import Image, ImageOps

        width, height = image.size
        stretched = image.resize((max(1, round(width * (1 + change))), height), Image.Resampling.BILINEAR)
        if change > 0:
            left = (stretched.width - width) // 2
            return stretched.crop((left, 0, left + width, height))
        return ImageOps.pad(stretched, (width, height), color=0)

    return apply


def _tone(gamma: float = 1.0, contrast: float = 1.0):
    def apply(image):
        from PIL import Image

        x = np.asarray(image, dtype=np.float32) / 255.0
        x = np.power(x, gamma)
        if contrast != 1.0:
            x = (x - x.mean()) * contrast + x.mean()
        return Image.fromarray(np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8), mode=image.mode)

    return apply


def _blur(relative_sigma: float):
    def apply(image):
        from PIL import ImageFilter

        # Pillow's GaussianBlur radius is the standard deviation.
        return image.filter(ImageFilter.GaussianBlur(radius=relative_sigma * image.width))

    return apply


def _jpeg(quality: int):
    def apply(image):
        from PIL import Image

        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            decoded.load()
            return decoded.convert(image.mode)

    return apply


def _rotate(degrees: float):
    def apply(image):
        from PIL import Image

        return image.rotate(degrees, resample=Image.Resampling.BILINEAR, fillcolor=0)

    return apply


def _collimation(fill: int):
    def apply(image):
        from PIL import ImageDraw

        image = image.copy()
        width, height = image.size
        draw = ImageDraw.Draw(image)
        colour = fill if image.mode == "L" else (fill,) * 3
        for box in (
            (0, 0, round(0.10 * width), height),  # left
            (0, 0, width, round(0.04 * height)),  # top
            (width - round(0.06 * width), 0, width, height),  # right
            (0, height - round(0.12 * height), width, height),  # bottom
        ):
            draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=colour)
        return image

    return apply


def _text(image):
    from PIL import ImageDraw, ImageFont

    image = image.copy()
    width, height = image.size
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(6, round(0.06 * height)))
    white = 255 if image.mode == "L" else (255, 255, 255)
    draw.text((0.05 * width, 0.05 * height), "ER", fill=white, font=font)
    draw.text((0.60 * width, 0.05 * height), "UPRIGHT 14:32", fill=white, font=font)
    draw.text((0.05 * width, 0.88 * height), "2021/07/14", fill=white, font=font)
    return image


def _downsample(factor: int):
    def apply(image):
        from PIL import Image

        width, height = image.size
        small = image.resize((max(1, width // factor), max(1, height // factor)), Image.Resampling.BOX)
        return small.resize((width, height), Image.Resampling.BILINEAR)

    return apply


def _flip(image):
    from PIL import ImageOps

    return ImageOps.mirror(image)


#: Name -> (function of a Pillow image, description) of each perturbation.
PERTURBATIONS: dict[str, tuple[Callable, str]] = {
    "crop_5": (_crop(0.05), "5% cut from each border (tighter framing)"),
    "crop_10": (_crop(0.10), "10% cut from each border"),
    "pad_5": (_pad(0.05), "black border of 5% on each side (looser framing)"),
    "pad_10": (_pad(0.10), "black border of 10% on each side"),
    "aspect_+10": (_aspect(0.10), "anatomy 10% wider in the same frame"),
    "aspect_-10": (_aspect(-0.10), "anatomy 10% narrower in the same frame"),
    "gamma_0.7": (_tone(gamma=0.7), "brighter tone curve (gamma 0.7)"),
    "gamma_1.4": (_tone(gamma=1.4), "darker tone curve (gamma 1.4)"),
    "contrast_+30": (_tone(contrast=1.3), "30% more contrast"),
    "contrast_-30": (_tone(contrast=0.7), "30% less contrast"),
    "blur": (_blur(0.006), "Gaussian blur, sigma 0.6% of the width"),
    "jpeg_30": (_jpeg(30), "re-saved as JPEG quality 30"),
    "rotate_+5": (_rotate(5.0), "rotated 5 degrees counter-clockwise"),
    "rotate_-5": (_rotate(-5.0), "rotated 5 degrees clockwise"),
    "collimation_black": (_collimation(0), "uneven black bars over the edges (10/4/6/12%)"),
    "collimation_white": (_collimation(255), "uneven white bars over the edges (10/4/6/12%)"),
    "text": (_text, "burned-in text and a side marker"),
    "downsample_2x": (_downsample(2), "half the resolution, brought back"),
    "flip": (_flip, "mirrored left to right"),
}


def perturb(image: np.ndarray, name: str) -> np.ndarray:
    """Applies one named perturbation to a ``uint8`` image ``(h, w, c)``; returns ``uint8`` ``(h', w', c)``.

    The output may have another size (crop and pad change it); resize it as
    any other input.

    >>> import numpy as np
    >>> from keras_pneumonia.robustness import perturb
    >>> perturb(np.zeros((100, 80, 1), "uint8"), "pad_10").shape
    (120, 96, 1)
    """
    from PIL import Image

    if name not in PERTURBATIONS:
        raise ValueError(f"Unknown perturbation {name!r}; choose from {', '.join(PERTURBATIONS)}.")
    channels = image.shape[-1]
    pil = Image.fromarray(image[..., 0] if channels == 1 else image, mode="L" if channels == 1 else "RGB")
    out = np.asarray(PERTURBATIONS[name][0](pil), dtype=np.uint8)
    return out[..., None] if out.ndim == 2 else out


def _resize(image: np.ndarray, spec) -> np.ndarray:
    """The resize `keras_pneumonia.load_image` applies for the model's `~keras_pneumonia.images.InputConfig`."""
    from PIL import Image

    from keras_pneumonia.images import convert

    channels = image.shape[-1]
    pil = Image.fromarray(image[..., 0] if channels == 1 else image)
    out = convert(pil, spec.image_size, spec.color_mode, spec.resize)
    return out[..., None] if out.ndim == 2 else out


@dataclasses.dataclass
class RobustnessReport:
    """Metrics of one model under each perturbation.

    Attributes:
        results: ``{name: {"accuracy", "sensitivity", "specificity", "auc",
            "flip_rate", "flips_to_pneumonia", "flips_to_normal", "mean_abs_change"}}``,
            ``"clean"`` first (its flip rate is 0 by definition); with ``"ood_flagged"``,
            the share of images the out-of-distribution flag raises on, for a model that has one.
        n: Number of images.
        threshold: The decision threshold used.
        source: What was evaluated (folder and model name).
    """

    results: dict[str, dict[str, float]]
    n: int
    threshold: float
    source: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary."""
        return {"n": self.n, "threshold": self.threshold, "source": self.source, "results": self.results}

    def to_json(self, **kwargs) -> str:
        """`to_dict` as JSON."""
        return json.dumps(self.to_dict(), **{"indent": 2, **kwargs})

    def to_markdown(self) -> str:
        """A Markdown table, one row per perturbation."""
        ood = all("ood_flagged" in r for r in self.results.values())
        lines = [
            "| perturbation | accuracy | sensitivity | specificity | AUC | flip rate | to PNEUMONIA | to NORMAL |"
            + (" flagged out of population |" if ood else ""),
            "| --- | --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if ood else ""),
        ]
        for name, r in self.results.items():
            lines.append(
                f"| {name} | {r['accuracy']:.3f} | {r['sensitivity']:.3f} | {r['specificity']:.3f} | "
                f"{r['auc']:.3f} | {r['flip_rate']:.1%} | {r['flips_to_pneumonia']} | {r['flips_to_normal']} |"
                + (f" {r['ood_flagged']:.1%} |" if ood else "")
            )
        return "\n".join(lines)

    @property
    def worst_flip_rate(self) -> float:
        """The largest flip rate over the perturbations."""
        return max(r["flip_rate"] for r in self.results.values())


def evaluate_robustness(
    model,
    directory: str | Path,
    perturbations: Sequence[str] | None = None,
    *,
    threshold: float | None = None,
    class_names: Sequence[str] | None = None,
    batch_size: int = 64,
) -> RobustnessReport:
    """Scores a model on a labelled folder under named perturbations.

    Args:
        model: A `PneumoniaCNN` (or any model taking ``uint8``-range images and
            giving the probability of the last class in its last column).
        directory: A folder with one sub-folder per class (``NORMAL/``, ``PNEUMONIA/``).
        perturbations: Names from `~keras_pneumonia.robustness.PERTURBATIONS` (default: all of them).
        threshold: Decision threshold; ``None`` uses the model's own.
        class_names: The class folders (default: the model's class names).
        batch_size: Prediction batch size.

    Returns:
        A `RobustnessReport`.

    Raises:
        ValueError: An unknown perturbation name.

    Note:
        Each image is decoded once at its original resolution and kept in memory
        while the perturbations run: meant for evaluation folders (hundreds to a
        few thousand images), not for whole archives of full-resolution films.
    """
    from keras_pneumonia.data import _entries
    from keras_pneumonia.evaluation import EvaluationReport, decide, positive_probability
    from keras_pneumonia.images import input_config_of, load_image

    names = list(PERTURBATIONS if perturbations is None else perturbations)
    unknown = [n for n in names if n not in PERTURBATIONS]
    if unknown:
        raise ValueError(f"Unknown perturbation(s) {unknown}; choose from {', '.join(PERTURBATIONS)}.")
    class_names = list(class_names or getattr(model, "class_names", None) or CLASS_NAMES)
    if len(class_names) > 2:  # a subtype model: judged as any pneumonia against NORMAL, on the two folders
        class_names = list(CLASS_NAMES)
    threshold = float(getattr(model, "threshold", 0.5) if threshold is None else threshold)
    spec = input_config_of(model)
    directory = Path(directory)
    entries = _entries(directory, directory, class_names)
    if not entries:
        raise ValueError(f"{directory} holds no images in {', '.join(class_names)} folders.")
    originals = [load_image(directory / e.path, None, spec.color_mode) for e in entries]
    labels = np.array([e.label for e in entries], dtype=int)

    flagged = getattr(model, "ood_detector", None) is not None

    def probabilities(name: str | None) -> tuple[np.ndarray, np.ndarray | None]:
        batch = np.stack([_resize(image if name is None else perturb(image, name), spec) for image in originals])
        if flagged:  # one pass gives the out-of-distribution scores too
            p, scores = model.predict_with_ood(batch, batch_size=batch_size)
            return positive_probability(p), scores
        return positive_probability(model.predict(batch, batch_size=batch_size, verbose=0)), None

    clean, clean_scores = probabilities(None)
    clean_decision = decide(clean, threshold)
    results = {}
    for name in ["clean", *names]:
        p, scores = (clean, clean_scores) if name == "clean" else probabilities(name)
        decision = decide(p, threshold)
        report = EvaluationReport.from_predictions(labels, p, threshold, class_names)
        results[name] = {
            "accuracy": report.accuracy,
            "sensitivity": report.sensitivity,
            "specificity": report.specificity,
            "auc": report.auc,
            "flip_rate": float(np.mean(decision != clean_decision)),
            "flips_to_pneumonia": int(np.sum(decision & ~clean_decision)),
            "flips_to_normal": int(np.sum(~decision & clean_decision)),
            "mean_abs_change": float(np.mean(np.abs(p - clean))),
        }
        if scores is not None:
            results[name]["ood_flagged"] = float(np.mean(model.ood_flags(scores)))
        logger.info("%s: accuracy %.3f, flip rate %.3f", name, report.accuracy, results[name]["flip_rate"])
    return RobustnessReport(
        results=results,
        n=len(labels),
        threshold=threshold,
        source={"directory": str(directory), "model": getattr(model, "name", type(model).__name__)},
    )
