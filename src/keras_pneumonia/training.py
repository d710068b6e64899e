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
from typing import Any, TypedDict

from keras_pneumonia.config import CHOICES, CLASS_NAMES, CLASS_SETS, TrainConfig
from keras_pneumonia.export import clone_without_optimizer

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


class TrainReport(TypedDict, total=False):
    """What `train` returns, on every worker (the chief's is also ``report.json``).

    ``worker``, ``chief`` and ``epochs_run`` are always there; the rest only on the
    chief (the worker that writes the run folder; the only worker of a run that is
    not multi-worker).
    """

    worker: int
    chief: bool
    epochs_run: int
    threshold: float
    threshold_rule: str
    ood: dict[str, Any] | None
    counts: dict[str, dict[str, int]]
    val: dict[str, Any]
    test: dict[str, Any]
    monitor: dict[str, Any]


def train(
    data_dir: str | Path,
    output: str | Path,
    config: TrainConfig | None = None,
    *,
    monitor_dir: str | Path | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    cache: str | Path | None = None,
    deterministic: bool = False,
    tensorboard: bool = False,
    overwrite: bool = False,
    command: Sequence[str] | None = None,
    verbose: int | str = "auto",
    **settings: Any,
) -> TrainReport:
    """Trains a `~keras_pneumonia.PneumoniaCNN` on a Kaggle-layout folder and writes a run folder.

    The run folder ends up holding ``model.keras`` (the last or best weights, the
    decision threshold and the out-of-distribution flag inside), ``history.csv``,
    ``history.png``, ``roc_val.png``, ``confusion_val.png`` (and ``*_test.png``,
    ``*_monitor.png`` for those splits), ``report.json``, ``split.json`` and
    ``run.json`` (the command, the resolved settings, package versions, wall
    time). Each file is written atomically. Starting the same command again after
    an interruption resumes after the last finished epoch.

    Args:
        data_dir: Kaggle root, see `~keras_pneumonia.load_chest_xray`.
        output: The run folder.
        config: The run's settings (`keras_pneumonia.config.TrainConfig`, whose
            docstring lists them); ``None``: the defaults.
        monitor_dir: A labelled folder (one sub-folder per class) scored after
            every epoch and at the end, for the record only: it never chooses the
            epoch or the threshold. Logged as ``monitor_*`` in ``history.csv`` and
            as ``"monitor"`` in the report.
        model_kwargs: More `~keras_pneumonia.PneumoniaCNN` arguments (filters, head,
            dropout, ``crop_borders``...).
        cache: With streaming: ``None``, ``"memory"`` or a folder for a cache of the
            decoded images (see `~keras_pneumonia.load_chest_xray`).
        deterministic: Ask TensorFlow for deterministic ops (slower).
        tensorboard: Also log to ``output/tensorboard``.
        overwrite: Allow writing over a finished run in ``output``.
        command: The command line to record in ``run.json``.
        verbose: Keras' ``fit`` verbosity.
        **settings: `~keras_pneumonia.config.TrainConfig` fields, overriding ``config``'s
            (``train(data, out, epochs=5)``).

    Returns:
        A `TrainReport`.

    Raises:
        TypeError: A keyword that is not a `~keras_pneumonia.config.TrainConfig` field.
        ValueError: A setting out of range (checked before any data is read).
        FileExistsError: ``output`` holds a finished run and ``overwrite`` is off.
    """
    from keras_pneumonia._io import exclusive_lock
    from keras_pneumonia.distribution import Distribution

    config = resolve_config(config, settings)  # checked before minutes of decoding and hours of training
    output = Path(output)
    # Before anything else touches TensorFlow: a multi-worker strategy must come first.
    distribution = Distribution.create(config.distribute)
    try:
        distribution.check_batch_size(config.batch_size)
        run_dir = distribution.run_dir(output)  # the chief's is `output`; other workers keep their own checkpoints
        _refuse_finished_run(output, run_dir, overwrite)
        # One run per folder: a second one exits at once, naming the holder's PID.
        with exclusive_lock(run_dir):
            if overwrite and not (run_dir / "backup").exists():
                _forget_finished_run(run_dir)  # under the lock: never another run's files
            started = time.time()
            run = _Run(config, Path(data_dir), output, run_dir, distribution, dict(model_kwargs or {}))
            run.build(monitor_dir, cache, deterministic)
            history = run.fit(tensorboard, verbose)
            if not distribution.is_chief:
                return run.leave()
            threshold_rule = run.set_threshold()
            if config.ood_flag:
                from keras_pneumonia import ood

                run.model = ood.fit(
                    run.model, run.data.train, run.data.val, description=f"{data_dir} (train / validation parts)"
                )
            report = run.score(threshold_rule, history)
            run.write(report, monitor_dir, cache, deterministic, command, time.time() - started)
            return report
    finally:
        distribution.close()  # JAX's distribution is global: later models in this process are plain


def resolve_config(config: TrainConfig | None, settings: Mapping[str, Any]) -> TrainConfig:
    """``config`` (default: `TrainConfig()`) with ``settings`` replacing its fields; unknown names are a TypeError."""
    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise TypeError(f"train() got unknown setting(s) {unknown}; the settings are TrainConfig's: {sorted(fields)}.")
    return dataclasses.replace(config or TrainConfig(), **settings)


def _refuse_finished_run(output: Path, run_dir: Path, overwrite: bool) -> None:
    """A folder that holds a finished run (and no backup to resume from) is refused unless ``overwrite``."""
    if (run_dir / "model.keras").exists() and not (run_dir / "backup").exists() and not overwrite:
        raise FileExistsError(
            f"{output} already holds a finished run (model.keras). Choose another --output, or pass --overwrite."
        )


def _forget_finished_run(run_dir: Path) -> None:
    """A fresh start over a finished run: its history and checkpoints go."""
    (run_dir / "history.csv").unlink(missing_ok=True)
    for old in (run_dir / "checkpoints").glob("*.keras"):
        old.unlink()


class _Run:
    """One training run's state, taken through its steps by `train`: build, fit, threshold, score, write."""

    def __init__(self, config, data_dir, output, run_dir, distribution, model_kwargs):
        self.config, self.data_dir, self.output, self.run_dir = config, data_dir, output, run_dir
        self.distribution = distribution
        self.model_kwargs = model_kwargs
        if config.mixed_precision != "none":
            self.model_kwargs["dtype"] = f"mixed_{config.mixed_precision}"
        self.model = self.data = self.monitor = None
        self.scores: dict[str, tuple] = {}

    def build(self, monitor_dir, cache, deterministic) -> None:
        """Seeds, builds and compiles the model, then reads the data the way the model says (its input config)."""
        import keras

        from keras_pneumonia.data import load_chest_xray, load_image_folder
        from keras_pneumonia.models import PneumoniaCNN

        c = self.config
        keras.utils.set_random_seed(c.seed)
        if deterministic:
            import tensorflow as tf

            tf.config.experimental.enable_op_determinism()
        # The model first: a size or an architecture it cannot take fails here, not after minutes of decoding.
        kwargs = {"class_names": CLASS_SETS[c.classes], **self.model_kwargs}
        with self.distribution.scope():
            self.model = PneumoniaCNN(image_size=c.image_size, resize=c.resize, **kwargs)
            if c.init_weights is not None:
                copy_weights(c.init_weights, self.model)
            if c.consistency_weight > 0:  # training only, never saved; a backend without it fails here
                from keras_pneumonia.consistency import TiltConsistency

                self.model.consistency = TiltConsistency(
                    c.consistency_weight, c.consistency_degrees, seed=c.seed, max_crop=c.consistency_crop
                )
        reading = self.model.input_config.dataset_kwargs()
        # The class folders: the model's classes, or NORMAL/PNEUMONIA split by file name.
        folders = self.model.class_names if c.classes == "binary" else CLASS_NAMES
        self.data = load_chest_xray(
            self.data_dir,
            **reading,
            class_names=folders,
            classes=c.classes,
            batch_size=c.batch_size,
            validation_split=c.validation_split,
            seed=c.seed if c.split_seed is None else c.split_seed,
            kaggle_val=c.kaggle_val,
            pipeline=c.pipeline,
            cache=cache,
        )
        if self.distribution.is_chief:
            self.data.save_manifest(self.output / "split.json")
        logger.info("Split: %s", self.data.counts)
        if monitor_dir is not None:
            self.monitor = load_image_folder(monitor_dir, **reading, class_names=folders, classes=c.classes)[:2]
        with self.distribution.scope():
            self.model.compile(optimizer=self._optimizer())

    def _optimizer(self):
        """Adam (AdamW with weight decay) at the configured learning rate or cosine schedule, with EMA if asked."""
        import keras

        c = self.config
        lr = c.learning_rate
        if c.schedule == "cosine":
            steps = c.epochs * -(-len(self.data.files["train"]) // c.batch_size)
            lr = keras.optimizers.schedules.CosineDecay(c.learning_rate, decay_steps=steps)
        if c.weight_decay > 0:
            return keras.optimizers.AdamW(learning_rate=lr, use_ema=c.ema, weight_decay=c.weight_decay)
        return keras.optimizers.Adam(learning_rate=lr, use_ema=c.ema)

    def fit(self, tensorboard, verbose):
        """``model.fit`` with the callback preset (``"fixed"`` under a cosine schedule) and the augmentation."""
        from keras_pneumonia import callbacks as callback_presets
        from keras_pneumonia.augmentation import Augmentation
        from keras_pneumonia.data import bad_image_error_from

        c, data, distribution = self.config, self.data, self.distribution
        preset = "fixed" if c.schedule == "cosine" else c.callbacks
        callback_list = callback_presets.preset(preset, run_dir=self.run_dir, tensorboard=tensorboard)
        if self.monitor is not None:
            callback_list.insert(0, callback_presets.MonitorFolder(*self.monitor, prefix="monitor_"))
        train_data = data.train
        if c.augmentation != "none":
            train_data = Augmentation.preset(c.augmentation).apply_to_dataset(data.train, seed=c.seed)
        try:
            history = self.model.fit(
                distribution.even_batches(train_data, len(data.files["train"]), c.batch_size),
                validation_data=distribution.even_batches(data.val, len(data.files["val"]), c.batch_size),
                epochs=c.epochs,
                shuffle=False,  # data.train already reshuffles every epoch
                class_weight=data.class_weight if c.class_weight else None,
                callbacks=callback_list,
                verbose=verbose,
            )
        except Exception as error:  # a streamed file that fails to decode: name it, not TensorFlow
            bad_file = bad_image_error_from(error)
            if bad_file is None:
                raise
            raise bad_file from None
        self.model.consistency = None  # the plain loss from here on
        distribution.close()  # from here on plain models (on failure, train's `finally` closes it)
        if distribution.kind != "none":
            # Evaluate and save a plain copy: a model built in a strategy's scope splits
            # each batch it predicts over the replicas of *every* worker.
            self.model = clone_without_optimizer(self.model)
        return history

    def leave(self) -> TrainReport:
        """A non-chief worker's end: its checkpoints (kept for a resume until now) go; the chief writes the run."""
        epochs_run = _epochs_in(self.run_dir / "history.csv")
        shutil.rmtree(self.run_dir, ignore_errors=True)
        logger.info("Worker %d finished; the chief writes %s", self.distribution.worker, self.output)
        return TrainReport(worker=self.distribution.worker, chief=False, epochs_run=epochs_run)

    def set_threshold(self) -> str:
        """Chooses the threshold on validation data only (or fixes it) and stores it in the model; returns the rule."""
        from keras_pneumonia.evaluation import choose_threshold, positive_probability, predict_proba

        labels, rows = self.scores["val"] = predict_proba(self.model, self.data.val, rows=True)
        youden = self.config.threshold == "youden"
        chosen = choose_threshold(self.model, scores=(labels > 0, positive_probability(rows)), apply=youden)
        if youden:
            return "Youden's J with the one-standard-error rule on the validation split"
        self.model.threshold = float(self.config.threshold)
        return f"fixed at {self.model.threshold} by the caller (validation would choose {chosen:.4f})"

    def score(self, threshold_rule, history) -> TrainReport:
        """The report: every split (validation, the Kaggle test folder, the monitor folder) scored once."""
        from keras_pneumonia.evaluation import EvaluationReport, predict_proba

        splits = {"val": self.data.val, "test": self.data.test, "monitor": self.monitor}
        reports = {}
        for name, data in splits.items():
            if data is None:
                continue
            if name not in self.scores:
                self.scores[name] = predict_proba(self.model, data, rows=True)
            labels, probabilities = self.scores[name]
            reports[name] = EvaluationReport.from_probabilities(
                labels, probabilities, self.model.threshold, self.data.class_names
            )
        self.reports = reports
        report = TrainReport(
            worker=self.distribution.worker,
            chief=True,
            threshold=self.model.threshold,
            threshold_rule=threshold_rule,
            ood=_ood_summary(self.model, splits),
            # Every epoch of the run, those before an interruption too (history.csv appends).
            epochs_run=_epochs_in(self.output / "history.csv") or len(history.history.get("loss", [])),
            counts=self.data.counts,
        )
        for name, r in reports.items():
            report[name] = r.to_dict()  # type: ignore[literal-required]  # the split names: val, test, monitor
        return report

    def write(self, report, monitor_dir, cache, deterministic, command, seconds) -> None:
        """The run folder's files: the model, the plots, ``report.json`` and ``run.json``."""
        from keras_pneumonia import plots
        from keras_pneumonia._io import atomic_save_model, atomic_write_text
        from keras_pneumonia.evaluation import positive_probability

        output, model = self.output, self.model
        atomic_save_model(clone_without_optimizer(model), output / "model.keras")
        if (output / "history.csv").exists():
            plots.plot_history(output / "history.csv", output / "history.png")
        for name, (y, rows) in self.scores.items():
            # Any pneumonia against NORMAL (with two classes: PNEUMONIA's probability).
            plots.plot_roc(y > 0, positive_probability(rows), output / f"roc_{name}.png", threshold=model.threshold)
            plots.plot_confusion_matrix(
                self.reports[name].confusion_matrix, self.data.class_names, output / f"confusion_{name}.png"
            )
        atomic_write_text(output / "report.json", json.dumps(report, indent=2) + "\n")
        run = {
            "command": shlex.join(command) if command else None,
            "arguments": {
                "data_dir": str(self.data_dir),
                **self.config.to_dict(),
                "monitor_dir": None if monitor_dir is None else str(monitor_dir),
                "model_kwargs": self.model_kwargs,
                "cache": None if cache is None else str(cache),
                "deterministic": deterministic,
            },
            "distribution": self.distribution.to_dict(),
            "pipeline": self.data.options["pipeline"],
            "versions": package_versions(),
            "platform": platform.platform(),
            "argv": sys.argv,
            "wall_time_s": round(seconds, 1),
            "model_params": model.count_params(),
        }
        atomic_write_text(output / "run.json", json.dumps(run, indent=2) + "\n")


def copy_weights(source: str | Path, model) -> None:
    """Copies the weights of a trained model (preset, path, URL, handle) into ``model``, layer by layer.

    Every layer that holds weights must exist in both models under the same name
    with the same shapes; the out-of-distribution flag is not copied (training fits
    a new one).

    Raises:
        ValueError: The two architectures differ; names the first layer that does not fit.
    """
    from keras_pneumonia.hub import load_model

    trained = load_model(str(source))
    copied: set[str] = set()
    for layer in trained.layers:
        weights = layer.get_weights()
        if not weights or layer.name == "ood_detector":
            continue
        try:
            target = model.get_layer(layer.name)
        except ValueError:
            target = None
        shapes = [w.shape for w in weights]
        if target is None and layer.name == "unmirror":
            raise ValueError(
                f"--init-weights {source} puts mirrored films the right way round (its 'unmirror' layer); pass "
                "--unmirror to keep that layer (PneumoniaCNN(unmirror=True))."
            )
        if target is None or [tuple(w.shape) for w in target.weights] != shapes:
            raise ValueError(
                f"--init-weights {source}: its layer {layer.name!r} (weights {shapes}) has no match in the new "
                "model; start from a model of the same architecture (filters, head, channels, classes)."
            )
        target.set_weights(weights)
        copied.add(layer.name)
    missing = [layer.name for layer in model.layers if layer.weights and layer.name not in copied | {"ood_detector"}]
    if missing:
        raise ValueError(
            f"--init-weights {source}: the new model's layer {missing[0]!r} has no match in it; start from a "
            "model of the same architecture (filters, head, channels, classes)."
        )
    logger.info("Initialised from %s", source)


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
    from keras_pneumonia.evaluation import EvaluationReport, choose_threshold, positive_probability, predict_proba

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

    y_val, rows = predict_proba(model, data.val, rows=True)
    if threshold == "youden":  # any pneumonia against NORMAL, with two classes or more
        choose_threshold(model, scores=(y_val > 0, positive_probability(rows)))
    elif threshold is not None:
        model.threshold = float(threshold)
    report = {
        "settings": {"preset": preset, **settings},
        "head_history": {k: [float(v) for v in vs] for k, vs in head_history.items()},
        "history": {k: [float(v) for v in vs] for k, vs in history.items()},
        "threshold": model.threshold,
        "val": EvaluationReport.from_probabilities(y_val, rows, model.threshold, data.class_names).to_dict(),
    }
    atomic_save_model(clone_without_optimizer(model), run_dir / "model.keras")
    atomic_write_text(run_dir / "report.json", json.dumps(report, indent=2) + "\n")
    return report
