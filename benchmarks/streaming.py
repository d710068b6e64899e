"""Peak memory and speed of the streaming pipeline as the data set grows: 5k, 50k, 200k images.

    python benchmarks/streaming.py [--data DIR] [--sizes 5000,50000,200000] [--repeats 5] [--json F]

Builds Kaggle-layout folders of N images from hard links to the training images
(no copies; file names get a suffix so patients stay distinct), then, in a fresh
process for each N (so peak RSS is that run's alone), with ``--pipeline stream`` (the
default; ``memory`` runs the in-memory pipeline the same way, for comparison). The
sizes are interleaved in each of ``--repeats`` rounds (5), so a slow spell of the
machine hits every size; each figure is reported as median, min and max:

- ``pipeline_images_per_s``: one full pass over the training split through
  `load_chest_xray(pipeline="stream")` (list, split, header check, decode, batch);
- ``epoch_images_per_s``: one full training epoch (``fit``) on that stream of a small
  `PneumoniaCNN` (two blocks of 8 and 16 filters, 0.01 GFLOP an image), so that the
  pipeline, not the convolutions, sets the pace;
- ``train_images_per_s``: ``fit`` of the default `PneumoniaCNN` (0.83 GFLOP an image) for
  ``--steps`` steps on that stream: the model, not N, sets this figure;
- ``peak_rss_mb``: the process's peak resident memory after all three (``ru_maxrss``);
- ``setup_s``: listing, patient split and header check of every file (in memory:
  and decoding every image).

The data is found with ``--data``, else ``$KERAS_PNEUMONIA_DATA``, else
``../shared/data/chest_xray_224`` beside the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from run import find_data, spread  # noqa: E402

CHILD = r"""
import json, resource, sys, time
import keras, keras_pneumonia as kp
folder, steps, pipeline = sys.argv[1], int(sys.argv[2]), sys.argv[3]
start = time.perf_counter()
data = kp.load_chest_xray(folder, pipeline=pipeline, validation_split=0.1, seed=0)
setup = time.perf_counter() - start
n = len(data.files["train"])
start = time.perf_counter()
seen = sum(int(y.shape[0]) for _, y in data.train)
pass_rate = seen / (time.perf_counter() - start)
keras.utils.set_random_seed(0)
small = kp.PneumoniaCNN(filters=(8, 16), convs_per_block=1, dense_units=())
small.compile()
small.fit(data.train.take(3), epochs=1, verbose=0)  # tracing
start = time.perf_counter()
small.fit(data.train, epochs=1, verbose=0)
epoch = n / (time.perf_counter() - start)
model = kp.PneumoniaCNN()
model.compile()
model.fit(data.train.take(3), epochs=1, verbose=0)  # tracing and warm-up
start = time.perf_counter()
model.fit(data.train.take(steps), epochs=1, verbose=0)
train = steps * 32 / (time.perf_counter() - start)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"images": n + len(data.files["val"]), "train_split": n, "setup_s": setup,
                  "pipeline_images_per_s": pass_rate, "epoch_images_per_s": epoch, "train_images_per_s": train,
                  "peak_rss_mb": rss}))
"""


def build_folder(source: Path, target: Path, n: int) -> Path:
    """``target`` with ``n`` images: hard links to ``source/train``'s, cycled, renamed per copy."""
    files = {c: sorted((source / "train" / c).iterdir()) for c in ("NORMAL", "PNEUMONIA")}
    total = sum(len(v) for v in files.values())
    for name, paths in files.items():
        folder = target / "train" / name
        folder.mkdir(parents=True, exist_ok=True)
        wanted = round(n * len(paths) / total)
        for i in range(wanted):
            path = paths[i % len(paths)]
            copy = i // len(paths)
            # person12_bacteria_3.jpeg -> person12c4_bacteria_3.jpeg: copy 4 is another patient.
            stem, _, rest = path.name.partition("_") if name == "PNEUMONIA" else path.name.partition("-0")
            new = f"{stem}c{copy}_{rest}" if name == "PNEUMONIA" else f"{stem}{copy:02d}-0{rest}"
            os.link(path, folder / new)
    return target


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path)
    parser.add_argument("--sizes", default="5000,50000,200000")
    parser.add_argument("--repeats", type=int, default=5, help="rounds over all sizes, interleaved (5)")
    parser.add_argument("--steps", type=int, default=40, help="steps of the default model timed per size (40)")
    parser.add_argument(
        "--pipeline", choices=("stream", "memory"), default="stream", help="memory: the in-memory one, to compare"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    data = find_data(args.data)
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {"data": str(data), "pipeline": args.pipeline, "steps": args.steps, "repeats": args.repeats, "runs": []}
    with tempfile.TemporaryDirectory(dir=ROOT.parent) as tmp:  # same file system: hard links
        folders = {n: build_folder(data, Path(tmp) / f"n{n}", n) for n in sizes}
        for repeat in range(args.repeats):
            for n in sizes:
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, str(folders[n]), str(args.steps), args.pipeline],
                    capture_output=True,
                    text=True,
                    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                )
                if out.returncode:
                    raise SystemExit(out.stderr[-3000:])
                run = {"size": n, "repeat": repeat, **json.loads(out.stdout.strip().splitlines()[-1])}
                results["runs"].append(run)
                print(json.dumps(run), flush=True)
                if args.json:  # as it goes: a long run stopped half-way keeps what it measured
                    args.json.write_text(json.dumps(results, indent=2) + "\n")
    metrics = [k for k in results["runs"][0] if k not in ("size", "repeat", "images", "train_split")]
    results["sizes"] = {
        str(n): {k: spread(r[k] for r in results["runs"] if r["size"] == n) for k in metrics} for n in sizes
    }
    first, last = results["sizes"][str(sizes[0])]["peak_rss_mb"], results["sizes"][str(sizes[-1])]["peak_rss_mb"]
    results["rss_ratio_largest_to_smallest"] = last["median"] / first["median"]
    results["rss_ratio_worst_case"] = last["max"] / first["min"]
    print(
        f"peak RSS {sizes[-1]} vs {sizes[0]} images: x{results['rss_ratio_largest_to_smallest']:.2f} (medians),"
        f" x{results['rss_ratio_worst_case']:.2f} (largest max / smallest min)"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
