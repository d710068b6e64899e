"""The threshold rule applied to a released model: what it chooses on validation and on test_dev.

    python benchmarks/threshold_rule.py MODEL [--data ../shared/data/chest_xray_224]

The rule (`keras_pneumonia.evaluation.youden_threshold`, Youden's J with the one-standard-
error rule; docs/guide/evaluation.md) is applied to the patient-disjoint validation split
(``load_chest_xray(validation_split=0.1, seed=1337)``) and, for comparison, to test_dev
(used for choices); each threshold's accuracy, sensitivity, specificity on both sets are
printed, and a few fixed thresholds beside them.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chest_xray_224"
FIXED = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args(argv)

    import keras_pneumonia as kp
    from keras_pneumonia.data import load_image_folder
    from keras_pneumonia.evaluation import EvaluationReport, youden_threshold

    model = kp.PneumoniaCNN.from_pretrained(args.model, compile=False)
    reading = model.input_config.dataset_kwargs()
    data = kp.load_chest_xray(args.data, **reading, class_names=model.class_names, validation_split=0.1, seed=1337)
    batches = [(np.asarray(b[0]), np.asarray(b[1])) for b in data.val]
    x_test, y_test, _ = load_image_folder(args.data / "test_dev", **reading, class_names=model.class_names)
    sets = {
        "validation": (np.concatenate([b[1] for b in batches]), np.concatenate([b[0] for b in batches])),
        "test_dev (used for choices)": (y_test, x_test),
    }
    scores = {name: (y, model.predict(x, verbose=0)[:, -1]) for name, (y, x) in sets.items()}

    def line(threshold: float) -> str:
        parts = []
        for name, (y, p) in scores.items():
            r = EvaluationReport.from_predictions(y, p, threshold, model.class_names)
            parts.append(f"{name}: acc {r.accuracy:.3f} sens {r.sensitivity:.3f} spec {r.specificity:.3f}")
        return f"{threshold:.4g}  " + " | ".join(parts)

    for name, (y, p) in scores.items():
        print(f"the rule on {name} chooses", line(youden_threshold(y, p)))
    for threshold in FIXED:
        print("fixed", line(threshold))


if __name__ == "__main__":
    main()
