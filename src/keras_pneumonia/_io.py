"""Atomic file writes: a reader never sees a half-written file.

Written by hand because neither Keras nor the standard library offers an
atomic "write then rename" helper; both pieces are standard (`tempfile`,
`os.replace`, which is atomic on POSIX and Windows within one file system).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path


def offline_mode(offline: bool | None = None) -> bool:
    """``offline`` when given, else whether ``$KERAS_PNEUMONIA_OFFLINE`` is set to 1, true, yes or on."""
    if offline is not None:
        return offline
    return os.environ.get("KERAS_PNEUMONIA_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def owner() -> str:
    """``PID@HOST``: what temporary names carry, so that only this machine judges whether their writer runs."""
    return f"{os.getpid()}@{socket.gethostname().split('.')[0]}"


def remove_stale(parent: Path, name: str) -> None:
    """Removes what killed writers of ``parent/name`` left behind.

    Temporary files and folders are named ``.NAME.PID@HOST.*`` (`owner`): an
    interruption removes its own, but ``kill -9`` (or a power cut) cannot; the next
    writer on the same machine removes those whose process no longer runs. Another
    machine's (a cache shared over the network) are left alone.
    """
    prefix = f".{name}."
    here = owner().split("@", 1)[1]
    for leftover in parent.glob(glob.escape(prefix) + "*"):
        pid, _, host = leftover.name[len(prefix) :].split(".", 1)[0].partition("@")
        if not pid.isdigit() or int(pid) == os.getpid() or (host and host != here) or _running(int(pid)):
            continue
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def staging_dir(destination: str | Path) -> Iterator[Path]:
    """A private temporary folder beside ``destination`` (same file system: ``os.replace`` works), removed after."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(destination.parent, destination.name)
    folder = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}.{owner()}."))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; renames it to ``path`` on success.

    On any error (or interruption) the temporary file is removed and ``path``
    keeps its previous content; files left by a killed writer are removed by the
    next one (`remove_stale`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{owner()}.", suffix=f"{path.suffix}.part")
    os.close(fd)
    # mkstemp makes the file private (0600); give it the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Writes ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_save_model(model, path: str | Path) -> None:
    """Saves a Keras model to a ``.keras`` file atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        # Keras picks the format from the suffix: keep ".keras" at the end.
        keras_tmp = tmp.with_name(tmp.name.removesuffix(".part"))
        try:
            model.save(keras_tmp)
            os.replace(keras_tmp, tmp)
        finally:
            keras_tmp.unlink(missing_ok=True)


class FolderInUseError(RuntimeError):
    """Another process holds the folder's lock (another training writing into it)."""


class FileInUseError(RuntimeError):
    """Another process is writing the same results file."""


def lock_open_file(file, path: str | Path) -> None:
    """Takes an exclusive lock on an open file for as long as it stays open.

    A second process opening the same file gets `FileInUseError` at once. The lock
    is the operating system's (``fcntl.flock``), released when the file is closed or
    its process dies. Where ``fcntl`` does not exist (Windows) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover (Windows)
        return
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.close()
        raise FileInUseError(
            f"{path} is being written by another run; wait for it to finish, or choose another output file."
        ) from None


def close_durably(file, path: str | Path) -> None:
    """Flushes, fsyncs and closes ``file``; a failure (a full disk) is an ``OSError`` naming ``path``.

    Closing implicitly would hide the last write's failure (Python reports it only as
    "Exception ignored" at garbage collection).
    """
    try:
        try:
            file.flush()
            os.fsync(file.fileno())
        finally:
            file.close()
    except OSError as error:
        raise OSError(error.errno, f"{path}: the results could not be written completely ({error.strerror})") from None


@contextlib.contextmanager
def exclusive_lock(folder: str | Path) -> Iterator[Path]:
    """Holds an exclusive lock on ``folder`` (the file ``folder/.lock``, holding our PID).

    A second process asking for it gets `FolderInUseError` at once, naming the
    holder's PID. The lock is the operating system's (``fcntl.flock``), so it
    dies with its process, even after ``kill -9``: a stale lock file never
    blocks a later run. Where ``fcntl`` does not exist (Windows) nothing is locked.
    """
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"
    new_lock = not path.exists()
    try:
        import fcntl
    except ImportError:  # pragma: no cover (Windows)
        yield path
        return
    with open(path, "a+") as file:
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "unknown"
            raise FolderInUseError(
                f"{folder} is in use by another run (PID {holder}); wait for it to finish, or choose "
                "another output folder."
            ) from None
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()}\n")
        file.flush()
        try:
            yield path
        except BaseException:
            # A run that failed before writing anything leaves no folder holding only its lock.
            if new_lock and [p.name for p in folder.iterdir()] == [".lock"]:
                path.unlink()
                if created:
                    folder.rmdir()
            raise
        finally:
            fcntl.flock(file.fileno(), fcntl.LOCK_UN)
