import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import keras_pneumonia as kp
from conftest import FULLRES, KAGGLE
from keras_pneumonia.data import (
    FileEntry,
    balanced_class_weight,
    find_kaggle_root,
    load_image,
    patient_id,
    split_by_patient,
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("person123_bacteria_456.jpeg", "person123"),
        ("person1_virus_6.jpeg", "person1"),
        ("person447_virus_921_1.jpeg", "person447"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("IM-0629-0001-0002.jpeg", "IM-0629"),
        ("NORMAL2-IM-0381-0001.jpeg", "NORMAL2-IM-0381"),
        ("scan.png", None),
    ],
)
def test_patient_id(name, expected):
    assert patient_id(name) == expected


def _synthetic_entries():
    entries = []
    for p in range(60):  # 60 normal patients with 1-3 images
        entries += [FileEntry(f"train/NORMAL/IM-{p:04d}-{i:04d}.jpeg", 0, f"IM-{p:04d}") for i in range(1 + p % 3)]
    for p in range(150):  # 150 pneumonia patients with 1-4 images
        entries += [
            FileEntry(f"train/PNEUMONIA/person{p}_bacteria_{i}.jpeg", 1, f"person{p}") for i in range(1 + p % 4)
        ]
    return entries


def test_split_is_patient_disjoint_stratified_and_deterministic():
    entries = _synthetic_entries()
    train, val = split_by_patient(entries, 0.2, seed=3)
    assert not {e.patient for e in train} & {e.patient for e in val}
    assert len(train) + len(val) == len(entries)
    for label in (0, 1):
        share = sum(e.label == label for e in val) / sum(e.label == label for e in entries)
        assert share == pytest.approx(0.2, abs=0.03)
    assert split_by_patient(entries, 0.2, seed=3) == (train, val)
    assert split_by_patient(entries, 0.2, seed=4) != (train, val)


def test_load_chest_xray_on_real_images(kaggle_dir):
    data = kp.load_chest_xray(kaggle_dir, image_size=32, batch_size=8, validation_split=0.25, seed=0)
    assert data.class_names == ["NORMAL", "PNEUMONIA"]
    counts = data.counts
    assert sum(counts["train"].values()) + sum(counts["val"].values()) == 32
    assert counts["test"] == {"NORMAL": 4, "PNEUMONIA": 4}
    patients = {s: {e.patient for e in data.files[s]} for s in ("train", "val")}
    assert not patients["train"] & patients["val"]
    assert {"IM-0629", "person23"} <= patients["train"] | patients["val"]
    images, labels = next(iter(data.train))
    assert images.dtype.name == "uint8" and tuple(images.shape[1:]) == (32, 32, 1)
    assert labels.dtype.name == "int32"
    val_labels = np.concatenate([y.numpy() for _, y in data.val])
    np.testing.assert_array_equal(val_labels, data.labels("val"))
    n0, n1 = counts["train"]["NORMAL"], counts["train"]["PNEUMONIA"]
    assert data.class_weight[0] == pytest.approx((n0 + n1) / (2 * n0))
    assert data.class_weight[1] == pytest.approx((n0 + n1) / (2 * n1))


def test_same_seed_same_manifest_byte_for_byte(kaggle_dir):
    a = kp.load_chest_xray(kaggle_dir, image_size=8, validation_split=0.25, seed=7)
    b = kp.load_chest_xray(kaggle_dir, image_size=8, validation_split=0.25, seed=7)
    assert json.dumps(a.manifest()) == json.dumps(b.manifest())


def test_manifest_round_trip(kaggle_dir, tmp_path):
    data = kp.load_chest_xray(kaggle_dir, image_size=8, validation_split=0.25)
    path = tmp_path / "split.json"
    data.save_manifest(path)
    manifest = json.loads(path.read_text())
    assert set(manifest) >= {"train", "val", "test", "options", "class_names"}
    assert manifest["options"]["seed"] == 1337
    for split in ("train", "val", "test"):
        restored = [FileEntry(**e) for e in manifest[split]]
        assert restored == data.files[split]
        assert all((kaggle_dir / e.path).is_file() for e in restored)


def test_balanced_class_weight_values():
    assert balanced_class_weight([0, 1, 1, 1], 2) == {0: 2.0, 1: pytest.approx(2 / 3)}


def test_extracted_zip_layout_with_macosx_junk(tmp_path):
    root = tmp_path / "download" / "chest_xray" / "chest_xray"
    shutil.copytree(KAGGLE, root)
    (tmp_path / "download" / "__MACOSX" / "chest_xray").mkdir(parents=True)
    (root / "train" / "NORMAL" / ".DS_Store").write_bytes(b"\0junk")
    (root / "train" / "NORMAL" / "._IM-0115-0001.jpeg").write_bytes(b"\0junk")
    assert find_kaggle_root(tmp_path / "download") == root
    data = kp.load_chest_xray(tmp_path / "download", image_size=8, validation_split=0.25)
    assert sum(sum(c.values()) for s, c in data.counts.items() if s != "test") == 32


def test_evaluation_folder_is_the_folder_or_a_roots_test(tmp_path):
    from keras_pneumonia.data import LayoutError, evaluation_folder

    assert evaluation_folder(KAGGLE / "test") == KAGGLE / "test"
    assert evaluation_folder(KAGGLE) == KAGGLE / "test"
    shutil.copytree(KAGGLE / "train", tmp_path / "root" / "train")
    with pytest.raises(LayoutError, match="has no test/ folder with NORMAL/ and PNEUMONIA/"):
        evaluation_folder(tmp_path / "root")
    with pytest.raises(LayoutError, match="must hold NORMAL/ and PNEUMONIA/ folders"):
        evaluation_folder(tmp_path)


def test_root_with_only_train(tmp_path):
    shutil.copytree(KAGGLE / "train", tmp_path / "train")
    data = kp.load_chest_xray(tmp_path, image_size=8, validation_split=0.25)
    assert data.test is None
    assert "test" not in data.files


def test_kaggle_val_folder_pooled_by_default_or_kept(kaggle_dir):
    val = kaggle_dir / "val"
    for name in ("NORMAL", "PNEUMONIA"):
        (val / name).mkdir(parents=True)
    shutil.move(kaggle_dir / "train/NORMAL/IM-0115-0001.jpeg", val / "NORMAL")
    shutil.move(kaggle_dir / "train/PNEUMONIA/person1_bacteria_1.jpeg", val / "PNEUMONIA")
    pooled = kp.load_chest_xray(kaggle_dir, image_size=8, validation_split=0.25)
    all_paths = {e.path for s in ("train", "val") for e in pooled.files[s]}
    assert "val/NORMAL/IM-0115-0001.jpeg" in all_paths
    kept = kp.load_chest_xray(kaggle_dir, image_size=8, kaggle_val="keep")
    assert [e.path for e in kept.files["val"]] == [
        "val/NORMAL/IM-0115-0001.jpeg",
        "val/PNEUMONIA/person1_bacteria_1.jpeg",
    ]


def test_unusable_layout_error_shows_what_was_found(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(kp.LayoutError, match=r"expected train/\{NORMAL/PNEUMONIA\}.*images/"):
        kp.load_chest_xray(tmp_path)


def test_empty_class_folder_is_a_clear_error(kaggle_dir):
    for f in (kaggle_dir / "train" / "NORMAL").iterdir():
        f.unlink()
    with pytest.raises(kp.LayoutError, match="NORMAL holds no images"):
        kp.load_chest_xray(kaggle_dir, image_size=8)


def _break_files(folder: Path) -> dict[str, str]:
    (folder / "empty.jpeg").write_bytes(b"")
    good = (folder / "IM-0115-0001.jpeg").read_bytes()
    (folder / "IM-9999-0001.jpeg").write_bytes(good[: len(good) // 2])
    (folder / "notes.png").write_text("this is not an image")
    return {"empty.jpeg": "empty file", "IM-9999-0001.jpeg": "truncated", "notes.png": "not an image"}


def test_bad_files_are_all_listed_before_training(kaggle_dir):
    expected = _break_files(kaggle_dir / "train" / "NORMAL")
    with pytest.raises(kp.BadImageError) as info:
        kp.load_chest_xray(kaggle_dir, image_size=16, validation_split=0.25)
    message = str(info.value)
    assert len(info.value.problems) == 3
    for name, why in expected.items():
        line = next(line for line in message.splitlines() if name in line)
        assert why in line


def test_bad_files_can_be_skipped_with_a_warning(kaggle_dir, caplog):
    _break_files(kaggle_dir / "train" / "NORMAL")
    with caplog.at_level(logging.WARNING):
        data = kp.load_chest_xray(kaggle_dir, image_size=16, validation_split=0.25, on_bad_file="skip")
    assert "empty.jpeg" in caplog.text and "IM-9999-0001.jpeg" in caplog.text
    kept = {Path(e.path).name for s in ("train", "val") for e in data.files[s]}
    assert "empty.jpeg" not in kept and len(kept) == 32


def test_full_resolution_originals_gray_and_rgb():
    for path in sorted(FULLRES.glob("*.jpeg")):
        with Image.open(path) as pil:
            mode = pil.mode
        gray = load_image(path, (64, 64), "grayscale")
        rgb = load_image(path, (64, 64), "rgb")
        assert gray.shape == (64, 64, 1) and rgb.shape == (64, 64, 3)
        assert gray.dtype == np.uint8 and 20 < gray.mean() < 235, (path, mode)


def test_image_modes(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(40, 50), dtype=np.uint8)
    Image.fromarray(base).save(tmp_path / "gray.png")
    Image.fromarray(np.stack([base] * 3, -1)).save(tmp_path / "rgb.jpeg", quality=95)
    rgba = np.dstack([np.stack([base] * 3, -1), np.full_like(base, 255)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(base).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(base.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")
    for name in ("gray.png", "rgb.jpeg", "rgba.png", "palette.png", "sixteen.png"):
        out = load_image(tmp_path / name, None, "grayscale")
        assert out.shape == (40, 50, 1), name
        assert np.abs(out[..., 0].astype(int) - base).mean() < 6, name


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((20, 40), np.uint8)
    array[:, :20] = 255  # left half white, 40 wide, 20 high
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(tmp_path / "rotated.jpeg", exif=exif, quality=95)
    out = load_image(tmp_path / "rotated.jpeg", None, "grayscale")[..., 0]
    assert out.shape == (40, 20)
    assert out[:20].mean() > 200 and out[20:].mean() < 50  # white half now on top


@pytest.mark.parametrize(("mode", "corner"), [("squash", 255), ("crop", 255), ("pad", 0)])
def test_resize_modes(tmp_path, mode, corner):
    Image.fromarray(np.full((20, 60), 255, np.uint8)).save(tmp_path / "wide.png")
    out = load_image(tmp_path / "wide.png", (30, 30), "grayscale", resize=mode)
    assert out.shape == (30, 30, 1)
    assert out[0, 0, 0] == corner


def test_load_image_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="missing.jpeg: no such file"):
        load_image(tmp_path / "missing.jpeg")
    (tmp_path / "text.jpeg").write_text("hello")
    with pytest.raises(ValueError, match="text.jpeg: not an image"):
        load_image(tmp_path / "text.jpeg")


@pytest.mark.slow
def test_split_names_files_cut_short_after_their_header(kaggle_dir, tmp_path):
    """`split` reads no pixels, yet a JPEG or PNG whose end is missing is named, and no manifest is written."""
    import subprocess
    import sys

    folder = kaggle_dir / "train" / "NORMAL"
    good = (folder / "IM-0115-0001.jpeg").read_bytes()
    (folder / "IM-9999-0001.jpeg").write_bytes(good[: len(good) * 2 // 3])
    # Bytes after the end marker are legal (some writers pad): not "cut short".
    (folder / "IM-9998-0001.jpeg").write_bytes(good + b"\0" * 100)
    with Image.open(folder / "IM-0115-0001.jpeg") as image:
        image.save(folder / "IM-9997-0001.png")
    png = (folder / "IM-9997-0001.png").read_bytes()
    (folder / "IM-9997-0001.png").write_bytes(png[: len(png) - 20])
    manifest = tmp_path / "split.json"
    done = subprocess.run(
        [sys.executable, "-m", "keras_pneumonia", "split", str(kaggle_dir), "--manifest", str(manifest)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert "IM-9999-0001.jpeg" in done.stderr and "IM-9997-0001.png" in done.stderr
    assert "cut short" in done.stderr and "IM-9998-0001.jpeg" not in done.stderr
    assert "Traceback" not in done.stderr and not manifest.exists()


def test_sub_folders_of_a_class_are_read_and_oddities_are_named(kaggle_dir, caplog):
    """Images in sub-folders count (as `predict` reads them); links to nothing are named, not skipped silently."""
    normal = kaggle_dir / "train" / "NORMAL"
    moved = sorted(normal.glob("*.jpeg"))
    (normal / "batch2").mkdir()
    for path in moved:
        path.rename(normal / "batch2" / path.name)
    (normal / "gone.jpeg").symlink_to(normal / "nowhere.jpeg")
    with caplog.at_level(logging.WARNING):
        data = kp.load_chest_xray(kaggle_dir, image_size=16, validation_split=0.25)
    paths = [e.path for s in ("train", "val") for e in data.files[s] if e.label == 0]
    assert len(paths) == len(moved) and all("/batch2/" in p for p in paths)
    assert "gone.jpeg" in caplog.text and "link(s) to nothing" in caplog.text


def test_the_same_file_under_both_classes_is_a_clear_error(kaggle_dir):
    normal = kaggle_dir / "train" / "NORMAL"
    shutil.copy(next(normal.glob("*.jpeg")), kaggle_dir / "train" / "PNEUMONIA")
    with pytest.raises(kp.LayoutError, match="byte for byte, under more than one class"):
        kp.load_chest_xray(kaggle_dir, image_size=16)


def test_an_empty_class_error_lists_every_suffix_read(kaggle_dir):
    for f in (kaggle_dir / "train" / "NORMAL").iterdir():
        f.unlink()
    with pytest.raises(kp.LayoutError, match=r"\.tiff.*\.dcm"):
        kp.load_chest_xray(kaggle_dir, image_size=8)


def test_equal_file_names_in_two_classes_are_fine(kaggle_dir):
    """Numbered files (NORMAL/0001.jpeg, PNEUMONIA/0001.jpeg) are different images, not a conflict."""
    for name in ("NORMAL", "PNEUMONIA"):
        first = sorted((kaggle_dir / "train" / name).glob("*.jpeg"))[0]
        first.rename(first.with_name("0001.jpeg"))
    kp.load_chest_xray(kaggle_dir, image_size=16)
