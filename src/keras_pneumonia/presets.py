"""The registry of released weights, kept as data (KerasHub's ``*_presets.py`` style).

A release publishes each file as an asset of the GitHub release named in its
``url`` and records its sha256 and size here; `keras_pneumonia.weights` refuses
any file whose hash differs. See ``docs/weights.md`` ("Publishing a release").
"""

from __future__ import annotations

DEFAULT_PRESET = "pneumonia_cnn_v2"

DATA_LICENSE = (
    "Trained on Kermany, Zhang, Goldbaum (2018), Labeled Optical Coherence Tomography (OCT) and "
    "Chest X-Ray Images for Classification, Mendeley Data v2, doi:10.17632/rscbjbr9sj.2, CC BY 4.0."
)

PRESETS: dict[str, dict] = {
    "pneumonia_cnn_v1": {
        "description": (
            "PneumoniaCNN, 160x160 grayscale, 5 blocks of 2 convolutions (16-256 filters), "
            "global average pooling, trained from scratch on the official training split of the "
            "pediatric chest X-ray data (Kermany et al. 2018) with a patient-disjoint validation split."
        ),
        "params": 1_198_034,
        "file_name": "pneumonia_cnn_v1.keras",
        "url": "https://github.com/keras-pneumonia/keras-pneumonia/releases/download/v0.1.0/pneumonia_cnn_v1.keras",
        "sha256": "37c1f5b3594e6c1a15242be35eb3715775759eb6a4c1e8a44484091f648f8183",
        "size": 4_908_408,
        "bundled": True,
        "image_size": [160, 160],
        "channels": 1,
        "class_names": ["NORMAL", "PNEUMONIA"],
        "threshold": 0.5,
        # Patient-disjoint validation split (523 images, seed 1337): not the official test split.
        "validation_metrics": {
            "n": 523,
            "accuracy": 0.9771,
            "sensitivity": 0.9794,
            "specificity": 0.9701,
            "auc": 0.9957,
            "ece": 0.0120,
        },
        "training_command": "keras-pneumonia train chest_xray_224 --output runs/release-v1 --epochs 40 --seed 1337",
        "data_license": DATA_LICENSE,
    },
    "pneumonia_cnn_v2": {
        "description": (
            "PneumoniaCNN, 160x160 grayscale, the v1 architecture retrained with strong framing, exposure, "
            "blur and noise augmentation in the input pipeline, a cosine schedule and weight averaging (EMA), "
            "so that framing and exposure no longer decide its answer. Deterministic (no augmentation in the graph)."
        ),
        "params": 1_198_034,
        "file_name": "pneumonia_cnn_v2.keras",
        "url": "https://github.com/keras-pneumonia/keras-pneumonia/releases/download/v0.2.0/pneumonia_cnn_v2.keras",
        "sha256": "a8da3f85b739a9314cda720d249dfd30b779961e51d219d2815fea6d2b045889",
        "size": 4_901_553,
        "bundled": True,
        "image_size": [160, 160],
        "channels": 1,
        "class_names": ["NORMAL", "PNEUMONIA"],
        "threshold": 0.5,
        # Patient-disjoint validation split (523 images, seed 1337), at the shipped threshold 0.5.
        "validation_metrics": {
            "n": 523,
            "accuracy": 0.9312,
            "sensitivity": 0.9100,
            "specificity": 0.9925,
            "auc": 0.9982,
        },
        # Half of the official test split (316 images): it judged the recipes and chose the
        # threshold, so these are not unbiased estimates. The other half is held out.
        "test_dev_metrics_used_for_choices": {
            "n": 316,
            "accuracy": 0.9620,
            "sensitivity": 0.9798,
            "specificity": 0.9322,
            "auc": 0.9898,
        },
        "training_command": (
            "keras-pneumonia train chest_xray_224 --output runs/release-v2 --epochs 30 --schedule cosine "
            "--ema --augmentation strong --threshold 0.5 --seed 1337"
        ),
        "data_license": DATA_LICENSE,
    },
    "pneumonia_cnn_v2_ood": {
        "description": (
            "pneumonia_cnn_v2's weights and answers, carrying the out-of-distribution flag: a warning on X-rays "
            "unlike its training population (adult films, figures from papers, other images), from the Mahalanobis "
            "distance of every ReLU's pooled features and an 8x8 thumbnail of the input, fitted on the training "
            "split only."
        ),
        "params": 5_662_802,
        "file_name": "pneumonia_cnn_v2_ood.keras",
        "url": "https://github.com/keras-pneumonia/keras-pneumonia/releases/download/v0.3.0/pneumonia_cnn_v2_ood.keras",
        "sha256": "a1e060fb5ed7d2c953548afbfea1a93dc300e771fa0044f40a62d94675a7a33f",
        "size": 22_765_883,
        "bundled": True,
        "image_size": [160, 160],
        "channels": 1,
        "class_names": ["NORMAL", "PNEUMONIA"],
        "threshold": 0.5,
        "validation_metrics": {
            "n": 523,
            "accuracy": 0.9312,
            "sensitivity": 0.9100,
            "specificity": 0.9925,
            "auc": 0.9982,
        },
        "test_dev_metrics_used_for_choices": {
            "n": 316,
            "accuracy": 0.9620,
            "sensitivity": 0.9798,
            "specificity": 0.9322,
            "auc": 0.9898,
        },
        # Share of images flagged (benchmarks/ood.py, "mahalanobis/every_relu+input_8x8").
        "ood_flagged": {
            "train (4,693, fitted on)": 0.0017,
            "validation (523, set the threshold)": 0.0210,
            "test_dev (316, used for choices)": 0.0095,
            "external_dev (134 adults, used for choices)": 0.8657,
        },
        "training_command": (
            "keras-pneumonia fit-ood chest_xray_224 --weights pneumonia_cnn_v2 --output pneumonia_cnn_v2_ood.keras"
        ),
        "data_license": DATA_LICENSE,
    },
}


def describe(name: str) -> dict:
    """One preset as a user compares them: name, description, parameters, input, metrics, size.

    >>> from keras_pneumonia.presets import describe
    >>> describe("pneumonia_cnn_v2")["input"]
    '160x160 grayscale'
    """
    preset = PRESETS[name]
    height, width = preset["image_size"]
    return {
        "name": name,
        "description": preset["description"],
        "params": preset["params"],
        "input": f"{height}x{width} {'grayscale' if preset['channels'] == 1 else 'RGB'}",
        "class_names": list(preset["class_names"]),
        "threshold": preset["threshold"],
        "temperature": preset.get("temperature", 1.0),
        "validation_metrics": dict(preset["validation_metrics"]),
        "test_dev_metrics_used_for_choices": dict(preset.get("test_dev_metrics_used_for_choices", {})),
        "ood_flagged": dict(preset.get("ood_flagged", {})),
        "size_bytes": preset["size"],
        "bundled": bool(preset.get("bundled")),
        "url": preset["url"],
        "default": name == DEFAULT_PRESET,
    }
