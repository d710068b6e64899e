"""The fault-injection suite: drives the real command line through hostile inputs and faults.

    python tests/faults.py [--markdown table.md]        (or: nox -s faults)

Each case builds its inputs from real X-rays (the committed test images), runs
``keras-pneumonia`` in a fresh process, and checks the exit code and a piece of the
output. It prints a table (case, expected, observed) and exits 1 if any case differs.
The cases are those of the reliability issue (16-bit data, blank/noise/tiny/inverted
images, interrupted and concurrent runs, full disks, unwritable outputs, silent
skips, misleading weight errors) and a few more.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
XRAY = DATA / "fullres" / "IM-0314-0001.jpeg"  # a NORMAL X-ray
CLI = [sys.executable, "-m", "keras_pneumonia"]
ENV = {**os.environ, "KERAS_PNEUMONIA_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}


def run(args, timeout=300):
    done = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=timeout)
    return done.returncode, done.stdout + done.stderr


def xray() -> np.ndarray:
    return np.asarray(Image.open(XRAY).convert("L"))


def png16(path: Path, bits: int) -> Path:
    Image.fromarray(np.round(xray() / 255 * (2**bits - 1)).astype(np.uint16)).save(path)
    return path


def traceback_free(output: str) -> bool:
    return "Traceback (most recent call last)" not in output


def observed(code: int, output: str, expect_text: str, work: Path) -> str:
    """The exit code and the output line that shows the outcome (the one holding the expected text)."""
    lines = [line.replace(str(work) + "/", "") for line in output.strip().splitlines()]
    line = next((line for line in lines if expect_text in line), lines[-1] if lines else "")
    return f"exit {code}: {line[-120:]}"


def cases(work: Path):
    """(name, expected, check) with check() -> (passed, observed)."""

    def predict_case(name, build, expect_code, expect_text, expected):
        def check():
            path = build(work / name.replace(" ", "_"))
            code, out = run(["predict", path])
            ok = code == expect_code and expect_text in out and traceback_free(out)
            return ok, observed(code, out, expect_text, work)

        return name, expected, check

    def save(array, suffix=".png", **kwargs):
        def build(stem):
            path = stem.with_suffix(suffix)
            Image.fromarray(array, **kwargs).save(path)
            return path

        return build

    rng = np.random.default_rng(0)
    yield predict_case("blank image", save(np.zeros((400, 400), np.uint8)), 0, "WARNING", "answer + warning")
    yield predict_case(
        "uniform noise", save(rng.integers(0, 256, (400, 400)).astype(np.uint8)), 0, "noise-like", "answer + warning"
    )
    yield predict_case("1x1 image", save(np.full((1, 1), 90, np.uint8)), 0, "tiny image", "answer + warning")
    yield predict_case("inverted X-ray", save(255 - xray()), 0, "inverted polarity", "answer + warning")
    yield predict_case(
        "overexposed X-ray",
        save(np.clip(xray().astype(int) + 150, 0, 255).astype(np.uint8)),
        0,
        "exposure out of range",
        "answer + warning",
    )
    yield predict_case(
        "12-bit data in a 16-bit PNG",
        lambda stem: png16(stem.with_suffix(".png"), 12),
        0,
        "NORMAL",
        "NORMAL, as the 8-bit file",
    )
    yield predict_case(
        "10-bit data in a 16-bit PNG",
        lambda stem: png16(stem.with_suffix(".png"), 10),
        0,
        "NORMAL",
        "NORMAL, as the 8-bit file",
    )
    yield predict_case(
        "float TIFF in 0-1",
        save((xray() / 255).astype(np.float32), ".tif", mode="F"),
        0,
        "NORMAL",
        "NORMAL, as the 8-bit file",
    )
    yield predict_case(
        "float TIFF out of range",
        save((xray() * 40.0 - 9.0).astype(np.float32), ".tif", mode="F"),
        1,
        "float pixel values",
        "clear error, exit 1",
    )
    yield predict_case("BMP, WebP, GIF X-rays", lambda stem: _formats(stem), 0, "x.webp: NORMAL", "all read")

    def empty(stem):
        path = stem.with_suffix(".png")
        path.write_bytes(b"")
        return path

    def truncated(stem):
        path = stem.with_suffix(".jpeg")
        path.write_bytes(XRAY.read_bytes()[:3000])
        return path

    def text(stem):
        path = stem.with_suffix(".png")
        path.write_text("this is not an image")
        return path

    def huge(stem):
        # 13,500 x 13,500 = 182 megapixels, over Pillow's decompression-bomb limit; zeros
        # compress to a small file, and Pillow refuses it from the header alone.
        path = stem.with_suffix(".png")
        Image.new("L", (13_500, 13_500)).save(path)
        return path

    yield predict_case("empty file", empty, 1, "empty file", "clear error, exit 1")
    yield predict_case("truncated JPEG", truncated, 1, "ERROR", "clear error, exit 1")
    yield predict_case("text file named .png", text, 1, "not an image", "clear error, exit 1")
    yield predict_case("182-megapixel image", huge, 1, "too many pixels", "clear error, exit 1")

    def simple(name, args, expect_code, expect_text, expected, setup=None):
        def check():
            if setup:
                setup()
            code, out = run(args)
            ok = code == expect_code and expect_text in out and traceback_free(out)
            return ok, observed(code, out, expect_text, work)

        return name, expected, check

    (work / "afile").write_text("x")
    (work / "device.csv").symlink_to("/dev/null")
    yield simple("missing input file", ["predict", work / "nothere.png"], 2, "nothere.png", "clear error")
    yield simple(
        "output under a file",
        ["predict", XRAY, "--output", work / "afile" / "r.csv"],
        2,
        "a file stands where a folder is needed",
        "clear error",
    )
    yield simple(
        "device as results file",
        ["predict", XRAY, "--output", work / "device.csv"],
        2,
        "not a regular file",
        "clear error",
    )
    yield simple(
        "demo into a file's folder", ["demo", "--output", work / "afile" / "demo"], 2, "Not a directory", "clear error"
    )
    (work / "bad.keras").write_text("not a zip")
    yield simple(
        "weights: not a .keras file",
        ["demo", "--weights", work / "bad.keras"],
        2,
        "is not a .keras file",
        "clear error",
    )
    yield simple(
        "weights: missing path", ["demo", "--weights", work / "none.keras"], 2, "No weights file", "clear error"
    )
    yield simple(
        "weights: unsupported handle", ["demo", "--weights", "s3://x/y.keras"], 2, "Unsupported handle", "clear error"
    )
    yield simple(
        "weights: malformed kaggle:// handle",
        ["demo", "--weights", "kaggle://x/y"],
        2,
        "kaggle://x/y",  # "is not a Kaggle model handle" or, without [hub], "needs the kagglehub package"
        "clear error naming the handle",
    )
    yield simple(
        "data: kaggle:// handle offline, never fetched",
        ["split", "kaggle://someone/chest-xrays", "--manifest", work / "kaggle.json"],
        2,
        "kaggle://someone/chest-xrays",  # "not in the kagglehub cache ... offline mode is on", or "needs kagglehub"
        "clear error naming the handle, no network wait",
    )
    yield simple(
        "weights: hf:// handle offline, never fetched",
        ["demo", "--weights", "hf://someone/pneumonia"],
        2,
        "hf://someone/pneumonia",  # "not in the Hugging Face cache" or, without [hub], "needs huggingface-hub"
        "clear error naming the handle, no network wait",
    )
    yield simple(
        "weights: URL while offline",
        ["demo", "--weights", "https://example.org/m.keras"],
        2,
        "Offline mode",
        "clear error, no network wait",
    )

    def covid_folder():
        folder = work / "covid"
        for width, name in zip((300, 310, 320), ("NORMAL", "PNEUMONIA", "COVID")):  # three different files
            (folder / name).mkdir(parents=True, exist_ok=True)
            Image.open(XRAY).convert("L").resize((width, 250)).save(folder / name / "x.png")
        return folder

    yield simple(
        "extra class folder COVID/",
        ["evaluate", work / "covid"],
        0,
        "ignoring folder(s) COVID",
        "named in a warning",
        setup=covid_folder,
    )

    def same_stems():
        for sub in ("a", "b"):
            (work / "stems" / sub).mkdir(parents=True, exist_ok=True)
            Image.open(XRAY).convert("L").resize((300, 250)).save(work / "stems" / sub / "x.png")

    def gradcam_check():
        same_stems()
        code, out = run(["predict", work / "stems", "--gradcam", work / "cams"])
        n = len(list((work / "cams").glob("*.png")))
        return code == 0 and n == 2 and traceback_free(out), f"exit {code}, {n} overlays for 2 inputs"

    yield "Grad-CAM of two files named alike", "2 overlays", gradcam_check
    yield "a second training into a folder in use", "exit 2 naming the PID", lambda: _concurrent(work)
    yield (
        "SIGTERM during training, then resume",
        "exit 143, resumed, every epoch counted",
        lambda: _interrupt(work, signal.SIGTERM),
    )
    yield "kill -9 during training, then resume", "resumed, best epoch kept", lambda: _interrupt(work, signal.SIGKILL)
    if os.geteuid() == 0:  # mounting a tmpfs needs root (CAP_SYS_ADMIN)
        yield "full disk (a filled 64 KB tmpfs)", "clear error", lambda: _full_disk(work / "full", work)


def more_cases(work: Path):
    """The third pass's cases (reliability issue 24): clean output, silent drops, races, the Python API."""

    def case(name, expected, args, expect_code, *texts, env=None, stream="both", setup=None, after=None):
        def check():
            prepared = setup() if setup else None
            call = [a(prepared) if callable(a) else a for a in args]
            done = subprocess.run(
                [*CLI, *map(str, call)], capture_output=True, text=True, env={**ENV, **(env or {})}, timeout=600
            )
            out = {"stdout": done.stdout, "stderr": done.stderr, "both": done.stdout + done.stderr}[stream]
            ok = done.returncode == expect_code and all(t in out for t in texts) and traceback_free(done.stderr)
            if after is not None:
                ok = after(prepared, done) and ok
            return ok, observed(done.returncode, out, texts[0] if texts else "", work)

        return name, expected, check

    def split_case(name, expected, expect_code, text, damage, after=None):
        """``split`` on a copy of the committed Kaggle-layout folder that ``damage(folder)`` changed."""
        import shutil

        stem = name.split(":")[-1].strip().replace(" ", "_")
        manifest = work / f"{stem}.json"

        def setup():
            folder = work / stem
            shutil.copytree(DATA / "chest_xray", folder)
            damage(folder / "train")
            return folder

        check_after = (lambda f, d: after(manifest)) if after else (lambda f, d: True)
        return case(name, expected, ["split", lambda f: f, "--manifest", manifest], expect_code, text,
                    setup=setup, after=check_after)  # fmt: skip

    def cut_short(train):
        good = (train / "NORMAL" / "IM-0115-0001.jpeg").read_bytes()
        (train / "NORMAL" / "IM-9999-0001.jpeg").write_bytes(good[: len(good) // 2])

    def nested(train):
        (train / "NORMAL" / "batch2").mkdir()
        for path in sorted((train / "NORMAL").glob("*.jpeg")):
            path.rename(train / "NORMAL" / "batch2" / path.name)

    def both_classes(train):
        (train / "PNEUMONIA" / "copy.jpeg").write_bytes((train / "NORMAL" / "IM-0115-0001.jpeg").read_bytes())

    def no_normal(train):
        for path in (train / "NORMAL").iterdir():
            path.unlink()

    yield split_case(
        "split: a JPEG cut short after its header",
        "named, no manifest",
        2,
        "IM-9999-0001.jpeg: JPEG file cut short",
        cut_short,
        after=lambda manifest: not manifest.exists(),
    )
    yield split_case("images in a sub-folder of a class folder", "read, as predict reads them", 0, "manifest written",
                     nested, after=lambda manifest: _manifest_count(manifest, "batch2/") == 16)  # fmt: skip
    yield split_case("a link to nothing in a class folder", "named in a warning", 0, "link(s) to nothing: gone.jpeg",
                     lambda train: (train / "NORMAL" / "gone.jpeg").symlink_to(train / "nowhere.jpeg"))  # fmt: skip
    yield split_case("one image under both classes", "clear error naming it", 2,
                     "NORMAL/IM-0115-0001.jpeg = PNEUMONIA/copy.jpeg", both_classes)  # fmt: skip
    yield split_case("an empty class folder", "clear error listing every suffix read", 2, ".tiff, .webp, .gif, .dcm",
                     no_normal)  # fmt: skip
    gradient = np.stack(
        [*np.meshgrid(np.linspace(0, 255, 300), np.linspace(255, 0, 300)), np.full((300, 300), 90.0)], axis=-1
    ).astype(np.uint8)
    Image.fromarray(gradient).save(work / "gradient.png")
    x = xray()
    Image.fromarray(np.stack([x, np.abs(2 * x.astype(int) - 255), 255 - x], axis=-1).astype(np.uint8)).save(
        work / "false_colour.png"
    )
    yield case("a colour gradient", "answer + warning", ["predict", work / "gradient.png"], 0, "colour image")
    yield case("a false-colour X-ray", "answer + warning", ["predict", work / "false_colour.png"], 0, "colour image")
    pages = [Image.fromarray(x), Image.fromarray(255 - x)]
    pages[0].save(work / "pages.tiff", save_all=True, append_images=pages[1:])
    pages[0].save(work / "frames.gif", save_all=True, append_images=pages[1:])
    yield case(
        "a multi-page TIFF", "first page, said", ["predict", work / "pages.tiff"], 0, "only the first is read", "NORMAL"
    )
    yield case("an animated GIF", "first frame, said", ["predict", work / "frames.gif"], 0, "only the first is read")
    odd = _mkdir(work / "odd")
    Image.fromarray(x).save(odd / "two\nlines.png")
    yield case(
        "a line break in a file name",
        "one line per result",
        ["predict", odd],
        0,
        "two\\nlines.png': NORMAL",
        stream="stdout",
    )
    yield case(
        "predict --json --output r.jsonl",
        "a JSON summary on stdout",
        ["predict", XRAY, "--json", "--output", work / "r.jsonl"],
        0,
        '"written": 1',
        stream="stdout",
        after=lambda _, d: __import__("json").loads(d.stdout)["images"] == 1,
    )
    yield "two predict runs writing one CSV", "the second refused, no row twice", lambda: _two_predicts(work)
    yield case(
        "train --image-size 100000",
        "clear error, nothing allocated",
        ["train", DATA / "chest_xray", "-o", work / "huge_run", "--image-size", "100000"],
        2,
        "at most 1024 pixels",
        after=lambda _, d: not (work / "huge_run").exists(),
    )
    yield case(
        "KERAS_BACKEND=nonsense",
        "clear error",
        ["predict", XRAY],
        2,
        "Keras could not load its backend (KERAS_BACKEND=nonsense)",
        env={"KERAS_BACKEND": "nonsense"},
    )
    import importlib.util

    if importlib.util.find_spec("jax") is None:
        yield case(
            "KERAS_BACKEND=jax without jax installed",
            "clear error",
            ["predict", XRAY],
            2,
            "No module named 'jax'",
            env={"KERAS_BACKEND": "jax"},
        )
    yield case(
        "a training that fails before writing",
        "no folder left behind",
        ["train", _mkdir(work / "notkaggle"), "-o", work / "failed_run", "--epochs", "1"],
        2,
        "",
        after=lambda _, d: not (work / "failed_run").exists(),
    )
    yield "SIGTERM while TensorFlow loads", "exit 143 with a message", lambda: _sigterm_early(work)
    yield "--json while the model downloads", "only JSON on stdout", lambda: _json_during_download(work)
    for name, expected, text, folder, damage in (
        ("a preset folder whose model.keras changed", "clear error naming both files", "does not match",
         work / "changed_preset", "damage"),
        ("a preset folder whose metadata.json lost its hash", "clear error naming the file", "records no sha256",
         work / "hashless_preset", "drop_hash"),
    ):  # fmt: skip
        yield case(
            name,
            expected,
            ["predict", XRAY, "--weights", lambda f: f],
            2,
            text,
            setup=lambda folder=folder, damage=damage: _preset_folder(folder, **{damage: True}),
        )
    for name, code, message in _API_CASES:
        yield f"Python API: {name}", "clear ValueError", _api_check(code, message)
    yield from web_cases(work)


def web_cases(work: Path):
    """The web app (``keras-pneumonia serve``, a real server process) under bad and hostile requests."""
    import importlib.util

    if importlib.util.find_spec("fastapi") is None:  # a failed case, so the suite cannot shrink without a word
        yield "web app cases", "run", lambda: (False, "not run: the [serve] extra is not installed")
        return
    server = _WebServer(work)
    xray_bytes = XRAY.read_bytes()

    def status(expected, *texts, **request):
        def check():
            code, body = server.post(**request)
            ok = code == expected and all(t in body for t in texts) and server.healthy()
            return ok, f"HTTP {code}: {body[:100]}; still serving: {server.healthy()}"

        return check

    yield "web: a text file as an X-ray", "422 naming it", status(422, "notes.png", files=[("notes.png", b"text")])
    yield "web: an empty upload", "400 naming it", status(400, "empty.png", files=[("empty.png", b"")])
    yield "web: an upload over the limit", "413", status(413, "too large", files=[("big.png", b"0" * 20_000_000)])
    yield "web: no file field", "400", status(400, "No file", files=[], fields={"other": "x"})
    yield "web: 16 uploads at once", "all answered alike", lambda: server.concurrent(xray_bytes, 16)
    yield "web: a client gone mid-upload", "server unharmed", lambda: server.disconnect_mid_upload()
    yield (
        "web: the server killed (-9) in a request",
        "its uploads removed at restart",
        lambda: server.killed(xray_bytes),
    )
    yield "web: stopped (SIGTERM)", "exits 0, nothing left", lambda: server.stop_cleanly()


class _WebServer:
    """A ``keras-pneumonia serve`` process on a free port of 127.0.0.1 (1 MB upload limit, no Grad-CAM)."""

    def __init__(self, work: Path):
        self.work = work
        self.process = None

    def start(self):
        import socket
        import urllib.request

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        args = ["serve", "--port", str(self.port), "--no-gradcam", "--max-upload-mb", "1"]
        self.process = subprocess.Popen([*CLI, *args], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(self.url("/api/health"), timeout=2).read()
                return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(self.process.stderr.read().decode()[-300:]) from None
                time.sleep(0.2)
        raise RuntimeError("the server did not start in 120 s")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def ensure(self):
        if self.process is None or self.process.poll() is not None:
            self.start()

    def healthy(self) -> bool:
        import urllib.request

        try:
            return urllib.request.urlopen(self.url("/api/health"), timeout=10).status == 200
        except OSError:
            return False

    def post(self, files, fields=None):
        import urllib.error
        import urllib.request

        self.ensure()
        body, content_type = _multipart(files, fields or {})
        request = urllib.request.Request(self.url("/api/predict"), data=body, headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(request, timeout=120) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def concurrent(self, data: bytes, n: int):
        import json
        from concurrent.futures import ThreadPoolExecutor

        self.ensure()
        with ThreadPoolExecutor(n) as pool:
            answers = list(pool.map(lambda i: self.post([(f"x{i}.jpeg", data)]), range(n)))
        probabilities = {json.loads(body)["results"][0]["probability"] for code, body in answers if code == 200}
        # Alike at float32 resolution: uploads answered in one batch may differ in the last bits
        # from those answered alone (CPU kernels depend on the batch size).
        spread = max(probabilities) - min(probabilities) if probabilities else float("nan")
        ok = all(code == 200 for code, _ in answers) and spread <= 1e-6
        return (
            ok,
            f"{sum(code == 200 for code, _ in answers)} of {n} answered 200; {len(probabilities)} distinct "
            f"answer(s), spread {spread:.1e}",
        )

    def disconnect_mid_upload(self):
        import socket

        self.ensure()
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw:
            head = (
                "POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 500000\r\n"
                "Content-Type: multipart/form-data; boundary=XyZ\r\n\r\n--XyZ\r\n"
                'Content-Disposition: form-data; name="file"; filename="half.jpeg"\r\n\r\n'
            )
            raw.sendall(head.encode() + XRAY.read_bytes()[:20000])
        time.sleep(1.0)
        code, _ = self.post([("x.jpeg", XRAY.read_bytes())])
        leftovers = _uploads_of(self.process.pid)
        return code == 200 and not leftovers, f"next request HTTP {code}; {len(leftovers)} upload folder(s) left"

    def killed(self, data: bytes):
        import threading

        self.ensure()
        dead = self.process.pid
        threading.Thread(target=lambda: self.post([(f"x{i}.jpeg", data) for i in range(3)]), daemon=True).start()
        deadline = time.time() + 60
        while not _uploads_of(dead) and time.time() < deadline:  # the request's folder exists
            time.sleep(0.005)
        during = len(_uploads_of(dead))
        self.process.kill()
        self.process.wait()
        self.start()  # the next server removes what the killed one left
        left = _uploads_of(dead)
        return during > 0 and not left, f"{during} upload folder(s) when killed, {len(left)} after the restart"

    def stop_cleanly(self):
        self.ensure()
        pid = self.process.pid
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        left = _uploads_of(pid)
        return code == 0 and not left, f"exit {code}; {len(left)} upload folder(s) left"


def _uploads_of(pid: int) -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob(f".keras-pneumonia-serve.{pid}@*"))


def _multipart(files, fields):
    """A multipart/form-data body by hand: the standard library has no encoder for it."""
    boundary = "keras-pneumonia-faults"
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for filename, data in files:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        parts.append(head.encode() + b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


# The Python API with inputs the model would answer for wrongly: (name, code, expected message).
_API_CASES = [
    ("a 320x320 image", "np.full((1, 320, 320, 1), 100.0)", "are 320x320"),
    ("a 64x64 image", "np.full((1, 64, 64, 1), 100.0)", "are 64x64"),
    ("an (H, W) array", "np.full((160, 160), 100.0)", "x[None, ..., None]"),
    ("an unbatched (H, W, 1) array", "np.full((160, 160, 1), 100.0)", "x[None]"),
    ("3 channels into a grayscale model", "np.full((1, 160, 160, 3), 100.0)", "with 3 channel"),
    ("an empty batch", "np.zeros((0, 160, 160, 1))", "The batch is empty"),
    ("a NaN pixel", "np.where(np.arange(160)[:, None, None] == 5, np.nan, np.full((1, 160, 160, 1), 9.0))", "NaN"),
]


def _manifest_count(manifest: Path, part: str) -> int:
    import json

    data = json.loads(manifest.read_text())
    return sum(part in entry["path"] for split in ("train", "val", "test") for entry in data.get(split, []))


def _api_check(code: str, message: str):
    def check():
        script = (
            "import numpy as np, keras_pneumonia as kp\n"
            "m = kp.PneumoniaCNN.from_pretrained(compile=False)\n"
            f"try:\n    m.predict({code}, verbose=0)\nexcept ValueError as e:\n    print('ValueError:', e)\n"
        )
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=300)
        ok = done.returncode == 0 and "ValueError:" in done.stdout and message in done.stdout
        return ok, (done.stdout.strip() or done.stderr.strip().splitlines()[-1])[:120]

    return check


def _two_predicts(work: Path):
    folder = _mkdir(work / "many")
    for i in range(2000):  # hard links: a run that lasts, for no disk
        os.link(XRAY, folder / f"IM-{i:04d}-0001.jpeg")
    out = work / "shared.csv"
    first = subprocess.Popen([*CLI, "predict", str(folder), "--output", str(out)], env=ENV, stderr=subprocess.PIPE)
    start = time.time()
    while not out.exists() or out.stat().st_size < 200:  # the header and a first row
        if first.poll() is not None or time.time() - start > 240:
            return False, "the first run ended before the second started"
        time.sleep(0.05)
    code, text = run(["predict", folder, "--output", out])
    first.wait()
    rows = out.read_text().splitlines()[1:]
    ok = code == 2 and "being written by another run" in text and len(rows) == len(set(rows)) == 2000
    return ok, f"second run exit {code}; {len(rows)} rows, {len(set(rows))} distinct"


def _preset_folder(folder: Path, damage: bool = False, drop_hash: bool = False) -> Path:
    """A preset folder of the default model (``save_to_preset``), then damaged as asked."""
    import json

    code = f"import keras_pneumonia as kp; kp.PneumoniaCNN.from_pretrained().save_to_preset({str(folder)!r})"
    subprocess.run([sys.executable, "-c", code], check=True, env=ENV, capture_output=True, timeout=300)
    if damage:
        data = bytearray((folder / "model.keras").read_bytes())
        data[-100] ^= 0xFF
        (folder / "model.keras").write_bytes(bytes(data))
    if drop_hash:
        metadata = json.loads((folder / "metadata.json").read_text())
        del metadata["files"]["model.keras"]["sha256"]
        (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder


def _sigterm_early(work: Path):
    process = subprocess.Popen([*CLI, "predict", str(XRAY)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(0.5)  # TensorFlow takes seconds to import
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    ok = process.returncode == 143 and "terminated (SIGTERM)" in err.decode()
    return ok, f"exit {process.returncode}: {err.decode().strip().splitlines()[-1][-90:] if err.strip() else ''}"


def _json_during_download(work: Path):
    import http.server
    import json
    import threading
    from functools import partial

    import keras_pneumonia as kp

    served = _mkdir(work / "served")
    kp.PneumoniaCNN(image_size=32, filters=(8,), dense_units=()).save(served / "m.keras")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/m.keras"
        env = {**ENV, "KERAS_PNEUMONIA_OFFLINE": "0", "KERAS_HOME": str(work / "keras_home")}
        done = subprocess.run(
            [*CLI, "predict", str(XRAY), "--weights", url, "--json"], capture_output=True, text=True, env=env
        )
    finally:
        server.shutdown()
    try:
        json.loads(done.stdout)
        clean = True
    except ValueError:
        clean = False
    ok = done.returncode == 0 and clean and "Downloading data from" in done.stderr
    return ok, f"exit {done.returncode}; stdout {'is' if clean else 'is NOT'} JSON; progress on stderr"


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _formats(stem: Path) -> Path:
    folder = _mkdir(stem)
    image = Image.open(XRAY).convert("L").resize((300, 250))
    for suffix in (".bmp", ".webp", ".gif"):
        image.save(folder / f"x{suffix}")
    return folder


@contextlib.contextmanager
def full_disk(mount: Path):
    """A real full file system at ``mount``: a 64 KB tmpfs filled to the last byte; ``None`` if it cannot mount."""
    mount.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True).returncode:
        yield None
        return
    try:
        try:
            with open(mount / "filler", "wb") as file:
                while True:
                    file.write(b"\0" * 4096)
                    file.flush()
        except OSError:  # ENOSPC: full
            pass
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def _full_disk(mount: Path, work: Path):
    with full_disk(mount) as full:
        if full is None:
            return False, "could not mount a tmpfs"
        code, out = run(["predict", XRAY, "--output", full / "results.csv"])
        ok = code == 2 and "No space left on device" in out and traceback_free(out)
        return ok, observed(code, out, "No space left on device", work)


def _train_args(output: Path, epochs: int):
    return ["train", DATA / "chest_xray", "--output", output, "--epochs", str(epochs), "--validation-split", "0.25"]


def _history_rows(output: Path) -> int:
    history = output / "history.csv"
    return max(0, len(history.read_text().splitlines()) - 1) if history.exists() else 0


def _start(output: Path, epochs: int):
    return subprocess.Popen(
        [*CLI, *map(str, _train_args(output, epochs))], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV
    )


def _concurrent(work: Path):
    output = work / "run_busy"
    first = _start(output, 2)
    start = time.time()
    while not ((output / ".lock").exists() and (output / ".lock").read_text().strip() == str(first.pid)):
        if first.poll() is not None or time.time() - start > 240:
            return False, "the first run never took the lock"
        time.sleep(0.05)
    code, out = run(_train_args(output, 2))
    first_code = first.wait()
    ok = code == 2 and f"PID {first.pid}" in out and first_code == 0 and _history_rows(output) == 2
    return ok, f"exit {code}: {out.strip().splitlines()[-1][-90:]}; first run exit {first_code}"


def _interrupt(work: Path, sig):
    import csv
    import json

    output = work / f"run_{sig.name}"
    process = _start(output, 6)
    start = time.time()
    while _history_rows(output) < 2:
        if process.poll() is not None or time.time() - start > 240:
            return False, "the run ended before it could be interrupted"
        time.sleep(0.05)
    process.send_signal(sig)
    code = process.wait()
    before = _history_rows(output)
    resumed, out = run(_train_args(output, 6), timeout=600)
    if resumed != 0:
        return False, f"resume exit {resumed}: {out.strip().splitlines()[-1][-90:]}"
    report = json.loads((output / "report.json").read_text())
    with open(output / "history.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    epochs_ok = report["epochs_run"] == len(rows) > before and [int(r["epoch"]) for r in rows] == list(range(len(rows)))
    expected_code = 143 if sig == signal.SIGTERM else -signal.SIGKILL
    ok = code == expected_code and epochs_ok
    return ok, f"exit {code}; resumed after {before} epochs, report counts {report['epochs_run']} of {len(rows)}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    parser.add_argument("--only", help="run only the cases whose name holds this text")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, expected, check in itertools.chain(cases(Path(tmp)), more_cases(Path(tmp))):
            if args.only and args.only not in name:
                continue
            started = time.time()
            try:
                ok, observed = check()
            except Exception as error:  # a case that crashes is a failed case, reported as such
                ok, observed = False, f"{type(error).__name__}: {error}"
            rows.append((name, expected, observed, ok))
            print(f"{'ok  ' if ok else 'FAIL'} {name} ({time.time() - started:.0f} s): {observed}", flush=True)
    table = ["| case | expected | observed | |", "| --- | --- | --- | --- |"]
    table += [f"| {n} | {e} | {o.replace('|', '/')} | {'ok' if ok else '**FAIL**'} |" for n, e, o, ok in rows]
    print("\n".join(table))
    if args.markdown:
        args.markdown.write_text("\n".join(table) + "\n")
    failed = [n for n, _, _, ok in rows if not ok]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} cases as expected" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
