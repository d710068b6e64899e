"""Mixed precision on this CPU: speed of float32 against mixed_bfloat16, and the released weights' metrics.

    python benchmarks/mixed_precision.py [--data DIR] [--repeats 7] [--json benchmarks/mixed_precision.json]

- Speed: images/s of training steps (batch 32) and of inference (batch 32) of the
  default `PneumoniaCNN` at 160 px, one model per dtype policy, the policies
  interleaved in every repeat; median, min and max of ``--repeats``. Random pixels:
  speed does not depend on what the image shows. ``mixed_float16`` is timed too
  (CPUs have no fast float16 matmul; it is for GPUs).
- Metrics: the released ``pneumonia_cnn_v2`` weights loaded into each policy and
  scored at the shipped threshold on the patient-disjoint validation split
  (``validation_split=0.1``, seed 1337, as in training) and on test_dev (used for
  choices), with the largest change of any probability against float32 and the
  decisions that change.

The data is found as in ``benchmarks/run.py`` (``--data`` or ``$KERAS_PNEUMONIA_DATA``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from run import find_data, spread  # noqa: E402

POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")


def speed(repeats: int, steps: int = 16) -> dict:
    import keras
    import numpy as np

    import keras_pneumonia as kp

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (steps * 32, 160, 160, 1), dtype=np.uint8)
    y = rng.integers(0, 2, steps * 32)
    models = {}
    for policy in POLICIES:
        keras.utils.set_random_seed(0)
        models[policy] = kp.PneumoniaCNN(dtype=policy)
        models[policy].compile()
        models[policy].fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)  # tracing
        models[policy].predict(x[:32], batch_size=32, verbose=0)
    train = {p: [] for p in POLICIES}
    infer = {p: [] for p in POLICIES}
    for _ in range(repeats):
        for policy, model in models.items():
            start = time.perf_counter()
            model.fit(x, y, batch_size=32, epochs=1, verbose=0)
            train[policy].append(len(x) / (time.perf_counter() - start))
            start = time.perf_counter()
            model.predict(x, batch_size=32, verbose=0)
            infer[policy].append(len(x) / (time.perf_counter() - start))
    out = {"train_images_per_s": {p: spread(v) for p, v in train.items()}}
    out["inference_images_per_s"] = {p: spread(v) for p, v in infer.items()}
    out["train_speedup_bfloat16"] = (
        out["train_images_per_s"]["mixed_bfloat16"]["median"] / out["train_images_per_s"]["float32"]["median"]
    )
    out["inference_speedup_bfloat16"] = (
        out["inference_images_per_s"]["mixed_bfloat16"]["median"] / out["inference_images_per_s"]["float32"]["median"]
    )
    return out


def metrics(data_dir: Path) -> dict:
    import numpy as np

    import keras_pneumonia as kp
    from keras_pneumonia.data import load_image_folder
    from keras_pneumonia.evaluation import EvaluationReport, predict_proba

    released = kp.PneumoniaCNN.from_preset("pneumonia_cnn_v2")
    sets = {
        "validation": kp.load_chest_xray(data_dir, image_size=160, validation_split=0.1, seed=1337).val,
        "test_dev (used for choices)": load_image_folder(data_dir / "test_dev", image_size=160)[:2],
    }
    out = {}
    base = {}
    for policy in POLICIES:
        model = kp.PneumoniaCNN.from_config({**released.get_config(), "dtype": policy})
        model.set_weights(released.get_weights())
        out[policy] = {}
        for name, data in sets.items():
            labels, probabilities = predict_proba(model, data)
            report = EvaluationReport.from_predictions(labels, probabilities, released.threshold).to_dict()
            base.setdefault(name, probabilities)
            out[policy][name] = {
                "n": report["n"],
                "accuracy": report["accuracy"],
                "auc": report["auc"],
                "max_abs_probability_change_vs_float32": float(np.abs(probabilities - base[name]).max()),
                "decisions_changed_vs_float32": int(
                    ((probabilities >= released.threshold) != (base[name] >= released.threshold)).sum()
                ),
            }
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    data = find_data(args.data)
    results = {"speed": speed(args.repeats)}
    print(json.dumps(results["speed"], indent=1), flush=True)
    results["metrics"] = metrics(data)
    print(json.dumps(results["metrics"], indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
