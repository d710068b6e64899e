"""Fine-tune the released weights on your own Kaggle-layout folder.

    python examples/finetune.py path/to/my_xrays --output runs/finetuned

1. load `PneumoniaCNN.from_pretrained()`; 2. freeze the convolutional part and train the
head; 3. unfreeze everything and train with a low learning rate and the `fine_tune`
callback preset; 4. choose the threshold again on validation and save.
"""

import argparse
from pathlib import Path

import keras

import keras_pneumonia as kp
from keras_pneumonia import callbacks
from keras_pneumonia.evaluation import predict_proba, youden_threshold

HEAD = ("dense", "dropout", "output_dropout", "predictions")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path, help="your Kaggle-layout folder (train/NORMAL, train/PNEUMONIA)")
    parser.add_argument("--output", type=Path, default=Path("runs/finetuned"), help="run folder")
    parser.add_argument("--weights", default=None, help="preset, .keras path or URL (default preset)")
    parser.add_argument("--head-epochs", type=int, default=5, help="epochs with the convolutions frozen")
    parser.add_argument("--epochs", type=int, default=10, help="epochs with everything trainable")
    parser.add_argument("--learning-rate", type=float, default=1e-5, help="learning rate once unfrozen")
    parser.add_argument("--validation-split", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(args.seed)
    model = kp.PneumoniaCNN.from_pretrained(args.weights)
    data = kp.load_chest_xray(
        args.data_dir,
        image_size=model.image_size,
        color_mode=model.color_mode,
        validation_split=args.validation_split,
        seed=args.seed,
    )
    print("before fine-tuning, validation:\n" + kp.evaluate(model, data.val).to_markdown())

    for layer in model.layers:
        layer.trainable = layer.name.startswith(HEAD)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(data.train, validation_data=data.val, epochs=args.head_epochs, class_weight=data.class_weight)

    for layer in model.layers:
        layer.trainable = True
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
    model.fit(
        data.train,
        validation_data=data.val,
        epochs=args.epochs,
        class_weight=data.class_weight,
        callbacks=callbacks.preset("fine_tune", run_dir=args.output),
    )

    y_val, p_val = predict_proba(model, data.val)
    model.threshold = youden_threshold(y_val, p_val)
    model.save(args.output / "model.keras")
    print("after fine-tuning, validation:\n" + kp.evaluate(model, data.val).to_markdown())
    print(f"saved {args.output / 'model.keras'} (threshold {model.threshold:.3f})")


if __name__ == "__main__":
    main()
