"""Which films a model's `Unmirror` layer turns round, folder by folder.

    python benchmarks/turned_round.py FOLDER [FOLDER ...] [--model pneumonia_cnn_v3] [--flag]

Each folder is searched recursively for images (read with the model's own input config);
prints how many the layer turns round, and their names (docs/experiments.md, v3-v). With
``--flag``, also how many the out-of-distribution flag warns on, and how many of those
the layer turned round.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SUFFIXES = {".jpeg", ".jpg", ".png"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--model", default="pneumonia_cnn_v3", help="preset name or .keras path")
    parser.add_argument("--flag", action="store_true", help="also count the flagged images")
    args = parser.parse_args()

    from keras_pneumonia.mirror import turned_round
    from keras_pneumonia.models import load_model

    model = load_model(args.model, compile=False)
    for folder in args.folders:
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES)
        images = np.stack([model.input_config.load(p) for p in files])
        turned = turned_round(model, images)
        names = [p.name for p, t in zip(files, turned) if t]
        print(f"{folder}: {len(names)} of {len(files)} turned round: {', '.join(names)}")
        if args.flag:
            flagged = model.ood_flags(model.ood_scores(images))
            print(f"{folder}: {flagged.sum()} flagged, {(flagged & turned).sum()} of them turned round")


if __name__ == "__main__":
    main()
