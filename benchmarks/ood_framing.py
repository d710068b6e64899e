"""Does the out-of-distribution flag fire on framing the model has learned to ignore?

    python benchmarks/ood_framing.py MODEL [--passes 1] [--augmentation robust_reframe] [--json out.json]

MODEL (a preset name or a ``.keras`` file) carries a flag fitted on the clean training
images. A model trained with `keras_pneumonia.augmentation` no longer changes its answer
for collimation bars, black borders or a small tilt, yet those films are far from the clean
training images' features, so the flag warns on them. This refits the flag with the same
layers, thumbnail and quantile, on the clean train part **plus** ``--passes`` augmented
copies of it (the augmentation the model was trained with), the threshold again at the
98% quantile of the clean validation part; nothing is fitted on test_dev or external_dev.
Then, for the shipped flag and the refitted one: the share flagged of the training split,
of test_dev (used for choices) clean and under every robustness perturbation, and of
external_dev (used for choices), with the model's accuracy on flagged and unflagged
external_dev images. The refitted model is saved with ``--save``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]


def refit(model, data, augmentation: str, passes: int, seed: int):
    """``model``'s flag fitted again on the clean train part and ``passes`` augmented copies of it."""
    from keras_pneumonia import ood
    from keras_pneumonia.augmentation import Augmentation

    train = data.train.map(lambda *batch: batch[:2])
    for k in range(passes):
        augmented = Augmentation.preset(augmentation).apply_to_dataset(data.train, seed=seed + k)
        train = train.concatenate(augmented.map(lambda *batch: batch[:2]))
    spec = model.ood
    return ood.fit(
        model,
        train,
        data.val,
        layers=spec["layers"],
        grid_layers=spec["grid_layers"],
        input_grid=spec["input_grid"],
        quantile=spec["quantile"],
        shrinkage=spec["shrinkage"],
        description=f"{spec['fitted_on']['data']}; plus {passes} pass(es) of {augmentation!r} augmentation",
    )


def rates(model, data, sets: dict, test_dev: Path) -> dict:
    """Flag rates of one model on the split, the folders in ``sets`` and test_dev's perturbations."""
    from keras_pneumonia import ood
    from keras_pneumonia.robustness import evaluate_robustness

    row: dict = {"threshold": float(model.ood["threshold"])}
    for name, dataset in (("train", data.train), ("validation", data.val)):
        row[name] = float(np.mean(model.ood_flags(ood.scores(model, dataset))))
    for name, (x, y) in sets.items():
        row[name] = ood.summary(model, x, y)
    report = evaluate_robustness(model, test_dev)
    row["test_dev perturbations (used for choices)"] = {
        name: {"ood_flagged": r["ood_flagged"], "flip_rate": r["flip_rate"]} for name, r in report.results.items()
    }
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--augmentation", default="robust_reframe")
    parser.add_argument("--passes", type=int, default=1)
    parser.add_argument("--seed", type=int, default=101)
    parser.add_argument("--save", type=Path, help="write the model with the refitted flag here (.keras)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import keras_pneumonia as kp
    from keras_pneumonia.data import load_image_folder

    started = time.time()
    model = kp.PneumoniaCNN.from_preset(args.model, compile=False)
    reading = model.input_config.dataset_kwargs()
    data = kp.load_chest_xray(
        args.data / "chest_xray_224", **reading, class_names=model.class_names, validation_split=0.1, seed=1337
    )
    test_dev = args.data / "chest_xray_224" / "test_dev"
    sets = {}
    for name, folder in (("test_dev (used for choices)", test_dev), ("external_dev (used for choices)", None)):
        x, y, _ = load_image_folder(folder or args.data / "external_dev", **reading, class_names=model.class_names)
        sets[name] = (x, y)
    refitted = refit(model, data, args.augmentation, args.passes, args.seed)
    if args.save:
        refitted.save(args.save)
    results = {
        "model": args.model,
        "augmentation": args.augmentation,
        "passes": args.passes,
        "shipped flag (clean training images)": rates(model, data, sets, test_dev),
        "refitted flag (clean + augmented training images)": rates(refitted, data, sets, test_dev),
    }
    results["seconds"] = round(time.time() - started, 1)
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
