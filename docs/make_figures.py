"""Regenerates the pictures in docs/_static from the real package.

    python docs/make_figures.py [--run runs/release-v2] [--xrays DIR] [--data chest_xray_224]

- ``gradcam_samples.png``: the released model's Grad-CAM on the four bundled sample X-rays;
- ``gradcam_grid.png``: the same on more full-resolution X-rays if ``--xrays`` is given;
- ``history.png``: copied from the release run;
- ``roc_val.png``, ``confusion_val.png`` and the validation breakdown (with ``--data``):
  the released model at its stored threshold on the run's validation split;
- ``perturbations.png``: a bundled sample under each robustness perturbation;
- ``robustness_test_dev.png``: flip rates and sensitivity/specificity of the released
  models on test_dev (used for choices), from ``benchmarks/experiments.json``
  (``python benchmarks/experiments.py add pneumonia_cnn_v1`` etc. fills it);
- ``reliability_v2.png`` (with ``--data``): reliability diagrams of the released model
  before and after temperature scaling fitted on validation, on validation and test_dev;
- prints the model card's validation breakdown: metrics per file-name family and a
  bootstrap 95% interval of the AUC, recomputed from the run's ``split.json``.
"""

import argparse
import json
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

import keras_pneumonia as kp

STATIC = Path(__file__).parent / "_static"


def grid(model, paths, out: Path, columns: int = 4) -> None:
    rows = -(-len(paths) // columns)
    figure = Figure(figsize=(3.2 * columns, 3.5 * rows), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    for ax, path in zip(axes, paths):
        image = kp.load_image(path)
        x = kp.load_image(path, model.image_size, model.color_mode)
        p = float(model.predict(x[None], verbose=0)[0, 1])
        label = model.class_names[int(p >= model.threshold)]
        heat = kp.gradcam(model, image, class_index=model.class_names.index(label))
        ax.imshow(kp.overlay(image, heat, alpha=0.4))
        truth = "PNEUMONIA" if "PNEUMONIA" in str(path) or "person" in Path(path).name else "NORMAL"
        ax.set_title(f"{Path(path).name[:28]}\ntrue {truth}, said {label} ({p:.2f})", fontsize=8)
    for ax in axes:
        ax.axis("off")
    figure.savefig(out, dpi=90)


def validation_breakdown(model, run: Path, data_root: Path, resamples: int = 2000) -> None:
    """Validation metrics of the released model, overall and per file-name family."""
    import json

    from keras_pneumonia.evaluation import EvaluationReport, roc_auc

    split = json.loads((run / "split.json").read_text())
    entries = split["val"]
    images = np.stack([kp.load_image(data_root / e["path"], model.image_size, model.color_mode) for e in entries])
    labels = np.array([e["label"] for e in entries])
    p = model.predict(images, verbose=0)[:, 1]
    report = EvaluationReport.from_predictions(labels, p, model.threshold)
    rng = np.random.default_rng(0)
    aucs = []
    for _ in range(resamples):
        index = rng.integers(0, len(labels), len(labels))
        aucs.append(roc_auc(labels[index], p[index]))
    kp.plots.plot_roc(labels, p, STATIC / "roc_val.png", threshold=model.threshold)
    kp.plots.plot_confusion_matrix(report.confusion_matrix, model.class_names, STATIC / "confusion_val.png")
    print(report.to_markdown())
    print(f"AUC bootstrap 95% interval: {np.percentile(aucs, 2.5):.4f}-{np.percentile(aucs, 97.5):.4f}")
    print("| family | n | share called PNEUMONIA |\n| --- | --- | --- |")
    families = np.array([family(Path(e["path"]).name) for e in entries])
    for name in ("IM (NORMAL)", "NORMAL2-IM (NORMAL)", "bacteria (PNEUMONIA)", "virus (PNEUMONIA)"):
        mask = families == name
        print(f"| {name} | {mask.sum()} | {np.mean(p[mask] >= model.threshold):.3f} |")


def reliability(model, data_root: Path) -> None:
    """reliability_v2.png: the released model before and after temperature scaling fitted on validation."""
    from keras_pneumonia.calibration import calibrate, predict_logits, probabilities
    from keras_pneumonia.data import load_image_folder

    data = kp.load_chest_xray(data_root, image_size=model.image_size, color_mode=model.color_mode, seed=1337)
    x, y, _ = load_image_folder(data_root / "test_dev", image_size=model.image_size, color_mode=model.color_mode)
    y_val, val_logits = predict_logits(model, data.val)
    y_dev, dev_logits = predict_logits(model, (x, y))
    result = calibrate(model, data.val, apply=False)
    figure = Figure(figsize=(9.4, 4.6), layout="constrained")
    for ax, (title, labels, logits) in zip(
        figure.subplots(1, 2),
        [("validation (523, T fitted here)", y_val, val_logits), ("test_dev (used for choices)", y_dev, dev_logits)],
    ):
        curves = {"T=1 (released)": probabilities(logits)[:, -1]}
        curves[f"T={result.temperature:.2f}"] = probabilities(logits, result.temperature)[:, -1]
        small = kp.plots.plot_reliability(labels, curves, title=title)
        # Redraw into the shared figure: plot_reliability makes one axes per figure.
        for line in small.axes[0].get_lines():
            ax.plot(*line.get_data(), ls=line.get_linestyle(), color=line.get_color(), label=line.get_label())
        ax.set_title(title, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.grid(alpha=0.3)
        ax.set_xlabel("predicted P(PNEUMONIA), bin mean")
        ax.set_ylabel("observed fraction PNEUMONIA")
        ax.legend(loc="lower right", fontsize=8)
    figure.savefig(STATIC / "reliability_v2.png", dpi=120)
    print(result)


def family(name: str) -> str:
    """The file-name family of a Kaggle chest X-ray (the batches the data came in)."""
    if name.startswith("NORMAL2-"):
        return "NORMAL2-IM (NORMAL)"
    if name.startswith("IM-"):
        return "IM (NORMAL)"
    return "bacteria (PNEUMONIA)" if "_bacteria_" in name else "virus (PNEUMONIA)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/release-v2"), help="release run folder")
    parser.add_argument("--xrays", type=Path, help="folder of more X-rays for gradcam_grid.png")
    parser.add_argument("--data", type=Path, help="the run's data folder: print the validation breakdown")
    args = parser.parse_args()
    model = kp.PneumoniaCNN.from_pretrained(compile=False)
    samples = sorted(Path(str(resources.files("keras_pneumonia") / "assets" / "samples")).glob("*.jpeg"))
    grid(model, samples, STATIC / "gradcam_samples.png")
    if args.xrays:
        grid(model, sorted(args.xrays.rglob("*.jpeg")), STATIC / "gradcam_grid.png", columns=3)
    kp.plots.plot_perturbations(kp.load_image(samples[0]), STATIC / "perturbations.png")
    experiments = Path(__file__).resolve().parents[1] / "benchmarks" / "experiments.json"
    rows = {r["name"]: r["robustness"] for r in json.loads(experiments.read_text())}
    released = {name: rows[name] for name in kp.weights.list_presets() if name in rows}
    if released:
        kp.plots.plot_robustness(
            released, STATIC / "robustness_test_dev.png", title="Released models on test_dev (used for choices)"
        )
    for name in ("history.png",):  # roc_val/confusion_val: drawn at the released threshold (--data)
        if (args.run / name).exists():
            shutil.copyfile(args.run / name, STATIC / name)
    if args.data:
        reliability(model, args.data)
        validation_breakdown(model, args.run, args.data)


if __name__ == "__main__":
    main()
