"""The ``keras-pneumonia`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from keras_pneumonia._version import __version__
from keras_pneumonia.config import CHOICES, MODEL_CHOICES, TrainConfig
from keras_pneumonia.config import DEFAULTS as D

logger = logging.getLogger("keras_pneumonia")


class CLIError(Exception):
    """An error reported as one line, without a traceback."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


DATA_HELP = "Kaggle chest_xray root (train/, optional val/ and test/), or a kaggle:// data set handle"


def _data_dir(text: str) -> str | Path:
    """A folder, or a ``kaggle://`` data set handle (kept as text: a Path would fold its ``//``)."""
    return text if text.startswith("kaggle://") else Path(text)


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _threshold(text: str) -> float | str:
    if text == "youden":
        return text
    try:
        return _fraction(text)
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"expected 'youden' or a number between 0 and 1, got {text!r}") from None


def _name_list(text: str) -> list[str]:
    from keras_pneumonia.robustness import PERTURBATIONS

    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [n for n in names if n not in PERTURBATIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown perturbation(s) {', '.join(unknown) or text!r}; choose from {', '.join(PERTURBATIONS)}"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also rendered in the docs' CLI reference)."""
    parser = argparse.ArgumentParser(
        prog="keras-pneumonia",
        description="Detect pneumonia in chest X-rays with Keras: split data, train, evaluate, predict, explain.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log more detail, TensorFlow's own log lines included"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_split(commands)
    _add_train(commands)
    _add_evaluate(commands)
    _add_calibrate(commands)
    _add_fit_ood(commands)
    _add_fit_unmirror(commands)
    _add_predict(commands)
    _add_demo(commands)
    _add_export(commands)
    _add_download(commands)
    _add_download_data(commands)
    _add_serve(commands)
    _add_presets(commands)
    return parser


def _add_split(commands) -> None:
    split = commands.add_parser("split", help="write a patient-disjoint train/val/test manifest")
    split.add_argument("data_dir", type=_data_dir, help=DATA_HELP)
    split.add_argument(
        "--validation-split", type=_fraction, default=D.validation_split, help=f"fraction ({D.validation_split})"
    )
    split.add_argument("--seed", type=int, default=D.seed, help=f"seed of the split ({D.seed})")
    split.add_argument("--kaggle-val", choices=CHOICES["kaggle_val"], default=D.kaggle_val, help="use of val/")
    split.add_argument("--manifest", type=Path, required=True, help="where to write the JSON manifest")


def _add_train(commands) -> None:
    train = commands.add_parser("train", help="train a PneumoniaCNN and write a run folder")
    train.add_argument("data_dir", type=_data_dir, help=DATA_HELP)
    train.add_argument("--output", "-o", type=Path, required=True, help="run folder (created; resumed if interrupted)")
    train.add_argument("--epochs", type=_positive_int, default=D.epochs, help=f"maximum epochs ({D.epochs})")
    train.add_argument(
        "--image-size", type=_positive_int, default=D.image_size, help=f"square input size in pixels ({D.image_size})"
    )
    train.add_argument(
        "--resize",
        choices=CHOICES["resize"],
        default=D.resize,
        help="squash (stretch), crop (centre) or pad (black borders) to the input size; saved with the model",
    )
    train.add_argument("--batch-size", type=_positive_int, default=D.batch_size, help=f"batch size ({D.batch_size})")
    train.add_argument(
        "--validation-split",
        type=_fraction,
        default=D.validation_split,
        help=f"validation fraction, by patient ({D.validation_split})",
    )
    train.add_argument(
        "--seed", type=int, default=D.seed, help=f"seed of split, initialisation, augmentation, shuffle ({D.seed})"
    )
    train.add_argument(
        "--split-seed", type=int, help="seed of the split only (default: --seed): another run on the same split"
    )
    train.add_argument(
        "--kaggle-val",
        choices=CHOICES["kaggle_val"],
        default=D.kaggle_val,
        help="pool val/ into train, or keep it as validation",
    )
    train.add_argument(
        "--learning-rate", type=float, default=D.learning_rate, help=f"initial learning rate ({D.learning_rate})"
    )
    train.add_argument("--callbacks", choices=CHOICES["callbacks"], default=D.callbacks, help="callback preset")
    _add_model_arguments(train)
    train.add_argument(
        "--augmentation",
        choices=CHOICES["augmentation"],
        default=D.augmentation,
        help="training augmentation (strong: framing, exposure, blur, noise; robust: + borders, text, flips, low res)",
    )
    train.add_argument(
        "--no-augmentation",
        dest="augmentation",
        action="store_const",
        const="none",
        default=argparse.SUPPRESS,
        help="same as --augmentation none",
    )
    train.add_argument(
        "--schedule",
        choices=CHOICES["schedule"],
        default=D.schedule,
        help="plateau: halve the LR and stop early on validation loss; cosine: decay to 0 over --epochs",
    )
    train.add_argument("--weight-decay", type=float, default=D.weight_decay, help="AdamW weight decay (0: plain Adam)")
    train.add_argument("--ema", action="store_true", help="average the weights (exponential moving average)")
    train.add_argument(
        "--consistency-weight",
        type=float,
        default=D.consistency_weight,
        help="above 0: pair each batch with a tilted copy (black corners) and add its loss and this weight x KL",
    )
    train.add_argument(
        "--consistency-degrees",
        type=float,
        default=D.consistency_degrees,
        help=f"largest tilt of the consistency copies ({D.consistency_degrees})",
    )
    train.add_argument(
        "--consistency-crop",
        type=float,
        default=D.consistency_crop,
        help="above 0: also zoom the consistency copies in, cutting up to this fraction from each border (0.1)",
    )
    train.add_argument(
        "--threshold",
        type=_threshold,
        default=D.threshold,
        help="'youden' (chosen on validation, the default) or a fixed decision threshold in (0, 1)",
    )
    train.add_argument(
        "--monitor",
        type=Path,
        metavar="DIR",
        help="labelled folder scored after every epoch, for the record only (never chooses epoch or threshold)",
    )
    train.add_argument(
        "--no-class-weight",
        dest="class_weight",
        action="store_false",
        default=D.class_weight,
        help="do not balance the classes in the loss",
    )
    train.add_argument(
        "--classes",
        choices=CHOICES["classes"],
        default=D.classes,
        help="binary: NORMAL/PNEUMONIA; subtype: NORMAL/BACTERIAL/VIRAL from the file names (binary)",
    )
    train.add_argument(
        "--init-weights",
        metavar="WEIGHTS",
        default=D.init_weights,
        help="start from a trained model of the same architecture (preset name, .keras path, URL or handle)",
    )
    train.add_argument(
        "--ood-flag",
        action=argparse.BooleanOptionalAction,
        default=D.ood_flag,
        help="fit the out-of-distribution flag on the train/validation parts after training (default: on)",
    )
    _add_scaling_arguments(train)
    train.add_argument("--deterministic", action="store_true", help="deterministic TensorFlow ops (slower)")
    train.add_argument("--tensorboard", action="store_true", help="also log to RUN_DIR/tensorboard")
    train.add_argument("--overwrite", action="store_true", help="write over a finished run in --output")


def _add_scaling_arguments(train) -> None:
    """How `train` reads its data and spreads its work (memory, streaming, devices, precision)."""
    train.add_argument(
        "--pipeline",
        choices=CHOICES["pipeline"],
        default=D.pipeline,
        help="memory: decode once, keep; stream: decode every epoch, flat memory; auto: stream above 1 GiB of pixels",
    )
    train.add_argument(
        "--cache",
        metavar="DIR",
        help="with streaming: keep decoded images after the first epoch ('memory' or a folder)",
    )
    train.add_argument(
        "--distribute",
        choices=CHOICES["distribute"],
        default=D.distribute,
        help="mirrored: GPUs here; multi-worker: hosts in TF_CONFIG; data-parallel: JAX devices (global --batch-size)",
    )
    train.add_argument(
        "--mixed-precision",
        choices=CHOICES["mixed_precision"],
        default=D.mixed_precision,
        help="16-bit computation with float32 weights and outputs (none)",
    )


def _add_model_arguments(train) -> None:
    """The architecture of the model `train` builds (PneumoniaCNN's arguments)."""
    train.add_argument(
        "--channels", type=int, choices=MODEL_CHOICES["channels"], default=1, help="1 grayscale, 3 RGB (1)"
    )
    train.add_argument("--filters", type=_int_list, help="filters per block, e.g. 16,32,64,128,256")
    train.add_argument("--convs-per-block", type=_positive_int, help="convolutions per block")
    train.add_argument("--dense-units", type=_int_list, help="hidden dense units, e.g. 64")
    train.add_argument("--dropout", type=float, help="dropout rate")
    train.add_argument(
        "--crop-borders", action="store_true", help="cut uniform borders off each image inside the model"
    )
    train.add_argument(
        "--fill-dark-edges",
        action="store_true",
        help="fill each row's black ends (a tilted film's corners) inside the model, after --crop-borders",
    )
    train.add_argument(
        "--fill-dark-corners",
        action="store_true",
        help="fill the dark regions at the image's corners (a tilted film's) with its mean grey, inside the model",
    )
    train.add_argument(
        "--unmirror",
        action="store_true",
        help="keep the Unmirror layer of --init-weights (mirrored films put the right way round), copied as it is",
    )
    train.add_argument("--head", choices=MODEL_CHOICES["head"], help="flatten or global pooling")
    train.add_argument("--normalization", choices=MODEL_CHOICES["normalization"], help="input normalisation")
    train.add_argument(
        "--backbone",
        choices=MODEL_CHOICES["backbone"],
        help="an ImageNet backbone from keras.applications in place of the convolutional blocks",
    )
    train.add_argument(
        "--backbone-weights",
        default="imagenet",
        help="with --backbone: 'imagenet' (downloaded into $KERAS_HOME/models), a weights file, or 'none'",
    )


def _add_evaluate(commands) -> None:
    evaluate = commands.add_parser("evaluate", help="evaluate a model on a labelled folder")
    evaluate.add_argument(
        "data_dir", type=_data_dir, help="folder with NORMAL/ and PNEUMONIA/, or a Kaggle root (its test/ is used)"
    )
    evaluate.add_argument("--weights", default=None, help="preset name, .keras path or URL (default preset)")
    evaluate.add_argument("--threshold", type=_fraction, help="override the model's decision threshold")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument(
        "--robustness",
        action="store_true",
        help="also score under framing/exposure/blur/JPEG/rotation perturbations, with flip rates",
    )
    evaluate.add_argument(
        "--perturbations", type=_name_list, metavar="NAMES", help="comma-separated subset (default: all of them)"
    )
    evaluate.add_argument(
        "--calibration",
        action="store_true",
        help="also report ECE and NLL at the model's temperature and at T=1 (reliability.png with --report-dir)",
    )
    evaluate.add_argument(
        "--report-dir",
        type=Path,
        metavar="DIR",
        help="write the --robustness (robustness.json/.md/.png) and --calibration (reliability.png) reports there",
    )


def _add_split_arguments(parser) -> None:
    """--validation-split, --seed (the patient-disjoint split, as in train) and --overwrite (of --output)."""
    parser.add_argument(
        "--validation-split", type=_fraction, default=D.validation_split, help=f"as in train ({D.validation_split})"
    )
    parser.add_argument("--seed", type=int, default=D.seed, help=f"seed of the split, as in train ({D.seed})")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")


def _add_calibrate(commands) -> None:
    calibrate = commands.add_parser(
        "calibrate", help="fit the temperature on the validation split (temperature scaling) and save the model"
    )
    calibrate.add_argument(
        "data_dir", type=_data_dir, help="Kaggle-layout root or kaggle:// handle: its train/'s validation split is used"
    )
    calibrate.add_argument("--weights", default=None, help="preset name, .keras path or URL (default preset)")
    calibrate.add_argument("--output", type=Path, help="write the calibrated model here (.keras); omit to only measure")
    calibrate.add_argument("--report-dir", type=Path, metavar="DIR", help="write calibration.json and reliability.png")
    _add_split_arguments(calibrate)


def _add_fit_ood(commands) -> None:
    fit_ood = commands.add_parser(
        "fit-ood", help="fit the out-of-distribution flag on a training folder and save the model with it"
    )
    fit_ood.add_argument(
        "data_dir", type=_data_dir, help="Kaggle-layout root or kaggle:// handle: its train/ split by patient"
    )
    fit_ood.add_argument("--weights", default=None, help="preset name, .keras path or URL (default preset)")
    fit_ood.add_argument("--output", type=Path, required=True, help="the model with the flag (.keras)")
    fit_ood.add_argument(
        "--quantile", type=_fraction, default=0.98, help="share of validation images left unflagged (0.98)"
    )
    _add_split_arguments(fit_ood)


def _add_fit_unmirror(commands) -> None:
    fit = commands.add_parser(
        "fit-unmirror",
        help="train the layer that puts mirrored films the right way round, and save the model with it",
    )
    fit.add_argument(
        "data_dir", type=_data_dir, help="Kaggle-layout root or kaggle:// handle: its train/ split by patient"
    )
    fit.add_argument("--weights", default=None, help="preset name, .keras path or URL (default preset)")
    fit.add_argument("--output", type=Path, required=True, help="the model with the layer (.keras)")
    fit.add_argument("--epochs", type=int, default=20, help="passes over the training images (20)")
    _add_split_arguments(fit)


def _add_predict(commands) -> None:
    predict = commands.add_parser(
        "predict", help="classify X-ray files and folders, streaming results (optionally with Grad-CAM overlays)"
    )
    predict.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH", help="image files and folders (searched recursively)"
    )
    predict.add_argument(
        "--glob",
        default="*",
        metavar="PATTERN",
        help="shell-style file-name pattern applied inside folders (default: every image file)",
    )
    predict.add_argument(
        "--output",
        "-o",
        type=Path,
        metavar="FILE",
        help="write results to FILE.csv or FILE.jsonl; an existing FILE is resumed (finished images are skipped)",
    )
    predict.add_argument("--batch-size", type=_positive_int, default=32, help="images per model call (32)")
    predict.add_argument("--weights", default=None, help="preset name, .keras path or URL (default preset)")
    predict.add_argument("--threshold", type=_fraction, help="override the model's decision threshold")
    predict.add_argument("--gradcam", type=Path, metavar="OUT_DIR", help="write one Grad-CAM overlay PNG per image")
    predict.add_argument("--method", choices=MODEL_CHOICES["gradcam_method"], default="gradcam")
    predict.add_argument("--json", action="store_true", help="print one JSON list at the end (instead of lines)")


def _add_demo(commands) -> None:
    demo = commands.add_parser("demo", help="predict and explain the bundled sample X-rays (offline)")
    demo.add_argument(
        "--output",
        "-o",
        type=Path,
        default=Path("keras_pneumonia_demo"),
        help="folder for predictions.json and overlays",
    )
    demo.add_argument("--weights", default=None, help="preset name, .keras path or URL (default preset)")


def _add_export(commands) -> None:
    export = commands.add_parser(
        "export", help="export a model as SavedModel, LiteRT or ONNX (verified, with a JSON sidecar)"
    )
    export.add_argument("model", help="preset name, .keras path or URL")
    export.add_argument("output", type=Path, help="SavedModel folder, .tflite file or .onnx file")
    export.add_argument("--format", choices=MODEL_CHOICES["export_format"], required=True, help="export format")
    export.add_argument(
        "--any-size",
        action="store_true",
        help="resize inside the graph: the export takes a decoded image of any size (1 or 3 channels)",
    )
    export.add_argument("--overwrite", action="store_true", help="replace an existing output")


def _add_download(commands) -> None:
    download = commands.add_parser("download", help="fill the weights cache for offline use")
    download.add_argument("names", nargs="*", metavar="NAME", help="preset names (default: the default preset)")
    download.add_argument("--all", action="store_true", help="every preset")
    download.add_argument("--cache-dir", type=Path, help="cache folder (default: $KERAS_PNEUMONIA_CACHE or KERAS_HOME)")
    download.add_argument("--list", action="store_true", help="list the presets and exit (see also: presets)")


def _add_download_data(commands) -> None:
    download_data = commands.add_parser(
        "download-data",
        help="download the chest X-ray data set from Kaggle and print its folder (needs the [hub] extra)",
    )
    download_data.add_argument(
        "handle", nargs="?", default=None, help="kaggle://OWNER/DATASET[/versions/N] (default: Kermany et al.'s set)"
    )
    download_data.add_argument("--force", action="store_true", help="download again even if it is in the cache")


def _add_serve(commands) -> None:
    serve = commands.add_parser(
        "serve", help="a web page to drop X-rays on, and a REST API (needs: pip install 'keras-pneumonia[serve]')"
    )
    serve.add_argument("model", nargs="?", default=None, help="preset name, .keras path or URL (default preset)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine only)")
    serve.add_argument("--port", type=_positive_int, default=8000, help="port (8000)")
    serve.add_argument("--max-upload-mb", type=float, default=50.0, help="largest request accepted, in MB (50)")
    serve.add_argument("--max-queue", type=_positive_int, default=32, help="requests waiting before 503 (32)")
    serve.add_argument("--no-gradcam", action="store_true", help="answer without Grad-CAM overlays (faster)")
    serve.add_argument("--cors", nargs="*", metavar="ORIGIN", help="allow these origins to call the API (none)")


def _add_presets(commands) -> None:
    presets = commands.add_parser("presets", help="list the released presets: input, size, metrics")
    presets.add_argument("--json", action="store_true", help="print the full metadata as JSON")


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(format="%(levelname)s: %(message)s", level=logging.INFO if verbose else logging.WARNING)


def _cmd_split(args) -> int:
    from keras_pneumonia.data import load_chest_xray

    # The streaming pipeline lists and splits without decoding and checks every file's
    # header and end marker (empty, not an image, too many pixels, cut short).
    data = load_chest_xray(
        args.data_dir,
        validation_split=args.validation_split,
        seed=args.seed,
        kaggle_val=args.kaggle_val,
        pipeline="stream",
    )
    data.save_manifest(args.manifest)
    for split, counts in data.counts.items():
        total = sum(counts.values())
        shares = ", ".join(f"{name} {n} ({n / total:.1%})" for name, n in counts.items())
        print(f"{split}: {total} images: {shares}")
    patients = {split: {e.patient for e in entries} for split, entries in data.files.items()}
    print("patients: " + ", ".join(f"{s} {len(p)}" for s, p in patients.items()))
    print(f"manifest written to {args.manifest}")
    return 0


def _cmd_train(args) -> int:
    from keras_pneumonia.training import train

    model_kwargs = {
        "channels": args.channels,
        "crop_borders": args.crop_borders,
        "fill_dark_edges": args.fill_dark_edges,
        "fill_dark_corners": args.fill_dark_corners,
    }
    if args.unmirror:
        if args.init_weights is None:
            raise CLIError(
                "--unmirror keeps the Unmirror layer of --init-weights; to give a model one, train it after "
                "training: keras-pneumonia fit-unmirror DATA --weights RUN/model.keras --output OUT.keras"
            )
        model_kwargs["unmirror"] = True
    for key in ("filters", "convs_per_block", "dense_units", "dropout", "head", "normalization", "backbone"):
        value = getattr(args, key)
        if value is not None:
            model_kwargs[key] = value
    if args.backbone is not None:
        model_kwargs["backbone_weights"] = None if args.backbone_weights == "none" else args.backbone_weights
    report = train(
        args.data_dir,
        args.output,
        TrainConfig.from_namespace(args),
        monitor_dir=args.monitor,
        model_kwargs=model_kwargs,
        cache=args.cache,
        deterministic=args.deterministic,
        tensorboard=args.tensorboard,
        overwrite=args.overwrite,
        command=["keras-pneumonia", *args.argv],
    )
    from keras_pneumonia.evaluation import EvaluationReport

    for split in ("val", "test", "monitor"):
        if split in report:
            print(f"\n{split} ({report[split]['n']} images), threshold {report['threshold']:.4f}:")
            print(EvaluationReport.from_dict(report[split]).to_markdown())
    if not report["chief"]:  # a multi-worker run's other workers: worker 0 writes the folder
        print(f"Worker {report['worker']} finished; worker 0 writes {args.output}")
    else:
        print(f"\nRun written to {args.output}")
    return 0


def _evaluation_data(data_dir: Path, model):
    from keras_pneumonia.data import evaluation_folder, load_image_folder
    from keras_pneumonia.images import input_config_of

    folder = evaluation_folder(data_dir, getattr(model, "class_names", None))
    images, labels, _ = load_image_folder(folder, **input_config_of(model).dataset_kwargs())
    if len(labels) == 0:
        raise CLIError(f"{folder} holds no images (.jpeg, .jpg or .png).")
    return images, labels


def _calibration_summary(model, data, args) -> dict:
    from keras_pneumonia import plots
    from keras_pneumonia.calibration import compare

    labels, curves, summary = compare(model, data)
    if args.report_dir is not None:
        args.report_dir.mkdir(parents=True, exist_ok=True)
        title = f"{model.name} on {args.data_dir}"
        plots.plot_reliability(labels, curves, args.report_dir / "reliability.png", title=title)
    return summary


def _check_keras_output(path: Path, overwrite: bool) -> None:
    """A model output must be a ``.keras`` file, and not replace one unless asked."""
    if path.suffix != ".keras":
        raise CLIError(f"--output must be a .keras file; received {path}.")
    if path.exists() and not overwrite:
        raise CLIError(f"{path} already exists; pass --overwrite to replace it.")


def _cmd_calibrate(args) -> int:
    from keras_pneumonia import plots
    from keras_pneumonia._io import atomic_write_text
    from keras_pneumonia.calibration import calibrate, predict_logits
    from keras_pneumonia.data import load_chest_xray
    from keras_pneumonia.models import load_model

    if args.output is not None:
        _check_keras_output(args.output, args.overwrite)
    model = load_model(args.weights, compile=False)
    data = load_chest_xray(
        args.data_dir,
        **model.input_config.dataset_kwargs(),
        validation_split=args.validation_split,
        seed=args.seed,
    )
    labels, logits = predict_logits(model, data.val)  # the one pass over the validation split
    result = calibrate(model, scores=(labels, logits))
    print(result.to_text())
    if args.report_dir is not None:
        args.report_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.report_dir / "calibration.json", json.dumps(result.to_dict(), indent=2) + "\n")
        curves = result.curves(logits)
        plots.plot_reliability(labels, curves, args.report_dir / "reliability.png", title="validation split")
        print(f"Report written to {args.report_dir}")
    if args.output is not None:
        from keras_pneumonia._io import atomic_save_model

        atomic_save_model(model, args.output)
        print(f"Calibrated model written to {args.output}")
    return 0


def _cmd_evaluate(args) -> int:
    from keras_pneumonia import input_check, ood
    from keras_pneumonia.evaluation import evaluate
    from keras_pneumonia.models import load_model

    model = load_model(args.weights, compile=False)
    images, labels = _evaluation_data(args.data_dir, model)
    parts = {
        "report": evaluate(model, (images, labels), threshold=args.threshold),
        "input_check": input_check.summarize(images, limits=getattr(model, "input_check", None)),
        "ood": ood.summary(model, images, labels, threshold=args.threshold),
        "calibration": _calibration_summary(model, (images, labels), args) if args.calibration else None,
        "robustness": None,
    }
    if args.robustness:
        from keras_pneumonia.data import evaluation_folder
        from keras_pneumonia.robustness import evaluate_robustness

        folder = evaluation_folder(args.data_dir, getattr(model, "class_names", None))
        parts["robustness"] = evaluate_robustness(model, folder, args.perturbations, threshold=args.threshold)
        if args.report_dir is not None:
            _write_robustness(parts["robustness"], args.report_dir, title=f"{model.name} on {args.data_dir}")
    _print_evaluation(parts, args.json)
    if parts["robustness"] is not None and args.report_dir is not None and not args.json:
        print(f"\nRobustness report written to {args.report_dir}")
    return 0


def _write_robustness(robustness, folder: Path, title: str) -> None:
    from keras_pneumonia import plots
    from keras_pneumonia._io import atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "robustness.json", robustness.to_json() + "\n")
    atomic_write_text(folder / "robustness.md", robustness.to_markdown() + "\n")
    plots.plot_robustness(robustness, folder / "robustness.png", title=title)


def _print_evaluation(parts: dict, as_json: bool) -> None:
    """evaluate's output as text, or as JSON: the report's fields at the top (under ``"report"`` with robustness)."""
    from keras_pneumonia import input_check, ood
    from keras_pneumonia.calibration import summary_markdown

    report, robustness, calibration = parts["report"], parts["robustness"], parts["calibration"]
    if as_json:
        body = {"input_check": parts["input_check"], "ood": parts["ood"]}
        if calibration:
            body["calibration"] = calibration
        if robustness is None:
            body = {**report.to_dict(), **body}
        else:
            body = {"report": report.to_dict(), "robustness": robustness.to_dict(), **body}
        print(json.dumps(body, indent=2))
        return
    print(report.to_markdown())
    print("\n" + input_check.summary_line(parts["input_check"]))
    print(ood.summary_line(parts["ood"]))
    if calibration:
        print("\n" + summary_markdown(calibration))
    if robustness is not None:
        print()
        print(robustness.to_markdown())


class _Progress:
    """A one-line progress count on stderr, only on a terminal.

    Written by hand because `keras.utils.Progbar` writes to stdout, where the
    results themselves are streamed.
    """

    def __init__(self, total: int, enabled: bool):
        import time

        self.total, self.count, self.enabled = total, 0, enabled and total > 0
        self.start = time.perf_counter()

    def update(self, n: int = 1) -> None:
        import time

        self.count += n
        if self.enabled:
            rate = self.count / max(time.perf_counter() - self.start, 1e-9)
            print(f"\r{self.count}/{self.total} images, {rate:.0f}/s", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled:
            print(file=sys.stderr)


def _shown_path(path) -> str:
    """A file name on one line: one holding a line break or another control character is quoted."""
    text = str(path)
    return repr(text) if any(ord(c) < 32 or c == "\x7f" for c in text) else text


def _result_line(r: dict) -> str:
    if r["error"]:
        return f"{_shown_path(r['path'])}: ERROR {r['error']}"
    line = f"{_shown_path(r['path'])}: {r['decision']}  P(pneumonia)={r['probability']:.3f}"
    line += f"  threshold={r['threshold']:.3f}"
    if "gradcam" in r:
        line += f"  -> {r['gradcam']}"
    if r.get("warning"):
        line += f"  WARNING: {r['warning']}"
    return line


def _run_predictions(model, paths, args, out=None, shown=None) -> tuple[list[dict], list[dict]]:
    """Streams results to stdout (or ``out``); returns ``(results, failed)``, ``results`` kept only for ``shown``.

    ``shown`` (the demo's): how a result's path is printed; its results are kept and returned.
    """
    from keras_pneumonia.prediction import predict_files, with_gradcam

    failed, collected = [], []
    progress = _Progress(len(paths), enabled=sys.stderr.isatty() and not args.json and shown is None)
    results = predict_files(model, paths, batch_size=args.batch_size, threshold=args.threshold)
    if args.gradcam is not None:
        results = with_gradcam(model, results, args.gradcam, args.method)
    for result in results:
        if result["error"]:
            failed.append(result)
        if shown is not None:
            result["path"] = shown(result["path"])
        if out is not None:
            out.write(result)
        elif args.json:
            collected.append(result)
        else:
            print(_result_line(result), flush=True)
            if shown is not None:
                collected.append(result)
        progress.update()
    progress.close()
    if args.json and out is None:
        print(json.dumps(collected, indent=1))
    return collected, failed


def _cmd_predict(args) -> int:
    from keras_pneumonia.images import IMAGE_EXTENSIONS
    from keras_pneumonia.models import load_model
    from keras_pneumonia.prediction import ResultsFile, find_images

    paths = find_images(args.paths, pattern=args.glob)
    if not paths:
        raise CLIError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) matching {args.glob!r} in {', '.join(map(str, args.paths))}"
        )
    model = load_model(args.weights, compile=False)
    if args.gradcam is not None and args.method != "gradcam":
        import keras

        if keras.backend.backend() != "tensorflow":
            raise CLIError(
                f"--method {args.method} needs the TensorFlow backend (tf-keras-vis); this is "
                f"{keras.backend.backend()}: use --method gradcam, or KERAS_BACKEND=tensorflow"
            )
    if args.output is None:
        _, failed = _run_predictions(model, paths, args)
    else:
        with ResultsFile(args.output) as out:
            todo = [p for p in paths if str(p) not in out.done]
            if len(todo) < len(paths):
                print(f"resuming {args.output}: {len(paths) - len(todo)} image(s) already done", file=sys.stderr)
            _run_predictions(model, todo, args, out=out)
        print(f"{len(todo)} result(s) written to {args.output}", file=sys.stderr)
        # The exit code and the list of failures speak for the whole job, resumed parts included.
        wanted = {str(p) for p in paths}
        failed = [r for r in ResultsFile.read(args.output) if r["error"] and r["path"] in wanted]
        if args.json:  # the results are in the file; stdout says where, as JSON
            summary = {"output": str(args.output), "images": len(paths), "written": len(todo), "failed": len(failed)}
            print(json.dumps(summary))
    for result in failed:
        print(f"keras-pneumonia predict: error: {_shown_path(result['path'])}: {result['error']}", file=sys.stderr)
    if failed:
        print(f"keras-pneumonia predict: {len(failed)} of {len(paths)} file(s) could not be read", file=sys.stderr)
    return 1 if failed else 0


def _cmd_demo(args) -> int:
    from importlib import resources

    from keras_pneumonia._io import atomic_write_text
    from keras_pneumonia.models import load_model
    from keras_pneumonia.presets import DEFAULT_PRESET

    samples = sorted(Path(str(resources.files("keras_pneumonia") / "assets" / "samples")).glob("*.jpeg"))
    args.output.mkdir(parents=True, exist_ok=True)  # an output that cannot be written fails first, on any backend
    model = load_model(args.weights, compile=False)
    source = args.weights or f"{DEFAULT_PRESET} (the default preset)"
    flag = "no out-of-distribution flag" if model.ood is None else "out-of-distribution flag on"
    print(f"Model: {source}, input {model.input_shape[1:]}, threshold {model.threshold:.3f}, {flag}")
    print("Sample X-rays (training images of Kermany et al. 2018, CC BY 4.0; the file name gives the true class):")
    predict_args = argparse.Namespace(batch_size=32, threshold=None, json=False, gradcam=args.output, method="gradcam")
    results, failed = _run_predictions(model, samples, predict_args, shown=lambda path: Path(path).name)
    atomic_write_text(args.output / "predictions.json", json.dumps(results, indent=1) + "\n")
    print(f"Predictions written to {args.output / 'predictions.json'}")
    for result in failed:
        print(f"keras-pneumonia demo: error: {result['path']}: {result['error']}", file=sys.stderr)
    print(f"Grad-CAM overlays written to {args.output}/")
    return 1 if failed else 0


def _cmd_download(args) -> int:
    from keras_pneumonia.presets import DEFAULT_PRESET, PRESETS
    from keras_pneumonia.weights import download_presets

    if args.list:
        for name, preset in sorted(PRESETS.items()):
            marker = " (default)" if name == DEFAULT_PRESET else ""
            print(f"{name}{marker}: {preset['description']}")
        return 0
    names = None if args.all else (args.names or [DEFAULT_PRESET])
    for path in download_presets(names, cache_dir=args.cache_dir):
        print(path)
    return 0


def _cmd_download_data(args) -> int:
    from keras_pneumonia.data import download_chest_xray

    print(download_chest_xray(args.handle, force_download=args.force))
    return 0


def _cmd_presets(args) -> int:
    import json

    from keras_pneumonia.presets import PRESETS, describe

    table = [describe(name) for name in sorted(PRESETS)]
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    for row in table:
        print(f"{row['name']}{' (default)' if row['default'] else ''}")
        print(f"  {row['description']}")
        print(
            f"  input {row['input']}, {row['params']:,} parameters, {row['size_bytes'] / 1e6:.1f} MB"
            f"{', bundled' if row['bundled'] else ''}; threshold {row['threshold']}"
            f"{'; out-of-distribution flag' if row['ood_flag'] else ''}"
        )
        for data, values in row["metrics"].items():
            print(f"  {data}: " + ", ".join(_metric_text(metric, value) for metric, value in values.items()))
    return 0


def _metric_text(metric: str, value: float) -> str:
    """One metric as the presets table prints it: counts as integers, flag rates as percentages, the rest 3 digits."""
    if metric == "n":
        return f"n={value:,}"
    if metric == "ood_flagged":
        return f"{value:.1%} flagged out-of-distribution"
    return f"{metric} {value:.3f}"


def _cmd_export(args) -> int:
    from keras_pneumonia.export import export_model, sidecar_path
    from keras_pneumonia.models import load_model

    model = load_model(args.model, compile=False)
    info = export_model(model, args.output, format=args.format, any_size=args.any_size, overwrite=args.overwrite)
    samples = info["verified_on"].replace(" (keras_pneumonia/assets/samples)", "")
    print(
        f"{args.output} ({args.format}): agrees with model.predict to {info['max_abs_difference']:.1e} "
        f"on {samples}; threshold {info['threshold']}, classes {', '.join(info['class_names'])} "
        f"in {sidecar_path(args.output)}"
    )
    return 0


def _cmd_serve(args) -> int:
    from keras_pneumonia.models import load_model

    try:
        from keras_pneumonia.serve import serve
    except ImportError as error:  # pragma: no cover  (the module itself imports nothing optional)
        raise CLIError(str(error)) from None
    model = load_model(args.model, compile=False)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"Binding {args.host}: reachable from other machines, without authentication.", file=sys.stderr)
    print(
        f"Serving {args.model or 'the default preset'} on http://{args.host}:{args.port} "
        "(API docs: /docs). Ctrl-C stops.",
        flush=True,
    )
    try:
        serve(
            model,
            host=args.host,
            port=args.port,
            max_upload_mb=args.max_upload_mb,
            max_queue=args.max_queue,
            gradcam=not args.no_gradcam,
            cors_origins=args.cors,
            source=args.model,
        )
    except ImportError as error:
        raise CLIError(str(error)) from None
    return 0


def _model_and_split(args):
    """``--weights``'s model and ``args.data_dir``'s patient-disjoint split, read as that model reads images."""
    from keras_pneumonia.data import load_chest_xray
    from keras_pneumonia.models import load_model

    model = load_model(args.weights, compile=False)
    data = load_chest_xray(
        args.data_dir,
        **model.input_config.dataset_kwargs(),
        class_names=model.class_names,
        validation_split=args.validation_split,
        seed=args.seed,
    )
    return model, data


def _cmd_fit_ood(args) -> int:
    from keras_pneumonia import ood
    from keras_pneumonia._io import atomic_save_model

    _check_keras_output(args.output, args.overwrite)
    model, data = _model_and_split(args)
    fitted = ood.fit(model, data.train, data.val, quantile=args.quantile, description=f"{args.data_dir} (train / val)")
    atomic_save_model(fitted, args.output)
    counts = data.counts
    print(
        f"Out-of-distribution flag fitted on {sum(counts['train'].values())} images, threshold "
        f"{fitted.ood['threshold']:.4f} (the {args.quantile:g} quantile of {sum(counts['val'].values())} validation "
        f"images); model written to {args.output}"
    )
    return 0


def _cmd_fit_unmirror(args) -> int:
    from keras_pneumonia import mirror
    from keras_pneumonia._io import atomic_save_model

    _check_keras_output(args.output, args.overwrite)
    model, data = _model_and_split(args)
    fitted, scores = mirror.fit(model, data.train, data.val, epochs=args.epochs, seed=args.seed)
    atomic_save_model(fitted, args.output)
    print(
        f"Unmirror layer trained on {sum(data.counts['train'].values())} images; of "
        f"{sum(data.counts['val'].values())} validation images it leaves {scores['upright']:.1%} upright and "
        f"turns {scores['mirrored']:.1%} of their mirror images back; model written to {args.output}"
    )
    return 0


COMMANDS = {
    "split": _cmd_split,
    "train": _cmd_train,
    "evaluate": _cmd_evaluate,
    "predict": _cmd_predict,
    "demo": _cmd_demo,
    "download": _cmd_download,
    "download-data": _cmd_download_data,
    "presets": _cmd_presets,
    "calibrate": _cmd_calibrate,
    "export": _cmd_export,
    "serve": _cmd_serve,
    "fit-ood": _cmd_fit_ood,
    "fit-unmirror": _cmd_fit_unmirror,
}


def _quiet_tensorflow(verbose: bool) -> None:
    """Keeps TensorFlow's C++ log lines (oneDNN, CUDA, CPU features) out of normal output.

    ``TF_CPP_MIN_LOG_LEVEL`` silences the lines TensorFlow logs while it runs,
    but not those its shared libraries print while they load, before that
    setting is read; so Keras (and with it the backend) is imported here with
    the process's stderr pointed at a temporary file, replayed if the import
    fails. ``--verbose`` (or a ``TF_CPP_MIN_LOG_LEVEL`` set by the user) shows
    everything.
    """
    import os
    import tempfile

    if verbose or "keras" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        _LOADING["stderr"] = saved  # where a SIGTERM meanwhile is reported
        try:
            import keras  # noqa: F401  (imports the backend)
        except Exception:  # noqa: BLE001  (named by _load_keras, which imports it again)
            pass
        finally:
            os.dup2(saved, 2)
            _LOADING["stderr"] = 2
            os.close(saved)


def _load_keras() -> None:
    """Imports Keras and its backend; a backend that cannot load is a one-line error saying what to do."""
    import os

    try:
        import keras  # noqa: F401
    except (ImportError, ValueError) as error:  # Keras raises ValueError for an unknown backend name
        backend = os.environ.get("KERAS_BACKEND")
        where = f"KERAS_BACKEND={backend}" if backend else "the backend in ~/.keras/keras.json"
        raise CLIError(
            f"Keras could not load its backend ({where}): {error}. Install it (pip install jax, or torch), "
            "or set KERAS_BACKEND to tensorflow, jax or torch."
        ) from None


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler or ``kill``), handled like Ctrl-C: the run stops cleanly and can resume."""


TERMINATED = "keras-pneumonia: terminated (SIGTERM); the same command resumes a training run"
#: While Keras and its backend load (nothing is written yet), and the stderr to report on.
_LOADING = {"now": False, "stderr": 2}


def _raise_terminated(signum, frame):
    if _LOADING["now"]:
        # An exception raised inside a backend's native import (JAX's) can abort the
        # interpreter (SIGABRT, no message); nothing is open or written yet, so leave now.
        os.write(_LOADING["stderr"], (TERMINATED + "\n").encode())
        os._exit(143)
    raise _Terminated()


def _handle_sigterm():
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def _restore_sigterm(previous) -> None:
    import signal

    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit code."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.command is None:
        parser.print_help()
        return 0
    # First the SIGTERM handler: a kill while TensorFlow loads (seconds) is reported too.
    previous = _handle_sigterm()
    try:
        if args.command != "presets":  # the only command that needs no Keras
            _LOADING["now"] = True
            try:
                _quiet_tensorflow(args.verbose)
                _load_keras()
            finally:
                _LOADING["now"] = False
        _configure_logging(args.verbose)
        return COMMANDS[args.command](args)
    except _Terminated:
        print(TERMINATED, file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("keras-pneumonia: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, RuntimeError, OSError) as error:
        # OSError: a missing, read-only or not-a-folder output, a full disk (with its path).
        if args.verbose:
            logger.exception("failed")
        message = str(error).strip() or type(error).__name__
        if isinstance(error, OSError) and error.strerror:  # raised by the OS, not by us
            where = f": {error.filename}" if error.filename else ""
            message = f"{error.strerror}{where}"
            if isinstance(error, FileExistsError):
                message += " (a file stands where a folder is needed)"
        print(f"keras-pneumonia {args.command}: error: {message}", file=sys.stderr)
        return 2
    finally:
        _restore_sigterm(previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
