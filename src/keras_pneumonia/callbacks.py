"""Preset lists of Keras callbacks for training and fine-tuning.

Every preset is built from Keras' own callbacks:

``"default"`` (training from scratch)
    * ``EarlyStopping(monitor="val_loss", patience=6, restore_best_weights=True)``:
      stops when validation loss has not improved for 6 epochs and puts back
      the best weights, the original script's guard against over-fitting.
    * ``ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2, min_lr=1e-5)``:
      halves the learning rate when progress stalls.
    * ``ModelCheckpoint`` of the best model so far, to
      ``run_dir/checkpoints/epoch{NNN}-val_loss{X}.keras``: each improvement is a
      new file, so an interrupted write never destroys an earlier good checkpoint.
    * ``BackupAndRestore(run_dir/backup)``: an interrupted run, started again
      with the same command, resumes after the last finished epoch.
    * ``CSVLogger(run_dir/history.csv, append=True)``: the per-epoch history,
      with each epoch's wall time (`EpochTime`).
    * ``TensorBoard(run_dir/tensorboard)`` when ``tensorboard=True``.

``"fine_tune"`` (continuing from trained weights, e.g. `~keras_pneumonia.PneumoniaCNN.from_pretrained`)
    The same, but more cautious: ``EarlyStopping(patience=3)``,
    ``ReduceLROnPlateau(factor=0.2, patience=1, min_lr=1e-7)``, since a model
    that starts good over-fits a small folder within a few epochs.

Note:
    ``BackupAndRestore`` saves the model's weights, the optimizer and the epoch,
    not the state of other callbacks. After a resume, `ResumeBest` gives
    ``ModelCheckpoint`` and ``EarlyStopping`` the best epoch so far (its loss and
    weights, from its checkpoint file); ``ReduceLROnPlateau`` counts its patience
    again from the resumed epoch.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import keras

PRESETS = {
    "default": {
        "early_stopping": {"monitor": "val_loss", "patience": 6, "restore_best_weights": True},
        "reduce_lr": {"monitor": "val_loss", "factor": 0.5, "patience": 2, "min_lr": 1e-5},
    },
    "fine_tune": {
        "early_stopping": {"monitor": "val_loss", "patience": 3, "restore_best_weights": True},
        "reduce_lr": {"monitor": "val_loss", "factor": 0.2, "patience": 1, "min_lr": 1e-7},
    },
    # For a learning-rate schedule fixed in advance (e.g. cosine decay): no early
    # stopping, no plateau, the last epoch is the result.
    "fixed": {},
}


def preset(
    name: str = "default",
    *,
    run_dir: str | Path,
    tensorboard: bool = False,
    verbose: int = 1,
) -> list[keras.callbacks.Callback]:
    """Returns a ready list of Keras callbacks.

    Args:
        name: ``"default"`` or ``"fine_tune"`` (see the module docs for what each holds).
        run_dir: Folder for checkpoints, the backup and ``history.csv``.
        tensorboard: Also log to ``run_dir/tensorboard``.
        verbose: Verbosity of the callbacks that report.

    Returns:
        A list of callbacks for ``model.fit(callbacks=...)``.

    Example:

    >>> import tempfile
    >>> from keras_pneumonia import callbacks
    >>> [type(c).__name__ for c in callbacks.preset("default", run_dir=tempfile.mkdtemp())]
    ['EarlyStopping', 'ReduceLROnPlateau', 'ModelCheckpoint', 'BackupAndRestore', 'EpochTime', 'CSVLogger']
    """
    if name not in PRESETS:
        raise ValueError(f"Unknown callback preset {name!r}; choose one of {sorted(PRESETS)}.")
    settings = PRESETS[name]
    run_dir = Path(run_dir)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    backup_kwargs = {}
    if "double_checkpoint" in inspect.signature(keras.callbacks.BackupAndRestore).parameters:
        # Keeps the previous backup too, so a backup cut off mid-write is not fatal.
        backup_kwargs["double_checkpoint"] = True
    callbacks = []
    if "early_stopping" in settings:
        callbacks.append(keras.callbacks.EarlyStopping(verbose=verbose, **settings["early_stopping"]))
    if "reduce_lr" in settings:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(verbose=verbose, **settings["reduce_lr"]))
    resuming = (run_dir / "backup").exists()
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(run_dir / "checkpoints" / "epoch{epoch:03d}-val_loss{val_loss:.4f}.keras"),
        monitor="val_loss",
        save_best_only=bool(settings),
        verbose=verbose,
    )
    callbacks += [
        checkpoint,
        keras.callbacks.BackupAndRestore(str(run_dir / "backup"), **backup_kwargs),
        EpochTime(),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
    ]
    if resuming:
        early_stopping = next((c for c in callbacks if isinstance(c, keras.callbacks.EarlyStopping)), None)
        callbacks.append(ResumeBest(run_dir / "checkpoints", checkpoint, early_stopping))
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(run_dir / "tensorboard")))
    return callbacks


def best_checkpoint(folder: str | Path) -> tuple[float, int, Path] | None:
    """``(val_loss, epoch, path)`` of the best ``epochNNN-val_lossX.keras`` file in ``folder``."""
    import re

    found = []
    for path in Path(folder).glob("epoch*-val_loss*.keras"):
        match = re.fullmatch(r"epoch(\d+)-val_loss([0-9.]+|nan|inf)\.keras", path.name)
        if match and match.group(2) not in ("nan", "inf"):
            found.append((float(match.group(2)), int(match.group(1)), path))
    return min(found) if found else None


class ResumeBest(keras.callbacks.Callback):
    """After a resume, gives back the best epoch so far to ``ModelCheckpoint`` and ``EarlyStopping``.

    ``BackupAndRestore`` restores the weights, the optimizer and the epoch, but the
    other callbacks start afresh: the checkpoint would call the first resumed
    epoch "best" whatever its loss, and early stopping would end with the best
    weights of the resumed part only. This reads the best checkpoint file of the
    interrupted session (its name holds its epoch and validation loss) and hands
    both callbacks its loss, epoch and weights. Added by `preset` when a backup exists.
    """

    def __init__(self, folder, checkpoint=None, early_stopping=None):
        super().__init__()
        self.folder = Path(folder)
        self.checkpoint = checkpoint
        self.early_stopping = early_stopping
        self.resumed_from = None

    def on_train_begin(self, logs=None):
        best = best_checkpoint(self.folder)
        if best is None:
            return
        loss, epoch, path = best
        self.resumed_from = (epoch, loss)
        if self.checkpoint is not None:
            self.checkpoint.best = loss
        stopper = self.early_stopping
        if stopper is not None:
            stopper.best = loss
            stopper.best_epoch = epoch - 1  # file names count epochs from 1
            if stopper.restore_best_weights:
                stopper.best_weights = keras.saving.load_model(path, compile=False).get_weights()
        self._set_wait = stopper is not None

    def on_epoch_begin(self, epoch, logs=None):
        if getattr(self, "_set_wait", False):
            # Epochs since the best one, as if the run had never stopped.
            self.early_stopping.wait = max(0, epoch - 1 - self.early_stopping.best_epoch)
            self._set_wait = False


class EpochTime(keras.callbacks.Callback):
    """Adds ``epoch_time_s`` (wall seconds of the epoch, validation included) to the logs.

    Keras' ``History`` and ``CSVLogger`` record metrics, not time; with this in the
    list before the logger, ``history.csv`` shows what each epoch cost (and which
    epochs shared the machine with other work).
    """

    def on_epoch_begin(self, epoch, logs=None):
        import time

        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        """Adds ``epoch_time_s`` to the epoch's logs."""
        import time

        if logs is not None:
            logs["epoch_time_s"] = round(time.perf_counter() - self._start, 2)


class MonitorFolder(keras.callbacks.Callback):
    """Scores the model on a fixed labelled set after every epoch, for the record.

    Adds ``{prefix}accuracy``, ``{prefix}auc``, ``{prefix}sensitivity`` and
    ``{prefix}specificity`` (at the model's threshold) to the epoch's logs, so
    `keras.callbacks.CSVLogger` writes them. Put it before the logger in the
    callback list. It changes nothing in training: use it to watch a second test
    set, never to choose the epoch.

    Args:
        images: ``uint8`` images ``(n, h, w, c)``.
        labels: Integer labels.
        prefix: Prefix of the log keys.
        batch_size: Prediction batch size.
    """

    def __init__(self, images, labels, prefix: str = "monitor_", batch_size: int = 64):
        super().__init__()
        self.images = images
        self.labels = labels
        self.prefix = prefix
        self.batch_size = batch_size

    def on_epoch_end(self, epoch, logs=None):
        """Scores the folder and adds its metrics to the epoch's logs under the prefix."""
        from keras_pneumonia.evaluation import EvaluationReport

        probabilities = self.model.predict(self.images, batch_size=self.batch_size, verbose=0)[:, -1]
        threshold = float(getattr(self.model, "threshold", 0.5))
        report = EvaluationReport.from_predictions(self.labels, probabilities, threshold)
        if logs is not None:
            for key in ("accuracy", "auc", "sensitivity", "specificity"):
                logs[self.prefix + key] = getattr(report, key)
