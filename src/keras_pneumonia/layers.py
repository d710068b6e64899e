"""Layers that Keras does not ship but the model needs inside its graph."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_pneumonia")
class PerImageStandardization(keras.layers.Layer):
    """Scales each image to zero mean and unit variance, per channel.

    Written by hand because Keras has no layer for it (``tf.image.per_image_standardization``
    is TensorFlow-only). It makes the model insensitive to global exposure and
    contrast, which differ between X-ray machines and hospital batches.

    Args:
        epsilon: Added to the standard deviation so a blank image gives zeros,
            not NaNs.
        **kwargs: Passed to `keras.layers.Layer`.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> from keras_pneumonia import PerImageStandardization
    >>> layer = PerImageStandardization()
    >>> out = keras.ops.convert_to_numpy(layer(np.full((1, 4, 4, 1), 7.0)))
    >>> float(abs(out).max())
    0.0
    """

    def __init__(self, epsilon: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def call(self, inputs):
        inputs = ops.cast(inputs, self.compute_dtype)
        mean = ops.mean(inputs, axis=(1, 2), keepdims=True)
        std = ops.std(inputs, axis=(1, 2), keepdims=True)
        return (inputs - mean) / (std + self.epsilon)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"epsilon": self.epsilon})
        return config


# Pillow's 8-bit RGB -> L weights (ITU-R 601-2 luma in 16-bit fixed point) and the
# fixed-point precision of its 8-bit resampling coefficients (libImaging/Resample.c).
_LUMA_WEIGHTS = (19595.0, 38470.0, 7471.0)
_PRECISION = float(1 << 22)


def _pillow_coefficients(in_size, out_size: int):
    """Pillow's fixed-point bilinear coefficients along one axis, ``(out_size, in_size)``.

    Pillow widens the triangle filter by the scale factor when it shrinks (an
    antialiased resize), centres output pixel ``i`` at input coordinate
    ``(i + 0.5) * in / out``, normalises each row and rounds the coefficients to
    integers over ``2 ** 22``. Pillow computes them in float64; float32 (all
    LiteRT offers) rounds about 1 in 10 differently, so they are computed here
    from integers: the triangle ``u = max(0, 2 max(in, out) - |(2j + 1) out - (2i + 1) in|)``
    and ``k = round(u * 2**22 / sum(u))`` split as ``u * a + round(u * b / sum(u))``
    with ``2**22 = a * sum(u) + b``. Exact while ``2 * in * out < 2 ** 24``.
    """
    n = ops.cast(in_size, "float32")
    m = float(out_size)
    j = ops.cast(ops.arange(in_size), "float32")
    i = ops.cast(ops.arange(out_size), "float32")
    u = ops.relu(2.0 * ops.maximum(n, m) - ops.abs((2.0 * j[None, :] + 1.0) * m - (2.0 * i[:, None] + 1.0) * n))
    total = ops.sum(u, axis=1, keepdims=True)
    a = ops.floor(_PRECISION / total)
    b = _PRECISION - a * total
    a = ops.where(b < 0, a - 1.0, ops.where(b >= total, a + 1.0, a))  # fix the float division's last bit
    b = _PRECISION - a * total
    return u * a + ops.floor(u * b / total + 0.5)


def _resample_last_axis(x, coefficients):
    """One Pillow 8-bit pass over the last axis: ``clip((x @ k.T + 2**21) >> 22)``, exact in float32.

    The sums reach 30 bits, beyond float32's 24, so each coefficient is split
    into three bytes (three matrix products whose sums stay exact) and the
    carries are propagated by hand.
    """
    k2 = ops.floor(coefficients / 65536.0)
    k1 = ops.floor((coefficients - k2 * 65536.0) / 256.0)
    k0 = coefficients - k2 * 65536.0 - k1 * 256.0
    s2, s1, s0 = (ops.matmul(x, ops.transpose(k)) for k in (k2, k1, k0))
    # floor((s2 * 2**16 + s1 * 2**8 + s0 + 2**21) / 2**22), one byte at a time.
    carry = s1 + 8192.0 + ops.floor(s0 / 256.0)
    return ops.clip(ops.floor((s2 + ops.floor(carry / 256.0)) / 64.0), 0.0, 255.0)


@keras.saving.register_keras_serializable(package="keras_pneumonia")
class SquashResize(keras.layers.Layer):
    """Turns a decoded image of any size into the model's input, with `load_image`'s pixels.

    It does in the graph what `keras_pneumonia.load_image` does with Pillow for
    ``resize="squash"``: converts the colour mode (RGB to grayscale with
    Pillow's ITU-R 601-2 luma, ``L = (19595 R + 38470 G + 7471 B + 32768) >> 16``;
    grayscale to RGB by repeating the channel), then resizes with Pillow's
    ``Image.resize(..., BILINEAR)``: a triangle filter widened by the scale
    factor when shrinking (antialiased), a horizontal pass then a vertical
    pass, each in Pillow's fixed-point arithmetic and rounded to 8 bits. The
    result is Pillow's ``uint8`` image, pixel for pixel (tested on real X-rays
    for shrinking, stretching and enlarging).

    Written by hand because the library resizes cannot be exported, or give
    other pixels: ``keras.layers.Resizing(antialias=True)`` becomes
    TensorFlow's ``ScaleAndTranslate`` op, which neither LiteRT nor ONNX can
    run, and its pixels differ from Pillow's (``python benchmarks/decoders.py``
    measures by how much);
    without ``antialias`` a bilinear shrink samples only 4 pixels per output
    pixel. Each pass here is a few float32 matrix products, which every
    runtime supports.

    It takes a batch of images of one size, ``(batch, height, width, channels)``
    with 1 or 3 channels, pixel values 0-255 (an 8-bit decode, as float or
    integer), and returns ``(batch, *size, channels_out)`` in float32.

    Args:
        height: Output height in pixels.
        width: Output width in pixels.
        channels: Output channels: 1 (grayscale) or 3 (RGB).
        **kwargs: Passed to `keras.layers.Layer`.

    Example:

    >>> import numpy as np
    >>> from keras_pneumonia import SquashResize
    >>> image = np.random.randint(0, 256, size=(1, 513, 640, 3)).astype("float32")
    >>> tuple(SquashResize(160, 160, channels=1)(image).shape)
    (1, 160, 160, 1)
    """

    def __init__(self, height: int, width: int, channels: int = 1, **kwargs):
        super().__init__(**kwargs)
        if channels not in (1, 3):
            raise ValueError(f"`channels` must be 1 or 3; received {channels!r}.")
        self.height = int(height)
        self.width = int(width)
        self.channels = int(channels)

    def call(self, inputs):
        x = ops.clip(ops.floor(ops.cast(inputs, "float32") + 0.5), 0.0, 255.0)  # 8-bit values
        shape = ops.shape(x)
        if self.channels == 1:
            # Pillow's convert("L"), without a branch on the channel count (so the
            # graph exports to every runtime): one channel gets weight 65536
            # (unchanged), three get the luma weights.
            three = ops.cast(ops.equal(shape[-1], 3), "float32")
            weights = three * ops.convert_to_tensor(_LUMA_WEIGHTS) + (1.0 - three) * ops.convert_to_tensor(
                (65536.0, 0.0, 0.0)
            )
            weights = ops.slice(weights, [0], [shape[-1]])
            x = ops.floor((ops.sum(x * weights, axis=-1, keepdims=True) + 32768.0) / 65536.0)
        else:
            x = x + ops.zeros((3,), "float32")  # grayscale -> RGB: repeat the channel
        # Horizontal pass over (b, c, h, w), then the vertical one over (b, c, w, h).
        x = _resample_last_axis(ops.transpose(x, (0, 3, 1, 2)), _pillow_coefficients(shape[2], self.width))
        x = _resample_last_axis(ops.transpose(x, (0, 1, 3, 2)), _pillow_coefficients(shape[1], self.height))
        return ops.transpose(x, (0, 3, 2, 1))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.height, self.width, self.channels)

    def get_config(self):
        config = super().get_config()
        config.update({"height": self.height, "width": self.width, "channels": self.channels})
        return config


def _resample_axis(x, scale, offset, axis: int):
    """Bilinear resampling of ``x`` ``(n, h, w, c)`` along ``axis``: output line ``u`` reads ``scale * u + offset``.

    ``scale`` and ``offset`` are ``(n,)``, one per image. The arithmetic of
    ``keras.ops.image.affine_transform(..., interpolation="bilinear", fill_mode="nearest")``
    (TensorFlow's ``ImageProjectiveTransformV3``: the coordinate clamped to the image,
    then ``(floor + 1 - p) * x[floor] + (p - floor) * x[floor + 1]``), one axis at a
    time, written with gathers: LiteRT has no projective-transform op, and the default
    preset's border cut must export there.
    """
    length = ops.shape(x)[axis]
    last = ops.cast(length, "float32") - 1.0
    position = scale[:, None] * ops.cast(ops.arange(length), "float32")[None, :] + offset[:, None]
    position = ops.clip(position, 0.0, last)  # (n, length): fill_mode="nearest"
    low = ops.floor(position)
    high_weight, low_weight = position - low, low + 1.0 - position
    index_low = ops.cast(low, "int32")
    index_high = ops.cast(ops.minimum(low + 1.0, last), "int32")  # its weight is 0 where it would fall off

    def along_axis(values):  # (n, length) -> broadcastable against x along `axis`
        return ops.expand_dims(ops.expand_dims(values, -1), 1 if axis == 2 else 2)

    def take(index):
        return ops.take_along_axis(x, ops.broadcast_to(along_axis(index), ops.shape(x)), axis=axis)

    return along_axis(low_weight) * take(index_low) + along_axis(high_weight) * take(index_high)


@keras.saving.register_keras_serializable(package="keras_pneumonia")
class CropUniformBorders(keras.layers.Layer):
    """Cuts uniform bars off each side of an image and stretches the rest back to the full size.

    Films come with collimation borders, scanner margins and padding, black or white,
    of any width on any side; a model that sees them can learn them as a cue (the
    robustness report's ``pad`` and ``collimation`` perturbations). Inside the model,
    this layer removes them before anything else looks at the image, so the model, its
    exports and every input path see the same framing. Written by hand because Keras
    has no such layer; the resampling is `keras.ops.image.affine_transform`'s bilinear
    arithmetic written with gathers (``_resample_axis``), so it runs on every backend and
    in every export format, LiteRT included.

    A row counts as border when the pixel values across the middle half of the image
    vary by less than ``tolerance`` (standard deviation, grey levels); the border of a
    side is the run of such rows (or columns) from its edge, at most ``max_fraction``
    of the image. The rest is resampled bilinearly to the input size.

    Args:
        tolerance: Largest standard deviation of a border row or column (0-255 scale).
        max_fraction: Largest share of the height or width cut from one side.
        **kwargs: Passed to `keras.layers.Layer`.

    Example:

    >>> import numpy as np
    >>> from keras_pneumonia.layers import CropUniformBorders
    >>> image = np.random.default_rng(0).uniform(50, 200, (1, 8, 8, 1)).astype("float32")
    >>> image[0, :2] = 0.0  # a 2-row black bar at the top
    >>> out = keras.ops.convert_to_numpy(CropUniformBorders()(image))
    >>> bool(out[0, 0].min() > 0)  # the first row is now image, not bar
    True
    """

    def __init__(self, tolerance: float = 2.0, max_fraction: float = 0.25, **kwargs):
        super().__init__(**kwargs)
        self.tolerance = float(tolerance)
        self.max_fraction = float(max_fraction)

    def _runs(self, uniform, limit):
        """Length of the run of uniform lines from each end: ``(start, end)`` of ``(n, L)`` flags.

        The run from an end is the index of the first non-uniform line from it (``L`` if
        there is none): a minimum over ``where``, not a cumulative product, because LiteRT
        has no ``Cumprod`` op and the released model must export there.
        """
        length = ops.shape(uniform)[1]
        index = ops.cast(ops.arange(length), "float32")[None, :]
        beyond = ops.cast(length, "float32")

        def first_line_with_content(flags):
            return ops.min(ops.where(flags < 0.5, index, beyond), axis=1)

        start = first_line_with_content(uniform)
        end = first_line_with_content(ops.flip(uniform, axis=1))
        return ops.minimum(start, limit), ops.minimum(end, limit)

    def borders(self, x):
        """``(top, bottom, left, right)``: the rows or columns this layer cuts from each side of ``x``."""
        shape = ops.shape(x)  # dynamic: a training pipeline may leave height and width unknown
        height, width = shape[1], shape[2]
        grey = ops.mean(x, axis=-1)  # (n, h, w)
        middle_rows = grey[:, height // 4 : height - height // 4, :]
        middle_cols = grey[:, :, width // 4 : width - width // 4]
        rows_uniform = ops.cast(ops.std(middle_cols, axis=2) < self.tolerance, "float32")
        cols_uniform = ops.cast(ops.std(middle_rows, axis=1) < self.tolerance, "float32")
        h, w = ops.cast(height, "float32"), ops.cast(width, "float32")
        top, bottom = self._runs(rows_uniform, ops.floor(self.max_fraction * h))
        left, right = self._runs(cols_uniform, ops.floor(self.max_fraction * w))
        return top, bottom, left, right

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        shape = ops.shape(x)
        h, w = ops.cast(shape[1], "float32"), ops.cast(shape[2], "float32")
        top, bottom, left, right = self.borders(x)
        # Output pixel (u, v) samples the kept box at x = left + (u + 0.5) * sx - 0.5.
        sx = (w - left - right) / w
        sy = (h - top - bottom) / h
        x = _resample_axis(x, sx, left + 0.5 * sx - 0.5, axis=2)
        return _resample_axis(x, sy, top + 0.5 * sy - 0.5, axis=1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "tolerance": self.tolerance, "max_fraction": self.max_fraction}


@keras.saving.register_keras_serializable(package="keras_pneumonia")
class FillDarkEdges(keras.layers.Layer):
    """Fills the dark run at each end of every row with the row's first (or last) brighter pixel.

    A tilted film, or one rotated by a scanner, has black corners: triangles, not whole
    rows or columns, so `CropUniformBorders` leaves them, and a model can learn them as a
    cue (the robustness report's ``rotate`` perturbations). This layer replaces each
    row's black ends with the nearest image pixel of that row, so a corner shows the
    film's edge stretched outwards. It also takes in the film's own black background
    where that touches a row's end. Measured in release v3's experiments, a model trained
    with it (the log's v3-k) still changed 4-5% of its decisions on films rotated by 5
    degrees with black corners (4-7% in the runs without it). Written by hand because Keras has no
    such layer; it is an index computation (`keras.ops.argmax`,
    `keras.ops.take_along_axis`), so it runs on every backend. Rows with no pixel
    brighter than ``level`` stay as they are.

    Args:
        level: Largest grey value (0-255 scale, the mean over channels) that counts as dark.
        **kwargs: Passed to `keras.layers.Layer`.

    Example:

    >>> import numpy as np
    >>> from keras_pneumonia.layers import FillDarkEdges
    >>> image = np.full((1, 4, 6, 1), 100.0, dtype="float32")
    >>> image[0, 0, :2] = 0.0  # a black corner in the first row
    >>> image[0, 0, 2] = 120.0
    >>> keras.ops.convert_to_numpy(FillDarkEdges()(image))[0, 0, :, 0].tolist()
    [120.0, 120.0, 120.0, 100.0, 100.0, 100.0]
    """

    def __init__(self, level: float = 8.0, **kwargs):
        super().__init__(**kwargs)
        self.level = float(level)

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        width = ops.shape(x)[2]
        bright = ops.cast(ops.mean(x, axis=-1) > self.level, "int32")  # (n, h, w)
        first = ops.argmax(bright, axis=2)[..., None]  # the first bright column of each row
        last = (width - 1 - ops.argmax(ops.flip(bright, axis=2), axis=2))[..., None]
        columns = ops.minimum(ops.maximum(ops.arange(width)[None, None, :], first), last)
        columns = ops.broadcast_to(columns[..., None], ops.shape(x))
        filled = ops.take_along_axis(x, columns, axis=2)
        any_bright = ops.max(bright, axis=2)[..., None, None] > 0
        return ops.where(any_bright, filled, x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "level": self.level}


@keras.saving.register_keras_serializable(package="keras_pneumonia")
class FillDarkCorners(keras.layers.Layer):
    """Fills the dark regions that touch a corner of the image with the mean grey of the rest.

    A tilted film has black triangles in its corners, and they move decisions (the
    robustness report's ``rotate`` perturbations; release v3's experiment log,
    ``benchmarks/rotation_corners.py``). This layer finds the pixels darker than
    ``level`` that are connected to one of the four corner pixels through dark pixels,
    and gives them the mean value of the pixels outside those regions, so that a tilted
    film's corners and an upright film's dark background look alike. It takes in a
    film's own black background where that touches a corner too. In a model it comes
    after `Unmirror`, so that the unmirroring network sees the films it was trained on.

    Written by hand because Keras has no connected-component fill. The regions grow
    from the corners by repeated max-pooling inside the dark mask, unrolled to a fixed
    number of steps, so that it runs on every backend and exports as plain pooling. To
    keep that cheap they grow on a grid of ``cell`` x ``cell`` blocks (a block is dark
    when any of its pixels is), and the dark pixels inside the blocks reached are
    filled: dark pixels within one block of each other count as connected.

    Args:
        level: Largest grey value (0-255 scale, the mean over channels) that counts as dark.
        cell: Side of the blocks the regions grow on, in pixels (1: pixel by pixel, 8-connected).
        **kwargs: Passed to `keras.layers.Layer`.

    Example:

    >>> import numpy as np
    >>> from keras_pneumonia.layers import FillDarkCorners
    >>> image = np.full((1, 8, 12, 1), 100.0, dtype="float32")
    >>> image[0, 0, :3] = 0.0  # a black corner
    >>> image[0, 5, 6] = 0.0  # a dark pixel away from the corners stays
    >>> out = keras.ops.convert_to_numpy(FillDarkCorners(cell=2)(image))[0, :, :, 0]
    >>> [round(float(v), 2) for v in out[0, :4]], float(out[5, 6])
    ([98.92, 98.92, 98.92, 100.0], 0.0)
    """

    def __init__(self, level: float = 10.0, cell: int = 4, **kwargs):
        super().__init__(**kwargs)
        if int(cell) < 1:
            raise ValueError(f"cell must be at least 1, got {cell}.")
        self.level = float(level)
        self.cell = int(cell)
        self._side: int | None = None

    def build(self, input_shape):
        # The longer side fixes the number of growth steps (a Python loop, unrolled into the graph),
        # so it is read here, where a functional model passes its input size; a training step may
        # later call the layer on a batch whose size the graph does not know.
        if input_shape[1] is not None and input_shape[2] is not None:
            self._side = max(int(input_shape[1]), int(input_shape[2]))

    def _corner_regions(self, dark, side: int):
        """The dark pixels connected to a corner; ``dark``: ``(n, h, w, 1)`` in {0, 1}."""
        height, width = ops.shape(dark)[1], ops.shape(dark)[2]
        blocks = ops.max_pool(dark, self.cell, strides=self.cell, padding="same") if self.cell > 1 else dark
        rows, cols = ops.shape(blocks)[1], ops.shape(blocks)[2]
        at_row = ops.logical_or(ops.arange(rows) == 0, ops.arange(rows) == rows - 1)[:, None]
        at_col = ops.logical_or(ops.arange(cols) == 0, ops.arange(cols) == cols - 1)[None, :]
        region = blocks * ops.cast(ops.logical_and(at_row, at_col), dark.dtype)[None, :, :, None]
        for _ in range(-(-side // self.cell)):  # enough steps to cross the longer side
            region = ops.max_pool(region, (1, 3), strides=1, padding="same")
            region = ops.max_pool(region, (3, 1), strides=1, padding="same") * blocks
        if self.cell > 1:
            region = ops.repeat(ops.repeat(region, self.cell, axis=1), self.cell, axis=2)[:, :height, :width]
        return region * dark

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        known = x.shape[1] is not None and x.shape[2] is not None
        side = max(int(x.shape[1]), int(x.shape[2])) if known else self._side
        if side is None:
            raise ValueError("FillDarkCorners needs a known height and width (the model's input size).")
        dark = ops.cast(ops.mean(x, axis=-1, keepdims=True) <= self.level, "float32")
        region = self._corner_regions(dark, side)
        rest = 1.0 - region
        count = ops.maximum(ops.sum(rest, axis=(1, 2), keepdims=True), 1.0)
        mean = ops.sum(x * rest, axis=(1, 2), keepdims=True) / count
        return x * rest + mean * region

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "level": self.level, "cell": self.cell}
