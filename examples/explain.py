"""Grad-CAM overlays for every X-ray in a folder.

    python examples/explain.py path/to/images --output cams/ [--weights runs/x/model.keras]

Writes one PNG per image: the X-ray and its Grad-CAM overlay side by side, titled with
the predicted label and the probability of pneumonia.
"""

import argparse
from pathlib import Path

import keras_pneumonia as kp


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="folder of .jpeg/.jpg/.png X-rays (searched recursively)")
    parser.add_argument("--output", type=Path, default=Path("cams"), help="where to write the PNGs")
    parser.add_argument("--weights", default=None, help="preset, .keras path or URL (default preset)")
    parser.add_argument("--method", default="gradcam", choices=("gradcam", "gradcam++", "scorecam"))
    args = parser.parse_args(argv)

    model = kp.PneumoniaCNN.from_pretrained(args.weights, compile=False)
    paths = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    for path in paths:
        try:
            original = kp.load_image(path)  # full resolution, grayscale
        except ValueError as error:
            print(f"skipped: {error}")
            continue
        model_input = kp.load_image(path, model.image_size, model.color_mode)
        probability = float(model.predict(model_input[None], verbose=0)[0, 1])
        label = model.class_names[int(model.decide([probability])[0])]
        heatmap = kp.gradcam(model, original, class_index=model.class_names.index(label), method=args.method)
        out = args.output / f"{path.stem}_gradcam.png"
        kp.explanation_figure(original, heatmap, label=label, probability=probability, title=path.name, path=out)
        print(f"{path}: {label} P(pneumonia)={probability:.3f} -> {out}")


if __name__ == "__main__":
    main()
