"""What the release-v3 additions cost at inference: border cropping and the out-of-distribution flag.

    python benchmarks/inference_cost.py MODEL [MODEL ...] [--repeats 5] [--json out.json]

Each MODEL (a preset name or a ``.keras`` file) classifies the same 256 model-input
images (real X-rays from ``tests/data``, repeated) at batch 32 and at batch 1, with
``model.predict_on_batch`` (the classifier alone) and ``model.predict_with_ood`` (the
classifier and the flag in one pass, what ``predict`` and the web app call). The models
and the two calls are interleaved within each repeat so they see the same machine
state; every figure is the median (min, max) of ``--repeats`` repeats, after one
warm-up call each. Also recorded: the parameter count and the ``.keras`` file size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]


def _images(model, n: int) -> np.ndarray:
    from keras_pneumonia.data import load_image_folder

    x, _, _ = load_image_folder(ROOT / "tests" / "data" / "chest_xray" / "test", **model.input_config.dataset_kwargs())
    return np.resize(x, (n, *x.shape[1:]))


def _calls(model, batch: int):
    """``{name: function(images)}`` of the calls measured for one model."""

    def classify(x):
        for i in range(0, len(x), batch):
            model.predict_on_batch(x[i : i + batch])

    calls = {"classify": classify}
    if model.ood_detector is not None:
        calls["classify_and_flag"] = lambda x: model.predict_with_ood(x, batch_size=batch)
    return calls


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import keras_pneumonia as kp
    from keras_pneumonia.training import package_versions
    from keras_pneumonia.weights import bundled_path

    models = {name: kp.PneumoniaCNN.from_preset(name, compile=False) for name in args.models}
    n = {32: 256, 1: 32}
    inputs = {name: {b: _images(m, n[b]) for b in n} for name, m in models.items()}
    timings: dict = {name: {} for name in models}
    for name, model in models.items():  # warm-up: tracing
        for batch in n:
            for call in _calls(model, batch).values():
                call(inputs[name][batch][:batch])
    for _ in range(args.repeats):
        for name, model in models.items():
            for batch in n:
                for call_name, call in _calls(model, batch).items():
                    start = time.perf_counter()
                    call(inputs[name][batch])
                    rate = n[batch] / (time.perf_counter() - start)
                    timings[name].setdefault(f"{call_name}_batch{batch}", []).append(rate)
    results = {"versions": package_versions(), "cpu_count": os.cpu_count(), "repeats": args.repeats, "models": {}}
    for name, model in models.items():
        row = {"params": model.count_params(), "crop_borders": model.crop_borders, "ood": model.ood is not None}
        path = Path(name) if Path(name).exists() else bundled_path(name)
        row["file_bytes"] = path.stat().st_size if path is not None else None
        for key, rates in timings[name].items():
            row[f"{key}_images_per_s"] = {
                "median": statistics.median(rates),
                "min": min(rates),
                "max": max(rates),
            }
        results["models"][name] = row
        shown = ", ".join(f"{k} {v['median']:.0f}/s" for k, v in row.items() if isinstance(v, dict))
        print(f"{name}: {row['file_bytes']} bytes; {shown}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
