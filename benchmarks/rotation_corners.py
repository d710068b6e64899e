"""What makes a 5-degree rotation flip decisions: the tilt, or the corners it leaves?

    python benchmarks/rotation_corners.py runs/v3-k [--json out.json]

Rotates every test_dev image (used for choices) by +-5 degrees as the robustness
report does, but fills the corners the rotation uncovers in different ways (black, as
the report and a scanner do; mid-grey; the image's own mean grey; black and then cut
off with a 10% crop), and prints each variant's flip rate and specificity at the
model's threshold. If the tilt decided, every fill would flip alike.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "chest_xray_224"


def _crop(image, fraction: float):
    dx, dy = int(fraction * image.width), int(fraction * image.height)
    return image.crop((dx, dy, image.width - dx, image.height - dy))


def _variants(degrees: float) -> dict:
    from PIL import Image

    def rotate(fill):
        def apply(image):
            color = int(np.asarray(image).mean()) if fill == "mean" else fill
            return image.rotate(degrees, resample=Image.Resampling.BILINEAR, fillcolor=color)

        return apply

    return {
        f"rotate {degrees:+g}, black corners": rotate(0),
        f"rotate {degrees:+g}, grey (128) corners": rotate(128),
        f"rotate {degrees:+g}, corners of the image's mean grey": rotate("mean"),
        f"rotate {degrees:+g}, black corners, then 10% cropped away": lambda im: _crop(rotate(0)(im), 0.10),
    }


def measure(source: str) -> dict[str, dict[str, float]]:
    from PIL import Image

    import keras_pneumonia as kp
    from keras_pneumonia.data import _entries
    from keras_pneumonia.evaluation import positive_probability
    from keras_pneumonia.images import input_config_of, load_image
    from keras_pneumonia.robustness import _resize

    path = Path(source)
    model = kp.PneumoniaCNN.from_pretrained(path / "model.keras" if path.is_dir() else source, compile=False)
    spec = input_config_of(model)
    folder = DATA / "test_dev"
    entries = _entries(folder, folder, list(model.class_names))
    originals = [load_image(folder / e.path, None, "grayscale")[..., 0] for e in entries]
    normal = np.array([e.label for e in entries]) == 0

    def decide(change) -> np.ndarray:
        batch = np.stack([_resize(np.asarray(change(Image.fromarray(x)))[..., None], spec) for x in originals])
        return positive_probability(model.predict(batch, batch_size=64, verbose=0)) >= model.threshold

    clean = decide(lambda image: image)
    rows = {"clean": {"flip_rate": 0.0, "specificity": float(np.mean(~clean[normal]))}}
    for degrees in (5.0, -5.0):
        for name, change in _variants(degrees).items():
            decided = decide(change)
            flips, specificity = float(np.mean(decided != clean)), float(np.mean(~decided[normal]))
            rows[name] = {"flip_rate": flips, "specificity": specificity}
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a run folder (its model.keras), a .keras file or a preset name")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    rows = measure(args.source)
    print("| test_dev (used for choices) | flips | specificity |\n| --- | --- | --- |")
    for name, row in rows.items():
        print(f"| {name} | {row['flip_rate']:.1%} | {row['specificity']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
