"""``kaggle://`` handles: preset folders and the data set on Kaggle, fetched by ``kagglehub``.

Two kinds of handle, as ``kagglehub`` names them:

* a model, ``kaggle://OWNER/MODEL/FRAMEWORK/VARIATION[/VERSION]`` (a preset folder
  uploaded as a Kaggle model; `keras_pneumonia.weights.get_file` checks its
  ``model.keras`` against the sha256 in its ``metadata.json``);
* a data set, ``kaggle://OWNER/DATASET[/versions/VERSION]``, by default
  `DATASET` (Kermany et al.'s chest X-rays, the layout `~keras_pneumonia.load_chest_xray`
  reads).

``kagglehub`` (the ``[hub]`` extra) downloads into its own cache (``$KAGGLEHUB_CACHE``,
default ``~/.cache/kagglehub``), extracts archives, checks the MD5 the server sends and
writes a completion marker only after the whole version is in place, so an interrupted
download is never taken for a complete one. A handle without a version means the latest:
it asks Kaggle which that is. Offline (``KERAS_PNEUMONIA_OFFLINE=1``), or when Kaggle
cannot be reached, the newest complete version in that cache is used without a request.
Public data needs no account; private models need ``KAGGLE_USERNAME`` / ``KAGGLE_KEY``
(or ``~/.kaggle/kaggle.json``).

Example (needs the network, or the handle in the cache):

.. code-block:: python

    import keras_pneumonia as kp

    data = kp.load_chest_xray("kaggle://paultimothymooney/chest-xray-pneumonia")
    model = kp.PneumoniaCNN.from_preset("kaggle://someone/pneumonia/keras/v2")
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SCHEME = "kaggle://"
#: The chest X-ray data set on Kaggle (Kermany et al. 2018, CC BY 4.0), as ``load_chest_xray`` reads it.
DATASET = "kaggle://paultimothymooney/chest-xray-pneumonia"


class KaggleError(ValueError):
    """A ``kaggle://`` handle could not be resolved; the message names the handle and what to do."""


def is_handle(location: Any) -> bool:
    """Whether ``location`` is a ``kaggle://`` handle (a string; a `~pathlib.Path` never is)."""
    return isinstance(location, str) and location.startswith(SCHEME)


def model_folder(handle: str, *, offline: bool = False, force_download: bool = False) -> Path:
    """The local folder of a model handle (``kaggle://OWNER/MODEL/FRAMEWORK/VARIATION[/VERSION]``).

    Raises:
        KaggleError: No ``kagglehub``, an unknown or private handle, Kaggle unreachable with
            nothing cached, or a corrupt download.
    """
    return _fetch("model", handle, offline, force_download)


def dataset_folder(handle: str = DATASET, *, offline: bool = False, force_download: bool = False) -> Path:
    """The local folder of a data set handle (``kaggle://OWNER/DATASET[/versions/VERSION]``), extracted.

    Raises:
        KaggleError: As `model_folder`.
    """
    return _fetch("dataset", handle, offline, force_download)


def _fetch(kind: str, handle: str, offline: bool, force_download: bool) -> Path:
    """Downloads (or finds in ``kagglehub``'s cache) one handle of ``kind`` (``"model"`` or ``"dataset"``)."""
    kagglehub = _kagglehub(handle)
    slug = handle.removeprefix(SCHEME)
    parsed = _parse(kind, slug, handle)
    if offline:
        cached = _newest_cached(parsed)
        if cached is None:
            raise _not_cached(parsed, handle, "offline mode is on (KERAS_PNEUMONIA_OFFLINE)")
        return cached
    download = kagglehub.model_download if kind == "model" else kagglehub.dataset_download
    try:
        # kagglehub (and kagglesdk, verbose against a test server) print to stdout: keep it for results.
        with contextlib.redirect_stdout(sys.stderr):
            return Path(download(slug, force_download=force_download))
    except Exception as error:  # kagglehub raises requests' and its own errors; each is told apart below
        return _recover(error, parsed, handle, kind)


def _kagglehub(handle: str):
    try:
        import kagglehub
    except ImportError:
        raise KaggleError(f"{handle} needs the kagglehub package: pip install 'keras-pneumonia[hub]'.") from None
    # kagglehub's console handler writes its progress lines to stdout, bound at import (so
    # redirect_stdout does not reach it): stdout is for results here, so it goes to stderr.
    for handler in logging.getLogger("kagglehub").handlers:
        if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) is sys.stdout:
            handler.setStream(sys.stderr)
    return kagglehub


def _parse(kind: str, slug: str, handle: str):
    from kagglehub.handle import parse_dataset_handle, parse_model_handle

    expected = "OWNER/MODEL/FRAMEWORK/VARIATION[/VERSION]" if kind == "model" else "OWNER/DATASET[/versions/VERSION]"
    try:
        return (parse_model_handle if kind == "model" else parse_dataset_handle)(slug)
    except ValueError as error:
        raise KaggleError(f"{handle} is not a Kaggle {kind} handle ({error}); expected kaggle://{expected}.") from None


def _recover(error: Exception, parsed, handle: str, kind: str) -> Path:
    """A clear `KaggleError` for a failed download, or the cached copy when Kaggle could not be reached."""
    import requests
    from kagglehub.exceptions import DataCorruptionError, KaggleApiHTTPError

    if isinstance(error, requests.ConnectionError):
        cached = _newest_cached(parsed)
        if cached is not None:
            logger.warning("Kaggle could not be reached; using the cached %s (%s).", handle, cached)
            return cached
        raise _not_cached(parsed, handle, f"Kaggle could not be reached ({type(error).__name__})") from None
    if isinstance(error, KaggleApiHTTPError):
        status = getattr(error.response, "status_code", None)
        if status == 404:
            raise KaggleError(f"{handle}: no such {kind} on Kaggle (check its spelling and version).") from None
        if status in (401, 403):
            raise KaggleError(
                f"{handle}: Kaggle refused access ({status}): it is private or its terms must be accepted on "
                "kaggle.com; set KAGGLE_USERNAME and KAGGLE_KEY (or ~/.kaggle/kaggle.json) for an account that may "
                "read it."
            ) from None
        raise KaggleError(f"{handle}: Kaggle answered {status}: {error}") from None
    if isinstance(error, DataCorruptionError):
        raise KaggleError(f"{handle}: the download was corrupt and was deleted ({error}); try again.") from None
    if type(error).__module__.split(".")[0] in ("kagglehub", "kagglesdk", "requests", "urllib3"):
        raise KaggleError(f"{handle}: the download failed ({type(error).__name__}: {error}).") from None
    raise error  # not a download failure: a bug, shown as one


def _newest_cached(parsed) -> Path | None:
    """The newest complete version of ``parsed`` in ``kagglehub``'s cache (its completion markers decide)."""
    from kagglehub.cache import Cache

    cache = Cache()
    if parsed.is_versioned():
        versions = [parsed.version]
    else:
        # The versions sit side by side in one folder: <...>/VERSION (models), <...>/versions/VERSION (data).
        parent = Path(cache.get_path(parsed.with_version(1))).parent
        versions = sorted((int(p.name) for p in parent.glob("*") if p.name.isdigit()), reverse=True)
    for version in versions:
        found = cache.load_from_cache(parsed.with_version(version))
        if found:
            return Path(found)
    return None


def _not_cached(parsed, handle: str, reason: str) -> KaggleError:
    from kagglehub.cache import Cache

    where = Cache().get_path(parsed.with_version(parsed.version if parsed.is_versioned() else 1))
    return KaggleError(
        f"{handle} is not in the kagglehub cache ({Path(where).parent}) and {reason}: connect once to download it "
        "(it is then used offline), or download it by hand and pass its folder."
    )
