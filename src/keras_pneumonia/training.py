"""`train`: the whole training run behind ``keras-pneumonia train``."""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from keras_pneumonia.config import CHOICES, DEFAULTS, TrainConfig

logger = logging.getLogger(__name__)

SCHEDULES = CHOICES["schedule"]


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages that decide a run's numbers."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("keras-pneumonia", "keras", "tensorflow", "numpy", "pillow", "jax", "torch"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    import keras

    versions["keras_backend"] = keras.backend.backend()
    return versions


def _epochs_in(history_csv: Path) -> int:
    """The number of epochs recorded in a ``CSVLogger`` file (0 when there is none)."""
    if not history_csv.exists():
        return 0
    with open(history_csv) as file:
        return max(0, sum(1 for line in file if line.strip()) - 1)


def clone_without_optimizer(model):
    """A copy of ``model`` with the same weights and no optimizer state (a smaller file)."""
    clone = type(model).from_config(model.get_config())
    clone.set_weights(model.get_weights())
    return clone


def train(
    data_dir: str | Path,
    output: str | Path,
    *,
    epochs: int = DEFAULTS.epochs,
    image_size: int = DEFAULTS.image_size,
    resize: str = DEFAULTS.resize,
    batch_size: int = DEFAULTS.batch_size,
    validation_split: float = DEFAULTS.validation_split,
    seed: int = DEFAULTS.seed,
    split_seed: int | None = DEFAULTS.split_seed,
    kaggle_val: str = DEFAULTS.kaggle_val,
    learning_rate: float = DEFAULTS.learning_rate,
    callbacks: str = DEFAULTS.callbacks,
    augmentation: str = DEFAULTS.augmentation,
    schedule: str = DEFAULTS.schedule,
    weight_decay: float = DEFAULTS.weight_decay,
    ema: bool = DEFAULTS.ema,
    monitor_dir: str | Path | None = None,
    threshold: float | str = DEFAULTS.threshold,
    model_kwargs: Mapping[str, Any] | None = None,
    class_weight: bool = DEFAULTS.class_weight,
    pipeline: str = DEFAULTS.pipeline,
    cache: str | Path | None = None,
    distribute: str = DEFAULTS.distribute,
    mixed_precision: str = DEFAULTS.mixed_precision,
    ood_flag: bool = DEFAULTS.ood_flag,
    deterministic: bool = False,
    tensorboard: bool = False,
    overwrite: bool = False,
    command: Sequence[str] | None = None,
    verbose: int | str = "auto",
) -> dict[str, Any]:
    """Trains a `~keras_pneumonia.PneumoniaCNN` on a Kaggle-layout folder and writes a run folder.

    The settings and their defaults are those of `keras_pneumonia.config.TrainConfig`
    (checked before any data is read); ``run.json`` records them.

    The run folder ends up holding ``model.keras`` (best weights on validation,
    the validation-chosen threshold inside), ``history.csv``, ``history.png``,
    ``roc_val.png``, ``confusion_val.png`` (and ``*_test.png`` with a test split),
    ``report.json``, ``split.json`` and ``run.json`` (command, package versions,
    wall time). Each file is written atomically. Starting the same command
    again after an interruption resumes after the last finished epoch.

    Args:
        data_dir: Kaggle root, see `~keras_pneumonia.load_chest_xray`.
        output: The run folder.
        epochs: Maximum number of epochs (early stopping may end sooner).
        image_size: Square input size in pixels.
        resize: How images are brought to ``image_size`` (``"squash"``, ``"crop"``,
            ``"pad"``); saved with the model, so every reader resizes the same way.
        batch_size: Batch size.
        validation_split: Fraction of the training data (by patient) for validation.
        kaggle_val: ``"pool"`` or ``"keep"``: what to do with a ``val/`` folder
            (see `~keras_pneumonia.load_chest_xray`).
        seed: Seeds the split, the initialisation, the augmentation and the shuffling.
        split_seed: Seeds the split (and the shuffling) instead of ``seed``: to
            retrain with another initialisation on the same validation split.
        learning_rate: Adam's initial learning rate.
        callbacks: Callback preset, ``"default"`` or ``"fine_tune"`` (with
            ``schedule="plateau"``); a cosine schedule always uses ``"fixed"``.
        augmentation: Augmentation preset of the training pipeline, ``"strong"``,
            ``"light"`` or ``"none"`` (see `keras_pneumonia.augmentation`).
        schedule: ``"plateau"`` (halve the learning rate when validation loss
            stalls, stop early, keep the best epoch) or ``"cosine"`` (cosine decay
            to zero over ``epochs``, no early stopping, keep the last epoch).
        weight_decay: Decoupled weight decay (AdamW) when above 0.
        ema: Keep an exponential moving average of the weights (Keras'
            ``use_ema``) and finish with it.
        monitor_dir: A labelled folder (one sub-folder per class) scored after
            every epoch and at the end, for the record only: it never chooses the
            epoch or the threshold. Logged as ``monitor_*`` in ``history.csv`` and
            as ``"monitor"`` in ``report.json``.
        threshold: ``"youden"`` chooses the decision threshold on the validation
            split (Youden's J with the one-standard-error rule, see
            `keras_pneumonia.evaluation.youden_threshold`); a number fixes it
            (the release recipe of v2 uses 0.5, see the model card for why).
        model_kwargs: More `~keras_pneumonia.PneumoniaCNN` arguments (filters, head, dropout...).
        class_weight: Weight the loss by balanced class weights of the train part.
        pipeline: ``"auto"``, ``"memory"`` or ``"stream"``: how images reach the
            model (see `~keras_pneumonia.load_chest_xray`); ``"auto"`` streams
            data sets too large to hold in memory.
        cache: With streaming: ``None``, ``"memory"`` or a folder for a cache of
            the decoded images (see `~keras_pneumonia.load_chest_xray`).
        distribute: ``"none"``, ``"mirrored"`` (all GPUs of this machine),
            ``"multi-worker"`` (several machines, ``TF_CONFIG``) or
            ``"data-parallel"`` (JAX): see `keras_pneumonia.distribution`.
            ``batch_size`` is the global batch.
        mixed_precision: ``"none"``, ``"bfloat16"`` or ``"float16"``: the
            model's ``dtype`` policy (``"mixed_bfloat16"``...), saved with it.
        deterministic: Ask TensorFlow for deterministic ops (slower; see the docs).
        tensorboard: Also log to ``output/tensorboard``.
        overwrite: Allow writing over a finished run in ``output``.
        command: The command line to record in ``run.json``.
        verbose: Keras' ``fit`` verbosity.

    Returns:
        The report dictionary also written to ``report.json``.
    """
    import keras

    from keras_pneumonia import callbacks as callback_presets
    from keras_pneumonia import plots
    from keras_pneumonia._io import atomic_save_model, atomic_write_text, exclusive_lock
    from keras_pneumonia.augmentation import Augmentation
    from keras_pneumonia.data import bad_image_error_from, load_chest_xray
    from keras_pneumonia.distribution import Distribution
    from keras_pneumonia.evaluation import EvaluationReport, choose_threshold, predict_proba
    from keras_pneumonia.models import PneumoniaCNN

    # Arguments are checked before minutes of decoding and hours of training.
    settings = locals()  # the arguments (and the imports above), by name
    config = TrainConfig(**{field.name: settings[field.name] for field in dataclasses.fields(TrainConfig)})
    augment = None if augmentation == "none" else Augmentation.preset(augmentation)
    output = Path(output)
    # Before anything else touches TensorFlow: a multi-worker strategy must come first.
    distribution = Distribution.create(distribute)
    try:
        distribution.check_batch_size(batch_size)
        run_dir = distribution.run_dir(output)  # the chief's is `output`; other workers keep their own checkpoints
        if (run_dir / "model.keras").exists() and not (run_dir / "backup").exists() and not overwrite:
            raise FileExistsError(
                f"{output} already holds a finished run (model.keras). Choose another --output, or pass --overwrite."
            )
        # One run per folder: a second one exits at once, naming the holder's PID.
        with exclusive_lock(run_dir):
            if overwrite and not (run_dir / "backup").exists():
                # A fresh start over a finished run: its history and checkpoints go.
                (run_dir / "history.csv").unlink(missing_ok=True)
                for old in (run_dir / "checkpoints").glob("*.keras"):
                    old.unlink()
            started = time.time()

            keras.utils.set_random_seed(seed)
            if deterministic:
                import tensorflow as tf

                tf.config.experimental.enable_op_determinism()

            model_kwargs = dict(model_kwargs or {})
            if mixed_precision != "none":
                model_kwargs["dtype"] = f"mixed_{mixed_precision}"
            # The model first: a size or an architecture it cannot take fails here, not after
            # minutes of decoding, and the data is read the way the model says (its input config).
            with distribution.scope():
                model = PneumoniaCNN(image_size=image_size, resize=resize, **model_kwargs)
            data = load_chest_xray(
                data_dir,
                **model.input_config.dataset_kwargs(),
                class_names=model.class_names,
                batch_size=batch_size,
                validation_split=validation_split,
                seed=seed if split_seed is None else split_seed,
                kaggle_val=kaggle_val,
                pipeline=pipeline,
                cache=cache,
            )
            if distribution.is_chief:
                data.save_manifest(output / "split.json")
            logger.info("Split: %s", data.counts)

            monitor = None
            if monitor_dir is not None:
                from keras_pneumonia.data import load_image_folder

                reading = model.input_config.dataset_kwargs()
                monitor = load_image_folder(monitor_dir, **reading, class_names=model.class_names)[:2]

            lr = learning_rate
            if schedule == "cosine":
                steps = epochs * -(-len(data.files["train"]) // batch_size)
                lr = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps)
                callbacks = "fixed"
            optimizer_kwargs = {"learning_rate": lr, "use_ema": ema}
            with distribution.scope():
                if weight_decay > 0:
                    optimizer = keras.optimizers.AdamW(weight_decay=weight_decay, **optimizer_kwargs)
                else:
                    optimizer = keras.optimizers.Adam(**optimizer_kwargs)
                model.compile(optimizer=optimizer)
            callback_list = callback_presets.preset(callbacks, run_dir=run_dir, tensorboard=tensorboard)
            if monitor is not None:
                callback_list.insert(0, callback_presets.MonitorFolder(*monitor, prefix="monitor_"))
            train_data = data.train if augment is None else augment.apply_to_dataset(data.train, seed=seed)
            train_data = distribution.even_batches(train_data, len(data.files["train"]), batch_size)
            try:
                history = model.fit(
                    train_data,
                    validation_data=distribution.even_batches(data.val, len(data.files["val"]), batch_size),
                    epochs=epochs,
                    shuffle=False,  # data.train already reshuffles every epoch
                    class_weight=data.class_weight if class_weight else None,
                    callbacks=callback_list,
                    verbose=verbose,
                )
            except Exception as error:  # a streamed file that fails to decode: name it, not TensorFlow
                bad_file = bad_image_error_from(error)
                if bad_file is None:
                    raise
                raise bad_file from None
            distribution.close()  # from here on plain models (on failure, the outer `finally` closes it)
            if distribution.kind != "none":
                # Evaluate and save a plain copy: a model built in a strategy's scope splits
                # each batch it predicts over the replicas of *every* worker.
                model = clone_without_optimizer(model)
            if not distribution.is_chief:
                # This worker's share is done and the chief writes the run folder: the
                # worker's own checkpoints (kept for a resume) go, so the run holds one model.
                epochs_run = _epochs_in(run_dir / "history.csv")
                shutil.rmtree(run_dir, ignore_errors=True)
                logger.info("Worker %d finished; the chief writes %s", distribution.worker, output)
                return {"worker": distribution.worker, "epochs_run": epochs_run}

            # The threshold is chosen on validation data only, then stored in the model.
            y_val, p_val = predict_proba(model, data.val)
            chosen = choose_threshold(model, scores=(y_val, p_val), apply=threshold == "youden")
            if threshold == "youden":
                threshold_rule = "Youden's J with the one-standard-error rule on the validation split"
            else:
                model.threshold = float(threshold)
                threshold_rule = f"fixed at {float(threshold)} by the caller (validation would choose {chosen:.4f})"
            if ood_flag:
                from keras_pneumonia import ood

                model = ood.fit(model, data.train, data.val, description=f"{data_dir} (train / validation parts)")
            reports = {"val": EvaluationReport.from_predictions(y_val, p_val, model.threshold, data.class_names)}
            predictions = {"val": (y_val, p_val)}
            if data.test is not None:
                predictions["test"] = predict_proba(model, data.test)
                reports["test"] = EvaluationReport.from_predictions(
                    *predictions["test"], model.threshold, data.class_names
                )
            if monitor is not None:
                predictions["monitor"] = predict_proba(model, monitor)
                reports["monitor"] = EvaluationReport.from_predictions(
                    *predictions["monitor"], model.threshold, data.class_names
                )

            atomic_save_model(clone_without_optimizer(model), output / "model.keras")
            if (output / "history.csv").exists():
                plots.plot_history(output / "history.csv", output / "history.png")
            for split, (y, p) in predictions.items():
                plots.plot_roc(y, p, output / f"roc_{split}.png", threshold=model.threshold)
                plots.plot_confusion_matrix(
                    reports[split].confusion_matrix, data.class_names, output / f"confusion_{split}.png"
                )

            report = {
                "threshold": model.threshold,
                "threshold_rule": threshold_rule,
                "ood": _ood_summary(model, {"val": data.val, "test": data.test, "monitor": monitor}),
                # Every epoch of the run, those before an interruption too (history.csv appends).
                "epochs_run": _epochs_in(output / "history.csv") or len(history.history.get("loss", [])),
                "counts": data.counts,
                **{split: r.to_dict() for split, r in reports.items()},
            }
            atomic_write_text(output / "report.json", json.dumps(report, indent=2) + "\n")
            run = {
                "command": shlex.join(command) if command else None,
                "arguments": {
                    "data_dir": str(data_dir),
                    **config.to_dict(),
                    "monitor_dir": None if monitor_dir is None else str(monitor_dir),
                    "model_kwargs": model_kwargs,
                    "cache": None if cache is None else str(cache),
                    "deterministic": deterministic,
                },
                "distribution": distribution.to_dict(),
                "pipeline": data.options["pipeline"],
                "versions": package_versions(),
                "platform": platform.platform(),
                "argv": sys.argv,
                "wall_time_s": round(time.time() - started, 1),
                "model_params": model.count_params(),
            }
            atomic_write_text(output / "run.json", json.dumps(run, indent=2) + "\n")
            return report
    finally:
        distribution.close()  # JAX's distribution is global: later models in this process are plain


def _ood_summary(model, splits: Mapping[str, Any]) -> dict[str, Any] | None:
    """The out-of-distribution threshold and the share of each split's images it flags."""
    if model.ood is None:
        return None
    import numpy as np

    from keras_pneumonia import ood

    flagged = {n: float(np.mean(model.ood_flags(ood.scores(model, d)))) for n, d in splits.items() if d is not None}
    return {"threshold": model.ood["threshold"], "quantile": model.ood["quantile"], "flagged": flagged}


#: The fine-tuning recipes of `fine_tune`, kept as data. ``"two_stage"``: the head
#: first at a normal learning rate with the feature extractor frozen, then the top
#: blocks too at a learning rate a hundred times lower (batch normalization stays frozen).
FINE_TUNE_PRESETS: dict[str, dict[str, Any]] = {
    "two_stage": {
        "head_epochs": 5,
        "head_learning_rate": 1e-3,
        "epochs": 10,
        "unfreeze_blocks": 2,
        "learning_rate": 1e-5,
    },
}


def fine_tune(
    model,
    data,
    run_dir: str | Path,
    *,
    preset: str = "two_stage",
    threshold: float | str | None = "youden",
    class_weight: bool = True,
    verbose: int | str = "auto",
    **overrides,
) -> dict[str, Any]:
    """Fine-tunes ``model`` on ``data`` in two stages and saves ``run_dir/model.keras``.

    Stage 1 freezes the feature extractor (`~keras_pneumonia.PneumoniaCNN.freeze_backbone`) and
    trains the head with ``head_learning_rate`` for ``head_epochs``; its result
    is saved to ``run_dir/head/model.keras``, so a rerun after an interruption
    skips it. Stage 2 unfreezes the top ``unfreeze_blocks`` blocks
    (`~keras_pneumonia.PneumoniaCNN.unfreeze`) and trains with ``learning_rate`` for up to
    ``epochs`` with the ``"fine_tune"`` callback preset (early stopping, best
    weights, ``BackupAndRestore`` in ``run_dir/fine_tune``). The threshold is
    then chosen again on the validation split.

    Args:
        model: A `~keras_pneumonia.PneumoniaCNN`, e.g. ``PneumoniaCNN.from_preset(...)`` or one
            with an ImageNet ``backbone``.
        data: A `keras_pneumonia.ChestXrayData` (``load_chest_xray`` of the
            user's folder, at the model's ``image_size`` and ``color_mode``).
        run_dir: Folder for the checkpoints, histories and the final model.
        preset: A name of `FINE_TUNE_PRESETS`.
        threshold: ``"youden"`` (chosen on validation), a number, or ``None``
            to keep the model's.
        class_weight: Balance the classes in the loss.
        verbose: Keras' ``fit`` verbosity.
        **overrides: Replace preset values (``head_epochs=2``, ``unfreeze_blocks=1``...).

    Returns:
        ``{"settings", "head_history", "history", "threshold", "val"}`` (the
        validation report as a dict); the same is written to ``run_dir/report.json``.
    """
    import keras

    from keras_pneumonia import callbacks as callback_presets
    from keras_pneumonia._io import atomic_save_model, atomic_write_text
    from keras_pneumonia.evaluation import EvaluationReport, choose_threshold, predict_proba

    if preset not in FINE_TUNE_PRESETS:
        raise ValueError(f"Unknown fine-tuning preset {preset!r}; choose one of {sorted(FINE_TUNE_PRESETS)}.")
    unknown = set(overrides) - set(FINE_TUNE_PRESETS[preset])
    if unknown:
        raise ValueError(f"Unknown fine-tuning settings {sorted(unknown)}; known: {sorted(FINE_TUNE_PRESETS[preset])}.")
    settings = {**FINE_TUNE_PRESETS[preset], **overrides}
    if threshold not in ("youden", None) and not (isinstance(threshold, (int, float)) and 0 < threshold < 1):
        raise ValueError(f"`threshold` must be 'youden', None or a number in (0, 1); received {threshold!r}.")
    run_dir = Path(run_dir)
    weights = data.class_weight if class_weight else None

    def stage(learning_rate, epochs, callbacks, folder) -> dict[str, list[float]]:
        """Compiles with Adam at ``learning_rate`` and fits, checkpointing into ``run_dir/folder``."""
        model.compile(optimizer=keras.optimizers.Adam(learning_rate))
        return model.fit(
            data.train,
            validation_data=data.val,
            epochs=epochs,
            class_weight=weights,
            callbacks=callback_presets.preset(callbacks, run_dir=run_dir / folder),
            verbose=verbose,
            shuffle=False,  # data.train already reshuffles every epoch
        ).history

    head_file = run_dir / "head" / "model.keras"
    head_history: dict[str, list[float]] = {}
    if head_file.exists():
        logger.info("Stage 1 already done: loading %s", head_file)
        model.set_weights(keras.saving.load_model(head_file, compile=False).get_weights())
    else:
        model.freeze_backbone()
        head_history = stage(settings["head_learning_rate"], settings["head_epochs"], "default", "head")
        atomic_save_model(clone_without_optimizer(model), head_file)

    model.freeze_backbone()
    model.unfreeze(settings["unfreeze_blocks"])
    history = stage(settings["learning_rate"], settings["epochs"], "fine_tune", "fine_tune")

    y_val, p_val = predict_proba(model, data.val)
    if threshold == "youden":
        choose_threshold(model, scores=(y_val, p_val))
    elif threshold is not None:
        model.threshold = float(threshold)
    report = {
        "settings": {"preset": preset, **settings},
        "head_history": {k: [float(v) for v in vs] for k, vs in head_history.items()},
        "history": {k: [float(v) for v in vs] for k, vs in history.items()},
        "threshold": model.threshold,
        "val": EvaluationReport.from_predictions(y_val, p_val, model.threshold, data.class_names).to_dict(),
    }
    atomic_save_model(clone_without_optimizer(model), run_dir / "model.keras")
    atomic_write_text(run_dir / "report.json", json.dumps(report, indent=2) + "\n")
    return report


def export_preset(model_path: str | Path, name: str | None = None, output_dir: str | Path | None = None) -> dict:
    """Writes a trained model as a release file and returns its registry fields.

    The file holds the model without optimizer state (a third of the size).
    Copy the returned ``sha256`` and ``size`` into `keras_pneumonia.presets`, and
    publish the file at the preset's ``url`` (see ``docs/weights.md``).

    Args:
        model_path: The trained ``.keras`` file (e.g. ``runs/release-v1/model.keras``).
        name: The preset whose ``file_name`` to write (default: the default preset).
        output_dir: Defaults to the package's ``assets/`` folder.
    """
    from importlib import resources

    import keras

    from keras_pneumonia._io import atomic_save_model
    from keras_pneumonia.presets import DEFAULT_PRESET, PRESETS
    from keras_pneumonia.weights import sha256sum

    name = DEFAULT_PRESET if name is None else name
    clean = clone_without_optimizer(keras.saving.load_model(model_path, compile=False, safe_mode=True))
    folder = Path(output_dir) if output_dir else Path(str(resources.files("keras_pneumonia") / "assets"))
    destination = folder / PRESETS[name]["file_name"]
    atomic_save_model(clean, destination)
    return {
        "file": str(destination),
        "sha256": sha256sum(destination),
        "size": destination.stat().st_size,
        "params": clean.count_params(),
        "image_size": list(clean.image_size),
        "channels": clean.channels,
        "class_names": list(clean.class_names),
        "threshold": clean.threshold,
    }
