"""Atomic file writes: a reader never sees a half-written file.

Written by hand because neither Keras nor the standard library offers an
atomic "write then rename" helper; both pieces are standard (`tempfile`,
`os.replace`, which is atomic on POSIX and Windows within one file system).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; renames it to ``path`` on success.

    On any error (or interruption) the temporary file is removed and ``path``
    keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f"{path.suffix}.part")
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
