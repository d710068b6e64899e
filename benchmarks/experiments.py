"""The release-v2 experiment log: one row per recipe, scored the same way.

    python benchmarks/experiments.py add runs/v2-a [--note "..."]     # a training run folder
    python benchmarks/experiments.py add pneumonia_cnn_v1               # a released preset
    python benchmarks/experiments.py add runs/v2-a runs/v2-b --name ens  # an ensemble (mean probability)
    python benchmarks/experiments.py add runs/v2-a --name v2-a@0.5 --threshold 0.5
    python benchmarks/experiments.py table                              # the Markdown table for the docs
    python benchmarks/experiments.py plot runs/v2-a runs/v2-c --output docs/_static/v2_runs.png

Each row holds, for the model(s) given:

* **validation**: the patient-disjoint validation split of the training data
  (``load_chest_xray(..., validation_split=0.1, seed=1337)``, 523 images), the same
  for every row;
* **test_dev (used for choices)**: the half of the official test split that the
  project has (316 images), scored at the model's own threshold;
* **flip rates** on test_dev under the robustness perturbations
  (`keras_pneumonia.robustness`), crop 5% and 10% and the worst one;
* training time and the exact command, from the run's ``run.json``.

Rows are kept in ``benchmarks/experiments.json``; ``docs/experiments.md`` shows them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "chest_xray_224"
LOG = Path(__file__).with_name("experiments.json")


def _load(source: str):
    import keras_pneumonia as kp

    path = Path(source)
    if path.is_dir():
        model = kp.PneumoniaCNN.from_pretrained(path / "model.keras", compile=False)
        run = json.loads((path / "run.json").read_text())
        return model, run
    return kp.PneumoniaCNN.from_pretrained(source, compile=False), None


def recalibrate_batch_norm(model, dataset, momentum: float = 0.0) -> int:
    """Re-estimates every batch-normalization layer's moving statistics on ``dataset``.

    Training with strong augmentation leaves moving means and variances that
    describe augmented batches (black borders, other tone curves), seen last
    with a large learning rate; inference sees clean images. This runs the
    model in training mode over clean batches **without changing any weight**,
    and sets each layer's statistics to the average over those batches (Wu and
    Johnson's "precise BN", 2021). Written here because Keras has no such
    utility; it uses only Keras ops on the layers' own variables.

    Args:
        model: A built Keras model.
        dataset: Batches of ``(images, labels)`` (labels are ignored), e.g. the
            un-augmented training split.
        momentum: 0 (default) replaces the statistics; above 0 blends them,
            ``momentum * old + (1 - momentum) * new``.

    Returns:
        The number of batch-normalization layers updated.
    """
    import keras
    import numpy as np

    layers = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    if not layers:
        return 0
    means = {id(layer): [] for layer in layers}
    variances = {id(layer): [] for layer in layers}
    # A model that outputs every batch-norm layer's input. Run in training mode, as
    # during training each layer normalises with its batch's statistics, so every
    # layer sees the inputs it saw in training, only from clean images. (Training
    # mode also nudges the moving statistics; they are overwritten below.)
    probe = keras.Model(model.inputs, [layer.input for layer in layers])
    for batch in dataset:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        outputs = probe(x, training=True)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for layer, value in zip(layers, outputs):
            value = keras.ops.convert_to_numpy(value).astype(np.float64)
            axes = tuple(i for i in range(value.ndim) if i != (layer.axis % value.ndim))
            means[id(layer)].append(value.mean(axis=axes))
            variances[id(layer)].append(value.var(axis=axes))
    for layer in layers:
        mean = np.mean(means[id(layer)], axis=0)
        variance = np.mean(variances[id(layer)], axis=0)
        if momentum > 0:
            mean = momentum * keras.ops.convert_to_numpy(layer.moving_mean) + (1 - momentum) * mean
            variance = momentum * keras.ops.convert_to_numpy(layer.moving_variance) + (1 - momentum) * variance
        layer.moving_mean.assign(mean.astype("float32"))
        layer.moving_variance.assign(variance.astype("float32"))
    return len(layers)


class _Mean:
    """An ensemble: the mean probability of its members (all with one input spec)."""

    def __init__(self, models, threshold):
        self.models = models
        self.threshold = threshold
        self.input_shape = models[0].input_shape
        self.class_names = models[0].class_names
        self.name = "+".join(m.name for m in models)

    def predict(self, x, batch_size=64, verbose=0):
        return np.mean([m.predict(x, batch_size=batch_size, verbose=verbose) for m in self.models], axis=0)


class _TTA:
    """Test-time augmentation: the mean probability over rotated and (optionally) mirrored views.

    The views are taken after the model's border cut, optionally with the dark row ends
    filled (`keras_pneumonia.FillDarkEdges`); with no rotation and no mirror that fill is the only change.

    With symmetric angles and the mirror, the set of views of a mirrored image is the set of
    views of the original, so the mean cannot change under a mirror.
    """

    def __init__(self, model, rotations=(), flip=True, fill_mode="reflect", dark_edges=None):
        from keras_pneumonia.layers import FillDarkEdges

        self.model = model
        self.fill = None if dark_edges is None else FillDarkEdges(dark_edges)
        self.threshold = model.threshold
        self.input_shape = model.input_shape
        self.class_names = model.class_names
        self.angles = [0.0, *[a for r in rotations for a in (r, -r)]]
        self.flip = flip
        self.fill_mode = fill_mode
        self.name = f"{model.name}+tta"
        self._before, self._after = self._split()  # built once: each new Model would be traced again

    def _rotate(self, x, degrees):
        import keras

        if degrees == 0:
            return x
        t, (h, w) = np.deg2rad(degrees), x.shape[1:3]
        cx, cy, c, s = (w - 1) / 2, (h - 1) / 2, np.cos(t), np.sin(t)
        # keras.ops.image.affine_transform maps each output pixel to the input point it reads.
        transform = np.array([c, -s, cx - c * cx + s * cy, s, c, cy - s * cx - c * cy, 0, 0], "float32")
        out = keras.ops.image.affine_transform(x.astype("float32"), transform, fill_mode=self.fill_mode)
        return keras.ops.convert_to_numpy(out)

    def _split(self):
        """(before, after): the model cut after its border crop, so the views are of the cropped film.

        Rotating first would turn a uniform border into a tilted one the crop cannot find.
        """
        import keras

        names = [layer.name for layer in self.model.layers]
        if "crop_borders" not in names:
            return (lambda x, **_: x), self.model.predict
        cut = names.index("crop_borders") + 1
        before = keras.Model(self.model.inputs, self.model.layers[cut - 1].output)
        x = inputs = keras.Input(self.model.layers[cut - 1].output.shape[1:])
        for layer in self.model.layers[cut:]:
            x = layer(x)
        return before.predict, keras.Model(inputs, x).predict

    def predict(self, x, batch_size=64, verbose=0):
        import keras

        x = np.asarray(self._before(np.asarray(x), batch_size=batch_size, verbose=verbose))
        if self.fill is not None:
            x = keras.ops.convert_to_numpy(self.fill(x))
        views = [x, x[:, :, ::-1]] if self.flip else [x]
        probs = [
            self._after(self._rotate(v, a), batch_size=batch_size, verbose=verbose) for v in views for a in self.angles
        ]
        return np.mean(probs, axis=0)


def _metrics(report) -> dict:
    return {k: round(float(getattr(report, k)), 4) for k in ("accuracy", "auc", "sensitivity", "specificity")}


def add(
    sources: list[str],
    name: str | None,
    note: str,
    data: Path,
    threshold: float | None = None,
    recalibrate_bn: bool = False,
    tta: bool = False,
    tta_rotations: tuple[float, ...] = (),
    tta_fill: str = "reflect",
    dark_edges: float | None = None,
) -> dict:
    from keras_pneumonia.data import load_chest_xray, load_image_folder
    from keras_pneumonia.evaluation import EvaluationReport
    from keras_pneumonia.robustness import evaluate_robustness

    loaded = [_load(s) for s in sources]
    models = [m for m, _ in loaded]
    model = models[0] if len(models) == 1 else _Mean(models, float(np.mean([m.threshold for m in models])))
    if tta or tta_rotations or dark_edges is not None:
        model = _TTA(model, tta_rotations, flip=tta, fill_mode=tta_fill, dark_edges=dark_edges)
    if threshold is not None:
        model.threshold = threshold
    size = tuple(model.input_shape[1:3])
    color_mode = "grayscale" if model.input_shape[-1] == 1 else "rgb"
    split = load_chest_xray(data, image_size=size, color_mode=color_mode, validation_split=0.1, seed=1337)
    if recalibrate_bn:
        for member in models:
            recalibrate_batch_norm(member, split.train)
    x_val = np.concatenate([x for x, _ in split.val])
    y_val = split.labels("val")
    x_dev, y_dev, _ = load_image_folder(data / "test_dev", image_size=size, color_mode=color_mode)

    def scores(x):
        return np.asarray(model.predict(x, batch_size=64, verbose=0))[:, -1]

    val = EvaluationReport.from_predictions(y_val, scores(x_val), model.threshold)
    dev = EvaluationReport.from_predictions(y_dev, scores(x_dev), model.threshold)
    robustness = evaluate_robustness(model, data / "test_dev")
    flips = {k: round(v["flip_rate"], 4) for k, v in robustness.results.items() if k != "clean"}
    runs = [r for _, r in loaded if r is not None]
    row = {
        "name": name or Path(sources[0]).name,
        "sources": sources,
        "note": note,
        "threshold": round(float(model.threshold), 4),
        "val": _metrics(val),
        "test_dev": _metrics(dev),
        "test_dev_confusion": dev.confusion_matrix,
        "flip_rates": flips,
        "worst_flip": max(flips, key=flips.get),
        "train_minutes": round(sum(r["wall_time_s"] for r in runs) / 60, 1) if runs else None,
        "epochs": [r["arguments"]["epochs"] for r in runs] or None,
        "params": int(sum(m.count_params() for m in models)),
        "commands": [r["command"] for r in runs],
        "robustness": robustness.to_dict(),
    }
    rows = json.loads(LOG.read_text()) if LOG.exists() else []
    rows = [r for r in rows if r["name"] != row["name"]] + [row]
    LOG.write_text(json.dumps(rows, indent=1) + "\n")
    return row


def table(rows: list[dict]) -> str:
    lines = [
        "| recipe | val acc | val AUC | test_dev (used for choices): acc | AUC | sens | spec "
        "| flip crop 10% | flip pad 5% | worst flip | lowest spec | train min |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        v, d, f = r["val"], r["test_dev"], r["flip_rates"]
        perturbed = {k: x["specificity"] for k, x in r["robustness"]["results"].items() if k != "clean"}
        lowest = min(perturbed, key=perturbed.get)
        lines.append(
            f"| {r['name']} | {v['accuracy']:.3f} | {v['auc']:.3f} | {d['accuracy']:.3f} | {d['auc']:.3f} | "
            f"{d['sensitivity']:.3f} | {d['specificity']:.3f} | {f['crop_10']:.1%} | {f['pad_5']:.1%} | "
            f"{f[r['worst_flip']]:.1%} ({r['worst_flip']}) | {perturbed[lowest]:.3f} ({lowest}) | "
            f"{r['train_minutes'] or '-'} |"
        )
    return "\n".join(lines)


def plot_runs(runs: list[Path], path: Path) -> None:
    """Validation and test_dev (the run's ``--monitor``) accuracy and AUC per epoch, one column per run."""
    from matplotlib.figure import Figure

    from keras_pneumonia.plots import read_history

    figure = Figure(figsize=(4.2 * len(runs), 6.4), layout="constrained")
    axes = figure.subplots(2, len(runs), squeeze=False)
    for column, run in enumerate(runs):
        history = read_history(run / "history.csv")
        epochs = [e + 1 for e in history["epoch"]]
        for row, metric in enumerate(("accuracy", "auc")):
            ax = axes[row][column]
            ax.plot(epochs, history[f"val_{metric}"], "o-", ms=3, label="validation")
            ax.plot(epochs, history[f"monitor_{metric}"], "s-", ms=3, label="test_dev (used for choices)")
            ax.set_title(f"{run.name}: {metric} at threshold 0.5" if metric == "accuracy" else f"{run.name}: AUC")
            ax.set_xlabel("epoch (raw weights, before EMA)")
            ax.set_ylim(0.3 if metric == "accuracy" else 0.8, 1.0)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="lower right")
    figure.savefig(path, dpi=100)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add_cmd = commands.add_parser("add", help="score run folders or presets and add (or replace) their row")
    add_cmd.add_argument("sources", nargs="+", help="run folders (with model.keras and run.json) or preset names")
    add_cmd.add_argument("--name", help="row name (default: the first source's name)")
    add_cmd.add_argument("--note", default="", help="what the recipe changes")
    add_cmd.add_argument("--data", type=Path, default=DATA, help=f"chest_xray_224 folder ({DATA})")
    add_cmd.add_argument("--threshold", type=float, help="score at this threshold instead of the model's own")
    add_cmd.add_argument("--tta", action="store_true", help="average each image's and its mirror's probability")
    add_cmd.add_argument(
        "--tta-rotations",
        type=lambda t: tuple(float(a) for a in t.split(",")),
        default=(),
        metavar="DEGREES",
        help="also average views rotated by +-each angle, e.g. 3 or 2,4",
    )
    add_cmd.add_argument(
        "--fill-dark-edges", type=float, metavar="LEVEL", help="after the border cut, fill dark row ends (<= LEVEL)"
    )
    add_cmd.add_argument("--tta-fill", default="reflect", help="fill of rotated corners (keras affine_transform mode)")
    add_cmd.add_argument(
        "--recalibrate-bn", action="store_true", help="re-estimate batch-norm statistics on the clean training split"
    )
    commands.add_parser("table", help="print the Markdown table")
    plot_cmd = commands.add_parser("plot", help="per-epoch validation and test_dev curves of run folders")
    plot_cmd.add_argument("runs", nargs="+", type=Path, help="run folders trained with --monitor")
    plot_cmd.add_argument("--output", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    if args.command == "add":
        row = add(
            args.sources,
            args.name,
            args.note,
            args.data,
            args.threshold,
            args.recalibrate_bn,
            args.tta,
            args.tta_rotations,
            args.tta_fill,
            args.fill_dark_edges,
        )
        print(table([row]))
    elif args.command == "plot":
        plot_runs(args.runs, args.output)
    else:
        print(table(json.loads(LOG.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
