"""Decoding one chest X-ray into the pixels a model takes.

`load_image` reads JPEG, PNG (8- and 16-bit, palette, alpha) and DICOM files,
applies the EXIF orientation, converts the colour mode and resizes, with one
rule for every reader: the data sets, ``predict``, ``evaluate``, Grad-CAM and
exports (whose in-graph `keras_pneumonia.layers.SquashResize` reproduces
`convert`'s ``"squash"`` resize pixel for pixel).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from keras_pneumonia.config import CHOICES
from keras_pneumonia.dicom import is_dicom, read_dicom

logger = logging.getLogger(__name__)

#: Suffixes read as images, everything Pillow decodes that X-rays come in, and DICOM.
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".dcm", ".dicom")
RESIZE_MODES = CHOICES["resize"]
COLOR_MODES = ("grayscale", "rgb")
#: Channels of each colour mode, and back.
CHANNELS = {"grayscale": 1, "rgb": 3}
COLOR_MODE_OF = {channels: mode for mode, channels in CHANNELS.items()}


def as_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` from an int (a square) or a pair; the one place sizes are normalised.

    >>> from keras_pneumonia.images import as_size
    >>> as_size(160), as_size((224, 200))
    ((160, 160), (224, 200))
    """
    if isinstance(image_size, int):
        return (image_size, image_size)
    size = tuple(int(s) for s in image_size)
    if len(size) != 2:
        raise ValueError(f"`image_size` must be an int or (height, width); received {image_size!r}.")
    return size


def png_significant_bits(path: str | Path) -> int | None:
    """The significant bits of a PNG's (first) sample, from its ``sBIT`` chunk; ``None`` without one.

    Written by hand because Pillow keeps ``sBIT`` when it writes a PNG but does not
    report it when it reads one: the chunks before the image data are walked.
    """
    import struct

    with open(path, "rb") as file:
        if file.read(8) != b"\x89PNG\r\n\x1a\n":
            return None
        while True:
            head = file.read(8)
            if len(head) < 8:
                return None
            length, kind = struct.unpack(">I4s", head)
            if kind == b"sBIT":
                data = file.read(length)
                return data[0] if data else None
            if kind in (b"IDAT", b"IEND"):
                return None
            file.seek(length + 4, 1)  # the chunk's data and CRC


def to_8bit(image, significant_bits: int | None = None):
    """Converts 16/32-bit integer and float images to 8-bit by their real range.

    - Integer images (16-bit PNG, 32-bit TIFF) are scaled by their bit depth:
      ``significant_bits`` when known (a PNG's ``sBIT`` chunk, DICOM's *Bits
      Stored*), else the smallest of 8, 10, 12, 14 and 16 bits that holds the
      brightest pixel. X-rays are often exported as 16-bit files holding 10- or
      12-bit data: dividing those by 65535 would leave a nearly black image. (A
      12-bit image whose brightest pixel is below 1024 and that has no ``sBIT``
      chunk is read as 10-bit, so brighter.) Values outside 0-65535 are refused.
    - Float images (float TIFF) must hold values in 0-1 (scaled by 255) or in
      0-255 (kept); any other range is refused rather than guessed.

    Raises:
        ValueError: Pixel values outside the ranges above.
    """
    from PIL import Image

    if image.mode not in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return image
    array = np.asarray(image, dtype=np.float64)
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if image.mode == "F":
        if low < 0 or high > 255:
            raise ValueError(f"float pixel values from {low:g} to {high:g}; expected 0-1 or 0-255")
        top = 1.0 if high <= 1.0 else 255.0
    else:
        if low < 0 or high > 65535:
            raise ValueError(f"integer pixel values from {low:g} to {high:g}; expected 0-65535")
        bits = significant_bits or next(b for b in (8, 10, 12, 14, 16) if high < 2**b)
        top = float(2**bits - 1)
    array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(array, mode="L")


def convert(image, size, color_mode: str, resize: str) -> np.ndarray:
    """Alpha over black, the wanted colour mode, the resize: a decoded Pillow image to ``uint8``."""
    from PIL import Image, ImageOps

    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    wanted = "L" if color_mode == "grayscale" else "RGB"
    if image.mode != wanted:
        image = image.convert(wanted)
    if size is not None:
        target = (size[1], size[0])  # PIL sizes are (width, height)
        if resize == "squash":
            image = image.resize(target, Image.Resampling.BILINEAR)
        elif resize == "crop":
            image = ImageOps.fit(image, target, Image.Resampling.BILINEAR)
        else:
            image = ImageOps.pad(image, target, Image.Resampling.BILINEAR, color=0)
    return np.asarray(image, dtype=np.uint8)


def load_image(
    path: str | Path,
    image_size: int | Sequence[int] | None = None,
    color_mode: str = "grayscale",
    resize: str = "squash",
) -> np.ndarray:
    """Reads one X-ray into a ``uint8`` array ready for `~keras_pneumonia.PneumoniaCNN`.

    Handles JPEG and PNG in grayscale, RGB, RGBA, palette and 16-bit (scaled by
    its real bit depth, see `~keras_pneumonia.images.to_8bit`), float TIFF in 0-1 or 0-255, applies the
    EXIF orientation, and resizes. DICOM files (``.dcm``, or the ``DICM``
    marker) are read with pydicom when the ``[dicom]`` extra is installed, with
    their modality and VOI LUTs applied (see `keras_pneumonia.dicom`).

    Args:
        path: The image file.
        image_size: ``(height, width)`` (or an int for a square) to resize to;
            ``None`` keeps the original size.
        color_mode: ``"grayscale"`` (1 channel) or ``"rgb"`` (3 channels).
        resize: ``"squash"`` (stretch to the size, as
            ``keras.utils.image_dataset_from_directory`` does), ``"crop"`` (keep
            the aspect ratio, crop the centre) or ``"pad"`` (keep the aspect
            ratio, pad with black).

    Returns:
        An array of shape ``(height, width, channels)`` and dtype ``uint8``.

    Raises:
        ValueError: The file is missing, empty, truncated or not an image; the
            message names the file.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if color_mode not in COLOR_MODES:
        raise ValueError(f"`color_mode` must be one of {COLOR_MODES}; received {color_mode!r}.")
    if resize not in RESIZE_MODES:
        raise ValueError(f"`resize` must be one of {RESIZE_MODES}; received {resize!r}.")
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ValueError("empty file (0 bytes)")
        size = as_size(image_size) if image_size is not None else None
        if is_dicom(path):
            array = convert(Image.fromarray(read_dicom(path)), size, color_mode, resize)
        else:
            with Image.open(path) as image:
                if image.format == "JPEG":
                    # Let libjpeg do part of the work: decode only the luma channel for
                    # grayscale, and at a reduced scale (still >= 2x the target, either
                    # orientation): full-resolution X-rays decode several times faster.
                    mode = "L" if color_mode == "grayscale" and image.mode in ("L", "RGB") else image.mode
                    side = 2 * max(size) if size is not None else max(image.size)
                    image.draft(mode, (side, side))
                frames = getattr(image, "n_frames", 1)
                if frames > 1:
                    logger.warning("%s: holds %d pages or frames; only the first is read", path, frames)
                image.load()
                ImageOps.exif_transpose(image, in_place=True)
                bits = png_significant_bits(path) if image.format == "PNG" else None
                array = convert(to_8bit(image, bits), size, color_mode, resize)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise ValueError(
            f"{path}: not an image Pillow can read (JPEG, PNG, TIFF, BMP, WebP, GIF or DICOM expected)"
        ) from None
    except Image.DecompressionBombError as error:
        raise ValueError(
            f"{path}: too many pixels to decode safely ({error}); if you trust the file, raise "
            "PIL.Image.MAX_IMAGE_PIXELS before reading it"
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        reason = str(error)
        if reason.startswith(str(path)):
            raise
        raise ValueError(f"{path}: {reason or type(error).__name__}") from None
    if array.ndim == 2:
        array = array[..., None]
    return array


def original_size(path: str | Path) -> tuple[int, int] | None:
    """``(height, width)`` of an image file as `load_image` orients it, from its header; ``None`` if unreadable.

    No pixels are decoded: the size and the EXIF orientation (a quarter turn swaps
    height and width) come from the file's header.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
            turned = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    return (width, height) if turned else (height, width)


def chroma(path: str | Path) -> float | None:
    """How colourful an image file is: the mean of ``max(R, G, B) - min(R, G, B)`` (0-255).

    Measured on a 64-pixel thumbnail. 0 for grayscale files and for colour files whose
    channels are equal (as every image of the training data); ``None`` if unreadable.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "F"):
                return 0.0
            image.draft("RGB", (128, 128))
            small = image.convert("RGB")
            small.thumbnail((64, 64))
            pixels = np.asarray(small, dtype=np.int16)
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    return float((pixels.max(axis=-1) - pixels.min(axis=-1)).mean())


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """An image array (``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or RGBA) as RGB ``uint8``."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"Expected an image of shape (H, W), (H, W, 1) or (H, W, 3); received {image.shape}.")
    return image[..., :3]


def resize_float(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """A float array (a heatmap) resized bilinearly with Pillow's float mode."""
    from PIL import Image

    if array.shape[:2] == (height, width):
        return array
    return np.asarray(
        Image.fromarray(array.astype(np.float32), mode="F").resize((width, height), Image.Resampling.BILINEAR)
    )


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """How images must be read for a model: saved with it, used by every reader.

    A `~keras_pneumonia.PneumoniaCNN` gives its own as ``model.input_config``
    (from its saved config; 0.1.0 and 0.2.0 files get ``resize="squash"``, what
    they were trained with). `input_config_of` gives one for any Keras image model.

    Args:
        image_size: ``(height, width)`` of the model's input.
        color_mode: ``"grayscale"`` or ``"rgb"``.
        resize: ``"squash"``, ``"crop"`` or ``"pad"`` (see `load_image`).
        interpolation: The resampling filter of the resize: Pillow's bilinear,
            antialiased when shrinking (the only one; recorded so that it is said).

    Example:

    >>> import keras_pneumonia as kp
    >>> spec = kp.PneumoniaCNN.from_pretrained().input_config
    >>> spec.image_size, spec.color_mode, spec.resize
    ((160, 160), 'grayscale', 'squash')
    >>> spec.load("tests/data/fullres/IM-0314-0001.jpeg").shape
    (160, 160, 1)
    """

    image_size: tuple[int, int]
    color_mode: str = "grayscale"
    resize: str = "squash"
    interpolation: str = "bilinear"

    def __post_init__(self):
        object.__setattr__(self, "image_size", as_size(self.image_size))
        if self.color_mode not in COLOR_MODES:
            raise ValueError(f"`color_mode` must be one of {COLOR_MODES}; received {self.color_mode!r}.")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"`resize` must be one of {RESIZE_MODES}; received {self.resize!r}.")
        if self.interpolation != "bilinear":
            raise ValueError(f"`interpolation` must be 'bilinear'; received {self.interpolation!r}.")

    @property
    def channels(self) -> int:
        """1 for grayscale, 3 for RGB."""
        return CHANNELS[self.color_mode]

    def load(self, path: str | Path) -> np.ndarray:
        """One file read for the model: `load_image` with this size, colour mode and resize."""
        return load_image(path, self.image_size, self.color_mode, self.resize)

    def dataset_kwargs(self) -> dict[str, Any]:
        """``image_size``, ``color_mode`` and ``resize``, as `~keras_pneumonia.load_chest_xray` takes them."""
        return {"image_size": self.image_size, "color_mode": self.color_mode, "resize": self.resize}

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "image_size": list(self.image_size)}


def input_config_of(model) -> InputConfig:
    """A model's `InputConfig`: its own if it has one, else read from its input shape (squash)."""
    config = getattr(model, "input_config", None)
    if isinstance(config, InputConfig):
        return config
    height, width, channels = model.input_shape[1:4]
    return InputConfig((height, width), COLOR_MODE_OF[channels])


def check_batch(model, images) -> None:
    """Refuses a batch the model would answer for wrongly, naming the problem and the fix.

    Checked for arrays and tensors (a ``tf.data.Dataset`` by its element spec):
    the rank (an ``(H, W)`` or unbatched ``(H, W, C)`` image), an empty batch, a height,
    width or channel count other than the model's (Keras would run a global-pooling
    network on any size and answer for an image it was never trained to read), and
    NaN or infinite pixels (one of them turns the per-image normalisation, and so the
    answer, into nonsense).

    Raises:
        ValueError: What is wrong and how to read the images instead.
    """
    shape = _batch_shape(images)
    if shape is None:
        return
    expected = tuple(model.input_shape[1:])
    read_with = (
        "read them with the model's input config (model.input_config.load(path) gives one "
        "image; np.stack them into a batch, or use load_chest_xray(..., **model.input_config.dataset_kwargs()))"
    )
    if len(shape) != len(expected) + 1:
        raise ValueError(
            f"{model.name!r} takes a batch of shape (n, {', '.join(map(str, expected))}); received an array of "
            f"shape {shape}. One image needs a batch axis (x[None]), a grayscale (H, W) image a channel axis "
            f"too (x[None, ..., None]); or {read_with}."
        )
    if shape[0] == 0:
        raise ValueError(f"The batch is empty (shape {shape}): there is nothing for {model.name!r} to predict.")
    if any(e is not None and s is not None and e != s for s, e in zip(shape[1:], expected)):
        raise ValueError(
            f"The images are {shape[1]}x{shape[2]} with {shape[3]} channel(s), but {model.name!r} takes "
            f"{expected[0]}x{expected[1]} with {expected[2]}: {read_with}."
        )
    if isinstance(images, np.ndarray) and images.dtype.kind == "f":
        bad = ~np.isfinite(images).reshape(len(images), -1).all(axis=1)
        if bad.any():
            raise ValueError(
                f"{int(bad.sum())} of {len(images)} image(s) hold NaN or infinite pixel values "
                f"(batch positions {np.flatnonzero(bad)[:10].tolist()}): the model's answer for them would "
                "mean nothing. Replace or drop those pixels first."
            )


def _batch_shape(images) -> tuple | None:
    """The shape of an array, tensor or dataset batch; ``None`` for inputs not checked here."""
    spec = getattr(images, "element_spec", None)
    if spec is not None:
        spec = spec[0] if isinstance(spec, tuple) else spec
        shape = getattr(spec, "shape", None)
        return tuple(shape) if shape is not None and shape.rank is not None else None
    if isinstance(images, (list, tuple)):
        return None
    shape = getattr(images, "shape", None)
    return tuple(shape) if shape is not None else None
