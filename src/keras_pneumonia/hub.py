"""Presets: loading a model by name, path, URL or preset folder, and saving one as a folder.

`Presets` is mixed into `~keras_pneumonia.PneumoniaCNN` (``from_preset``,
``from_pretrained``, ``presets``, ``save_to_preset``), as KerasHub's base classes
carry them; `load_model` is the function behind them. Where files come from and how
they are verified is `keras_pneumonia.weights`; the released presets are data in
`keras_pneumonia.presets`; writing a preset folder is `keras_pneumonia.export`.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras


class classproperty:  # noqa: N801  (named like the built-in decorators)
    """A read-only property of the class (``PneumoniaCNN.presets``), as KerasHub has one."""

    def __init__(self, getter):
        self.getter = getter
        self.__doc__ = getter.__doc__

    def __get__(self, instance, owner):
        return self.getter(owner)


class Presets:
    """Mixin for `~keras_pneumonia.PneumoniaCNN`: the released presets, ``from_preset`` and ``save_to_preset``."""

    def save_to_preset(self, preset_dir: str | Path, **kwargs) -> dict:
        """Writes this model as a preset folder (``model.keras``, ``metadata.json``, ``README.md``).

        `from_preset` reads the folder back and checks ``model.keras`` against the
        sha256 in ``metadata.json``. See `keras_pneumonia.export.save_preset_folder`
        for the arguments (``description``, ``metrics``, ``license``, ``overwrite``).

        Example:

        >>> import tempfile, numpy as np
        >>> import keras_pneumonia as kp
        >>> model = kp.PneumoniaCNN.from_pretrained(compile=False)
        >>> folder = tempfile.mkdtemp() + "/my_preset"
        >>> sorted(model.save_to_preset(folder)["files"])
        ['model.keras']
        >>> x = np.zeros((1, 160, 160, 1), "uint8")
        >>> bool(np.allclose(kp.PneumoniaCNN.from_preset(folder).predict(x, verbose=0), model.predict(x, verbose=0)))
        True
        """
        from keras_pneumonia.export import save_preset_folder

        return save_preset_folder(self, preset_dir, **kwargs)

    @classproperty
    def presets(cls) -> dict[str, dict]:
        """The released presets, as KerasHub lists them: ``{name: metadata}``.

        Each entry gives the description, parameter count, input, class names,
        decision threshold, whether it carries the out-of-distribution flag, its
        ``metrics`` keyed by the data they were measured on, file size and where
        the weights live. The same table: ``keras-pneumonia presets``.

        >>> import keras_pneumonia as kp
        >>> sorted(kp.PneumoniaCNN.presets)
        ['pneumonia_cnn_v1', 'pneumonia_cnn_v2', 'pneumonia_cnn_v2_ood', 'pneumonia_cnn_v3']
        >>> v3 = kp.PneumoniaCNN.presets["pneumonia_cnn_v3"]
        >>> v3["default"], v3["ood_flag"]
        (True, True)
        """
        from keras_pneumonia.presets import PRESETS, describe

        return {name: describe(name) for name in sorted(PRESETS)}

    @classmethod
    def from_preset(
        cls,
        preset: str | Path | None = None,
        *,
        cache_dir: str | Path | None = None,
        force_download: bool = False,
        offline: bool | None = None,
        compile: bool = True,
        class_names: Sequence[str] | None = None,
    ) -> Any:
        """Loads a preset, a local ``.keras`` file, or a URL, as KerasHub's ``from_preset`` does.

        Args:
            preset: A preset name (see ``PneumoniaCNN.presets``), a path to a
                ``.keras`` file or to a preset folder (`save_to_preset`; its
                ``model.keras`` is checked against its ``metadata.json``),
                ``file://PATH``, or an ``http(s)://`` URL. ``None`` is the
                default preset, which ships inside the package and needs no
                network. ``hf://OWNER/NAME[@REVISION]``: a preset folder on the Hugging Face
                Hub (extra ``[hub]``; see the sharing guide). Other handle schemes (``kaggle://``) raise
                `keras_pneumonia.weights.WeightsError` naming the supported ones.
            cache_dir: Where downloads are kept. Defaults to
                ``$KERAS_PNEUMONIA_CACHE`` or ``$KERAS_HOME/keras_pneumonia``.
            force_download: Download again even when a verified copy exists.
            offline: Never touch the network (default: ``$KERAS_PNEUMONIA_OFFLINE``).
            compile: Compile the loaded model with its defaults, ready to fine-tune.
            class_names: Other classes than the preset's: the trained feature
                extractor is kept and a fresh head is built for them
                (``with_classes``), as KerasHub's
                ``from_preset(..., num_classes=...)`` does. ``None``: the preset's own.

        Returns:
            The loaded `~keras_pneumonia.PneumoniaCNN`, with its class names and threshold.

        Example:

        >>> import keras_pneumonia as kp
        >>> model = kp.PneumoniaCNN.from_preset("pneumonia_cnn_v2")
        >>> model.class_names
        ['NORMAL', 'PNEUMONIA']
        >>> kp.PneumoniaCNN.from_preset("pneumonia_cnn_v2", class_names=("NORMAL", "BACTERIAL", "VIRAL")).output_shape
        (None, 3)
        """
        model = load_model(preset, cache_dir=cache_dir, force_download=force_download, offline=offline, compile=False)
        if class_names is not None and [str(c) for c in class_names] != list(model.class_names):
            model = model.with_classes(class_names)
        if compile:
            model.compile()
        return model

    @classmethod
    def from_pretrained(cls, name: str | Path | None = None, **kwargs) -> Any:
        """The friendly alias of `from_preset`: ``PneumoniaCNN.from_pretrained()`` loads the default preset.

        Example:

        >>> import keras_pneumonia as kp
        >>> kp.PneumoniaCNN.from_pretrained().threshold
        0.5
        """
        return cls.from_preset(name, **kwargs)


def load_model(
    name: str | Path | None = None,
    *,
    cache_dir: str | Path | None = None,
    force_download: bool = False,
    offline: bool | None = None,
    compile: bool = True,
):
    """Loads a model from a preset, a path or a URL (resolved by `keras_pneumonia.weights.get_file`).

    Loading uses Keras' safe mode: a file that would run arbitrary code is refused.

    Returns:
        The loaded model (a `~keras_pneumonia.PneumoniaCNN` for the released presets), compiled
        with its defaults if ``compile`` is true.
    """
    from keras_pneumonia.weights import WeightsError, get_file

    path = get_file(name, cache_dir=cache_dir, force_download=force_download, offline=offline)

    if Path(path).suffix == ".keras" and not zipfile.is_zipfile(path):  # Keras would say "File not found"
        raise WeightsError(f"{path} is not a .keras file: a .keras file is a zip archive, and this one is not.")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:
        raise WeightsError(f"{path} is not a loadable .keras model: {error}") from None
    if compile:
        model.compile()
    return model


#: The files of a preset folder that are published (`upload_preset`).
PRESET_FILES = ("model.keras", "metadata.json", "README.md")


def upload_preset(uri: str, preset: str | Path, *, message: str | None = None) -> str:
    """Publishes a preset folder on the Hugging Face Hub, as ``keras_hub.upload_preset(uri, preset)`` does.

    The folder is checked first (``model.keras`` against the sha256 in ``metadata.json``),
    so a damaged folder is never published. The repository is created if missing, and the
    folder's files go up in **one commit**: the Hub applies it whole or not at all, so an
    interrupted upload leaves the repository as it was. Log in first (``hf auth login``, or
    ``HF_TOKEN``). Anyone then loads it with ``PneumoniaCNN.from_preset("hf://OWNER/NAME")``.

    Args:
        uri: ``hf://OWNER/NAME``.
        preset: A folder written by `~keras_pneumonia.PneumoniaCNN.save_to_preset`.
        message: The commit message (default: "Upload keras-pneumonia preset FOLDER").

    Returns:
        The URL of the commit.

    Raises:
        keras_pneumonia.weights.WeightsError: Not a preset folder or a damaged one, a handle
            other than ``hf://``, no ``huggingface-hub``, or an upload the Hub refused or
            that failed (the message names the handle and what to do).
    """
    from keras_pneumonia.weights import WeightsError, _checked_preset_folder

    folder = Path(preset)
    if not all((folder / name).is_file() for name in PRESET_FILES[:2]):
        raise WeightsError(
            f"{folder} is not a preset folder (model.keras and metadata.json): write one with save_to_preset."
        )
    _checked_preset_folder(folder)
    if uri.startswith("kaggle://"):
        raise WeightsError(
            f"{uri}: uploading to Kaggle is left to kagglehub, which takes the folder as it is: "
            f"kagglehub.model_upload('{uri.removeprefix('kaggle://')}', '{folder}'); from_preset('{uri}') loads it."
        )
    repo_id = uri.removeprefix("hf://")
    if not uri.startswith("hf://") or "@" in repo_id or repo_id.count("/") != 1:
        raise WeightsError(f"{uri!r}: upload_preset takes hf://OWNER/NAME (no revision).")
    return _upload_to_hugging_face(uri, repo_id, folder, message or f"Upload keras-pneumonia preset {folder.name}")


def _upload_to_hugging_face(uri: str, repo_id: str, folder: Path, message: str) -> str:
    """``create_repo`` and one ``upload_folder`` commit; every failure a `WeightsError` naming ``uri``."""
    from keras_pneumonia.weights import WeightsError

    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError:
        raise WeightsError(f"{uri} needs the huggingface-hub package: pip install 'keras-pneumonia[hub]'.") from None
    api = HfApi()
    try:
        api.create_repo(repo_id, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id, folder_path=folder, commit_message=message, allow_patterns=list(PRESET_FILES)
        )
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        if status in (401, 403):
            raise WeightsError(
                f"{uri}: the Hub refused the upload ({status}): log in with `hf auth login`, or set HF_TOKEN to a "
                f"token that may write to {repo_id}."
            ) from None
        raise WeightsError(f"{uri}: the upload failed and nothing was committed: {error}") from None
    # The Hub unreachable or the connection cut (the transport's own errors: httpx's or httpx2's, by
    # huggingface-hub version, so no one class), no token (OSError), an answer not the Hub's (ValueError).
    except Exception as error:
        raise WeightsError(
            f"{uri}: the upload failed and nothing was committed ({type(error).__name__}: {error})."
        ) from None
    return str(info.commit_url)
