"""Fine-tune the released weights (or an ImageNet backbone) on your own Kaggle-layout folder.

    python examples/finetune.py path/to/my_xrays --output runs/finetuned
    python examples/finetune.py path/to/my_xrays --backbone densenet121 --image-size 224 --output runs/densenet
    python examples/finetune.py path/to/chest_xray --classes subtype --output runs/subtype  # a new head

The few lines that matter, with the two-stage recipe of
`keras_pneumonia.training.fine_tune` (head first with the feature extractor frozen,
then the top blocks at a learning rate a hundred times lower; batch normalization
stays frozen; the threshold is chosen again on validation):

    model = kp.PneumoniaCNN.from_preset("pneumonia_cnn_v2")
    data = kp.load_chest_xray(folder, image_size=model.image_size, color_mode=model.color_mode)
    report = fine_tune(model, data, "runs/finetuned")

With ``--classes subtype`` the model keeps the released feature extractor and gets a
fresh head for NORMAL / BACTERIAL / VIRAL, labelled by the Kaggle file names:

    model = kp.PneumoniaCNN.from_preset("pneumonia_cnn_v2", class_names=("NORMAL", "BACTERIAL", "VIRAL"))
    data = kp.load_chest_xray(folder, image_size=model.image_size, classes="subtype")

An interrupted run, started again with the same command, resumes.
"""

import argparse
from pathlib import Path

import keras

import keras_pneumonia as kp
from keras_pneumonia.config import CLASS_SETS, DEFAULT_SEED
from keras_pneumonia.training import FINE_TUNE_PRESETS, fine_tune

PRESET = FINE_TUNE_PRESETS["two_stage"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path, help="your Kaggle-layout folder (train/NORMAL, train/PNEUMONIA)")
    parser.add_argument("--output", type=Path, default=Path("runs/finetuned"), help="run folder")
    parser.add_argument("--weights", default=None, help="preset, .keras path or URL (default preset)")
    backbones = ("densenet121", "efficientnet_b0", "resnet50")
    parser.add_argument("--backbone", choices=backbones, help="start from an ImageNet backbone")
    parser.add_argument(
        "--backbone-weights", default="imagenet", help="with --backbone: 'imagenet', a weights file, or 'none'"
    )
    parser.add_argument("--image-size", type=int, default=224, help="with --backbone: input size (224)")
    parser.add_argument("--head-epochs", type=int, default=PRESET["head_epochs"], help="stage 1: head only")
    parser.add_argument("--epochs", type=int, default=PRESET["epochs"], help="stage 2: top blocks too")
    parser.add_argument("--unfreeze-blocks", type=int, default=PRESET["unfreeze_blocks"], help="blocks in stage 2")
    parser.add_argument("--learning-rate", type=float, default=PRESET["learning_rate"], help="stage 2 learning rate")
    parser.add_argument("--classes", choices=tuple(CLASS_SETS), default="binary", help="subtype: a new 3-class head")
    parser.add_argument("--validation-split", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(args.seed)
    if args.backbone:
        weights = None if args.backbone_weights == "none" else args.backbone_weights
        model = kp.PneumoniaCNN(
            backbone=args.backbone,
            backbone_weights=weights,
            image_size=args.image_size,
            class_names=CLASS_SETS[args.classes],
        )
    else:
        model = kp.PneumoniaCNN.from_preset(args.weights, class_names=CLASS_SETS[args.classes])
    data = kp.load_chest_xray(
        args.data_dir,
        image_size=model.image_size,
        color_mode=model.color_mode,
        classes=args.classes,
        validation_split=args.validation_split,
        seed=args.seed,
    )
    print("before fine-tuning, validation:\n" + kp.evaluate(model, data.val).to_markdown())
    fine_tune(
        model,
        data,
        args.output,
        head_epochs=args.head_epochs,
        epochs=args.epochs,
        unfreeze_blocks=args.unfreeze_blocks,
        learning_rate=args.learning_rate,
    )
    print("after fine-tuning, validation:\n" + kp.evaluate(model, data.val).to_markdown())
    print(f"saved {args.output / 'model.keras'} (threshold {model.threshold:.3f})")


if __name__ == "__main__":
    main()
