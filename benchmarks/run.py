"""Speed benchmarks of keras-pneumonia against the seed's way, on this machine.

    python benchmarks/run.py [--quick] [--json out.json] [--data DIR] [--only STEP]

Every figure is the median, min and max of ``--repeats`` runs (5 by default) taken in
this one process, the things compared interleaved within each repeat so they see the
same machine state. Each ratio changes one thing. Keys:

- ``pipeline``: images/s of one pass over the training split through our pipelines
  (in memory: first pass and epoch; streaming: epoch) and through
  `keras.utils.image_dataset_from_directory` without and with ``.cache()`` (first pass
  and cached epoch); ``ratios`` sets streaming against Keras without a cache (both
  decode every epoch) and in-memory against Keras with ``.cache()`` (both read decoded
  images; both decode once).
- ``training``: training images/s of our default `PneumoniaCNN` and of the seed's CNN,
  each through our pipeline and through Keras' loader (as the seed used it):
  ``pipeline_effect`` is one model through both pipelines, ``model_effect`` both
  models through one pipeline.
- ``inference``: the released model on this CPU at batch 32 (batch 1 too).
- ``peak``: a 2048x2048 float32 matmul's FLOP/s, sampled before every step and after
  the last (median, min, max): ``flops_utilization`` divides by its median.
- ``import``, ``memory``: import time against ``import keras``; peak memory of a
  training epoch, each in a fresh subprocess.

``--quick`` runs on 160 images a class; its figures are labelled as not comparable
with the full run's. The data is found with ``--data``, else ``$KERAS_PNEUMONIA_DATA``,
else ``../shared/data/chest_xray_224``; without any, the steps that need it say so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
DEVELOPERS_DATA = ROOT.parent / "shared" / "data" / "chest_xray_224"


def find_data(given: Path | None) -> Path:
    """The Kaggle-layout folder: ``--data``, else ``$KERAS_PNEUMONIA_DATA``, else the developers' copy.

    Exits with a message saying what is needed when none of them holds ``train/NORMAL``
    and ``train/PNEUMONIA``.
    """
    if given:
        candidates = [given]
    elif os.environ.get("KERAS_PNEUMONIA_DATA"):
        candidates = [Path(os.environ["KERAS_PNEUMONIA_DATA"])]
    else:
        candidates = [DEVELOPERS_DATA]
    for candidate in candidates:
        if all((candidate / "train" / c).is_dir() for c in ("NORMAL", "PNEUMONIA")):
            return candidate
    raise SystemExit(
        "These benchmarks need chest X-rays in the Kaggle layout (train/NORMAL, train/PNEUMONIA), e.g. the "
        "'Chest X-Ray Images (Pneumonia)' download: pass --data DIR or set KERAS_PNEUMONIA_DATA=DIR. "
        f"Tried: {', '.join(str(c) for c in candidates)}. (run.py --only inference, resize or import needs no data.)"
    )


def median_of(fn, repeats):
    values = [fn() for _ in range(repeats)]
    return statistics.median(values), values


def subset_dir(data: Path, per_class: int | None) -> Path:
    """A Kaggle-layout folder of symlinks to the first ``per_class`` images of each class."""
    if per_class is None:
        return data
    target = Path(tempfile.mkdtemp(prefix="kp-bench-"))
    for name in ("NORMAL", "PNEUMONIA"):
        (target / "train" / name).mkdir(parents=True)
        for path in sorted((data / "train" / name).iterdir())[:per_class]:
            (target / "train" / name / path.name).symlink_to(path.resolve())
    return target


# --------------------------------------------------------------------------- FLOPs


def count_flops(model) -> int:
    """Forward FLOPs per image (multiply-adds count 2) of Conv2D and Dense layers."""
    import keras

    flops = 0
    for layer in _leaf_layers(model):
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            c_in = layer.input.shape[-1]
            flops += 2 * h * w * kh * kw * c_in * c_out
        elif isinstance(layer, keras.layers.Dense):
            flops += 2 * layer.input.shape[-1] * layer.units
    return int(flops)


def _leaf_layers(model):
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer


def peak_matmul_flops(repeats: int) -> float:
    """FLOP/s of a 2048x2048 float32 matrix multiply (TensorFlow, all cores)."""
    import tensorflow as tf

    n = 2048
    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    tf.linalg.matmul(a, b).numpy()

    def run():
        start = time.perf_counter()
        for _ in range(5):
            c = tf.linalg.matmul(a, b)
        c.numpy()
        return 5 * 2 * n**3 / (time.perf_counter() - start)

    return median_of(run, repeats)[0]


# --------------------------------------------------------------------------- pipeline


def spread(values) -> dict:
    """Median, min and max of repeated measurements, how many, and each one (to see the machine's modes)."""
    values = list(values)
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "runs": values,
    }


def bench_pipeline(data: Path, size: int, repeats: int) -> dict:
    """Images/s through each pipeline, like for like, the variants interleaved in every repeat.

    - ``ours_memory``: `load_chest_xray(pipeline="memory")`: ``first_pass`` decodes every
      image (train and validation) into memory; ``epoch`` reads the training split from it.
    - ``ours_stream``: `load_chest_xray(pipeline="stream")`: every epoch decodes again.
    - ``keras``: `keras.utils.image_dataset_from_directory`, which decodes every epoch.
    - ``keras_cache``: the same with ``.cache()``: ``first_pass`` decodes and fills the
      cache, ``epoch`` reads it.
    """
    import keras

    import keras_pneumonia as kp

    def timed(dataset) -> float:
        start, n = time.perf_counter(), 0
        for _, labels in dataset:
            n += int(labels.shape[0])
        return n / (time.perf_counter() - start)

    rates: dict[str, list[float]] = {}

    def add(name, value):
        rates.setdefault(name, []).append(value)

    for _ in range(repeats):
        start = time.perf_counter()
        memory = kp.load_chest_xray(data, image_size=size, validation_split=0.1, seed=0, pipeline="memory")
        add("ours_memory_first_pass", sum(len(f) for f in memory.files.values()) / (time.perf_counter() - start))
        add("ours_memory_epoch", timed(memory.train))
        del memory
        stream = kp.load_chest_xray(data, image_size=size, validation_split=0.1, seed=0, pipeline="stream")
        add("ours_stream_epoch", timed(stream.train))
        theirs = keras.utils.image_dataset_from_directory(
            data / "train", image_size=(size, size), color_mode="grayscale", batch_size=32, seed=0, verbose=False
        )
        add("keras_epoch", timed(theirs))
        cached = theirs.cache()
        add("keras_cache_first_pass", timed(cached))
        add("keras_cache_epoch", timed(cached))
        del cached
    figures = {name: spread(values) for name, values in rates.items()}
    med = {name: f["median"] for name, f in figures.items()}
    figures["ratios"] = {
        # Both decode every epoch.
        "ours_stream_over_keras_epoch": med["ours_stream_epoch"] / med["keras_epoch"],
        # Both read images decoded before.
        "ours_memory_over_keras_cache_epoch": med["ours_memory_epoch"] / med["keras_cache_epoch"],
        # Both decode everything once (ours: train and validation, Pillow's exact resize).
        "ours_memory_over_keras_cache_first_pass": med["ours_memory_first_pass"] / med["keras_cache_first_pass"],
    }
    return figures


def bench_training(data: Path, size: int, repeats: int) -> dict:
    """Training images/s of two models through two pipelines, one epoch each, all four interleaved.

    The models: our default `PneumoniaCNN` and the seed's CNN (``benchmarks/seed_recipe.py``).
    The pipelines: ours (`load_chest_xray`, in memory) and Keras'
    `image_dataset_from_directory` as the seed used it (decoding every epoch, no cache).
    So ``pipeline_effect`` compares one model through both pipelines, and ``model_effect``
    both models through one pipeline: each ratio changes one thing.
    """
    import keras
    from seed_recipe import seed_model  # benchmarks/ is on sys.path when this script runs

    import keras_pneumonia as kp

    loaded = kp.load_chest_xray(data, image_size=size, validation_split=0.1, seed=0, pipeline="memory")
    theirs = keras.utils.image_dataset_from_directory(
        data / "train",
        image_size=(size, size),
        color_mode="grayscale",
        batch_size=32,
        seed=0,
        validation_split=0.1,
        subset="training",
        verbose=False,
    )
    pipelines = {"ours": loaded.train, "keras": theirs}
    counts = {"ours": len(loaded.files["train"]), "keras": len(theirs.file_paths)}
    models = {}
    for model_name in ("ours", "seed"):
        for pipeline_name, dataset in pipelines.items():
            keras.utils.set_random_seed(0)
            model = kp.PneumoniaCNN(image_size=size) if model_name == "ours" else seed_model(size, channels=1)
            if model_name == "ours":
                model.compile()
            model.fit(dataset.take(3), epochs=1, verbose=0, shuffle=False)  # warm-up: tracing
            models[(model_name, pipeline_name)] = model

    # Epoch times on a small VM are bimodal (some epochs stall for seconds at their
    # start, whatever the model): the four are interleaved, and every run is kept.
    runs: dict[str, list[float]] = {f"{m}_model_{p}_pipeline": [] for m, p in models}
    for _ in range(repeats):
        for (model_name, pipeline_name), model in models.items():
            start = time.perf_counter()
            model.fit(pipelines[pipeline_name], epochs=1, verbose=0, shuffle=False)  # both shuffle themselves
            runs[f"{model_name}_model_{pipeline_name}_pipeline"].append(
                counts[pipeline_name] / (time.perf_counter() - start)
            )
    figures = {name: spread(values) for name, values in runs.items()}
    med = {name: f["median"] for name, f in figures.items()}
    ours, seed = models[("ours", "ours")], models[("seed", "ours")]
    return {
        "images_per_s": figures,
        "pipeline_effect": {
            "ours_model": med["ours_model_ours_pipeline"] / med["ours_model_keras_pipeline"],
            "seed_model": med["seed_model_ours_pipeline"] / med["seed_model_keras_pipeline"],
        },
        "model_effect": {
            "ours_pipeline": med["ours_model_ours_pipeline"] / med["seed_model_ours_pipeline"],
            "keras_pipeline": med["ours_model_keras_pipeline"] / med["seed_model_keras_pipeline"],
        },
        "ours_params": ours.count_params(),
        "seed_params": seed.count_params(),
        "ours_forward_flops_per_image": count_flops(ours),
        "seed_forward_flops_per_image": count_flops(seed),
    }


# --------------------------------------------------------------------------- inference


def bench_inference(repeats: int) -> dict:
    """The default preset at batch 1 and 32; against v2, and with its out-of-distribution flag (one pass).

    The variants are interleaved within each repeat, so a change of the machine's
    speed mode hits them alike.
    """
    import numpy as np

    import keras_pneumonia as kp
    from keras_pneumonia import ood

    model = kp.PneumoniaCNN.from_pretrained(compile=False)
    v2 = kp.PneumoniaCNN.from_preset("pneumonia_cnn_v2", compile=False)
    variants = {"default": model.predict_on_batch, "v2": v2.predict_on_batch}
    if model.ood is not None:
        variants["default_with_ood"] = lambda x: ood.predict_on_batch(model, x)
    rng = np.random.default_rng(0)
    result = {"model": model.name, "model_params": model.count_params(), "forward_flops_per_image": count_flops(model)}
    for batch in (1, 32):
        x = rng.integers(0, 256, size=(batch, *model.input_shape[1:]), dtype=np.uint8).astype("float32")
        calls = 64 if batch == 1 else 8
        for fn in variants.values():
            for _ in range(3):
                fn(x)  # warm-up
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(repeats):
            for name, fn in variants.items():
                start = time.perf_counter()
                for _ in range(calls):
                    fn(x)
                times[name].append((time.perf_counter() - start) / calls)
        for name, values in times.items():
            prefix = "" if name == "default" else f"{name}_"
            latency = statistics.median(values)
            result[f"{prefix}latency_ms_batch{batch}"] = latency * 1000
            result[f"{prefix}images_per_s_batch{batch}"] = batch / latency
            result[f"{prefix}images_per_s_batch{batch}_runs"] = [batch / v for v in values]
    result["inference_images_per_s"] = result["images_per_s_batch32"]
    return result


def bench_resize(repeats: int) -> dict:
    """The cost of resizing inside the graph (``export_model(..., any_size=True)``) against Pillow.

    One full-resolution X-ray (the largest shipped test image, and a 2400 x 2000
    one made from it, the size of the biggest Kaggle originals), batch 1.
    """
    import numpy as np
    from PIL import Image

    import keras_pneumonia as kp
    from keras_pneumonia.export import decode_as_is, with_resize

    model = kp.PneumoniaCNN.from_pretrained(compile=False)
    any_size = with_resize(model)
    height, width = model.input_shape[1:3]
    source = ROOT / "tests" / "data" / "fullres" / "IM-0314-0001.jpeg"
    result = {}
    image = decode_as_is(source)
    large = np.asarray(Image.fromarray(image[..., 0].astype("uint8")).resize((2400, 2000)), "float32")[..., None]
    for label, array in (("shipped", image), ("2400x2000", large)):
        x = array[None]
        pil = Image.fromarray(array[..., 0].astype("uint8"))
        any_size.predict_on_batch(x)  # trace for this shape
        model.predict_on_batch(np.zeros((1, height, width, 1), "float32"))

        def in_graph(x=x):
            start = time.perf_counter()
            any_size.predict_on_batch(x)
            return time.perf_counter() - start

        def pillow_then_model(pil=pil):
            start = time.perf_counter()
            small = np.asarray(pil.resize((width, height), Image.Resampling.BILINEAR), "float32")
            model.predict_on_batch(small[None, ..., None])
            return time.perf_counter() - start

        result[f"{label}_in_graph_ms"] = median_of(in_graph, repeats)[0] * 1000
        result[f"{label}_pillow_then_model_ms"] = median_of(pillow_then_model, repeats)[0] * 1000
        result[f"{label}_size"] = list(array.shape[:2])
    result.update(jpeg_draft_effect(model))
    return result


def jpeg_draft_effect(model) -> dict:
    """What `load_image`'s reduced-scale JPEG decoding changes, against a full decode + the same resize.

    An ``any_size`` export resizes whatever the caller decoded; `load_image`
    lets libjpeg decode large JPEGs at 1/2, 1/4 or 1/8 scale first (never below
    twice the model size). Measured on the full-resolution sample X-rays.
    """
    import numpy as np
    from PIL import Image

    from keras_pneumonia.images import convert, load_image

    folder = ROOT.parent / "shared" / "data" / "chest_xray_fullres_sample"
    files = sorted(folder.rglob("*.jpeg")) or sorted((ROOT / "tests" / "data" / "fullres").glob("*.jpeg"))
    size = model.input_shape[1:3]
    drafted = np.stack([load_image(f, size) for f in files]).astype("float32")
    full = []
    for f in files:
        with Image.open(f) as image:
            image.load()
            full.append(convert(image, size, "grayscale", "squash")[..., None])
    full = np.stack(full).astype("float32")
    p_drafted = model.predict(drafted, verbose=0)[:, -1]
    p_full = model.predict(full, verbose=0)[:, -1]
    return {
        "jpeg_draft_files": len(files),
        "jpeg_draft_files_with_other_pixels": int((np.abs(drafted - full).max(axis=(1, 2, 3)) > 0).sum()),
        "jpeg_draft_max_probability_difference": float(np.abs(p_drafted - p_full).max()),
        "jpeg_draft_decision_changes": int(((p_drafted >= model.threshold) != (p_full >= model.threshold)).sum()),
    }


# --------------------------------------------------------------------------- import, memory


def _fresh_python(code: str) -> str:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout


def bench_import(repeats: int) -> dict:
    timer = "import time; t = time.perf_counter(); import {}; print(time.perf_counter() - t)"
    ours = [float(_fresh_python(timer.format("keras_pneumonia")).split()[-1]) for _ in range(repeats)]
    keras = [float(_fresh_python(timer.format("keras")).split()[-1]) for _ in range(repeats)]
    return {"import_s": statistics.median(ours), "import_keras_s": statistics.median(keras)}


def bench_memory(data: Path, size: int) -> dict:
    code = (
        "import resource, keras_pneumonia as kp\n"
        f"d = kp.load_chest_xray({str(data)!r}, image_size={size}, validation_split=0.1, seed=0)\n"
        f"m = kp.PneumoniaCNN(image_size={size}); m.compile()\n"
        "m.fit(d.train, validation_data=d.val, epochs=1, verbose=0, class_weight=d.class_weight)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    return {"peak_rss_mb": float(_fresh_python(code).split()[-1])}


# --------------------------------------------------------------------------- main


def versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("keras-pneumonia", "keras", "tensorflow", "numpy", "pillow"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a reduced run (its time: README, 'More sessions')")
    parser.add_argument("--json", type=Path, help="write all figures to this JSON file")
    parser.add_argument(
        "--data", type=Path, help="Kaggle-layout folder (train/ is used); default $KERAS_PNEUMONIA_DATA"
    )
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--only",
        choices=("pipeline", "training", "inference", "resize", "import", "memory"),
        help="run one step (no summary), e.g. --only inference to time the released model",
    )
    args = parser.parse_args(argv)

    import tensorflow as tf

    needs_data = args.only in (None, "pipeline", "training", "memory")
    data = subset_dir(find_data(args.data), 160 if args.quick else None) if needs_data else None
    size, repeats = args.image_size, args.repeats
    results = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor()},
        "versions": versions(),
        "settings": {"quick": args.quick, "image_size": size, "repeats": repeats, "data": str(data)},
    }

    if args.quick:
        results["settings"]["note"] = "--quick: a subset of the data; not comparable with the full run's figures"
    # The matmul peak is sampled before every step, so it sees the machine as each step did.
    peak_samples: list[float] = []

    def step(name, fn):
        if args.only and name != args.only:
            return
        peak_samples.append(peak_matmul_flops(3))
        start = time.perf_counter()
        results[name] = fn()
        print(f"[{name}] {time.perf_counter() - start:.0f} s: {json.dumps(results[name], default=float)}", flush=True)

    step("pipeline", lambda: bench_pipeline(data, size, repeats))
    step("training", lambda: bench_training(data, size, repeats))
    step("inference", lambda: bench_inference(repeats))
    step("resize", lambda: bench_resize(repeats))
    step("import", lambda: bench_import(repeats))
    step("memory", lambda: bench_memory(data, size))
    peak_samples.append(peak_matmul_flops(3))
    results["peak"] = {"matmul_flops_per_s": spread(peak_samples)}
    if args.only:
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=float) + "\n")
        return results

    peak = results["peak"]["matmul_flops_per_s"]["median"]
    training, inference = results["training"], results["inference"]

    def training_utilization(model: str) -> float:
        # A training step costs about 3 forward passes (forward + two for the backward).
        flops = 3 * training[f"{model}_forward_flops_per_image"]
        return flops * training["images_per_s"][f"{model}_model_ours_pipeline"]["median"] / peak

    results["summary"] = {
        "pipeline_ratios": results["pipeline"]["ratios"],
        "training_pipeline_effect": training["pipeline_effect"],
        "training_model_effect": training["model_effect"],
        "inference_images_per_s": inference["inference_images_per_s"],
        "flops_utilization": {
            "training": training_utilization("ours"),
            "training_seed": training_utilization("seed"),
            "inference": inference["forward_flops_per_image"] * inference["inference_images_per_s"] / peak,
        },
        "import_s": results["import"]["import_s"],
        "peak_rss_mb": results["memory"]["peak_rss_mb"],
        "tf_threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads()},
    }
    print(json.dumps(results["summary"], indent=2, default=float))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float) + "\n")
    return results


if __name__ == "__main__":
    main()
