"""Prediction at folder scale: find the images, decode them in parallel, classify in batches, stream the results.

Used by ``keras-pneumonia predict``; usable from Python:

>>> import keras_pneumonia as kp
>>> from keras_pneumonia.prediction import find_images, predict_files
>>> model = kp.PneumoniaCNN.from_pretrained()
>>> paths = find_images(["tests/data/chest_xray/test"])
>>> results = list(predict_files(model, paths, batch_size=4))
>>> len(results), sorted(results[0])
(8, ['decision', 'error', 'model', 'path', 'probability', 'threshold', 'version', 'warning'])
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from keras_pneumonia._io import close_durably, lock_open_file
from keras_pneumonia.config import CLASS_NAMES

logger = logging.getLogger(__name__)

#: Columns of a results file, in order.
FIELDS = ("path", "probability", "decision", "threshold", "model", "version", "warning", "error")
OUTPUT_FORMATS = (".csv", ".jsonl")


def find_images(inputs: Sequence[str | Path], pattern: str = "*", recursive: bool = True) -> list[Path]:
    """The image files named by ``inputs``: files as given, folders searched for readable images.

    Args:
        inputs: Files and folders.
        pattern: A glob filter on file names inside folders (e.g. ``"*.jpeg"`` or ``"person*"``).
        recursive: Search sub-folders too.

    Returns:
        Files in the order given, each folder's files sorted; a file named twice is listed once.

    Raises:
        ValueError: An input that does not exist.
    """
    from keras_pneumonia.images import IMAGE_EXTENSIONS

    found: dict[Path, None] = {}
    for item in map(Path, inputs):
        if item.is_dir():
            matches = item.rglob(pattern) if recursive else item.glob(pattern)
            for path in sorted(matches):
                hidden = any(part.startswith((".", "__MACOSX")) for part in path.relative_to(item).parts)
                if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not hidden:
                    found[path] = None
        elif item.exists():
            found[item] = None
        else:
            raise ValueError(f"{item}: no such file or folder")
    return list(found)


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def predict_files(
    model,
    paths: Iterable[str | Path],
    *,
    batch_size: int = 32,
    threshold: float | None = None,
    workers: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Classifies image files in batches, yielding one result per file as soon as its batch is done.

    Files are decoded by a pool of threads (Pillow releases the GIL), one batch
    ahead of the model. A file that cannot be read yields a result with
    ``error`` set and no probability; the others go on. An image that is not
    plausibly a chest X-ray (blank, noise, tiny, inverted...) or that is unlike
    the training population (an adult film, a figure from a paper...) is still
    classified, with the reasons in ``warning`` (`keras_pneumonia.input_check`,
    `keras_pneumonia.ood`).

    Args:
        model: A `~keras_pneumonia.PneumoniaCNN` (or any model with ``input_shape`` and a last
            column of P(last class)).
        paths: The files.
        batch_size: Images per model call.
        threshold: Decision threshold (default: the model's own).
        workers: Decoding threads (default: the number of CPUs, at most 8).

    Yields:
        ``{"path", "probability", "decision", "threshold", "model", "version", "warning", "error"}``.
    """
    from keras_pneumonia import ood
    from keras_pneumonia._version import __version__
    from keras_pneumonia.dicom import is_dicom
    from keras_pneumonia.evaluation import decide, positive_probability
    from keras_pneumonia.images import chroma, input_config_of, original_size
    from keras_pneumonia.input_check import check_input

    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1; received {batch_size!r}.")
    paths = [Path(p) for p in paths]
    threshold = float(getattr(model, "threshold", 0.5) if threshold is None else threshold)
    class_names = list(getattr(model, "class_names", CLASS_NAMES))
    spec = input_config_of(model)
    (height, width), channels = spec.image_size, spec.channels
    base = {"threshold": threshold, "model": model.name, "version": __version__}
    limits = getattr(model, "input_check", None)

    def decode(path: Path):
        try:
            image = spec.load(path)
        except ValueError as error:
            return None, str(error).removeprefix(f"{path}: ")
        colour = None if is_dicom(path) else chroma(path)
        reasons = "; ".join(check_input(image, original_size(path), limits, colour))
        return image, f"not a plausible chest X-ray: {reasons}" if reasons else None

    def decode_batch(batch):
        return list(pool.map(decode, batch))

    # Two pools: one thread prepares the next batch while the model runs, and hands
    # the files of that batch to the decoding pool (a task waiting on its own pool
    # could deadlock it).
    with (
        ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool,
        ThreadPoolExecutor(max_workers=1) as ahead,
    ):
        batches = list(_batches(paths, batch_size))
        pending = ahead.submit(decode_batch, batches[0]) if batches else None
        for i, batch in enumerate(batches):
            assert pending is not None  # submitted one batch ahead
            decoded = pending.result()
            pending = ahead.submit(decode_batch, batches[i + 1]) if i + 1 < len(batches) else None
            good = [j for j, (image, _) in enumerate(decoded) if image is not None]
            probabilities, flags = {}, {}
            if good:
                # Always one batch shape (zero-padded), so the model is traced once.
                x = np.zeros((len(batches[0]), height, width, channels), "float32")
                x[: len(good)] = np.stack([decoded[j][0] for j in good])
                out, scores = ood.predict_on_batch(model, x)
                probabilities = dict(zip(good, np.asarray(out)[: len(good)]))
                if scores is not None:
                    flags = {j: ood.warning(model, float(score)) for j, score in zip(good, scores[: len(good)])}
            for j, path in enumerate(batch):
                if j in probabilities:
                    # P(PNEUMONIA): with subtypes, of any of them; the decision names the class.
                    p = float(positive_probability(probabilities[j][None])[0])
                    decision = class_names[int(decide(probabilities[j][None], threshold)[0])]
                    warning = "; ".join(w for w in (decoded[j][1], flags.get(j)) if w) or None
                    yield {
                        "path": str(path),
                        "probability": p,
                        "decision": decision,
                        **base,
                        "warning": warning,
                        "error": None,
                    }
                else:
                    yield {
                        "path": str(path),
                        "probability": None,
                        "decision": None,
                        **base,
                        "warning": None,
                        "error": decoded[j][1],
                    }


def with_gradcam(
    model, results: Iterable[dict[str, Any]], folder: str | Path, method: str = "gradcam"
) -> Iterator[dict[str, Any]]:
    """Adds a Grad-CAM overlay to each of `predict_files`'s results whose file could be read.

    The overlay (`keras_pneumonia.explanation_figure` of `keras_pneumonia.gradcam`
    for the decided class) is written to ``folder`` as ``<stem>_gradcam.png`` (prefixed
    by the parent folder's name, then numbered, when two inputs share a stem), and its
    path is added to the result as ``"gradcam"``.

    Args:
        model: The model that made the decisions.
        results: `predict_files`'s results.
        folder: Where the overlays go (it must exist).
        method: ``"gradcam"``, ``"gradcam++"`` or ``"scorecam"``.

    Yields:
        The results, in order, with ``"gradcam"`` added where there is an overlay.
    """
    used: set[str] = set()
    for result in results:
        if not result["error"]:
            result["gradcam"] = str(_write_overlay(model, result, Path(folder), used, method))
        yield result


def _write_overlay(model, result: dict[str, Any], folder: Path, used: set[str], method: str) -> Path:
    from keras_pneumonia.gradcam import gradcam
    from keras_pneumonia.images import load_image
    from keras_pneumonia.plots import explanation_figure

    path = Path(result["path"])
    original = load_image(path, None, "grayscale")
    class_names = list(getattr(model, "class_names", CLASS_NAMES))
    heatmap = gradcam(model, original, method=method, class_index=class_names.index(result["decision"]))
    out = folder / _overlay_name(path, used)
    explanation_figure(
        original, heatmap, label=result["decision"], probability=result["probability"], title=path.name, path=out
    )
    return out


def _overlay_name(path: Path, used: set[str]) -> str:
    """A Grad-CAM file name for ``path`` that no other input of this run gets (recorded in ``used``)."""
    name = f"{path.stem}_gradcam.png"
    if name in used:
        name = f"{path.parent.name}_{path.stem}_gradcam.png"
        index = 2
        while name in used:
            name = f"{path.parent.name}_{path.stem}_{index}_gradcam.png"
            index += 1
    used.add(name)
    return name


class ResultsFile:
    """An append-only CSV or JSON-lines file of results that a later run can resume.

    Each result is written as one line and flushed, so an interrupted run loses
    at most the line being written; on opening, a last line cut off mid-write is
    removed. ``done`` holds the paths already in the file.

    Args:
        path: ``*.csv`` or ``*.jsonl``.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.format = self.path.suffix.lower()
        if self.format not in OUTPUT_FORMATS:
            raise ValueError(
                f"{self.path}: results are written as .csv or .jsonl, not {self.path.suffix or 'no suffix'}"
            )
        self.done: set[str] = set()
        if self.path.exists() and not self.path.is_file():
            raise ValueError(f"{self.path}: not a regular file (a folder or a device); choose a file name")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115 (closed by close()/__exit__)
        try:
            self._prepare()
        except BaseException as error:
            with contextlib.suppress(OSError):
                # Closed here: an unwritten header would otherwise fail again at garbage
                # collection, as an "Exception ignored" traceback after our message.
                self._file.close()
            if isinstance(error, OSError) and error.strerror:  # a full disk: name the file
                raise OSError(error.errno, f"{self.path}: {error.strerror}") from None
            raise

    def _prepare(self) -> None:
        """Locks the file, drops a line cut off by an interruption, reads what is done, writes a new CSV's header."""
        lock_open_file(self._file, self.path)  # two runs appending to one file would write every row twice
        new = self.path.stat().st_size == 0
        if not new:
            self._drop_partial_last_line()
            self.done = {row["path"] for row in self.read(self.path)}
        if self.format == ".csv":
            fields: tuple[str, ...] = FIELDS
            if not new:  # resuming: keep the file's columns (0.2.0 files have no "warning")
                with open(self.path, newline="", encoding="utf-8") as existing:
                    fields = tuple(next(csv.reader(existing), FIELDS))
            self._writer = csv.DictWriter(self._file, fieldnames=fields, extrasaction="ignore")
            if new:
                self._writer.writeheader()
                self._file.flush()

    def _drop_partial_last_line(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            logger.warning("%s: removing a last line cut off by an interruption", self.path)
            with open(self.path, "r+b") as file:
                file.truncate(keep)

    @staticmethod
    def read(path: str | Path) -> list[dict[str, Any]]:
        """Reads a results file back (``probability``/``threshold`` as floats, empty as ``None``)."""
        path = Path(path)
        with open(path, newline="", encoding="utf-8") as file:
            if path.suffix.lower() == ".jsonl":
                return [json.loads(line) for line in file if line.strip()]
            rows = list(csv.DictReader(file))
        for row in rows:
            for key in FIELDS:
                row[key] = row.get(key) or None
            for key in ("probability", "threshold"):
                row[key] = None if row[key] is None else float(row[key])
        return rows

    def write(self, result: dict[str, Any]) -> None:
        """Appends one result and flushes it to disk."""
        row = {key: result.get(key) for key in FIELDS}
        if self.format == ".csv":
            self._writer.writerow({k: "" if v is None else v for k, v in row.items()})
        else:
            self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        self.done.add(str(row["path"]))

    def close(self) -> None:
        """Flushes, fsyncs and closes the file (releasing its lock).

        Raises:
            OSError: The last writes could not reach the disk; the message names the file.
        """
        if not self._file.closed:
            close_durably(self._file, self.path)

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
