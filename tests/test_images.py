"""Decoding one X-ray: 16-bit files are scaled by their real bit depth, float files by a documented range."""

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

import keras_pneumonia as kp
from conftest import DATA
from keras_pneumonia.images import load_image, png_significant_bits

XRAY = DATA / "chest_xray" / "train" / "NORMAL"


@pytest.fixture(scope="module")
def normal_xray():
    path = sorted(XRAY.glob("*.jpeg"))[0]
    return np.asarray(Image.open(path).convert("L"))


def _png16(path, values, sbit=None):
    info = PngInfo()
    if sbit is not None:
        info.add(b"sBIT", bytes([sbit]))
    Image.fromarray(values.astype(np.uint16)).save(path, pnginfo=info)
    return path


@pytest.mark.parametrize(("bits", "sbit"), [(12, 12), (12, None), (10, 10), (10, None), (16, None)])
def test_16bit_pngs_are_scaled_by_their_bit_depth(bits, sbit, normal_xray, tmp_path):
    """A NORMAL X-ray exported as 16-bit with 10/12/16-bit data reads as the 8-bit original."""
    values = np.round(normal_xray.astype(np.float64) / 255 * (2**bits - 1))
    path = _png16(tmp_path / "x.png", values, sbit)
    assert png_significant_bits(path) == sbit
    eight = load_image(tmp_path / "x.png", 160)
    reference = Image.fromarray(normal_xray)
    reference.save(tmp_path / "ref.png")
    want = load_image(tmp_path / "ref.png", 160)
    assert np.abs(eight.astype(int) - want.astype(int)).max() <= 1
    model = kp.PneumoniaCNN.from_preset("pneumonia_cnn_v2", compile=False)
    p = model.predict(np.stack([eight, want]).astype("float32"), verbose=0)[:, -1]
    assert abs(p[0] - p[1]) < 0.01, p


def test_an_sbit_chunk_beats_the_observed_maximum(normal_xray, tmp_path):
    # 12-bit data that never reaches 1024 (a dark exposure): without sBIT it reads as
    # 10-bit (documented); with sBIT 12 it keeps its real, darker, grey levels.
    values = np.round(normal_xray.astype(np.float64) / 255 * 1000)
    dark = load_image(_png16(tmp_path / "sbit.png", values, 12), 64)
    bright = load_image(_png16(tmp_path / "nosbit.png", values, None), 64)
    assert dark.max() <= round(1000 / 4095 * 255) + 1 < bright.max()


def test_float_images_in_a_documented_range_or_refused(normal_xray, tmp_path):
    unit = normal_xray.astype(np.float32) / 255.0
    Image.fromarray(unit, mode="F").save(tmp_path / "unit.tif")
    Image.fromarray(unit * 255.0, mode="F").save(tmp_path / "byte.tif")
    Image.fromarray(unit * 4000.0 - 50.0, mode="F").save(tmp_path / "raw.tif")
    want = load_image(_png16(tmp_path / "ref.png", normal_xray.astype(np.float64), 8), 64)
    for name in ("unit.tif", "byte.tif"):
        assert np.abs(load_image(tmp_path / name, 64).astype(int) - want.astype(int)).max() <= 1, name
    with pytest.raises(ValueError, match=r"raw\.tif: float pixel values from -50 to .*expected 0-1 or 0-255"):
        load_image(tmp_path / "raw.tif", 64)


def test_png_significant_bits_of_other_files(tmp_path):
    jpeg = sorted(XRAY.glob("*.jpeg"))[0]
    assert png_significant_bits(jpeg) is None
    Image.new("L", (4, 4)).save(tmp_path / "plain.png")
    assert png_significant_bits(tmp_path / "plain.png") is None


@pytest.mark.parametrize("suffix", [".tiff", ".gif"])
def test_only_the_first_page_of_a_multi_page_file_is_read_and_that_is_said(tmp_path, caplog, suffix):
    import logging

    from PIL import Image

    pages = [Image.fromarray(np.full((40, 40), value, dtype=np.uint8)) for value in (30, 200, 120)]
    path = tmp_path / f"stack{suffix}"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    with caplog.at_level(logging.WARNING):
        image = load_image(path, (16, 16))
    assert abs(int(image.mean()) - 30) <= 2
    assert "holds 3 pages or frames; only the first is read" in caplog.text and str(path) in caplog.text
