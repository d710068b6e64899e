"""Preset lists of Keras callbacks for training and fine-tuning.

Every preset is built from Keras' own callbacks:

``"default"`` (training from scratch)
    * ``EarlyStopping(monitor="val_loss", patience=6, restore_best_weights=True)``:
      stops when validation loss has not improved for 6 epochs and puts back
      the best weights, the seed's guard against over-fitting.
    * ``ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2, min_lr=1e-5)``:
      halves the learning rate when progress stalls.
    * ``ModelCheckpoint`` of the best model so far, to
      ``run_dir/checkpoints/epoch{NNN}-val_loss{X}.keras``: each improvement is a
      new file, so an interrupted write never destroys an earlier good checkpoint.
    * ``BackupAndRestore(run_dir/backup)``: an interrupted run, started again
      with the same command, resumes after the last finished epoch.
    * ``CSVLogger(run_dir/history.csv, append=True)``: the per-epoch history.
    * ``TensorBoard(run_dir/tensorboard)`` when ``tensorboard=True``.

``"fine_tune"`` (continuing from trained weights, e.g. `PneumoniaCNN.from_pretrained`)
    The same, but more cautious: ``EarlyStopping(patience=3)``,
    ``ReduceLROnPlateau(factor=0.2, patience=1, min_lr=1e-7)``, since a model
    that starts good over-fits a small folder within a few epochs.

Note:
    ``BackupAndRestore`` saves the model's weights, the optimizer and the epoch,
    not the state of other callbacks: after a resume, ``EarlyStopping`` and
    ``ReduceLROnPlateau`` count patience again from the resumed epoch.
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
    ['EarlyStopping', 'ReduceLROnPlateau', 'ModelCheckpoint', 'BackupAndRestore', 'CSVLogger']
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
    callbacks = [
        keras.callbacks.EarlyStopping(verbose=verbose, **settings["early_stopping"]),
        keras.callbacks.ReduceLROnPlateau(verbose=verbose, **settings["reduce_lr"]),
        keras.callbacks.ModelCheckpoint(
            str(run_dir / "checkpoints" / "epoch{epoch:03d}-val_loss{val_loss:.4f}.keras"),
            monitor="val_loss",
            save_best_only=True,
            verbose=verbose,
        ),
        keras.callbacks.BackupAndRestore(str(run_dir / "backup"), **backup_kwargs),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
    ]
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(run_dir / "tensorboard")))
    return callbacks
