"""The registry of released weights, kept as data (KerasHub's ``*_presets.py`` style).

A release publishes each file as an asset of the GitHub release named in its
``url`` and records its sha256 and size here; `keras_pneumonia.weights` refuses
any file whose hash differs. See ``docs/weights.md`` ("Publishing a release").
"""

from __future__ import annotations

DEFAULT_PRESET = "pneumonia_cnn_v1"

PRESETS: dict[str, dict] = {
    "pneumonia_cnn_v1": {
        "description": "PLACEHOLDER",
        "file_name": "pneumonia_cnn_v1.keras",
        "url": "https://github.com/keras-pneumonia/keras-pneumonia/releases/download/v0.1.0/pneumonia_cnn_v1.keras",
        "sha256": "0" * 64,
        "size": 0,
        "bundled": True,
    },
}
