"""Faults a hostile user meets: each gives a clear error naming the file, with nothing lost or misread."""

import csv
import gc
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import DATA
from keras_pneumonia.cli import main
from keras_pneumonia.images import load_image

XRAYS = DATA / "fullres"


def test_an_image_over_pillows_pixel_limit_is_a_clear_error_and_the_others_go_on(tmp_path, monkeypatch, capsys):
    small = tmp_path / "small.png"
    Image.open(XRAYS / "IM-0314-0001.jpeg").convert("L").resize((300, 250)).save(small)
    Image.fromarray(np.zeros((600, 600), np.uint8)).save(tmp_path / "huge.png")
    # Pillow's own decompression-bomb guard, lowered so that a real 600x600 file trips it
    # (a 180-megapixel file would take the test's memory; the code path is the same).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    with pytest.raises(ValueError, match=r"huge\.png: too many pixels to decode safely"):
        load_image(tmp_path / "huge.png", 160)
    assert main(["predict", str(small), str(tmp_path / "huge.png")]) == 1  # 1: some files failed
    out = capsys.readouterr()
    assert "small.png: NORMAL" in out.out and "huge.png: ERROR too many pixels" in out.out


@pytest.fixture
def full_disk(tmp_path):
    """A real full file system: a 64 KB tmpfs filled to the last byte (the fault suite's own)."""
    from faults import full_disk as mounted

    with mounted(tmp_path / "full") as mount:
        if mount is None:
            pytest.skip("mounting a tmpfs needs CAP_SYS_ADMIN, which this machine does not give")
        yield mount


@pytest.mark.slow
def test_a_full_disk_is_a_clear_error(full_disk, capsys, monkeypatch):
    unraisable = []  # what would print "Exception ignored in ..." after our message
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    for name in ("results.csv", "results.jsonl"):
        assert main(["predict", str(XRAYS), "--output", str(full_disk / name)]) == 2
        assert f"{full_disk / name}: " in capsys.readouterr().err  # the file named, then the reason
        gc.collect()
        assert unraisable == []  # the file was closed, not left to fail again at garbage collection
    assert main(["demo", "--output", str(full_disk / "demo")]) == 2
    assert "No space left on device" in capsys.readouterr().err


def test_outputs_that_cannot_be_written_are_clear_errors(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["predict", str(XRAYS), "--output", str(tmp_path / "afile" / "out.csv")]) == 2
    assert "a file stands where a folder is needed" in capsys.readouterr().err
    assert main(["demo", "--output", str(tmp_path / "afile" / "demo")]) == 2
    assert "Not a directory" in capsys.readouterr().err
    (tmp_path / "device.csv").symlink_to("/dev/null")
    assert main(["predict", str(XRAYS), "--output", str(tmp_path / "device.csv")]) == 2
    assert "not a regular file" in capsys.readouterr().err


def test_resuming_a_results_file_of_an_older_version_keeps_its_columns(tmp_path, capsys):
    out = tmp_path / "old.csv"
    first = sorted(XRAYS.glob("*.jpeg"))[0]
    with open(out, "w", newline="") as file:  # 0.2.0's columns: no "warning"
        writer = csv.writer(file)
        writer.writerow(["path", "probability", "decision", "threshold", "model", "version", "error"])
        writer.writerow([str(first), "0.1", "NORMAL", "0.5", "pneumonia_cnn", "0.2.0", ""])
    assert main(["predict", str(XRAYS), "--output", str(out)]) == 0
    with open(out, newline="") as file:
        rows = list(csv.reader(file))
    assert len(rows) == 4 and {len(row) for row in rows} == {7}  # one header, consistent columns


def test_other_image_formats_are_read_and_nothing_is_skipped_without_a_word(tmp_path, caplog):
    from keras_pneumonia.data import load_image_folder

    folder = tmp_path / "xrays"
    for name in ("NORMAL", "PNEUMONIA", "COVID"):
        (folder / name).mkdir(parents=True)
    source = Image.open(XRAYS / "IM-0314-0001.jpeg").convert("L").resize((300, 250))
    for suffix in (".bmp", ".tif", ".webp", ".gif", ".png"):
        source.save(folder / "NORMAL" / f"x{suffix}")
    source.transpose(Image.FLIP_LEFT_RIGHT).save(folder / "PNEUMONIA" / "y.png")  # another image
    source.save(folder / "COVID" / "z.png")
    (folder / "PNEUMONIA" / "notes.txt").write_text("not an image")
    with caplog.at_level("WARNING"):
        images, labels, entries = load_image_folder(folder, image_size=64)
    assert sorted(e.path for e in entries) == [
        "NORMAL/x.bmp",
        "NORMAL/x.gif",
        "NORMAL/x.png",
        "NORMAL/x.tif",
        "NORMAL/x.webp",
        "PNEUMONIA/y.png",
    ]
    # The same pixels whatever the format (GIF and WebP are lossy or palette: close, not equal).
    png = images[[e.path for e in entries].index("NORMAL/x.png")].astype(int)
    for name in ("NORMAL/x.bmp", "NORMAL/x.tif"):
        np.testing.assert_array_equal(images[[e.path for e in entries].index(name)], png)
    assert "ignoring folder(s) COVID" in caplog.text
    assert "skipping 1 file(s) that are not images by suffix: notes.txt" in caplog.text
