"""Does `CropUniformBorders` find the bars of the robustness report's ``collimation_black``?

    python benchmarks/collimation_cut.py [--data ../shared/data/chest_xray_224/test_dev] [--n 12]

For the first ``--n`` NORMAL films of the folder, prints the rows and columns the layer
would cut (top, bottom, left, right) at 160 px, with the perturbation and without it.
The perturbation draws bars of 4% / 12% / 10% / 6% (6.4 / 19.2 / 16 / 9.6 px at 160).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "chest_xray_224" / "test_dev")
    parser.add_argument("--n", type=int, default=12)
    args = parser.parse_args(argv)

    from keras_pneumonia.layers import CropUniformBorders
    from keras_pneumonia.robustness import PERTURBATIONS

    layer, perturb = CropUniformBorders(), PERTURBATIONS["collimation_black"][0]
    for path in sorted((args.data / "NORMAL").iterdir())[: args.n]:
        image = Image.open(path).convert("L")
        found = []
        for version in (perturb(image), image):
            x = np.asarray(version.resize((160, 160), Image.Resampling.BILINEAR), "float32")[None, ..., None]
            found.append([int(np.asarray(side)[0]) for side in layer.borders(x)])
        print(f"{path.name}: with the bars {found[0]}, without {found[1]}")


if __name__ == "__main__":
    main()
