"""Would filling the dark regions at a film's corners take the tilt's black corners away?

    python benchmarks/corner_fill.py MODEL [--level 10] [--json out.json]

`rotation_corners.py` shows that a 5-degree tilt flips decisions through the black
corners it leaves, not through the tilt. A fill that knew where the rotation put them
is not available for a user's film, so this script tries a blind one at test time: on
every image (clean and perturbed alike) the dark pixels (grey value at most ``--level``)
connected to one of the four corner pixels are replaced with the mean grey of the rest
of the image, before the model's resize. That takes in a film's own black background
where it touches a corner too, so the clean figures move as well; the flip rates of the
filled rows are counted against the filled clean images. The model is used as it is
(not trained with the fill): a lower bound on what a model trained with it would do.
Scored on test_dev (used for choices) at the model's threshold.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "chest_xray_224"
PERTURBATIONS = ("rotate_+5", "rotate_-5", "crop_10", "pad_5", "collimation_black", "collimation_white")


def fill_dark_corners(image: np.ndarray, level: int) -> tuple[np.ndarray, float]:
    """Fills the dark regions that touch a corner of a ``uint8`` ``(h, w, 1)`` image; returns it and the filled share.

    Connected components come from `scipy.ndimage.label` (SciPy is installed with tf-keras-vis).
    """
    from scipy import ndimage

    grey = image[..., 0]
    labels, _ = ndimage.label(grey <= level)
    corners = {labels[0, 0], labels[0, -1], labels[-1, 0], labels[-1, -1]} - {0}
    mask = np.isin(labels, list(corners))
    if not mask.any() or mask.all():
        return image, float(mask.mean())
    out = grey.copy()
    out[mask] = int(round(float(grey[~mask].mean())))
    return out[..., None], float(mask.mean())


def measure(source: str, level: int) -> dict[str, dict[str, float]]:
    import keras_pneumonia as kp
    from keras_pneumonia.data import _entries
    from keras_pneumonia.evaluation import positive_probability
    from keras_pneumonia.images import input_config_of, load_image
    from keras_pneumonia.robustness import _resize, perturb

    path = Path(source)
    model = kp.PneumoniaCNN.from_pretrained(path / "model.keras" if path.is_dir() else source, compile=False)
    spec = input_config_of(model)
    folder = DATA / "test_dev"
    entries = _entries(folder, folder, list(model.class_names))
    originals = [load_image(folder / e.path, None, "grayscale") for e in entries]
    labels = np.array([e.label for e in entries])

    def decide(images: list[np.ndarray]) -> np.ndarray:
        batch = np.stack([_resize(x, spec) for x in images])
        return positive_probability(model.predict(batch, batch_size=64, verbose=0)) >= model.threshold

    def row(decided: np.ndarray, reference: np.ndarray) -> dict[str, float]:
        return {
            "accuracy": float(np.mean(decided == labels)),
            "sensitivity": float(np.mean(decided[labels == 1])),
            "specificity": float(np.mean(~decided[labels == 0])),
            "flip_rate": float(np.mean(decided != reference)),
        }

    filled, shares = zip(*(fill_dark_corners(x, level) for x in originals), strict=True)
    clean, clean_filled = decide(originals), decide(list(filled))
    rows = {"clean": row(clean, clean), "clean, corners filled": row(clean_filled, clean)}
    rows["clean, corners filled"]["images_filled"] = int(np.sum(np.array(shares) > 0))
    rows["clean, corners filled"]["mean_share_filled"] = float(np.mean(shares))
    for name in PERTURBATIONS:
        perturbed = [perturb(x, name) for x in originals]  # each perturbation once, scored as it is and filled
        rows[name] = row(decide(perturbed), clean)
        rows[f"{name}, corners filled"] = row(decide([fill_dark_corners(x, level)[0] for x in perturbed]), clean_filled)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a run folder (its model.keras), a .keras file or a preset name")
    parser.add_argument("--level", type=int, default=10, help="largest grey value (0-255) that counts as dark")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    rows = measure(args.source, args.level)
    print("| test_dev (used for choices) | accuracy | sensitivity | specificity | flips |")
    print("| --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        figures = " | ".join(f"{r[k]:.3f}" for k in ("accuracy", "sensitivity", "specificity"))
        print(f"| {name} | {figures} | {r['flip_rate']:.1%} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
