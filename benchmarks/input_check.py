"""How often the input check flags real X-rays, and whether it flags every made-up bad input.

    python benchmarks/input_check.py [--data ../shared/data/chest_xray_224] [--json out.json]

Real X-rays: every image of ``train/`` (the limits were set beyond all of them) and of
``test_dev/`` when present (never used to set anything), at the released model's input.
Made-up bad inputs: blank, uniform grey, uniform black and white, Gaussian and uniform
noise, a 1x1 and an 8x8 image, an inverted X-ray, an over- and an under-exposed X-ray,
each with the released model's P(pneumonia) beside its flag.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]


def made_up(xray: np.ndarray) -> dict[str, tuple[np.ndarray, tuple[int, int] | None]]:
    rng = np.random.default_rng(0)
    size = xray.shape[:2]
    return {
        "blank (0)": (np.zeros((*size, 1), np.uint8), None),
        "uniform grey": (np.full((*size, 1), 128, np.uint8), None),
        "uniform white": (np.full((*size, 1), 255, np.uint8), None),
        "gaussian noise": (np.clip(rng.normal(128, 50, (*size, 1)), 0, 255).astype(np.uint8), None),
        "uniform noise": (rng.integers(0, 256, (*size, 1)).astype(np.uint8), None),
        "1x1 image": (np.full((*size, 1), 90, np.uint8), (1, 1)),
        "8x8 image": (np.kron(rng.integers(0, 256, (8, 8)), np.ones((20, 20)))[..., None].astype(np.uint8), (8, 8)),
        "inverted X-ray": (255 - xray, None),
        "overexposed X-ray": (np.clip(xray.astype(int) + 150, 0, 255).astype(np.uint8), None),
        "underexposed X-ray": ((xray.astype(float) * 0.2).astype(np.uint8), None),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "chest_xray_224")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import keras_pneumonia as kp
    from keras_pneumonia.images import IMAGE_EXTENSIONS, chroma
    from keras_pneumonia.input_check import LIMITS, check_input

    model = kp.PneumoniaCNN.from_pretrained(compile=False)
    result = {"limits": LIMITS, "real": {}, "made_up": {}}
    for split in ("train", "test_dev"):
        files = sorted(p for p in (args.data / split).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            continue
        colours = [chroma(f) for f in files]
        flags = [check_input(model.input_config.load(f), chroma=c) for f, c in zip(files, colours)]
        flagged = [str(f.relative_to(args.data)) for f, r in zip(files, flags) if r]
        result["real"][split] = {
            "n": len(files),
            "max_chroma": max(colours),
            "flagged": len(flagged),
            "rate": len(flagged) / len(files),
            "files": flagged,
        }
        print(f"{split}: {len(flagged)} of {len(files)} real X-rays flagged ({len(flagged) / len(files):.2%})")
    xray = model.input_config.load(ROOT / "tests" / "data" / "fullres" / "IM-0314-0001.jpeg")
    for name, (image, size) in made_up(xray).items():
        reasons = check_input(image, size)
        p = float(model.predict(image[None].astype("float32"), verbose=0)[0, -1])
        result["made_up"][name] = {"flagged": bool(reasons), "reasons": reasons, "p_pneumonia": p}
        print(f"{name}: P(pneumonia)={p:.3f}  {'FLAGGED: ' + '; '.join(reasons) if reasons else 'not flagged'}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
