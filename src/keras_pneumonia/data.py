"""Data sets of chest X-rays: the Kaggle layout, the patient-aware split, ``tf.data`` pipelines.

Decoding one image is `keras_pneumonia.images`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from keras_pneumonia import kaggle
from keras_pneumonia._io import offline_mode
from keras_pneumonia.config import CHOICES, CLASS_NAMES, CLASS_SETS, DEFAULT_IMAGE_SIZE, DEFAULT_SEED
from keras_pneumonia.images import CHANNELS, COLOR_MODES, IMAGE_EXTENSIONS, RESIZE_MODES, as_size, load_image

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")

_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_(?:bacteria|virus)_\d+(?:_\d+)*$", re.IGNORECASE),
    re.compile(r"^(NORMAL2-IM-\d+)(?:-\d+)+$", re.IGNORECASE),
    re.compile(r"^(IM-\d+)(?:-\d+)+$", re.IGNORECASE),
)


class BadImageError(ValueError):
    """Raised when image files cannot be decoded; lists every bad file and why."""

    def __init__(self, problems: Sequence[tuple[str, str]]):
        self.problems = list(problems)
        lines = "\n".join(f"  {path}: {why}" for path, why in self.problems)
        super().__init__(
            f"{len(self.problems)} image file(s) could not be read:\n{lines}\n"
            "Fix or remove them (from Python, on_bad_file='skip' leaves them out with a warning)."
        )


class LayoutError(ValueError):
    """Raised when a folder does not have the expected chest X-ray layout."""


#: Images decoded per Python call (`_decode_chunk`), in both pipelines.
_CHUNK = 32


def _decode_chunk(batch, height: int, width: int, channels: int, color_mode: str, resize: str):
    """Decodes a chunk of paths (bytes, as ``tf.numpy_function`` hands them) with `load_image`.

    Returns ``(images, problems)``: ``uint8`` images (zeros where a file failed) and
    ``(index, path, why)`` for each file that failed. Both pipelines decode through
    this, one Python call per chunk: Pillow releases the GIL while it decodes and
    resizes, and one call per chunk instead of per image keeps tf.data's
    per-element overhead out of the way.
    """
    images = np.zeros((len(batch), height, width, channels), np.uint8)
    problems = []
    for i, path in enumerate(batch):
        path = path.decode()
        try:
            images[i] = load_image(path, (height, width), color_mode, resize)
        except ValueError as error:
            problems.append((i, path, str(error).removeprefix(f"{path}: ")))
    return images, problems


def _decode_many(paths: Sequence[str], image_size, color_mode: str, resize: str, chunk: int = _CHUNK):
    """Decodes many files in parallel with tf.data (`_decode_chunk`); returns (images, errors)."""
    import tensorflow as tf

    height, width = as_size(image_size)
    channels = CHANNELS[color_mode]

    def decode(batch):
        images, problems = _decode_chunk(batch, height, width, channels, color_mode, resize)
        errors = [b""] * len(batch)
        for i, _, why in problems:
            errors[i] = why.encode()
        return images, np.array(errors, dtype=object)

    def tf_decode(batch):
        images, errors = tf.numpy_function(decode, [batch], [tf.uint8, tf.string])
        images.set_shape((None, height, width, channels))
        errors.set_shape((None,))
        return images, errors

    images = np.empty((len(paths), height, width, channels), np.uint8)
    errors: list[tuple[str, str]] = []
    if not paths:
        return images, errors
    dataset = (
        tf.data.Dataset.from_tensor_slices(list(paths))
        .batch(chunk)
        .map(tf_decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
    )
    start = 0
    for batch_images, batch_errors in dataset.as_numpy_iterator():
        images[start : start + len(batch_images)] = batch_images
        for i, error in enumerate(batch_errors):
            if error:
                errors.append((paths[start + i], error.decode()))
        start += len(batch_images)
    return images, errors


# ---------------------------------------------------------------------------
# Layout and patients
# ---------------------------------------------------------------------------


def patient_id(filename: str | Path) -> str | None:
    """Returns the patient id carried by a Kaggle chest X-ray file name.

    ``person123_bacteria_456.jpeg`` -> ``"person123"``;
    ``IM-0115-0001.jpeg`` -> ``"IM-0115"``;
    ``NORMAL2-IM-0381-0001.jpeg`` -> ``"NORMAL2-IM-0381"``; any other name -> ``None``.

    >>> from keras_pneumonia.data import patient_id
    >>> patient_id("person1_virus_6.jpeg")
    'person1'
    """
    stem = Path(filename).stem
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(stem)
        if match:
            return match.group(1)
    return None


def _is_visible_dir(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith((".", "__MACOSX"))


def _list_class_dir(class_dir: Path) -> list[Path]:
    """The image files under a class folder, sub-folders included (as `predict` reads folders).

    Hidden files and folders are left out; files that are not images by suffix and
    links that point nowhere are named in a warning, never dropped silently.
    """
    files, dangling = [], []
    for path in sorted(class_dir.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(class_dir).parts):
            continue
        if path.is_file():
            files.append(path)
        elif path.is_symlink() and not path.exists():
            dangling.append(path.relative_to(class_dir).as_posix())
    if dangling:
        logger.warning("%s: skipping %d link(s) to nothing: %s", class_dir, len(dangling), _shown(dangling))
    skipped = [p.relative_to(class_dir).as_posix() for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS]
    if skipped:
        logger.warning(
            "%s: skipping %d file(s) that are not images by suffix: %s (read: %s)",
            class_dir,
            len(skipped),
            _shown(skipped),
            " ".join(IMAGE_EXTENSIONS),
        )
    return [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]


def _shown(names: Sequence[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def has_class_dirs(folder: Path, class_names: Sequence[str] = CLASS_NAMES) -> bool:
    """Whether ``folder`` holds one sub-folder per class (``NORMAL/``, ``PNEUMONIA/``)."""
    return folder.is_dir() and all((folder / c).is_dir() for c in class_names)


def _describe(folder: Path) -> str:
    if not folder.exists():
        return f"{folder} does not exist"
    if not folder.is_dir():
        return f"{folder} is not a folder"
    children = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if not p.name.startswith("."))
    shown = ", ".join(children[:12]) + (", ..." if len(children) > 12 else "")
    return f"{folder} contains: {shown or '(nothing)'}"


def find_kaggle_root(data_dir: str | Path, class_names: Sequence[str] = CLASS_NAMES) -> Path:
    """Finds the folder holding ``train/`` in a Kaggle chest X-ray download.

    Accepts the root itself, the zip as extracted (``chest_xray/``,
    ``chest_xray/chest_xray/``; ``__MACOSX`` folders are ignored), or a data set
    handle, ``kaggle://OWNER/DATASET`` (`keras_pneumonia.kaggle`: downloaded once into
    ``kagglehub``'s cache, offline after that).

    Raises:
        LayoutError: No usable layout; the message shows what was found.
        keras_pneumonia.kaggle.KaggleError: A handle that could not be fetched.
    """
    if kaggle.is_handle(data_dir):
        data_dir = kaggle.dataset_folder(str(data_dir), offline=offline_mode())
    data_dir = Path(data_dir)
    candidates = [data_dir, data_dir / "chest_xray", data_dir / "chest_xray" / "chest_xray"]
    for candidate in candidates:
        if has_class_dirs(candidate / "train", class_names):
            return candidate
    expected = "/".join(class_names)
    raise LayoutError(
        f"No chest X-ray layout found under {data_dir}: expected train/{{{expected}}}/ "
        f"(optionally with val/ and test/), directly or inside chest_xray/. Found: {_describe(data_dir)}."
    )


def download_chest_xray(handle: str | None = None, *, force_download: bool = False) -> Path:
    """Downloads the chest X-ray data set from Kaggle (`keras_pneumonia.kaggle`) and returns its root.

    The root is the folder `load_chest_xray` reads (``train/``, ``val/``, ``test/``); the
    download is kept in ``kagglehub``'s cache and used offline after that. Passing the
    handle to `load_chest_xray` does the same in one step.

    Args:
        handle: ``kaggle://OWNER/DATASET[/versions/N]`` (default: `keras_pneumonia.kaggle.DATASET`).
        force_download: Download again even when the cache holds it.

    Raises:
        keras_pneumonia.kaggle.KaggleError: The handle could not be fetched.
        LayoutError: The download holds no chest X-ray layout.
    """
    handle = handle or kaggle.DATASET
    if not kaggle.is_handle(handle):
        raise kaggle.KaggleError(f"{handle!r} is not a kaggle:// data set handle (kaggle://OWNER/DATASET).")
    return find_kaggle_root(kaggle.dataset_folder(handle, offline=offline_mode(), force_download=force_download))


def evaluation_folder(data_dir: str | Path, class_names: Sequence[str] | None = None) -> Path:
    """The labelled folder to evaluate on: ``data_dir`` itself (one sub-folder per class) or a Kaggle root's ``test/``.

    Args:
        data_dir: The folder given by the user.
        class_names: The class folders to look for (``None``: NORMAL and PNEUMONIA).

    Raises:
        LayoutError: Neither; the message says what was expected.
    """
    class_names = CLASS_NAMES if class_names is None else class_names
    if kaggle.is_handle(data_dir):
        data_dir = find_kaggle_root(data_dir, class_names)
    data_dir = Path(data_dir)
    if has_class_dirs(data_dir, class_names):
        return data_dir
    expected = " and ".join(f"{name}/" for name in class_names)
    try:
        root = find_kaggle_root(data_dir, class_names)
    except LayoutError:
        raise LayoutError(f"{data_dir} must hold {expected} folders, or be a Kaggle root with test/.") from None
    if not has_class_dirs(root / "test", class_names):
        raise LayoutError(f"{root} has no test/ folder with {expected} to evaluate on.")
    return root / "test"


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """One image of a split: path relative to the data folder, label, patient id."""

    path: str
    label: int
    patient: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _entries(folder: Path, root: Path, class_names: Sequence[str]) -> list[FileEntry]:
    others = sorted(p.name for p in folder.iterdir() if _is_visible_dir(p) and p.name not in class_names)
    if others and any((folder / name).is_dir() for name in class_names):
        logger.warning(
            "%s: ignoring folder(s) %s, which are not among the classes %s (pass class_names= to use them)",
            folder,
            ", ".join(others),
            ", ".join(class_names),
        )
    entries, files = [], {}
    for label, name in enumerate(class_names):
        files[name] = _list_class_dir(folder / name)
        for file in files[name]:
            pid = patient_id(file.name)
            entries.append(FileEntry(file.relative_to(root).as_posix(), label, pid or f"file:{file.stem}"))
    both = _in_several_classes(files)
    if both:
        raise LayoutError(
            f"{folder}: {len(both)} image(s) are stored, byte for byte, under more than one class, so their "
            f"label is ambiguous: {_shown(both)}. Keep each image under one class."
        )
    return entries


def _in_several_classes(files: dict[str, list[Path]]) -> list[str]:
    """Files whose exact bytes appear under two classes.

    Narrowed in three passes so that a large data set is not read in full: the size,
    then a hash of the first 64 KB, then a hash of the whole file, each only for
    files that still match one under another class.
    """

    def head(path: Path) -> str:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read(1 << 16)).hexdigest()

    def whole(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    groups = [[(name, path) for name, paths in files.items() for path in paths]]
    for key in (lambda p: p.stat().st_size, head, whole):
        narrowed = []
        for group in groups:
            by_key: dict = {}
            for name, path in group:
                by_key.setdefault(key(path), []).append((name, path))
            narrowed += [g for g in by_key.values() if len({name for name, _ in g}) > 1]
        groups = narrowed
    return sorted(" = ".join(f"{name}/{path.name}" for name, path in group) for group in groups)


def split_by_patient(
    entries: Sequence[FileEntry], validation_split: float, seed: int
) -> tuple[list[FileEntry], list[FileEntry]]:
    """Splits entries into (train, validation), stratified by class and patient-disjoint.

    Patients are shuffled with ``seed`` within each class (a patient's class is
    the label of most of their images) and moved to validation until about
    ``validation_split`` of that class's images are there.
    """
    if not 0.0 < validation_split < 1.0:
        raise ValueError(f"`validation_split` must be between 0 and 1; received {validation_split!r}.")
    by_patient: dict[str, list[FileEntry]] = {}
    for entry in entries:
        by_patient.setdefault(entry.patient, []).append(entry)
    rng = np.random.default_rng(seed)
    val_patients: set[str] = set()
    labels = sorted({e.label for e in entries})
    for label in labels:
        patients = sorted(
            p for p, items in by_patient.items() if np.bincount([e.label for e in items]).argmax() == label
        )
        target = validation_split * sum(len(by_patient[p]) for p in patients)
        taken = 0
        for index in rng.permutation(len(patients)):
            if taken >= target:
                break
            patient = patients[index]
            size = len(by_patient[patient])
            # Stop rather than overshoot by more than half a patient's images.
            if taken + size - target > size / 2 and taken > 0:
                continue
            val_patients.add(patient)
            taken += size
    train = [e for e in entries if e.patient not in val_patients]
    val = [e for e in entries if e.patient in val_patients]
    return train, val


def balanced_class_weight(labels: Sequence[int], num_classes: int) -> dict[int, float]:
    """``n_samples / (n_classes * n_c)`` for each class, as scikit-learn's "balanced"."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=num_classes)
    total = counts.sum()
    return {c: (float(total / (num_classes * n)) if n else 0.0) for c, n in enumerate(counts)}


# ---------------------------------------------------------------------------
# The dataset builder
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class ChestXrayData:
    """What `load_chest_xray` returns.

    Attributes:
        train: Batched, shuffled, prefetched ``tf.data.Dataset`` of
            ``(uint8 images, int labels)``.
        val: The validation dataset (not shuffled).
        test: The test dataset, or ``None`` when there is no ``test/`` folder.
        class_names: Class names in label order, e.g. ``["NORMAL", "PNEUMONIA"]``.
        class_weight: Balanced class weights of the train part, for ``fit(class_weight=...)``.
        files: For each split, its `~keras_pneumonia.data.FileEntry` list, in dataset order.
        data_dir: The Kaggle root that was read.
        options: The options the split was made with (seed, sizes...).
    """

    train: Any
    val: Any
    test: Any
    class_names: list[str]
    class_weight: dict[int, float]
    files: dict[str, list[FileEntry]]
    data_dir: Path
    options: dict[str, Any]

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class, e.g. ``{"train": {"NORMAL": 1207, ...}, ...}``."""
        return {
            split: {name: sum(e.label == i for e in entries) for i, name in enumerate(self.class_names)}
            for split, entries in self.files.items()
        }

    def labels(self, split: str) -> np.ndarray:
        """The labels of one split, in dataset order."""
        return np.array([e.label for e in self.files[split]], dtype=np.int32)

    def manifest(self) -> dict[str, Any]:
        """A JSON-serialisable record of the split: files, labels, patients, options."""
        manifest: dict[str, Any] = {"class_names": list(self.class_names), "options": dict(self.options)}
        for split in SPLITS:
            manifest[split] = [e.to_dict() for e in self.files.get(split, [])]
        return manifest

    def save_manifest(self, path: str | Path) -> None:
        """Writes `manifest` as JSON (atomically)."""
        from keras_pneumonia._io import atomic_write_text

        atomic_write_text(path, json.dumps(self.manifest(), indent=1) + "\n")


def _dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, shuffle: bool, seed: int):
    """The in-memory pipeline: the decoded images as one tensor, shuffled by index.

    Shuffling indices, not images, keeps one copy of the pixels: a shuffle buffer
    of images would hold a second one.
    """
    import tensorflow as tf

    pixels = tf.constant(images)
    targets = tf.constant(labels.astype(np.int32))
    dataset = tf.data.Dataset.range(len(labels))
    if shuffle:
        dataset = dataset.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    dataset = dataset.map(lambda i: (tf.gather(pixels, i), tf.gather(targets, i)), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------------------
# The streaming pipeline
# ---------------------------------------------------------------------------

#: ``pipeline="auto"`` streams a data set whose decoded pixels (all splits) would take
#: more than this many bytes, and keeps smaller ones in memory: 1 GiB is about 40,000
#: grayscale images at 160 px. The in-memory pipeline decodes once and reports every bad
#: file before training; streaming costs the decoding again every epoch (measured in
#: ``docs/benchmarks.md``) but its memory does not grow with the number of images.
AUTO_STREAM_BYTES = 1 << 30
#: The `load_chest_xray` pipelines: ``"auto"``, ``"memory"``, ``"stream"``.
PIPELINES = CHOICES["pipeline"]
_BAD_FILE_MARKER = "keras_pneumonia.BadImageError"


def check_headers(paths: Sequence[str | Path]) -> list[tuple[str, str]]:
    """``(path, problem)`` for each file whose header cannot be read; nothing is decoded.

    Pillow's ``Image.open`` reads the header only (format, size, mode): empty
    files, files that are not images, and images with more pixels than Pillow
    decodes safely are found here, in under 0.1 ms a file (``setup_s`` in
    ``benchmarks/streaming.json``: listing, split and headers). JPEG and PNG files
    must also end with their end marker, so a file cut short after its header (an
    interrupted copy) is named here rather than in the middle of training. DICOM
    files are checked for their ``DICM`` marker only.
    """
    from PIL import Image, UnidentifiedImageError

    from keras_pneumonia.dicom import is_dicom

    problems = []
    for path in paths:
        try:
            if Path(path).stat().st_size == 0:
                problems.append((str(path), "empty file (0 bytes)"))
                continue
            if is_dicom(path):
                continue
            with Image.open(path) as image:
                width, height = image.size
                image_format = image.format
            if width < 1 or height < 1:
                problems.append((str(path), f"image of size {width}x{height}"))
            elif _cut_short(path, image_format):
                problems.append((str(path), f"{image_format} file cut short (no end marker): an interrupted copy?"))
        except FileNotFoundError:
            problems.append((str(path), "no such file"))
        except UnidentifiedImageError:
            problems.append((str(path), "not an image Pillow can read"))
        except Image.DecompressionBombError as error:
            problems.append((str(path), f"too many pixels to decode safely ({error})"))
        except (OSError, SyntaxError, ValueError) as error:
            problems.append((str(path), str(error) or type(error).__name__))
    return problems


#: Where a complete file's end marker must lie: JPEG's end-of-image within the last
#: bytes (some writers append padding or metadata after it), PNG's IEND chunk at the end.
_END_MARKERS = {"JPEG": (b"\xff\xd9", 4096), "MPO": (b"\xff\xd9", 4096), "PNG": (b"IEND\xaeB`\x82", 64)}


def _cut_short(path: str | Path, image_format: str | None) -> bool:
    """Whether a JPEG or PNG file lacks its end marker; reads only the file's tail.

    Pillow opens a truncated file's header without complaint and fails only when the
    pixels are decoded; this cheap check finds it without decoding.
    """
    if image_format not in _END_MARKERS:
        return False
    marker, window = _END_MARKERS[image_format]
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - window))
        return marker not in handle.read()


def bad_image_error_from(error: BaseException) -> BadImageError | None:
    """The `BadImageError` a streaming decoder raised, from the TensorFlow error carrying it.

    A file that fails to decode in the middle of an epoch stops ``fit`` with a
    ``tf.errors.OpError`` whose message holds the file name; this gives it back as
    the one-line-per-file `BadImageError` of the in-memory pipeline.
    """
    message = str(error)
    if _BAD_FILE_MARKER not in message:
        return None
    problems = []
    for line in message.split(_BAD_FILE_MARKER)[1].splitlines()[1:]:
        if not line.startswith("  ") or ": " not in line:
            break
        path, why = line.strip().split(": ", 1)
        problems.append((path, why))
    return BadImageError(problems or [("(unknown file)", message.splitlines()[0])])


def _stream_dataset(
    paths: Sequence[str],
    labels: np.ndarray,
    *,
    image_size: tuple[int, int],
    color_mode: str,
    resize: str,
    batch_size: int,
    shuffle: bool,
    seed: int,
    on_bad_file: str,
    cache: str | Path | None,
    cache_key: str,
    shuffle_buffer: int,
):
    """Paths -> (shuffled) -> decoded in a parallel map -> (cached) -> batched -> prefetched.

    The decoder is `~keras_pneumonia.images.load_image` (Pillow) in a
    ``tf.numpy_function``, one call per chunk of paths: TensorFlow's
    ``decode_jpeg(dct_method="INTEGER_ACCURATE")`` gives the same pixels as Pillow
    but TensorFlow's resize does not (``benchmarks/decoders.py`` compares them), and
    the formats `load_image` reads (16-bit PNG by their bit depth, EXIF orientation,
    DICOM) have no TensorFlow decoder; Pillow
    releases the GIL while it decodes and resizes, so the map runs in parallel.
    """
    import tensorflow as tf

    height, width = image_size
    channels = CHANNELS[color_mode]

    def decode(batch):
        images, problems = _decode_chunk(batch, height, width, channels, color_mode, resize)
        keep = np.ones(len(batch), bool)
        keep[[i for i, _, _ in problems]] = False
        if problems and on_bad_file == "raise":
            lines = "\n".join(f"  {path}: {why}" for _, path, why in problems)
            raise ValueError(f"{_BAD_FILE_MARKER}\n{lines}\n")
        if problems:
            logger.warning(
                "Skipping %d unreadable image(s): %s", len(problems), "; ".join(f"{p} ({w})" for _, p, w in problems)
            )
        return images, keep

    def tf_decode(batch_paths, batch_labels):
        images, keep = tf.numpy_function(decode, [batch_paths], [tf.uint8, tf.bool], stateful=False)
        images.set_shape((None, height, width, channels))
        keep.set_shape((None,))
        return tf.boolean_mask(images, keep), tf.boolean_mask(batch_labels, keep)

    dataset = tf.data.Dataset.from_tensor_slices((list(paths), labels.astype(np.int32)))
    if shuffle and cache is None:
        # Every epoch a new order of the paths (a few bytes each), decoded as they come.
        dataset = dataset.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    elif shuffle:
        # The first epoch decodes in one random order and fills the cache; later epochs
        # read the cache in that order, reshuffled within `shuffle_buffer` images.
        dataset = dataset.shuffle(len(paths), seed=seed, reshuffle_each_iteration=False)
    dataset = dataset.batch(_CHUNK).map(tf_decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.unbatch()
    if on_bad_file == "raise":
        # Nothing is left out (a bad file stops the epoch), so the length is known:
        # progress bars and schedules can count steps.
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(len(paths)))
    if cache is not None:
        dataset = dataset.cache(_cache_file(cache, cache_key))
        if shuffle:
            dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _cache_file(cache: str | Path, key: str) -> str:
    """``""`` (memory) or a file in the cache folder named by what it holds.

    The name hashes the file list, labels and reading settings, so a cache written
    at another size, colour mode or split is never read back by mistake. A lock
    file left by a process that died while writing is removed (TensorFlow writes
    the cache's index last, so such a cache was never complete). One process at a
    time may fill a given cache; once complete, any number may read it.
    """
    if str(cache) == "memory":
        return ""
    folder = Path(cache)
    folder.mkdir(parents=True, exist_ok=True)
    prefix = folder / key
    for lock in folder.glob(f"{key}*.lockfile"):
        if not Path(f"{prefix}.index").exists():
            lock.unlink(missing_ok=True)
    return str(prefix)


def _cache_key(split: str, entries: Sequence[FileEntry], options: dict[str, Any]) -> str:
    import hashlib

    payload = json.dumps([split, [(e.path, e.label) for e in entries], options], sort_keys=True)
    return f"{split}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


def load_image_folder(
    directory: str | Path,
    *,
    image_size: int | Sequence[int] = DEFAULT_IMAGE_SIZE,
    color_mode: str = "grayscale",
    resize: str = "squash",
    class_names: Sequence[str] = CLASS_NAMES,
    on_bad_file: str = "raise",
    classes: str = "binary",
) -> tuple[np.ndarray, np.ndarray, list[FileEntry]]:
    """Decodes a folder with one sub-folder per class into arrays.

    ``classes="subtype"`` labels the PNEUMONIA images BACTERIAL (1) or VIRAL (2) by their
    file names, as `~keras_pneumonia.load_chest_xray` does.

    Returns:
        ``(images, labels, entries)``: ``uint8`` images ``(n, h, w, c)``, int
        labels, and the `~keras_pneumonia.data.FileEntry` of each image (paths relative to ``directory``).
    """
    directory = Path(directory)
    if not has_class_dirs(directory, class_names):
        raise LayoutError(
            f"{directory} must hold one folder per class ({', '.join(class_names)}). Found: {_describe(directory)}."
        )
    entries = _entries(directory, directory, class_names)
    entries = _relabel({"folder": entries}, directory, list(class_names), classes)[0]["folder"]
    return _decode_entries(entries, directory, image_size, color_mode, resize, on_bad_file)


def _without_bad_headers(
    splits: dict[str, list[FileEntry]], root: Path, on_bad_file: str
) -> dict[str, list[FileEntry]]:
    """The streaming pipeline's up-front check: headers only, bad files handled as ``on_bad_file`` says."""
    problems = check_headers([root / e.path for entries in splits.values() for e in entries])
    if not problems:
        return splits
    if on_bad_file == "raise":
        raise BadImageError(problems)
    logger.warning("Skipping %d unreadable image(s): %s", len(problems), "; ".join(f"{p} ({w})" for p, w in problems))
    bad = {p for p, _ in problems}
    return {split: [e for e in entries if str(root / e.path) not in bad] for split, entries in splits.items()}


def _decode_entries(entries, root, image_size, color_mode, resize, on_bad_file):
    if on_bad_file not in ("raise", "skip"):
        raise ValueError(f"`on_bad_file` must be 'raise' or 'skip'; received {on_bad_file!r}.")
    paths = [str(root / e.path) for e in entries]
    images, errors = _decode_many(paths, image_size, color_mode, resize)
    if errors:
        if on_bad_file == "raise":
            raise BadImageError(errors)
        bad = {p for p, _ in errors}
        logger.warning(
            "Skipping %d unreadable image(s): %s", len(errors), "; ".join(f"{p} ({why})" for p, why in errors)
        )
        keep = np.array([p not in bad for p in paths], dtype=bool)
        images = images[keep]
        entries = [e for e, k in zip(entries, keep) if k]
    labels = np.array([e.label for e in entries], dtype=np.int32)
    return images, labels, list(entries)


def _check_loading_arguments(
    *, kaggle_val, color_mode, resize, batch_size, pipeline, on_bad_file, cache, classes
) -> None:
    """`load_chest_xray`'s choices, checked before any file is read."""
    if classes not in CLASS_SETS:
        raise ValueError(f"`classes` must be one of {tuple(CLASS_SETS)}; received {classes!r}.")
    if kaggle_val not in ("pool", "keep"):
        raise ValueError(f"`kaggle_val` must be 'pool' or 'keep'; received {kaggle_val!r}.")
    if color_mode not in COLOR_MODES:
        raise ValueError(f"`color_mode` must be one of {COLOR_MODES}; received {color_mode!r}.")
    if resize not in RESIZE_MODES:
        raise ValueError(f"`resize` must be one of {RESIZE_MODES}; received {resize!r}.")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1; received {batch_size!r}.")
    if pipeline not in PIPELINES:
        raise ValueError(f"`pipeline` must be one of {PIPELINES}; received {pipeline!r}.")
    if on_bad_file not in ("raise", "skip"):
        raise ValueError(f"`on_bad_file` must be 'raise' or 'skip'; received {on_bad_file!r}.")
    if cache is not None and pipeline == "memory":
        raise ValueError("`cache` applies to the streaming pipeline; the in-memory one holds every image already.")


def _split_entries(
    root: Path, class_names: list[str], validation_split: float, seed: int, kaggle_val: str
) -> dict[str, list[FileEntry]]:
    """The files of each split: train and val (by patient, or the Kaggle ``val/`` kept), and test if present."""
    pool = _entries(root / "train", root, class_names)
    has_val = has_class_dirs(root / "val", class_names)
    given_val = _entries(root / "val", root, class_names) if has_val else []
    for name in class_names:
        if not any(e.label == class_names.index(name) for e in pool):
            raise LayoutError(
                f"{root / 'train' / name} holds no images (files ending in {', '.join(IMAGE_EXTENSIONS)}, "
                "in it or in its sub-folders)."
            )
    unmatched = sorted({e.patient for e in pool + given_val if e.patient.startswith("file:")})
    if unmatched:
        logger.warning(
            "%d file name(s) carry no patient id (e.g. %s); each is treated as its own patient.",
            len(unmatched),
            unmatched[0].removeprefix("file:"),
        )
    if kaggle_val == "keep":
        if not given_val:
            raise LayoutError(f"kaggle_val='keep' needs {root / 'val'} with one folder per class.")
        train_entries, val_entries = pool, given_val
    else:
        train_entries, val_entries = split_by_patient(pool + given_val, validation_split, seed)
    test_entries = _entries(root / "test", root, class_names) if has_class_dirs(root / "test", class_names) else None

    found = {"train": train_entries, "val": val_entries, "test": test_entries}
    return {split: entries for split, entries in found.items() if entries is not None}


def _relabel(
    splits: dict[str, list[FileEntry]], root: Path, folders: list[str], classes: str
) -> tuple[dict[str, list[FileEntry]], list[str]]:
    """The entries and class names for ``classes``: as the folders say, or NORMAL (0), BACTERIAL (1), VIRAL (2)."""
    if classes == "binary":
        return splits, folders
    if len(folders) != 2:
        raise ValueError(f"classes='subtype' reads two class folders (NORMAL, PNEUMONIA); received {folders}.")
    unnamed = []

    def label(entry: FileEntry) -> int:
        if entry.label == 0:
            return 0
        name = Path(entry.path).name.lower()
        if ("bacteria" in name) == ("virus" in name):
            unnamed.append(entry.path)
        return 1 if "bacteria" in name else 2

    relabelled = {split: [dataclasses.replace(e, label=label(e)) for e in entries] for split, entries in splits.items()}
    if unnamed:
        raise LayoutError(
            f"{root}: classes='subtype' labels {folders[1]} images by 'bacteria' or 'virus' in their file names, "
            f"and {len(unnamed)} name neither (or both): {_shown(unnamed)}."
        )
    return relabelled, list(CLASS_SETS["subtype"])


def _build_datasets(
    splits: dict[str, list[FileEntry]],
    root: Path,
    *,
    streaming: bool,
    size: tuple[int, int],
    color_mode: str,
    resize: str,
    batch_size: int,
    seed: int,
    on_bad_file: str,
    cache,
    shuffle_buffer,
) -> tuple[dict[str, Any], dict[str, list[FileEntry]]]:
    """One ``tf.data`` dataset per split (streamed from the files, or decoded once into memory) and its files."""
    if streaming:
        # Every split's headers first, so that one error lists every bad file.
        splits = _without_bad_headers(splits, root, on_bad_file)
    files: dict[str, list[FileEntry]] = {}
    datasets: dict[str, Any] = {"test": None}
    for split, entries in splits.items():
        if streaming:
            reading = {"image_size": list(size), "color_mode": color_mode, "resize": resize}
            datasets[split] = _stream_dataset(
                [str(root / e.path) for e in entries],
                np.array([e.label for e in entries], dtype=np.int32),
                image_size=size,
                color_mode=color_mode,
                resize=resize,
                batch_size=batch_size,
                shuffle=split == "train",
                seed=seed,
                on_bad_file=on_bad_file,
                cache=cache,
                cache_key=_cache_key(split, entries, {**reading, "seed": seed}),
                shuffle_buffer=shuffle_buffer,
            )
        else:
            images, labels, entries = _decode_entries(entries, root, size, color_mode, resize, on_bad_file)
            datasets[split] = _dataset(images, labels, batch_size, shuffle=split == "train", seed=seed)
            del images
        files[split] = entries
    return datasets, files


def _pipeline_options(splits: dict[str, list[FileEntry]], *, size, color_mode, pipeline, cache, **recorded) -> dict:
    """The loading options as `ChestXrayData.options` records them, with the pipeline chosen (and logged)."""
    channels = CHANNELS[color_mode]
    pixels = sum(len(entries) for entries in splits.values()) * size[0] * size[1] * channels
    streaming = pipeline == "stream" or (pipeline == "auto" and (pixels > AUTO_STREAM_BYTES or cache is not None))
    options = {
        "image_size": list(size),
        "color_mode": color_mode,
        **recorded,
        "pipeline": "stream" if streaming else "memory",
        "cache": None if cache is None else str(cache),
    }
    logger.info(
        "%s pipeline: %d images, %.2f GB of pixels",
        options["pipeline"],
        pixels // (size[0] * size[1] * channels),
        pixels / 1e9,
    )
    return options


def load_chest_xray(
    data_dir: str | Path,
    *,
    image_size: int | Sequence[int] = DEFAULT_IMAGE_SIZE,
    color_mode: str = "grayscale",
    batch_size: int = 32,
    validation_split: float = 0.1,
    seed: int = DEFAULT_SEED,
    kaggle_val: str = "pool",
    resize: str = "squash",
    on_bad_file: str = "raise",
    class_names: Sequence[str] = CLASS_NAMES,
    pipeline: str = "auto",
    cache: str | Path | None = None,
    shuffle_buffer: int = 1024,
    classes: str = "binary",
) -> ChestXrayData:
    """Builds train / validation / test datasets from the Kaggle chest X-ray layout.

    The validation set is split from the training data **by patient** (no patient has images in
    both), stratified by class; the Kaggle copy's 16-image ``val/`` folder is pooled in first.

    Both pipelines give the same pixels (`~keras_pneumonia.load_image`'s) in the same order:
    ``"memory"`` decodes every image once and keeps it (every unreadable file is reported
    first); ``"stream"`` checks the headers (`~keras_pneumonia.data.check_headers`) and decodes
    each batch when asked, so memory stays flat. ``"auto"`` streams data sets above
    `~keras_pneumonia.data.AUTO_STREAM_BYTES` of pixels, and any with a ``cache``.

    Args:
        data_dir: The Kaggle root (``train/``, optional ``val/`` and ``test/``,
            each with one folder per class), or the zip as extracted.
        image_size: ``(height, width)`` or an int, the size images are resized to.
        color_mode: ``"grayscale"`` or ``"rgb"``.
        batch_size: Batch size of the returned datasets.
        validation_split: Fraction of the training images held out for validation.
        seed: Seed of the split and of the training shuffle (the same seed, the same split).
        kaggle_val: ``"pool"`` (default) merges ``val/`` into the training data
            before splitting; ``"keep"`` uses ``val/`` as the validation set as given.
        resize: ``"squash"``, ``"crop"`` or ``"pad"`` (see `~keras_pneumonia.load_image`).
        on_bad_file: ``"raise"`` (one error listing every bad file) or ``"skip"``
            (leave them out, with a warning naming them).
        class_names: The class folders, in label order.
        pipeline: ``"auto"``, ``"memory"`` or ``"stream"`` (see above).
        cache: With the streaming pipeline: ``None`` (decode every epoch),
            ``"memory"``, or a folder for cache files.
        shuffle_buffer: With a cache: images shuffled together in the epochs read from it.
        classes: ``"binary"`` (the class folders) or ``"subtype"``: NORMAL, BACTERIAL, VIRAL by the
            Kaggle file names' ``bacteria`` / ``virus`` (`~keras_pneumonia.config.CLASS_SETS`); the
            split stays by patient.

    Returns:
        A `ChestXrayData`.

    Raises:
        LayoutError: The folder layout is not usable.
        BadImageError: Some files could not be decoded (``on_bad_file="raise"``); when streaming,
            `~keras_pneumonia.data.bad_image_error_from` raises it for files that fail late (``train`` does).

    Example:

    >>> import keras_pneumonia as kp
    >>> data = kp.load_chest_xray("tests/data/chest_xray", image_size=64, validation_split=0.25)
    >>> data.class_names
    ['NORMAL', 'PNEUMONIA']
    >>> images, labels = next(iter(data.train))
    >>> images.dtype.name, images.shape[1:]
    ('uint8', TensorShape([64, 64, 1]))
    """
    _check_loading_arguments(
        kaggle_val=kaggle_val,
        color_mode=color_mode,
        resize=resize,
        batch_size=batch_size,
        pipeline=pipeline,
        on_bad_file=on_bad_file,
        cache=cache,
        classes=classes,
    )
    size = as_size(image_size)
    root = find_kaggle_root(data_dir, class_names)
    splits = _split_entries(root, list(class_names), validation_split, seed, kaggle_val)
    splits, class_names = _relabel(splits, root, list(class_names), classes)
    options = _pipeline_options(
        splits,
        size=size,
        color_mode=color_mode,
        batch_size=batch_size,
        validation_split=validation_split,
        seed=seed,
        kaggle_val=kaggle_val,
        resize=resize,
        on_bad_file=on_bad_file,
        pipeline=pipeline,
        cache=cache,
        classes=classes,
    )
    datasets, files = _build_datasets(
        splits,
        root,
        streaming=options["pipeline"] == "stream",
        size=size,
        color_mode=color_mode,
        resize=resize,
        batch_size=batch_size,
        seed=seed,
        on_bad_file=on_bad_file,
        cache=cache,
        shuffle_buffer=shuffle_buffer,
    )
    return ChestXrayData(
        train=datasets["train"],
        val=datasets["val"],
        test=datasets["test"],
        class_names=class_names,
        class_weight=balanced_class_weight([e.label for e in files["train"]], len(class_names)),
        files=files,
        data_dir=root,
        options=options,
    )
