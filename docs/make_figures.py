"""Regenerates the pictures in docs/_static from the real package.

    python docs/make_figures.py [--run runs/release-v1]

- ``gradcam_samples.png``: the released model's Grad-CAM on the four bundled sample X-rays;
- ``gradcam_grid.png``: the same on more full-resolution X-rays if ``--xrays`` is given;
- ``history.png``, ``roc_val.png``, ``confusion_val.png``: copied from the release run.
"""

import argparse
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/release-v1"), help="release run folder")
    parser.add_argument("--xrays", type=Path, help="folder of more X-rays for gradcam_grid.png")
    args = parser.parse_args()
    model = kp.PneumoniaCNN.from_pretrained(compile=False)
    samples = sorted(Path(str(resources.files("keras_pneumonia") / "assets" / "samples")).glob("*.jpeg"))
    grid(model, samples, STATIC / "gradcam_samples.png")
    if args.xrays:
        grid(model, sorted(args.xrays.rglob("*.jpeg")), STATIC / "gradcam_grid.png")
    for name in ("history.png", "roc_val.png", "confusion_val.png"):
        if (args.run / name).exists():
            shutil.copyfile(args.run / name, STATIC / name)


if __name__ == "__main__":
    main()
