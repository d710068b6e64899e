"""How a model's clean and perturbed figures move with the decision threshold.

    python benchmarks/threshold_sweep.py runs/v3-k [--mirror-average] [--json out.json]

Scores test_dev (used for choices) once per robustness perturbation, keeps the
probabilities, and prints for each threshold the clean accuracy / sensitivity /
specificity, the worst flip rate and the lowest specificity under any perturbation.
``--mirror-average`` scores the mean of P(pneumonia) of each image and its mirror
image (test-time augmentation; the mirror perturbation then flips nothing).
The validation split's figures at each threshold are printed beside them: a
threshold read off this table leans on test_dev, and has to say so.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "chest_xray_224"
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9)


def _probabilities(model, images: np.ndarray, mirror_average: bool) -> np.ndarray:
    from keras_pneumonia.evaluation import positive_probability

    p = positive_probability(model.predict(images, batch_size=64, verbose=0))
    if mirror_average:
        p = 0.5 * (p + positive_probability(model.predict(images[:, :, ::-1], batch_size=64, verbose=0)))
    return p


def _test_dev(model, mirror_average: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Labels and, per perturbation ("clean" first), P(pneumonia) of every test_dev image."""
    from keras_pneumonia.data import _entries
    from keras_pneumonia.images import input_config_of, load_image
    from keras_pneumonia.robustness import PERTURBATIONS, _resize, perturb

    spec = input_config_of(model)
    folder = DATA / "test_dev"
    entries = _entries(folder, folder, list(model.class_names))
    originals = [load_image(folder / e.path, None, spec.color_mode) for e in entries]
    labels = np.array([e.label for e in entries])
    scores = {}
    for name in ["clean", *PERTURBATIONS]:
        batch = np.stack([_resize(x if name == "clean" else perturb(x, name), spec) for x in originals])
        scores[name] = _probabilities(model, batch, mirror_average)
    return labels, scores


def _validation(model, mirror_average: bool) -> tuple[np.ndarray, np.ndarray]:
    from keras_pneumonia.data import load_chest_xray

    color_mode = "grayscale" if model.channels == 1 else "rgb"
    split = load_chest_xray(DATA, image_size=model.image_size, color_mode=color_mode, validation_split=0.1, seed=1337)
    images = np.concatenate([x for x, _ in split.val])
    return split.labels("val"), _probabilities(model, images, mirror_average)


def _rates(labels: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    from keras_pneumonia.evaluation import EvaluationReport

    report = EvaluationReport.from_predictions(labels, p, threshold)
    return {k: float(getattr(report, k)) for k in ("accuracy", "sensitivity", "specificity")}


def sweep(source: str, mirror_average: bool) -> list[dict]:
    import keras_pneumonia as kp

    path = Path(source)
    model = kp.PneumoniaCNN.from_pretrained(path / "model.keras" if path.is_dir() else source, compile=False)
    labels, scores = _test_dev(model, mirror_average)
    val_labels, val_p = _validation(model, mirror_average)
    rows = []
    for t in THRESHOLDS:
        clean = scores["clean"] >= t
        perturbed = {n: p for n, p in scores.items() if n != "clean"}
        flips = {n: float(np.mean((p >= t) != clean)) for n, p in perturbed.items()}
        specs = {n: _rates(labels, p, t)["specificity"] for n, p in perturbed.items()}
        worst, lowest = max(flips, key=flips.get), min(specs, key=specs.get)
        rows.append(
            {
                "threshold": t,
                "test_dev": _rates(labels, scores["clean"], t),
                "validation": _rates(val_labels, val_p, t),
                "worst_flip": [worst, flips[worst]],
                "lowest_specificity": [lowest, specs[lowest]],
                "over_4_percent": {n: round(f, 4) for n, f in flips.items() if f > 0.04},
                "specificity_under_0_90": {n: round(s, 4) for n, s in specs.items() if s < 0.90},
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a run folder (its model.keras), a .keras file or a preset name")
    parser.add_argument("--mirror-average", action="store_true", help="average each image with its mirror image")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    rows = sweep(args.source, args.mirror_average)
    print("| threshold | test_dev (used for choices) acc / sens / spec | val acc / sens / spec ", end="")
    print("| worst flip | lowest spec |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        td, va = r["test_dev"], r["validation"]
        print(
            f"| {r['threshold']:.2f} | {td['accuracy']:.3f} / {td['sensitivity']:.3f} / {td['specificity']:.3f} "
            f"| {va['accuracy']:.3f} / {va['sensitivity']:.3f} / {va['specificity']:.3f} "
            f"| {r['worst_flip'][1]:.1%} ({r['worst_flip'][0]}) "
            f"| {r['lowest_specificity'][1]:.3f} ({r['lowest_specificity'][0]}) |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
