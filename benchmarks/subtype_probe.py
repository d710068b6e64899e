"""NORMAL / BACTERIAL / VIRAL from a released model's features: a new head, trained on frozen features.

The preset's feature extractor is kept (`PneumoniaCNN.from_preset(..., class_names=...)`),
the pooled features of every image are computed once (`model.features`), and only the
new head (its dense layers and softmax, the model's own layers) is trained on them,
with balanced class weights; the head's epoch is chosen on the patient-disjoint
validation split. Then validation and test_dev (used for choices) are scored through
the whole model, three classes, and bacterial against viral among the PNEUMONIA
images as Kermany et al. (2018) report it.

    python benchmarks/subtype_probe.py --json benchmarks/subtype_probe.json

Training data: ``chest_xray_224/train`` only (the split of ``load_chest_xray``, seed 1337).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chest_xray_224"


def _arrays(dataset) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(np.asarray(x), np.asarray(y)) for x, y in dataset]
    return np.concatenate([x for x, _ in pairs]), np.concatenate([y for _, y in pairs])


def _bacterial_vs_viral(labels: np.ndarray, rows: np.ndarray) -> dict:
    """Among PNEUMONIA images: viral is the positive class, called by the larger of the two probabilities."""
    keep = labels > 0
    viral_true, viral_called = labels[keep] == 2, rows[keep, 2] > rows[keep, 1]
    tp, tn = int(np.sum(viral_true & viral_called)), int(np.sum(~viral_true & ~viral_called))
    return {
        "n": int(keep.sum()),
        "accuracy": (tp + tn) / int(keep.sum()),
        "sensitivity_viral": tp / int(viral_true.sum()),
        "specificity_viral": tn / int((~viral_true).sum()),
    }


def main(argv=None) -> dict:
    import keras

    import keras_pneumonia as kp
    from keras_pneumonia.config import CLASS_SETS
    from keras_pneumonia.data import load_image_folder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="pneumonia_cnn_v2")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--save", type=Path, help="also save the three-class model here (.keras)")
    args = parser.parse_args(argv)

    started = time.time()
    keras.utils.set_random_seed(args.seed)
    classes = list(CLASS_SETS["subtype"])
    model = kp.PneumoniaCNN.from_preset(args.preset, class_names=classes)
    spec = model.input_config.dataset_kwargs()
    data = kp.load_chest_xray(args.data, **spec, validation_split=0.1, seed=args.seed, classes="subtype")
    x_train, y_train = _arrays(data.train)
    x_val, y_val = _arrays(data.val)
    x_dev, y_dev, _ = load_image_folder(args.data / "test_dev", **spec, classes="subtype")
    f_train, f_val = model.features(x_train), model.features(x_val)

    # The model's own head layers on a feature input: training this trains the model's head.
    features = keras.Input(shape=(f_train.shape[1],))
    h = features
    for layer in model.layers[[layer.name for layer in model.layers].index("avg_pool") + 1 :]:
        h = layer(h)
    head = keras.Model(features, h)
    head.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    best = keras.callbacks.EarlyStopping(monitor="val_loss", patience=10, restore_best_weights=True)
    history = head.fit(
        f_train,
        y_train,
        validation_data=(f_val, y_val),
        epochs=args.epochs,
        batch_size=64,
        class_weight=data.class_weight,
        callbacks=[best],
        verbose=2,
    )
    result = {"preset": args.preset, "epochs_run": len(history.history["loss"]), "splits": {}}
    for name, x, y in (("val", x_val, y_val), ("test_dev (used for choices)", x_dev, y_dev)):
        rows = model.predict(x, batch_size=64, verbose=0)
        report = kp.EvaluationReport.from_probabilities(y, rows, model.threshold, classes)
        result["splits"][name] = {
            "three_classes": report.to_dict(),
            "bacterial_vs_viral": _bacterial_vs_viral(y, rows),
        }
        print(f"{name}:\n{report.to_markdown()}\nbacterial vs viral: {result['splits'][name]['bacterial_vs_viral']}")
    result["seconds"] = round(time.time() - started, 1)
    if args.save:
        model.save(args.save)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
