"""The registry of released weights, kept as data (KerasHub's ``*_presets.py`` style).

Each released preset is described by the same metadata a preset folder carries in
its ``metadata.json`` (`keras_pneumonia.export.save_preset_folder`): one schema,
checked by one reader, `check_metadata`. A release's ``files["model.keras"]`` also
says where the file is published (``url``) and under which name it is cached
(``file_name``); `keras_pneumonia.weights` refuses any file whose sha256 differs.
See ``docs/weights.md`` ("Publishing a release").
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULT_PRESET = "pneumonia_cnn_v3"

DATA_LICENSE = (
    "Trained on Kermany, Zhang, Goldbaum (2018), Labeled Optical Coherence Tomography (OCT) and "
    "Chest X-Ray Images for Classification, Mendeley Data v2, doi:10.17632/rscbjbr9sj.2, CC BY 4.0."
)

#: The keys of a preset's metadata and their JSON types, bundled or in a folder's ``metadata.json``.
METADATA_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "description": str,
    "params": int,
    "input": dict,
    "class_names": list,
    "threshold": (int, float),
    "temperature": (int, float),
    "ood_threshold": (int, float, type(None)),
    "metrics": dict,
    "license": str,
    "files": dict,
}
#: The file every preset holds, the key of its entry in ``files``.
MODEL_FILE = "model.keras"

# The data sets the released metrics were measured on (the keys of ``metrics``).
_VAL = "validation (523 images, patient-disjoint split of the training data, seed 1337)"
_TEST_DEV = "test_dev (316 images, half of the official test split, used for choices)"
_INPUT = {"image_size": [160, 160], "color_mode": "grayscale", "resize": "squash", "interpolation": "bilinear"}
_RELEASES = "https://github.com/keras-pneumonia/keras-pneumonia/releases/download"

#: The released presets by name, each in `METADATA_SCHEMA` (plus ``bundled`` and ``training_command``).
PRESETS: dict[str, dict[str, Any]] = {
    "pneumonia_cnn_v1": {
        "name": "pneumonia_cnn_v1",
        "description": (
            "PneumoniaCNN, 160x160 grayscale, 5 blocks of 2 convolutions (16-256 filters), "
            "global average pooling, trained from scratch on the official training split of the "
            "pediatric chest X-ray data (Kermany et al. 2018) with a patient-disjoint validation split."
        ),
        "params": 1_198_034,
        "input": dict(_INPUT),
        "class_names": ["NORMAL", "PNEUMONIA"],
        "threshold": 0.5,
        "temperature": 1.0,
        "ood_threshold": None,
        "metrics": {
            _VAL: {
                "n": 523,
                "accuracy": 0.9771,
                "sensitivity": 0.9794,
                "specificity": 0.9701,
                "auc": 0.9957,
                "ece": 0.0120,
            },
        },
        "license": DATA_LICENSE,
        "files": {
            MODEL_FILE: {
                "file_name": "pneumonia_cnn_v1.keras",
                "url": f"{_RELEASES}/v0.1.0/pneumonia_cnn_v1.keras",
                "sha256": "37c1f5b3594e6c1a15242be35eb3715775759eb6a4c1e8a44484091f648f8183",
                "size": 4_908_408,
            }
        },
        "bundled": True,
        "training_command": "keras-pneumonia train chest_xray_224 --output runs/release-v1 --epochs 40 --seed 1337",
    },
    "pneumonia_cnn_v2": {
        "name": "pneumonia_cnn_v2",
        "description": (
            "PneumoniaCNN, 160x160 grayscale, the v1 architecture retrained with strong framing, exposure, "
            "blur and noise augmentation in the input pipeline, a cosine schedule and weight averaging (EMA), "
            "so that framing and exposure no longer decide its answer. Deterministic (no augmentation in the graph)."
        ),
        "params": 1_198_034,
        "input": dict(_INPUT),
        "class_names": ["NORMAL", "PNEUMONIA"],
        "threshold": 0.5,
        "temperature": 1.0,
        "ood_threshold": None,
        # At the shipped threshold 0.5. test_dev judged the recipes and chose the threshold,
        # so its figures are not unbiased estimates; the other half of the test split is held out.
        "metrics": {
            _VAL: {"n": 523, "accuracy": 0.9312, "sensitivity": 0.9100, "specificity": 0.9925, "auc": 0.9982},
            _TEST_DEV: {"n": 316, "accuracy": 0.9620, "sensitivity": 0.9798, "specificity": 0.9322, "auc": 0.9898},
        },
        "license": DATA_LICENSE,
        "files": {
            MODEL_FILE: {
                "file_name": "pneumonia_cnn_v2.keras",
                "url": f"{_RELEASES}/v0.2.0/pneumonia_cnn_v2.keras",
                "sha256": "a8da3f85b739a9314cda720d249dfd30b779961e51d219d2815fea6d2b045889",
                "size": 4_901_553,
            }
        },
        "bundled": True,
        "training_command": (
            "keras-pneumonia train chest_xray_224 --output runs/release-v2 --epochs 30 --schedule cosine "
            "--ema --augmentation strong --threshold 0.5 --seed 1337"
        ),
    },
    "pneumonia_cnn_v2_ood": {
        "name": "pneumonia_cnn_v2_ood",
        "description": (
            "pneumonia_cnn_v2's weights and answers, carrying the out-of-distribution flag: a warning on X-rays "
            "unlike its training population (adult films, figures from papers, other images), from the Mahalanobis "
            "distance of every ReLU's pooled features and an 8x8 thumbnail of the input, fitted on the training "
            "split only."
        ),
        "params": 5_662_802,
        "input": dict(_INPUT),
        "class_names": ["NORMAL", "PNEUMONIA"],
        "threshold": 0.5,
        "temperature": 1.0,
        "ood_threshold": 0.8536812663078308,
        # ood_flagged: the share of images flagged (benchmarks/ood.py, "mahalanobis/every_relu+input_8x8").
        "metrics": {
            _VAL: {
                "n": 523,
                "accuracy": 0.9312,
                "sensitivity": 0.9100,
                "specificity": 0.9925,
                "auc": 0.9982,
                "ood_flagged": 0.0210,
            },
            _TEST_DEV: {
                "n": 316,
                "accuracy": 0.9620,
                "sensitivity": 0.9798,
                "specificity": 0.9322,
                "auc": 0.9898,
                "ood_flagged": 0.0095,
            },
            "train (4,693 images, the flag fitted on)": {"n": 4693, "ood_flagged": 0.0017},
            "external_dev (134 adult X-rays from other hospitals, used for choices)": {"n": 134, "ood_flagged": 0.8657},
        },
        "license": DATA_LICENSE,
        "files": {
            MODEL_FILE: {
                "file_name": "pneumonia_cnn_v2_ood.keras",
                "url": f"{_RELEASES}/v0.3.0/pneumonia_cnn_v2_ood.keras",
                "sha256": "a1e060fb5ed7d2c953548afbfea1a93dc300e771fa0044f40a62d94675a7a33f",
                "size": 22_765_883,
            }
        },
        "bundled": True,
        "training_command": (
            "keras-pneumonia fit-ood chest_xray_224 --weights pneumonia_cnn_v2 --output pneumonia_cnn_v2_ood.keras"
        ),
    },
    "pneumonia_cnn_v3": {
        "name": "pneumonia_cnn_v3",
        "description": (
            "PneumoniaCNN, 160x160 grayscale, the v1 architecture with two input normalisations inside the graph: "
            "uniform black or white borders are cut, and mirrored films are put the right way round (Unmirror). "
            "Fine-tuned from pneumonia_cnn_v2 in three steps (reframing, collimation-bar, text and tilt augmentation, "
            "then a tilt-consistency loss), so that borders, collimation, small rotations and mirroring no longer "
            "decide its answer. Carries the out-of-distribution flag (as pneumonia_cnn_v2_ood: every ReLU's pooled "
            "features and the input's 8x8 thumbnail, fitted on the training split only)."
        ),
        "params": 5_692_499,
        "input": dict(_INPUT),
        "class_names": ["NORMAL", "PNEUMONIA"],
        "threshold": 0.5,
        "temperature": 1.0,
        "ood_threshold": 0.8588550090789795,
        # At the shipped threshold 0.5; ood_flagged: the share flagged (`keras-pneumonia evaluate DIR --json`).
        "metrics": {
            _VAL: {
                "n": 523,
                "accuracy": 0.9407,
                "sensitivity": 0.9203,
                "specificity": 1.0,
                "auc": 0.9983,
                "ood_flagged": 0.0210,
            },
            _TEST_DEV: {
                "n": 316,
                "accuracy": 0.9652,
                "sensitivity": 0.9899,
                "specificity": 0.9237,
                "auc": 0.9920,
                "ood_flagged": 0.0063,
            },
            "training split (5,216 images: the 4,693 the flag was fitted on, the 523 that set its threshold)": {
                "n": 5216,
                "ood_flagged": 0.0059,
            },
            "external_dev (134 adult X-rays from other hospitals, used for choices)": {"n": 134, "ood_flagged": 0.8433},
        },
        "license": DATA_LICENSE,
        "files": {
            MODEL_FILE: {
                "file_name": "pneumonia_cnn_v3.keras",
                "url": f"{_RELEASES}/v0.3.0/pneumonia_cnn_v3.keras",
                "sha256": "3873f0b57d69f2a5a95fcec89f0086a7b4a5f30ffe15184338d620f5dc406677",
                "size": 22_907_227,
            }
        },
        "bundled": True,
        # The last of four steps; `nox -s train_release` runs all four from pneumonia_cnn_v2.
        "training_command": (
            "keras-pneumonia fit-unmirror chest_xray_224 --weights runs/release-v3/model.keras "
            "--output runs/release-v3-unmirror/model.keras --seed 1337"
        ),
    },
}


def check_metadata(metadata: Any, source: str) -> dict[str, Any]:
    """Checks one preset's metadata against `METADATA_SCHEMA`; returns it.

    The one reader of preset metadata: the bundled presets pass through it on
    import, a preset folder's ``metadata.json`` (`read_metadata`) when it is loaded.

    Args:
        metadata: The parsed metadata.
        source: What it was read from, for the error (a preset name or a file).

    Raises:
        ValueError: A key missing or of the wrong type, or no sha256 for ``model.keras``; names ``source``.
    """
    if not isinstance(metadata, Mapping):
        raise ValueError(f"{source}: preset metadata must be a JSON object; found {type(metadata).__name__}.")
    for key, kind in METADATA_SCHEMA.items():
        if key not in metadata:
            raise ValueError(f"{source}: preset metadata has no {key!r} (the schema: {', '.join(METADATA_SCHEMA)}).")
        if not isinstance(metadata[key], kind) or isinstance(metadata[key], bool):
            raise ValueError(f"{source}: preset metadata's {key!r} has the wrong type ({metadata[key]!r}).")
    entry = metadata["files"].get(MODEL_FILE)
    if not isinstance(entry, Mapping) or not isinstance(entry.get("sha256"), str):
        raise ValueError(f"{source} records no sha256 for {MODEL_FILE} (files.{MODEL_FILE}.sha256).")
    return dict(metadata)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """A preset folder's ``metadata.json``, parsed and checked (`check_metadata`).

    Raises:
        ValueError: Not JSON, or not the schema; names the file.
    """
    path = Path(path)
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not JSON ({error}); copy the preset folder again.") from None
    return check_metadata(metadata, str(path))


def model_file(name: str) -> dict[str, Any]:
    """A released preset's model file: ``file_name``, ``url``, ``sha256``, ``size``."""
    return PRESETS[name]["files"][MODEL_FILE]


def describe(name: str) -> dict:
    """One preset as a user compares them: name, description, parameters, input, metrics, size.

    >>> from keras_pneumonia.presets import describe
    >>> describe("pneumonia_cnn_v2")["input"]
    '160x160 grayscale'
    """
    preset = PRESETS[name]
    height, width = preset["input"]["image_size"]
    return {
        "name": name,
        "description": preset["description"],
        "params": preset["params"],
        "input": f"{height}x{width} {preset['input']['color_mode'].replace('rgb', 'RGB')}",
        "class_names": list(preset["class_names"]),
        "threshold": preset["threshold"],
        "temperature": preset["temperature"],
        "ood_flag": preset["ood_threshold"] is not None,
        "metrics": {data: dict(values) for data, values in preset["metrics"].items()},
        "size_bytes": model_file(name)["size"],
        "bundled": bool(preset.get("bundled")),
        "url": model_file(name)["url"],
        "default": name == DEFAULT_PRESET,
    }


for _name, _metadata in PRESETS.items():  # the bundled presets obey the folders' schema
    check_metadata(_metadata, f"preset {_name!r}")
