"""Train a PneumoniaCNN on a Kaggle-layout folder, with the public API only.

    python examples/train.py path/to/chest_xray --output runs/example --epochs 20

The same as `keras-pneumonia train`, spelled out: patient-disjoint split, augmentation in
the input pipeline (the model itself stays deterministic), class weights, the default
callback preset, the threshold chosen on validation, a saved model.
"""

import argparse
from pathlib import Path

import keras

import keras_pneumonia as kp
from keras_pneumonia import callbacks
from keras_pneumonia.config import DEFAULT_IMAGE_SIZE, DEFAULT_SEED
from keras_pneumonia.evaluation import choose_threshold


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path, help="Kaggle chest_xray root (train/, optional test/)")
    parser.add_argument("--output", type=Path, default=Path("runs/example"), help="run folder")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE)
    parser.add_argument("--filters", default="16,32,64,128,256", help="filters per block")
    parser.add_argument("--validation-split", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(args.seed)
    data = kp.load_chest_xray(
        args.data_dir, image_size=args.image_size, validation_split=args.validation_split, seed=args.seed
    )
    print("images per split:", data.counts)
    model = kp.PneumoniaCNN(image_size=args.image_size, filters=[int(f) for f in args.filters.split(",")])
    model.compile()
    # Framing, exposure, blur and noise changes, applied by tf.data to each training batch.
    train = kp.Augmentation.preset("strong").apply_to_dataset(data.train, seed=args.seed)
    history = model.fit(
        train,
        validation_data=data.val,
        epochs=args.epochs,
        class_weight=data.class_weight,
        callbacks=callbacks.preset("default", run_dir=args.output),
        shuffle=False,  # data.train reshuffles itself every epoch; Keras warns that it cannot
    )
    choose_threshold(model, data.val)  # Youden's J on the validation split, stored in the model
    model.save(args.output / "model.keras")
    kp.plots.plot_history(history.history, args.output / "history.png")
    print("validation:\n" + kp.evaluate(model, data.val).to_markdown())
    if data.test is not None:
        print("test:\n" + kp.evaluate(model, data.test).to_markdown())


if __name__ == "__main__":
    main()
