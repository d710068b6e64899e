"""The seed's recipe, for comparison with `keras-pneumonia train`.

    python benchmarks/seed_recipe.py [--data DIR] [--epochs 15] [--json seed.json]

What most tutorials for this dataset do: an **image-level** 80/20 split with
`keras.utils.image_dataset_from_directory` (the same child can land on both sides), the
seed architecture (three conv + max-pool blocks, flatten, dense 128, softmax) at
150 px RGB, Adam, no class weights, early stopping on validation loss. It reports the
validation metrics at threshold 0.5, and how many validation images have a patient who
also has images in training.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from keras_pneumonia.data import patient_id  # noqa: E402
from keras_pneumonia.evaluation import EvaluationReport, predict_proba  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chest_xray_224"


def seed_model(size: int, channels: int = 3) -> keras.Model:
    """The seed's architecture: three conv + max-pool blocks, flatten, dense 128, softmax."""
    model = keras.Sequential(
        [
            keras.Input((size, size, channels)),
            keras.layers.Rescaling(1.0 / 255),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(128, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Kaggle-layout folder (train/ is used)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--image-size", type=int, default=150)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(args.seed)
    train, val = keras.utils.image_dataset_from_directory(
        args.data / "train",
        image_size=(args.image_size,) * 2,
        batch_size=32,
        seed=args.seed,
        validation_split=0.2,
        subset="both",
    )
    train_patients = {patient_id(Path(p).name) for p in train.file_paths}
    leaked = sum(patient_id(Path(p).name) in train_patients for p in val.file_paths)
    model = seed_model(args.image_size)
    start = time.time()
    history = model.fit(
        train,
        validation_data=val,
        epochs=args.epochs,
        callbacks=[keras.callbacks.EarlyStopping(patience=3, restore_best_weights=True)],
    )
    labels, probabilities = predict_proba(model, val)  # one pass: the dataset reshuffles
    report = EvaluationReport.from_predictions(labels, probabilities, 0.5, train.class_names)
    result = {
        "recipe": "image-level 80/20 split, seed CNN, 150 px RGB, no class weights",
        "epochs_run": len(history.history["loss"]),
        "wall_time_s": round(time.time() - start, 1),
        "val_images_whose_patient_is_in_train": leaked,
        "val": report.to_dict(),
    }
    print(report.to_markdown())
    print(f"{leaked} of {len(labels)} validation images have a patient with images in training")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
