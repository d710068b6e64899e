"""Training-time augmentation, applied in the ``tf.data`` pipeline (never in the model).

A model trained on one hospital's films can learn shortcuts: how tightly a film
is framed and how it is exposed can decide its answer on X-rays from other
batches. The augmentation here breaks those shortcuts by varying, per image:

* **framing**: zoom in (a border crop) or out (a black border, as when a film
  is letterboxed), aspect ratio, translation and a small rotation;
* **exposure**: gamma (the film's tone curve) and contrast;
* **sharpness and noise**: Gaussian blur and Gaussian noise (detectors, scanners);
* **what real films carry** (the ``"robust"`` preset, release v3): uneven black or
  white collimation borders, burned-in text and side markers, a lower resolution
  (a downsampled scan) and a horizontal flip.

It runs on batches of ``uint8`` images in ``tf.data`` so that the model itself
stays deterministic: ``model(x)``, ``model.predict(x)`` and an exported
SavedModel give the same answer.

Example:

>>> import numpy as np
>>> import tensorflow as tf
>>> from keras_pneumonia.augmentation import Augmentation
>>> images = np.full((4, 32, 32, 1), 128, dtype="uint8")
>>> out = Augmentation.preset("strong")(tf.constant(images), seed=0)
>>> out.dtype.name, tuple(out.shape)
('uint8', (4, 32, 32, 1))
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

from keras_pneumonia.config import DEFAULT_SEED

# Every change off: the identity.
_NONE: dict[str, Any] = {
    "zoom": (1.0, 1.0),
    "aspect": 1.0,
    "translate": 0.0,
    "rotate_deg": 0.0,
    "gamma": (1.0, 1.0),
    "contrast": 0.0,
    "blur_prob": 0.0,
    "noise_std": 0.0,
    "border_prob": 0.0,
    "text_prob": 0.0,
    "downsample_prob": 0.0,
    "flip_prob": 0.0,
}

PRESETS: dict[str, dict[str, Any]] = {
    # The first release's in-graph augmentation (rotation 0.04 turn, shift 6%, zoom 10%), for comparison runs.
    "light": {**_NONE, "zoom": (0.9, 1.1), "translate": 0.06, "rotate_deg": 14.4},
    "strong": {},  # the dataclass defaults: every image reframed
    # As "strong", but half of the images keep their framing (no border, no rotation).
    "mixed": {"geometry_prob": 0.5},
    # Release v3: "mixed" with rotations up to 10 degrees, plus uneven black or white
    # borders, burned-in text and markers, downsampled scans and horizontal flips.
    "robust": {
        "geometry_prob": 0.5,
        "rotate_deg": 10.0,
        "border_prob": 0.35,
        "text_prob": 0.3,
        "downsample_prob": 0.2,
        "flip_prob": 0.5,
    },
    # Ablation of "robust" without the horizontal flips (release v3's experiment log).
    "robust_no_flip": {
        "geometry_prob": 0.5,
        "rotate_deg": 10.0,
        "border_prob": 0.35,
        "text_prob": 0.3,
        "downsample_prob": 0.2,
    },
    # "strong" framing on every image (v2-a's) plus the film artefacts of "robust_no_flip".
    "robust_reframe": {
        "rotate_deg": 10.0,
        "border_prob": 0.35,
        "text_prob": 0.3,
        "downsample_prob": 0.2,
    },
    # "robust_reframe" with half of the images mirrored (a film scanned back to front).
    "robust_reframe_flip": {
        "rotate_deg": 10.0,
        "border_prob": 0.35,
        "text_prob": 0.3,
        "downsample_prob": 0.2,
        "flip_prob": 0.5,
    },
    # "robust_reframe" with half of the images kept at their scale: their rotations leave
    # black corners in view (zooming in, as most "robust_reframe" images are, hides them).
    "robust_reframe_tilt": {
        "rotate_deg": 10.0,
        "zoom_prob": 0.5,
        "border_prob": 0.35,
        "text_prob": 0.3,
        "downsample_prob": 0.2,
    },
    "none": _NONE,
}


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Random framing, exposure and sharpness changes for a batch of X-rays.

    All geometry (zoom, aspect ratio, translation, rotation) is one affine
    transform per image, applied with a single resampling
    (``ImageProjectiveTransformV3``, the kernel behind Keras' own
    ``RandomRotation``/``RandomZoom``). Written here rather than stacking those
    Keras layers because each of them resamples (and blurs) the image again and
    the oldest supported Keras has no gamma or blur layer.

    Args:
        zoom: Range of the zoom factor, sampled log-uniformly: above 1 crops the
            borders (1.25 removes 10% from each side), below 1 adds a black
            border (0.8 pads 12.5% each side).
        aspect: Maximum aspect-ratio change (1.15 stretches one axis by up to 15%).
        translate: Maximum shift, as a fraction of the image size.
        rotate_deg: Maximum rotation in degrees, either way.
        gamma: Range of the gamma of the tone curve ``255 * (x / 255) ** gamma``,
            sampled log-uniformly.
        contrast: Maximum relative contrast change about the image mean.
        blur_prob: Share of images blurred with a Gaussian of sigma in ``blur_sigma``.
        blur_sigma: Range of the blur's sigma, in pixels.
        noise_std: Maximum standard deviation of added Gaussian noise, in grey levels.
        zoom_prob: Share of images that get the zoom and aspect change; the others
            keep their scale, so that a rotation leaves its black corners in view as a
            tilted scan does (zooming in hides them).
        geometry_prob: Share of images that get the geometric changes; the others
            keep their framing (no border, no rotation). Below 1 the model also
            sees unchanged framings of both classes, so a black border or a
            rotation cannot become a cue of its own.
        border_prob: Share of images that get collimation borders: each side
            (independently, with probability 0.6) is covered by a bar of up to
            ``border_max`` of the image size, all black or all white per image.
        border_max: Largest bar, as a fraction of the height or width.
        text_prob: Share of images with burned-in text or a side marker
            (``L``, ``R``, ``AP``, ``PORTABLE``, dates...), drawn with Pillow's
            default font at 3-9% of the image height, white or light grey.
        downsample_prob: Share of images brought down by a factor in
            ``downsample_factor`` (area average) and back up (bilinear), as a scan
            at a lower resolution would be.
        downsample_factor: Range of that factor (one per batch).
        flip_prob: Share of images mirrored left to right.
    """

    zoom: tuple[float, float] = (0.8, 1.35)
    aspect: float = 1.15
    translate: float = 0.06
    rotate_deg: float = 7.0
    gamma: tuple[float, float] = (0.6, 1.6)
    contrast: float = 0.3
    blur_prob: float = 0.3
    blur_sigma: tuple[float, float] = (0.4, 1.5)
    noise_std: float = 4.0
    zoom_prob: float = 1.0
    geometry_prob: float = 1.0
    border_prob: float = 0.0
    border_max: float = 0.15
    text_prob: float = 0.0
    downsample_prob: float = 0.0
    downsample_factor: tuple[float, float] = (1.5, 3.0)
    flip_prob: float = 0.0

    @classmethod
    def preset(cls, name: str) -> Augmentation:
        """A preset by name: ``"strong"`` (the default), ``"mixed"``, ``"robust"``, ``"robust_no_flip"``,
        ``"robust_reframe"``, ``"robust_reframe_flip"``, ``"robust_reframe_tilt"``, ``"light"`` or
        ``"none"`` (``PRESETS`` gives their settings)."""
        if name not in PRESETS:
            raise ValueError(f"Unknown augmentation preset {name!r}; choose one of {sorted(PRESETS)}.")
        return cls(**PRESETS[name])

    def to_dict(self) -> dict[str, Any]:
        """The settings, JSON-serialisable."""
        return dataclasses.asdict(self)

    def __call__(self, images, seed):
        """Augments a batch of ``uint8`` images ``(n, h, w, c)``; returns ``uint8`` of the same shape.

        Args:
            images: The batch.
            seed: An int, or a shape ``[2]`` integer tensor (a stateless seed);
                the same seed gives the same augmentation.
        """
        import tensorflow as tf

        seeds = iter(tf.unstack(tf.random.experimental.stateless_split(tf.cast(_as_seed(seed), tf.int64), 16)))
        x = tf.cast(images, tf.float32)
        n = tf.shape(x)[0]
        height = tf.cast(tf.shape(x)[1], tf.float32)
        width = tf.cast(tf.shape(x)[2], tf.float32)

        def uniform(low, high, shape=None):
            shape = [n] if shape is None else shape
            return tf.random.stateless_uniform(shape, next(seeds), low, high)

        def log_uniform(low, high):
            return tf.exp(uniform(math.log(low), math.log(high)))

        # Geometry: output pixel p maps to input pixel c + R S^-1 (p - c) + t.
        zoom = log_uniform(*self.zoom)
        stretch = log_uniform(1.0 / self.aspect, self.aspect)
        sx, sy = zoom * stretch, zoom / stretch
        angle = uniform(-1.0, 1.0) * self.rotate_deg * math.pi / 180.0
        tx = uniform(-1.0, 1.0) * self.translate * width
        ty = uniform(-1.0, 1.0) * self.translate * height
        if self.zoom_prob < 1.0:  # a draw of its own only here: the other presets keep their seeds
            scaled = uniform(0.0, 1.0) < self.zoom_prob
            zoom, stretch = tf.where(scaled, zoom, 1.0), tf.where(scaled, stretch, 1.0)
            sx, sy = zoom * stretch, zoom / stretch
        if self.geometry_prob < 1.0:
            moved = uniform(0.0, 1.0) < self.geometry_prob
            zoom, stretch = tf.where(moved, zoom, 1.0), tf.where(moved, stretch, 1.0)
            angle, tx, ty = tf.where(moved, angle, 0.0), tf.where(moved, tx, 0.0), tf.where(moved, ty, 0.0)
            sx, sy = zoom * stretch, zoom / stretch
        cos, sin = tf.cos(angle), tf.sin(angle)
        a0, a1, b0, b1 = cos / sx, -sin / sy, sin / sx, cos / sy
        cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
        a2 = cx - a0 * cx - a1 * cy + tx
        b2 = cy - b0 * cx - b1 * cy + ty
        zeros = tf.zeros_like(a0)
        transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
        x = _warp(x, transforms)

        # Exposure: gamma, then contrast about the mean.
        gamma = tf.reshape(log_uniform(*self.gamma), [-1, 1, 1, 1])
        x = 255.0 * tf.pow(tf.clip_by_value(x / 255.0, 0.0, 1.0), gamma)
        if self.contrast > 0:
            factor = tf.reshape(1.0 + uniform(-self.contrast, self.contrast), [-1, 1, 1, 1])
            mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
            x = (x - mean) * factor + mean

        # Sharpness: a Gaussian blur of one random sigma per batch on a random share of images.
        if self.blur_prob > 0:
            sigma = uniform(*self.blur_sigma, shape=[])
            radius = int(math.ceil(3 * self.blur_sigma[1]))
            taps = tf.range(-radius, radius + 1, dtype=tf.float32)
            kernel = tf.exp(-0.5 * tf.square(taps / sigma))
            kernel = kernel / tf.reduce_sum(kernel)
            channels = images.shape[-1]
            kx = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, channels, 1])
            ky = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, channels, 1])
            blurred = tf.nn.depthwise_conv2d(x, kx, [1, 1, 1, 1], "SAME")
            blurred = tf.nn.depthwise_conv2d(blurred, ky, [1, 1, 1, 1], "SAME")
            chosen = tf.reshape(uniform(0.0, 1.0) < self.blur_prob, [-1, 1, 1, 1])
            x = tf.where(chosen, blurred, x)
        if self.noise_std > 0:
            std = tf.reshape(uniform(0.0, self.noise_std), [-1, 1, 1, 1])
            x = x + tf.random.stateless_normal(tf.shape(x), next(seeds)) * std
        # What films carry, from seeds of their own so that the other presets stay as they were.
        more = iter(tf.unstack(tf.random.experimental.stateless_split(next(seeds), 32)))
        if self.flip_prob > 0:
            x = tf.where(_per_image(_uniform(more, n) < self.flip_prob), tf.reverse(x, axis=[2]), x)
        if self.downsample_prob > 0:
            x = self._downsample(x, more, n)
        if self.border_prob > 0:
            x = self._borders(x, more, n)
        if self.text_prob > 0:
            x = self._text(x, more, n, images.shape[1], images.shape[2])
        return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)

    def _downsample(self, x, seeds, n):
        """A lower-resolution scan: down by one factor per batch (area), back up (bilinear)."""
        import tensorflow as tf

        factor = _uniform(seeds, n, *self.downsample_factor, shape=[])
        size = tf.shape(x)[1:3]
        small = tf.maximum(tf.cast(tf.round(tf.cast(size, tf.float32) / factor), tf.int32), 1)
        coarse = tf.image.resize(tf.image.resize(x, small, method="area"), size, method="bilinear")
        return tf.where(_per_image(_uniform(seeds, n) < self.downsample_prob), coarse, x)

    def _borders(self, x, seeds, n):
        """Collimation borders: a bar on each side with probability 0.6, black or white per image."""
        import tensorflow as tf

        def bar():
            on = _uniform(seeds, n) < 0.6
            return _per_image(tf.where(on, _uniform(seeds, n, 0.0, self.border_max), 0.0))

        rows = tf.reshape(tf.linspace(0.0, 1.0, tf.shape(x)[1]), [1, -1, 1, 1])
        cols = tf.reshape(tf.linspace(0.0, 1.0, tf.shape(x)[2]), [1, 1, -1, 1])
        top, bottom, left, right = bar(), bar(), bar(), bar()
        covered = (rows < top) | (rows > 1.0 - bottom) | (cols < left) | (cols > 1.0 - right)
        covered &= _per_image(_uniform(seeds, n) < self.border_prob)
        fill = _per_image(tf.where(_uniform(seeds, n) < 0.5, 255.0, 0.0))
        return tf.where(covered, fill, x)

    def _text(self, x, seeds, n, height, width):
        """Burned-in text and side markers: a drawn label, moved per image, in white or light grey."""
        import tensorflow as tf

        bank = tf.constant(_text_bank(int(height), int(width)))  # (k, h, w, 1) in [0, 1]
        pick = tf.cast(_uniform(seeds, n, 0.0, float(bank.shape[0]) - 1e-3), tf.int32)
        labels = tf.gather(bank, pick)
        dx = _uniform(seeds, n, -0.15, 0.15) * float(width)
        dy = _uniform(seeds, n, -0.15, 0.15) * float(height)
        ones, zeros = tf.ones_like(dx), tf.zeros_like(dx)
        shift = tf.stack([ones, zeros, dx, zeros, ones, dy, zeros, zeros], axis=1)
        labels = _warp(labels, shift)
        shade = _per_image(_uniform(seeds, n, 200.0, 255.0))
        drawn = _per_image(_uniform(seeds, n) < self.text_prob)
        return tf.where(drawn, x * (1.0 - labels) + shade * labels, x)

    def apply_to_dataset(self, dataset, seed: int = DEFAULT_SEED):
        """Maps a batched ``(images, labels[, weights])`` dataset through the augmentation.

        Each batch gets its own seed from ``tf.data.Dataset.random``, drawn anew
        every epoch, so a run with one seed sees one sequence of augmentations.

        Args:
            dataset: A batched ``tf.data.Dataset`` whose first element is ``uint8`` images.
            seed: The run's seed.

        Returns:
            The augmented dataset, prefetched.
        """
        import tensorflow as tf

        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

        def augment(batch, batch_seed):
            return (self(batch[0], batch_seed), *batch[1:])

        dataset = tf.data.Dataset.zip(dataset, seeds)
        return dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _warp(images, transforms):
    """One bilinear resampling per image by a projective transform, black outside (the kernel of Keras' RandomZoom)."""
    import tensorflow as tf

    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )


def _uniform(seeds, n, low=0.0, high=1.0, shape=None):
    import tensorflow as tf

    return tf.random.stateless_uniform([n] if shape is None else shape, next(seeds), low, high)


def _per_image(values):
    import tensorflow as tf

    return tf.reshape(values, [-1, 1, 1, 1])


_TEXTS = ("L", "R", "AP", "PA", "PORTABLE", "SUPINE", "ERECT", "12-03-2019", "RT SIDE", "LAT", "1", "ID 4471")


@functools.lru_cache(maxsize=4)
def _text_bank(height: int, width: int, count: int = 48):
    """``count`` masks ``(height, width, 1)`` in [0, 1], each with one to three labels drawn by Pillow.

    Drawn once per image size with a fixed seed (the per-image randomness is the
    shift and the choice of mask); Pillow, because TensorFlow cannot draw text.
    """
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(0)
    bank = np.zeros((count, height, width, 1), np.float32)
    for k in range(count):
        canvas = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(canvas)
        for _ in range(int(rng.integers(1, 4))):
            font = ImageFont.load_default(size=max(6, int(height * rng.uniform(0.03, 0.09))))
            text = _TEXTS[int(rng.integers(len(_TEXTS)))]
            # Near an edge, where films carry their labels.
            x = width * (rng.uniform(0.02, 0.2) if rng.random() < 0.5 else rng.uniform(0.55, 0.85))
            y = height * (rng.uniform(0.02, 0.15) if rng.random() < 0.5 else rng.uniform(0.8, 0.92))
            draw.text((x, y), text, fill=255, font=font)
        bank[k, ..., 0] = np.asarray(canvas, np.float32) / 255.0
    return bank


def _as_seed(seed):
    import tensorflow as tf

    if isinstance(seed, int):
        return tf.constant([seed, 0], dtype=tf.int64)
    return seed
