"""Classify X-rays with an exported ONNX model: onnxruntime, NumPy and Pillow only, no Keras, no TensorFlow.

    keras-pneumonia export pneumonia_cnn_v2 pneumonia.onnx --format onnx   # once, where Keras is installed
    python examples/onnx_predict.py pneumonia.onnx xray1.jpeg xray2.png      # anywhere: pip install onnxruntime pillow

For an export made with ``--any-size`` the graph resizes itself: each image is sent
decoded as it is (EXIF orientation applied), one per run. Otherwise the image is
prepared as `keras_pneumonia.load_image` does for a JPEG/PNG: EXIF orientation,
grayscale (or RGB), then a squash resize to the model's input size with
Pillow's bilinear filter; the pixels stay raw 0-255 (the graph normalises them).
(`load_image` also lets libjpeg decode a JPEG of more than twice the input size at a
reduced scale first, which moves a few pixels by a grey level or so.)
The class names and the decision threshold come from the sidecar JSON that
``keras-pneumonia export`` writes beside the file.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime
from PIL import Image, ImageOps


def prepare(path: Path, height: int | None, width: int | None, color_mode: str) -> np.ndarray:
    """The image as the graph wants it; ``height`` None: an any-size graph, which resizes itself."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if height is None:
            image = image if image.mode in ("L", "RGB") else image.convert("RGB")
        else:
            image = image.convert("L" if color_mode == "grayscale" else "RGB")
            image = image.resize((width, height), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.float32)
    return array[..., None] if array.ndim == 2 else array


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="the .onnx file (its .onnx.json sidecar beside it)")
    parser.add_argument("images", nargs="+", type=Path, help="JPEG or PNG files")
    args = parser.parse_args(argv)

    info = json.loads(args.model.with_name(args.model.name + ".json").read_text())
    _, height, width, _ = info["input"]["shape"]
    session = onnxruntime.InferenceSession(str(args.model), providers=["CPUExecutionProvider"])
    name, color_mode = session.get_inputs()[0].name, info["input"]["color_mode"]
    if height is None:  # any size: one image per run
        images = [prepare(p, None, None, color_mode)[None] for p in args.images]
        probabilities = np.concatenate([session.run(None, {name: x})[0] for x in images])
    else:
        batch = np.stack([prepare(p, height, width, color_mode) for p in args.images])
        probabilities = session.run(None, {name: batch})[0]
    names, threshold = info["class_names"], info["threshold"]
    for path, p in zip(args.images, probabilities[:, -1]):
        print(f"{path.name}: {names[-1] if p >= threshold else names[0]}  P({names[-1].lower()})={p:.3f}")


if __name__ == "__main__":
    main()
