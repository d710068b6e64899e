"""Do TensorFlow's decoder and resize give the pixels `load_image` (Pillow) gives?

    python benchmarks/decoders.py [--data DIR] [--every 20] [--json benchmarks/decoders.json]

On every ``--every``-th training image: ``tf.io.decode_jpeg(dct_method="INTEGER_ACCURATE")``
against Pillow's decode (RGB, and grayscale with Pillow's luma-only ``draft``), and
``tf.image.resize(..., "bilinear", antialias=True)`` of Pillow's grayscale pixels to
160 px against Pillow's bilinear resize (what `load_image` does). Why the streaming
pipeline decodes with Pillow: ``docs/guide/scaling.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import find_data  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import numpy as np
    import tensorflow as tf
    from PIL import Image

    from keras_pneumonia.images import load_image

    files = sorted(find_data(args.data).glob("train/*/*.jpeg"))[:: args.every]
    counts = {"images": len(files), "decode_rgb_equal": 0, "decode_gray_equal": 0, "resize_equal": 0}
    differing = total = 0
    for path in files:
        raw = tf.io.read_file(str(path))
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
        with Image.open(path) as image:
            image.draft("L", (448, 448))
            gray = np.asarray(image.convert("L"))
        counts["decode_rgb_equal"] += np.array_equal(tf.io.decode_jpeg(raw, 3, dct_method="INTEGER_ACCURATE"), rgb)
        ours = tf.io.decode_jpeg(raw, 1, dct_method="INTEGER_ACCURATE").numpy()[..., 0]
        counts["decode_gray_equal"] += np.array_equal(ours, gray)
        pillow = load_image(path, 160)[..., 0]
        resized = tf.image.resize(gray[None, ..., None].astype("float32"), (160, 160), "bilinear", antialias=True)
        resized = np.clip(np.round(resized.numpy()[0, ..., 0]), 0, 255).astype(np.uint8)
        counts["resize_equal"] += np.array_equal(resized, pillow)
        differing += int((resized != pillow).sum())
        total += pillow.size
    counts["resize_pixels_differing_share"] = differing / total
    print(json.dumps(counts, indent=1))
    if args.json:
        args.json.write_text(json.dumps(counts, indent=2) + "\n")
    return counts


if __name__ == "__main__":
    main()
