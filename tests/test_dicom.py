"""DICOM input: files written by pydicom from a real X-ray of the shared data."""

import sys

import numpy as np
import pytest

from conftest import FULLRES
from keras_pneumonia.data import load_image

pydicom = pytest.importorskip("pydicom", reason="DICOM support needs the [dicom] extra (nox -s extras)")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, RLELossless, generate_uid  # noqa: E402

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"

XRAY = FULLRES / "IM-0314-0001.jpeg"


def _grey():
    return load_image(XRAY)[..., 0]  # the real X-ray, 8-bit, full resolution


def _write(path, pixels, photometric="MONOCHROME2", bits_stored=8, syntax=ExplicitVRLittleEndian, **elements):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Modality = "CR"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.set_pixel_data(pixels, photometric_interpretation=photometric, bits_stored=bits_stored)
    for key, value in elements.items():
        setattr(ds, key, value)
    if syntax != ExplicitVRLittleEndian:
        ds.compress(syntax)
    ds.save_as(path, enforce_file_format=True)
    return path


def _close(a, b, levels=1.0):
    assert a.shape == b.shape
    assert np.abs(a.astype(int) - b.astype(int)).mean() <= levels


def test_8bit_monochrome2_reads_as_the_original(tmp_path):
    grey = _grey()
    out = load_image(_write(tmp_path / "a.dcm", grey), None)
    # No VOI in the file: the image's own min and max map to 0 and 255.
    lo, hi = int(grey.min()), int(grey.max())
    expected = np.round((grey.astype(float) - lo) / (hi - lo) * 255)
    _close(out[..., 0], expected, levels=0.5)


def test_12bit_monochrome1_with_rescale_and_window(tmp_path):
    grey = _grey().astype(np.uint16)
    stored = (4095 - grey * 16).astype(np.uint16)  # 12 bits, inverted as on film
    path = _write(
        tmp_path / "b.dcm",
        stored,
        photometric="MONOCHROME1",
        bits_stored=12,
        RescaleSlope=2,
        RescaleIntercept=-100,
        WindowCenter=4095 - 100,  # the middle of the rescaled range...
        WindowWidth=8190,  # ...and all of it
    )
    out = load_image(path, (200, 160))
    expected = load_image(XRAY, (200, 160))
    _close(out, expected, levels=1.5)


def test_16bit_with_a_narrow_window_clips(tmp_path):
    grey = _grey().astype(np.uint16) * 257  # full 16-bit range
    path = _write(tmp_path / "c.dcm", grey, bits_stored=16, WindowCenter=32768, WindowWidth=16384)
    out = load_image(path)[..., 0]
    dark, bright = grey < 24576, grey > 40960
    assert (out[dark] == 0).all() and (out[bright] == 255).all()
    middle = ~dark & ~bright
    assert 0 < out[middle].mean() < 255


def test_rle_compressed_reads_like_uncompressed(tmp_path):
    grey = _grey()
    plain = load_image(_write(tmp_path / "p.dcm", grey), 160)
    rle = load_image(_write(tmp_path / "r.dcm", grey, syntax=RLELossless), 160)
    np.testing.assert_array_equal(plain, rle)


def test_a_dicom_without_suffix_is_recognised_by_its_marker(tmp_path):
    path = _write(tmp_path / "a.dcm", _grey())
    renamed = path.rename(tmp_path / "IMG0001")
    assert load_image(renamed, 64).shape == (64, 64, 1)


def test_bad_dicom_files_get_clear_errors(tmp_path):
    path = _write(tmp_path / "a.dcm", _grey())
    data = path.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match=r"cut\.dcm: damaged DICOM"):
        load_image(tmp_path / "cut.dcm", 64)
    (tmp_path / "text.dcm").write_bytes(b"hello, not a DICOM file at all" * 10)
    with pytest.raises(ValueError, match=r"text\.dcm: not a readable DICOM file"):
        load_image(tmp_path / "text.dcm", 64)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit  # claims JPEG, no decoder for it here
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xe0 not decodable"])
    ds.save_as(tmp_path / "jpeg.dcm")
    with pytest.raises(ValueError, match=r"jpeg\.dcm: .*(JPEG Baseline|damaged)"):
        load_image(tmp_path / "jpeg.dcm", 64)


def test_without_pydicom_one_line_says_what_to_install(tmp_path, monkeypatch):
    path = _write(tmp_path / "a.dcm", _grey())
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(ValueError, match=r"a\.dcm: reading DICOM files needs pydicom: pip install"):
        load_image(path, 64)


def test_predict_cli_reads_a_folder_of_dicom_files(tmp_path, capsys):
    from keras_pneumonia.cli import main

    _write(tmp_path / "one.dcm", _grey())
    _write(tmp_path / "two.dcm", (_grey().astype(np.uint16) * 16), bits_stored=12)
    assert main(["predict", str(tmp_path), "--weights", "pneumonia_cnn_v1"]) == 0
    out = capsys.readouterr().out
    assert "one.dcm: " in out and "two.dcm: " in out
