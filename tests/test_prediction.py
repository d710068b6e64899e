"""Folder-scale prediction: finding files, batching, streaming, results files and resuming."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import keras_pneumonia as kp
from conftest import KAGGLE, TINY
from keras_pneumonia.cli import main
from keras_pneumonia.prediction import ResultsFile, find_images, predict_files


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    kp.PneumoniaCNN(**TINY).save(path)
    return path


@pytest.fixture
def folder(tmp_path):
    """The 40 test images in nested folders, plus a broken file, a text file and a hidden folder."""
    root = tmp_path / "xrays"
    shutil.copytree(KAGGLE, root)
    (root / "train" / "NORMAL" / "broken.jpeg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (root / "notes.txt").write_text("not an image")
    (root / ".cache").mkdir()
    shutil.copy(next((KAGGLE / "test" / "NORMAL").iterdir()), root / ".cache" / "hidden.jpeg")
    return root


def test_find_images_recurses_filters_and_skips_hidden(folder):
    everything = find_images([folder])
    assert len(everything) == 41 and all(p.suffix == ".jpeg" for p in everything)
    assert not any(".cache" in p.parts for p in everything)
    people = find_images([folder / "test"], pattern="person*")
    assert people and all(p.name.startswith("person") for p in people)
    one = everything[0]
    assert find_images([one, folder / "test", one])[0] == one
    assert len(find_images([folder / "test"], recursive=False)) == 0
    with pytest.raises(ValueError, match="no such file or folder"):
        find_images([folder / "missing"])


def test_batches_give_the_same_answers_as_one_by_one(folder, model_file):
    model = kp.PneumoniaCNN.from_pretrained(model_file)
    paths = find_images([folder])
    batched = list(predict_files(model, paths, batch_size=16))
    single = list(predict_files(model, paths, batch_size=1, workers=1))
    assert [r["path"] for r in batched] == [str(p) for p in paths]
    bad = [r for r in batched if r["error"]]
    assert len(bad) == 1 and bad[0]["path"].endswith("broken.jpeg") and bad[0]["probability"] is None
    good = [(a["probability"], b["probability"]) for a, b in zip(batched, single) if not a["error"]]
    np.testing.assert_allclose(*zip(*good), atol=1e-6)
    assert {r["decision"] for r in batched if not r["error"]} <= {"NORMAL", "PNEUMONIA"}


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_cli_writes_a_results_file_and_resumes_an_interrupted_run(folder, model_file, tmp_path, capsys, suffix):
    out = tmp_path / f"results{suffix}"
    argv = ["predict", str(folder), "--weights", str(model_file), "--output", str(out), "--batch-size", "8"]
    assert main(argv) == 1  # the broken file
    captured = capsys.readouterr()
    assert "broken.jpeg" in captured.err and "1 of 41 file(s) could not be read" in captured.err
    assert "\r" not in captured.err  # no progress bar when stderr is not a terminal
    rows = ResultsFile.read(out)
    assert len(rows) == 41 and {"path", "probability", "decision", "threshold", "model", "version", "error"} <= set(
        rows[0]
    )
    # An interruption: the file ends after 10 rows and half of the 11th.
    lines = out.read_text().splitlines(keepends=True)
    header = 1 if suffix == ".csv" else 0
    out.write_text("".join(lines[: header + 10]) + lines[header + 10][:7])
    assert main(argv) == 1
    assert "10 image(s) already done" in capsys.readouterr().err
    resumed = ResultsFile.read(out)
    assert [r["path"] for r in resumed] == [r["path"] for r in rows]
    for a, b in zip(resumed, rows):
        assert a["decision"] == b["decision"] and a["error"] == b["error"]
    # Run again: nothing left to do, nothing duplicated; the job still had a bad file.
    assert main(argv) == 1
    captured = capsys.readouterr().err
    assert "41 image(s) already done" in captured and "broken.jpeg" in captured
    assert len(ResultsFile.read(out)) == 41


def test_cli_streams_lines_and_json(folder, model_file, capsys):
    assert main(["predict", str(folder / "test"), "--weights", str(model_file)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 8 and all("P(pneumonia)=" in line for line in lines)
    assert main(["predict", str(folder / "test"), "--weights", str(model_file), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 8


def test_cli_errors(folder, model_file, tmp_path, capsys):
    assert main(["predict", str(folder), "--glob", "*.dcm", "--weights", str(model_file)]) == 2
    assert "no images" in capsys.readouterr().err
    assert main(["predict", str(folder / "test"), "--weights", str(model_file), "-o", str(tmp_path / "r.xlsx")]) == 2
    assert ".csv or .jsonl" in capsys.readouterr().err
    assert main(["predict", str(folder / "nope"), "--weights", str(model_file)]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_gradcam_overlays_of_files_with_one_name_do_not_overwrite_each_other(folder, model_file, tmp_path):
    same = tmp_path / "same"
    for sub in ("a", "b", "c"):
        (same / sub).mkdir(parents=True)
        shutil.copy(next((folder / "test" / "NORMAL").iterdir()), same / sub / "xray.jpeg")
    cams = tmp_path / "cams"
    assert main(["predict", str(same), "--weights", str(model_file), "--gradcam", str(cams)]) == 0
    assert sorted(p.name for p in cams.iterdir()) == ["b_xray_gradcam.png", "c_xray_gradcam.png", "xray_gradcam.png"]


def test_with_gradcam_adds_an_overlay_to_each_readable_file(folder, model_file, tmp_path):
    from keras_pneumonia.models import load_model
    from keras_pneumonia.prediction import with_gradcam

    model = load_model(model_file, compile=False)
    good = next((folder / "test" / "NORMAL").iterdir())
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "cams").mkdir()
    results = list(with_gradcam(model, predict_files(model, [good, tmp_path / "notes.png"]), tmp_path / "cams"))
    assert results[0]["gradcam"] == str(tmp_path / "cams" / f"{good.stem}_gradcam.png")
    assert Path(results[0]["gradcam"]).stat().st_size > 0
    assert results[1]["error"] and "gradcam" not in results[1]


def _predict_process(*args):
    import os
    import subprocess
    import sys

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "keras_pneumonia", "predict", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_a_results_file_another_run_is_writing_is_refused(folder, model_file, tmp_path):
    out = tmp_path / "r.csv"
    with ResultsFile(out):  # another run holds it open
        done = _predict_process(folder / "test", "--weights", model_file, "--output", out)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"{out} is being written by another run" in done.stderr and "Traceback" not in done.stderr
    assert out.read_text().count("\n") == 1  # the header only: no row written twice
    assert _predict_process(folder / "test", "--weights", model_file, "--output", out).returncode == 0
    assert len(ResultsFile.read(out)) == 8


@pytest.mark.slow
def test_json_with_an_output_file_prints_a_json_summary(folder, model_file, tmp_path):
    out = tmp_path / "r.jsonl"
    done = _predict_process(folder / "test", "--weights", model_file, "--output", out, "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == {"output": str(out), "images": 8, "written": 8, "failed": 0}


@pytest.mark.slow
def test_a_line_break_in_a_file_name_keeps_one_line_per_result(folder, model_file, tmp_path):
    odd = tmp_path / "odd"
    odd.mkdir()
    shutil.copy(next((folder / "test" / "NORMAL").iterdir()), odd / "two\nlines.jpeg")
    done = _predict_process(odd, "--weights", model_file)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and "two\\nlines.jpeg" in lines[0]


@pytest.mark.parametrize("when", ["loading", "predicting"])
@pytest.mark.slow
def test_sigterm_is_reported_at_any_moment(folder, model_file, tmp_path, when):
    import os
    import signal
    import subprocess
    import sys
    import time

    many = tmp_path / "many"
    many.mkdir()
    source = next((folder / "test" / "NORMAL").iterdir())
    for i in range(3000):  # hard links: a long run that costs no disk
        os.link(source, many / f"IM-{i:04d}-0001.jpeg")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "keras_pneumonia", "predict", str(many), "--weights", str(model_file)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if when == "loading":
        time.sleep(0.5)  # TensorFlow takes seconds to import
    else:
        assert "P(pneumonia)" in proc.stdout.readline()  # a first result is out
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "terminated (SIGTERM)" in err
