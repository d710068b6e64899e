"""DICOM input (optional: ``pip install 'keras-pneumonia[dicom]'``), read with pydicom.

`keras_pneumonia.load_image` (and so `~keras_pneumonia.load_chest_xray`, ``predict``,
``evaluate`` and Grad-CAM) hands ``.dcm``/``.dicom`` files, and files with the
``DICM`` marker, to `read_dicom`, which turns the stored pixels into the
8-bit grey levels a radiologist's viewer would show:

1. **Modality LUT**: *Rescale Slope* and *Rescale Intercept* (or a Modality LUT
   Sequence) are applied (`pydicom.pixels.apply_modality_lut`).
2. **VOI LUT**: the file's *VOI LUT Sequence*, or else its first *Window
   Center*/*Window Width*, is applied (`pydicom.pixels.apply_voi_lut`), and the
   result's range (the LUT's output bits, or the window's output range as the
   DICOM standard defines it) is mapped to 0-255. **When the file has neither**,
   the image's own minimum and maximum map to 0 and 255.
3. **MONOCHROME1** (white means low values, as on film) is inverted so that
   bone is bright, as in MONOCHROME2 and as the model was trained.

8-, 12- and 16-bit (and any *Bits Stored*) grayscale data, signed or unsigned,
and RGB are supported. Compressed transfer syntaxes are decoded by pydicom's
own decoders (RLE Lossless, Deflated) and, when installed, by pylibjpeg or
GDCM (JPEG, JPEG-LS, JPEG 2000): `SUPPORTED_WITHOUT_PLUGINS` lists the first
group; any other gets a clear error naming the syntax and what to install.
Multi-frame files are refused (one X-ray per file).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

INSTALL = "pip install 'keras-pneumonia[dicom]'"
SUFFIXES = (".dcm", ".dicom")

#: Transfer syntaxes pydicom decodes with numpy alone.
SUPPORTED_WITHOUT_PLUGINS = (
    "Implicit VR Little Endian",
    "Explicit VR Little Endian",
    "Explicit VR Big Endian",
    "Deflated Explicit VR Little Endian",
    "RLE Lossless",
)


def is_dicom(path: str | Path) -> bool:
    """Whether ``path`` looks like a DICOM file: a ``.dcm``/``.dicom`` suffix or the ``DICM`` marker."""
    path = Path(path)
    if path.suffix.lower() in SUFFIXES:
        return True
    try:
        with open(path, "rb") as file:
            header = file.read(132)
    except OSError:
        return False
    return len(header) == 132 and header[128:132] == b"DICM"


def _output_range(ds) -> tuple[float, float] | None:
    """The range of `apply_voi_lut`'s output for this dataset, or None without a VOI."""
    if "VOILUTSequence" in ds:
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    # The same range pydicom's apply_windowing maps the window to (PS3.3 C.11.2.1.2).
    bits = int(ds.BitsStored)
    if ds.get("ModalityLUTSequence"):
        low, high = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(ds.PixelRepresentation) == 0:
        low, high = 0.0, float(2**bits - 1)
    else:
        low, high = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    if ds.get("RescaleSlope") is not None and ds.get("RescaleIntercept") is not None:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        low, high = low * slope + intercept, high * slope + intercept
    return low, high


def read_dicom(path: str | Path) -> np.ndarray:
    """Reads one DICOM X-ray as ``uint8``: ``(h, w)`` grayscale or ``(h, w, 3)`` RGB.

    Args:
        path: The file.

    Returns:
        The displayed grey levels (see the module docs for the exact rules).

    Raises:
        ValueError: pydicom missing, not a DICOM file, no pixel data, a
            compression no installed decoder handles, multi-frame, or an
            unsupported photometric interpretation; the message names the file.
    """
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:
        raise ValueError(f"{path}: reading DICOM files needs pydicom: {INSTALL}") from None

    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as error:
        raise ValueError(f"{path}: not a readable DICOM file ({error})") from None
    except (OSError, EOFError, ValueError, TypeError, KeyError) as error:
        raise ValueError(f"{path}: damaged DICOM file ({type(error).__name__}: {error})") from None
    if "PixelData" not in ds:
        raise ValueError(f"{path}: DICOM file without pixel data (an X-ray needs (7FE0,0010) Pixel Data)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ValueError(f"{path}: multi-frame DICOM ({frames} frames); one X-ray per file is expected")
    syntax = ds.file_meta.get("TransferSyntaxUID") if "file_meta" in dir(ds) else None
    try:
        pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError):
        name = getattr(syntax, "name", str(syntax))
        raise ValueError(
            f"{path}: pixel data compressed as {name}, which no installed decoder reads "
            f"(pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg, or python-gdcm); "
            f"without plug-ins pydicom reads: {', '.join(SUPPORTED_WITHOUT_PLUGINS)}"
        ) from None
    except (ValueError, AttributeError, KeyError, EOFError) as error:
        raise ValueError(f"{path}: damaged DICOM pixel data ({error})") from None

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "RGB":
        return np.asarray(pixels, dtype=np.uint8) if pixels.dtype == np.uint8 else _stretch(pixels)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"{path}: photometric interpretation {photometric} is not supported (MONOCHROME1/2 or RGB)")

    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    output_range = _output_range(ds)
    if output_range is not None:
        values = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
        low, high = output_range
    else:
        low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    grey = np.clip(np.round(scaled * 255.0), 0, 255).astype(np.uint8)
    if photometric == "MONOCHROME1":
        grey = 255 - grey
    return grey


def _stretch(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    low, high = values.min(), values.max()
    return (
        np.zeros(values.shape, np.uint8)
        if high <= low
        else np.round((values - low) / (high - low) * 255).astype(np.uint8)
    )
