"""Pretrained weights: resolve a preset, a path or a URL to a verified local file.

Where files live, in the order they are looked up:

1. ``$KERAS_PNEUMONIA_READONLY_CACHE``: read-only folders (``os.pathsep``-separated)
   pre-filled for containers and air-gapped machines; never written to.
2. The cache: ``cache_dir=``, else ``$KERAS_PNEUMONIA_CACHE``, else
   ``$KERAS_HOME/keras_pneumonia`` (``KERAS_HOME`` defaults to ``~/.keras``).
3. The copy shipped inside the package (presets marked ``bundled``).
4. A download from the preset's URL, verified against its sha256.

Downloads go through `keras.utils.get_file` into a private temporary folder
inside the cache; the file is moved into place with an atomic rename only
after its sha256 matches, so the cache never holds a partial or corrupt file,
and two processes downloading at once both end with a good copy.

Offline mode (``offline=True`` or ``KERAS_PNEUMONIA_OFFLINE=1``) never touches
the network and says which file to put where.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path
from urllib.parse import urlparse

from keras_pneumonia._io import offline_mode, owner, remove_stale
from keras_pneumonia.presets import DEFAULT_PRESET, MODEL_FILE, PRESETS, model_file, read_metadata

logger = logging.getLogger(__name__)

#: Seconds a download may go without receiving data before it is abandoned.
DOWNLOAD_TIMEOUT = 60.0


SUPPORTED_HANDLES = (
    "a preset name, a path to a .keras file (or to a folder holding model.keras), file://PATH, "
    "http://URL, https://URL, hf://OWNER/NAME[@REVISION] (a preset folder on the Hugging Face Hub) and "
    "kaggle://OWNER/MODEL/FRAMEWORK/VARIATION[/VERSION] (a preset folder as a Kaggle model)"
)


class WeightsError(ValueError):
    """A weights file could not be found, downloaded or verified."""


def list_presets() -> list[str]:
    """Names of the released presets.

    >>> from keras_pneumonia.weights import list_presets
    >>> "pneumonia_cnn_v1" in list_presets()
    True
    """
    return sorted(PRESETS)


def default_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The writable cache folder (see the module docs for the order)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("KERAS_PNEUMONIA_CACHE"):
        return Path(os.environ["KERAS_PNEUMONIA_CACHE"]).expanduser()
    keras_home = os.environ.get("KERAS_HOME") or os.path.join("~", ".keras")
    return Path(keras_home).expanduser() / "keras_pneumonia"


def _readonly_dirs() -> list[Path]:
    value = os.environ.get("KERAS_PNEUMONIA_READONLY_CACHE", "")
    return [Path(p).expanduser() for p in value.split(os.pathsep) if p]


def sha256sum(path: str | Path) -> str:
    """The hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verified(path: Path, sha256: str | None) -> bool:
    return path.is_file() and (sha256 is None or sha256sum(path) == sha256)


def bundled_path(name: str) -> Path | None:
    """The copy of a preset's file shipped in the package, if there is one."""
    if not PRESETS[name].get("bundled"):
        return None
    path = Path(str(resources.files("keras_pneumonia") / "assets" / model_file(name)["file_name"]))
    return path if path.is_file() else None


def download(url: str, destination: str | Path, sha256: str | None = None, timeout: float | None = None) -> Path:
    """Downloads ``url`` to ``destination``, verified and atomically.

    Args:
        url: ``http(s)://`` address of the file.
        destination: Final path of the file.
        sha256: Expected hex sha256; on mismatch nothing is kept and
            `WeightsError` is raised.
        timeout: Seconds without data before the download is abandoned
            (default `DOWNLOAD_TIMEOUT`, or ``$KERAS_PNEUMONIA_DOWNLOAD_TIMEOUT``).

    Returns:
        ``destination``.
    """
    import socket

    import keras

    if timeout is None:
        timeout = float(os.environ.get("KERAS_PNEUMONIA_DOWNLOAD_TIMEOUT", DOWNLOAD_TIMEOUT))
    destination = Path(destination)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(destination.parent, destination.name)
        staging = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}.{owner()}."))
    except OSError as error:
        raise WeightsError(
            f"Cannot write to the weights cache {destination.parent} ({error.strerror or error}). "
            "Set KERAS_PNEUMONIA_CACHE (or cache_dir=) to a writable folder, or pre-fill "
            "KERAS_PNEUMONIA_READONLY_CACHE."
        ) from None
    try:
        # keras.utils.get_file sets no timeout: a stalled server would hang the download
        # for ever. The socket default applies to the connection it opens.
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(timeout)
        try:
            # get_file prints its "Downloading data from" line and progress bar on stdout,
            # which would corrupt `--json` output: they go to stderr like every other message.
            with contextlib.redirect_stdout(sys.stderr):
                fetched = Path(
                    keras.utils.get_file(fname=destination.name, origin=url, cache_dir=str(staging), cache_subdir=".")
                )
        except Exception as error:  # get_file raises bare Exception subclasses for HTTP/URL errors.
            raise WeightsError(f"Could not download {url}: {error}") from None
        finally:
            socket.setdefaulttimeout(previous)
        if sha256 is not None:
            actual = sha256sum(fetched)
            if actual != sha256:
                raise WeightsError(
                    f"Downloaded {url} but its sha256 is {actual}, expected {sha256}: "
                    "the file is corrupt or not the released one; nothing was kept."
                )
        os.replace(fetched, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("Saved %s to %s", url, destination)
    return destination


def _url_file_name(url: str) -> str:
    base = os.path.basename(urlparse(url).path) or "model.keras"
    return f"url-{hashlib.sha256(url.encode()).hexdigest()[:12]}-{base}"


def get_file(
    name: str | Path | None = None,
    *,
    cache_dir: str | Path | None = None,
    force_download: bool = False,
    offline: bool | None = None,
) -> Path:
    """Resolves a preset name, a local path or a URL to a verified local ``.keras`` file.

    Args:
        name: Preset name (`list_presets`), a path to a ``.keras`` file or to
            a folder holding ``model.keras``, ``file://PATH``, or an
            ``http(s)://`` URL; ``None`` is the default preset. ``hf://OWNER/NAME[@REVISION]``
            is a preset folder on the Hugging Face Hub, fetched by ``huggingface_hub``;
            ``kaggle://OWNER/MODEL/FRAMEWORK/VARIATION[/VERSION]`` one on Kaggle, fetched by
            ``kagglehub`` (`keras_pneumonia.kaggle`). Other schemes raise `WeightsError`
            naming these.
        cache_dir: Writable cache folder (see `default_cache_dir`).
        force_download: Download again even when a verified copy exists.
        offline: Never touch the network (default: ``$KERAS_PNEUMONIA_OFFLINE``).

    Returns:
        The path of the file.

    Raises:
        WeightsError: Unknown preset, offline without the file, download or
            hash failure.
        FileNotFoundError: A local path that does not exist.
    """
    name = DEFAULT_PRESET if name is None else name
    text = str(name)
    offline = offline_mode(offline)
    cache = default_cache_dir(cache_dir)
    scheme = urlparse(text).scheme if "://" in text else ""
    if scheme == "file":
        text = urlparse(text).path
    elif scheme == "hf":
        return _from_hugging_face(text.removeprefix("hf://"), offline, force_download)
    elif scheme == "kaggle":
        return _from_kaggle(text, offline, force_download)
    elif scheme and scheme not in ("http", "https"):
        raise WeightsError(
            f"Unsupported handle {text!r}: keras-pneumonia does not resolve {scheme}:// handles. "
            f"Supported: {SUPPORTED_HANDLES}. For a {scheme}:// handle, download the file with that "
            "service's own tool and pass its path."
        )

    if text.startswith(("http://", "https://")):
        destination = cache / _url_file_name(text)
        if destination.is_file() and not force_download:
            return destination
        if offline:
            raise WeightsError(f"Offline mode: {text} is not cached; download it and place it at {destination}.")
        return download(text, destination)

    if text not in PRESETS:
        path = Path(text).expanduser()
        if path.is_dir() and (path / "model.keras").is_file():  # a preset folder, as KerasHub saves them
            return _checked_preset_folder(path)
        if path.suffix == ".keras" or os.sep in text or path.exists():
            if not path.is_file():
                raise FileNotFoundError(f"No weights file at {path}.")
            return path
        raise WeightsError(
            f"Unknown preset {text!r}. Known presets: {', '.join(list_presets())}; also supported: {SUPPORTED_HANDLES}."
        )

    preset = model_file(text)
    file_name, sha256 = preset["file_name"], preset["sha256"]
    if not force_download:
        for folder in [*_readonly_dirs(), cache]:
            if _verified(folder / file_name, sha256):
                return folder / file_name
        shipped = bundled_path(text)
        if shipped is not None and _verified(shipped, sha256):
            return shipped
    # A copy that should have shipped with the package but fails its hash means a damaged
    # install: say so, rather than report only the download that follows.
    damaged = (
        ""
        if force_download or bundled_path(text) is None
        else (
            f"The copy shipped in the package, {bundled_path(text)}, does not match its sha256 (a damaged "
            "install: reinstall keras-pneumonia). "
        )
    )
    if offline:
        raise WeightsError(
            f"{damaged}Offline mode: preset {text!r} needs {file_name} (sha256 {sha256}). Download it from "
            f"{preset['url']} and place it at {cache / file_name}, or in a folder named by "
            "KERAS_PNEUMONIA_READONLY_CACHE."
        )
    try:
        return download(preset["url"], cache / file_name, sha256)
    except WeightsError as error:
        if damaged:
            raise WeightsError(f"{damaged}{error}") from None
        raise


def _from_hugging_face(handle: str, offline: bool, force_download: bool) -> Path:
    """``hf://OWNER/NAME[@REVISION]``: a preset folder on the Hugging Face Hub, in the Hub's own cache, verified.

    ``huggingface_hub`` fetches ``metadata.json`` and ``model.keras`` into its cache
    (``$HF_HOME``; ``$HF_ENDPOINT`` for another server), which holds only complete
    files; the model is then checked against the sha256 in the metadata, as a local
    preset folder is.
    """
    try:
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise WeightsError(
            f"hf://{handle} needs the huggingface-hub package: pip install 'keras-pneumonia[hub]'."
        ) from None
    repo_id, _, revision = handle.partition("@")
    where = f"hf://{handle}"
    offline = offline or bool(constants.HF_HUB_OFFLINE)  # ours (KERAS_PNEUMONIA_OFFLINE) or the Hub's (HF_HUB_OFFLINE)
    fetched = {}
    try:
        for name in ("metadata.json", "model.keras"):
            fetched[name] = hf_hub_download(
                repo_id, name, revision=revision or None, local_files_only=offline, force_download=force_download
            )
    except RepositoryNotFoundError:
        raise WeightsError(
            f"{where}: no such model repository on the Hub (or it is private or gated: log in with `hf auth login`)."
        ) from None
    except RevisionNotFoundError:
        raise WeightsError(f"{where}: the repository has no revision {revision!r}.") from None
    except LocalEntryNotFoundError:
        reason = "offline mode is on" if offline else "the Hub could not be reached"
        raise WeightsError(
            f"{where} is not in the Hugging Face cache and {reason}: connect once to download it "
            "(it is then used offline), or download the folder and pass its path."
        ) from None
    except EntryNotFoundError:
        raise WeightsError(
            f"{where} holds no {name}: it is not a keras-pneumonia preset folder (write one with "
            "PneumoniaCNN.save_to_preset and upload the whole folder)."
        ) from None
    except (HfHubHTTPError, ValueError) as error:  # ValueError: a malformed repository id
        raise WeightsError(f"{where}: {error}") from None
    try:
        return _checked_preset_folder(Path(fetched["model.keras"]).parent)
    except WeightsError as error:
        raise WeightsError(f"{where}: {error}") from None


def _from_kaggle(handle: str, offline: bool, force_download: bool) -> Path:
    """``kaggle://OWNER/MODEL/FRAMEWORK/VARIATION[/VERSION]``: a preset folder as a Kaggle model, verified."""
    from keras_pneumonia import kaggle

    try:
        folder = kaggle.model_folder(handle, offline=offline, force_download=force_download)
    except kaggle.KaggleError as error:
        raise WeightsError(str(error)) from None
    if not (folder / "model.keras").is_file():
        raise WeightsError(
            f"{handle} holds no model.keras: it is not a keras-pneumonia preset folder (write one with "
            "PneumoniaCNN.save_to_preset and upload the whole folder)."
        )
    try:
        return _checked_preset_folder(folder)
    except WeightsError as error:
        raise WeightsError(f"{handle}: {error}") from None


def _checked_preset_folder(folder: Path) -> Path:
    """A preset folder's ``model.keras``, after checking it against the sha256 its ``metadata.json`` records.

    A folder without ``metadata.json`` (one written by hand) is taken as it is.
    """
    model_path = folder / MODEL_FILE
    metadata_file = folder / "metadata.json"
    if not metadata_file.is_file():
        return model_path
    try:
        recorded = read_metadata(metadata_file)["files"][MODEL_FILE]["sha256"]
    except ValueError as error:
        raise WeightsError(str(error)) from None
    actual = sha256sum(model_path)
    if actual != recorded:
        raise WeightsError(
            f"{model_path} does not match {metadata_file}: its sha256 is {actual}, the metadata records "
            f"{recorded}. The file was changed or damaged; copy the folder again."
        )
    return model_path


def download_presets(names: list[str] | None = None, *, cache_dir: str | Path | None = None) -> list[Path]:
    """Fills the cache with the given presets (all when ``names`` is None), for offline use later.

    Files already cached and verified are not downloaded again. The bundled
    default is copied rather than downloaded.
    """
    cache = default_cache_dir(cache_dir)
    paths = []
    for name in names or list_presets():
        if name not in PRESETS:
            raise WeightsError(f"Unknown preset {name!r}. Known presets: {', '.join(list_presets())}.")
        preset = model_file(name)
        destination = cache / preset["file_name"]
        if not _verified(destination, preset["sha256"]):
            shipped = bundled_path(name)
            if shipped is not None and _verified(shipped, preset["sha256"]):
                from keras_pneumonia._io import atomic_path

                try:
                    with atomic_path(destination) as tmp:
                        shutil.copyfile(shipped, tmp)
                except OSError as error:
                    raise WeightsError(f"Cannot write to the weights cache {cache}: {error}") from None
            else:
                download(preset["url"], destination, preset["sha256"])
        paths.append(destination)
    return paths
