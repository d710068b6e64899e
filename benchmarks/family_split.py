"""A harder validation split: NORMAL images from a batch the model never saw.

    python benchmarks/family_split.py [--data DIR] [--epochs 15] [--json family.json]

The official training split's NORMAL images come in two file-name families, ``IM-*``
(597) and ``NORMAL2-IM-*`` (744), which look like two batches of data. Here the model
trains on the ``IM-*`` normals and 80% of the pneumonia patients, and is validated on
**all** ``NORMAL2-IM-*`` normals and the other 20% of pneumonia patients: specificity on
an unseen batch, closer to what the official test split asks of a model than a random
patient split. Each recipe is trained with `keras_pneumonia.training.train` and
reported at threshold 0.5 (the threshold is not tuned on this split).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from keras_pneumonia.data import CLASS_NAMES, FileEntry, patient_id, split_by_patient
from keras_pneumonia.evaluation import EvaluationReport, predict_proba

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chest_xray_224"
RECIPES = {
    "default (per-image standardisation)": {},
    "rescale (divide by 255, as the seed)": {"normalization": "rescale"},
}


def family_layout(data: Path, seed: int) -> Path:
    """A Kaggle layout of symlinks: train/ and val/ split by file-name family."""
    root = Path(tempfile.mkdtemp(prefix="kp-family-"))
    pneumonia = [
        FileEntry(f"train/PNEUMONIA/{p.name}", 1, patient_id(p.name) or p.stem)
        for p in sorted((data / "train" / "PNEUMONIA").iterdir())
    ]
    keep, held_out = split_by_patient(pneumonia, 0.2, seed)
    placement = {e.path: "train" for e in keep} | {e.path: "val" for e in held_out}
    for p in sorted((data / "train" / "NORMAL").iterdir()):
        placement[f"train/NORMAL/{p.name}"] = "val" if p.name.startswith("NORMAL2-") else "train"
    for relative, split in placement.items():
        target = root / split / Path(relative).parent.name / Path(relative).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to((data / relative).resolve())
    return root


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Kaggle-layout folder (train/ is used)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--output", type=Path, default=Path("runs/family"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import keras

    from keras_pneumonia import load_chest_xray
    from keras_pneumonia.training import train

    layout = family_layout(args.data, args.seed)
    results = {}
    for name, model_kwargs in RECIPES.items():
        run = args.output / name.split()[0]
        train(
            layout,
            run,
            epochs=args.epochs,
            seed=args.seed,
            kaggle_val="keep",
            model_kwargs=model_kwargs,
            overwrite=True,
            verbose=2,
        )
        model = keras.saving.load_model(run / "model.keras")
        data = load_chest_xray(layout, image_size=model.image_size, kaggle_val="keep")
        labels, probabilities = predict_proba(model, data.val)
        report = EvaluationReport.from_predictions(labels, probabilities, 0.5, CLASS_NAMES)
        results[name] = report.to_dict()
        print(f"\n{name}:\n{report.to_markdown()}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
