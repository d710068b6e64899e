"""How often the films of each class carry uniform borders, by the rule of `CropUniformBorders`.

    python benchmarks/borders.py [--data ../shared/data/chest_xray_224] [--size 160] [--json out.json]

A border is a run of uniform rows or columns from an edge (standard deviation across
the middle half below the layer's tolerance), counted at the model's input size.
If one class carries borders far more often than the other, a model can learn the
border as a cue for the class: what ``crop_borders`` takes away.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
SIDES = ("top", "bottom", "left", "right")


def border_widths(images: np.ndarray, layer) -> np.ndarray:
    """``(n, 4)``: rows or columns the layer cuts at the top, bottom, left and right of each image."""
    from keras import ops

    sides = layer.borders(ops.cast(images, "float32"))
    return np.stack([ops.convert_to_numpy(v) for v in sides], axis=1)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "chest_xray_224")
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from keras_pneumonia.data import load_image_folder
    from keras_pneumonia.layers import CropUniformBorders

    layer = CropUniformBorders()
    result = {"size": args.size, "tolerance": layer.tolerance, "splits": {}}
    for split in ("train", "test_dev"):
        if not (args.data / split).is_dir():
            continue
        images, labels, _ = load_image_folder(args.data / split, image_size=args.size)
        widths = border_widths(images, layer)
        for label, name in enumerate(("NORMAL", "PNEUMONIA")):
            w = widths[labels == label]
            row = {
                "n": int(len(w)),
                "with_border": float((w.sum(axis=1) > 0).mean()),
                "mean_width_px": dict(zip(SIDES, w.mean(axis=0).astype(float).round(2).tolist())),
            }
            result["splits"].setdefault(split, {})[name] = row
            print(f"{split:9s} {name:9s} n={row['n']:5d}  with a uniform border: {row['with_border']:.1%}  "
                  f"mean width (px) {row['mean_width_px']}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
