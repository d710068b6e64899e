"""How much black the training films carry at their edges, by class.

    python benchmarks/dark_edges.py [--step 3]

For every ``step``-th image of ``chest_xray_224/train`` (sorted by name), the share of
each row taken by its dark ends (grey <= 8, the level of `keras_pneumonia.FillDarkEdges`)
and the share of its four 20-pixel corners that is dark. Prints the means by class and
the share of films whose four corners together are more than a quarter dark.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chest_xray_224" / "train"
LEVEL = 8


def edge_shares(path: Path) -> tuple[float, float]:
    """(mean share of a row in its dark ends, share of the four 20-px corners that is dark)."""
    x = np.asarray(Image.open(path).convert("L")).astype(float)
    bright = x > LEVEL
    width = x.shape[1]
    first = np.argmax(bright, axis=1)
    last = width - 1 - np.argmax(bright[:, ::-1], axis=1)
    ends = np.where(bright.any(axis=1), first + (width - 1 - last), width) / width
    corners = np.concatenate([x[:20, :20], x[:20, -20:], x[-20:, :20], x[-20:, -20:]]).ravel()
    return float(ends.mean()), float((corners <= LEVEL).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step", type=int, default=3, help="score every STEP-th image (3)")
    args = parser.parse_args(argv)
    print("| class | images | row's dark ends (mean share) | dark share of the corners ", end="")
    print("| films whose corners are > 25% dark |")
    print("| --- | --- | --- | --- | --- |")
    for name in ("NORMAL", "PNEUMONIA"):
        files = sorted((DATA / name).iterdir())[:: args.step]
        ends, corners = np.array([edge_shares(f) for f in files]).T
        print(f"| {name} | {len(files)} | {ends.mean():.3f} | {corners.mean():.3f} | {(corners > 0.25).mean():.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
