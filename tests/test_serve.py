"""The web app's REST API, over real HTTP against a uvicorn server on 127.0.0.1."""

import base64
import concurrent.futures
import io
import tempfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

import keras_pneumonia as kp
from conftest import FULLRES, KAGGLE, running
from keras_pneumonia.prediction import predict_files
from keras_pneumonia.presets import DEFAULT_PRESET
from keras_pneumonia.serve import create_app

SAMPLES = sorted(KAGGLE.glob("test/*/*.jpeg"))[:4]


@pytest.fixture(scope="module")
def model():
    return kp.PneumoniaCNN.from_pretrained(compile=False)


@pytest.fixture(scope="module")
def server(model):
    with running(create_app(model, max_upload_mb=5)) as url:
        yield url


def _post(url, *files, **kwargs):
    parts = [("file", (Path(f).name, Path(f).read_bytes() if isinstance(f, Path) else f)) for f in files]
    return httpx.post(f"{url}/api/predict", files=parts, timeout=120, **kwargs)


def _png16(path, folder) -> Path:
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L"), np.uint16) * 257
    out = folder / (path.stem + "_16bit.png")
    Image.fromarray(pixels).save(out)  # mode I;16
    return out


def test_health_model_and_the_page(server):
    assert httpx.get(f"{server}/api/health").json()["status"] == "ok"
    info = httpx.get(f"{server}/api/model").json()
    assert info["preset"] == DEFAULT_PRESET and any(m["n"] == 523 for m in info["metrics"].values())
    assert info["input"]["image_size"] == [160, 160] and "not a medical device" in info["notice"]
    page = httpx.get(f"{server}/")
    assert page.status_code == 200 and "Not a medical device" in page.text
    assert "http" not in page.text.split("<body>")[0].replace("http-equiv", "")  # nothing from the internet
    for asset in ("/static/app.js", "/static/style.css", "/docs", "/openapi.json"):
        assert httpx.get(server + asset).status_code == 200, asset
    assert "access-control-allow-origin" not in page.headers  # no CORS unless asked


def test_answers_equal_predict_on_the_same_files(server, model, tmp_path):
    files = [*SAMPLES, *sorted(FULLRES.glob("*.jpeg"))[:1], _png16(SAMPLES[0], tmp_path)]
    tiff = tmp_path / "film.tiff"
    with Image.open(SAMPLES[1]) as image:
        image.save(tiff)
    files.append(tiff)
    response = _post(server, *files)
    assert response.status_code == 200, response.text
    got = response.json()["results"]
    expected = list(predict_files(model, files))
    assert [r["file"] for r in got] == [f.name for f in files]
    for answer, direct in zip(got, expected):
        assert abs(answer["probability"] - direct["probability"]) <= 1e-4
        assert answer["decision"] == direct["decision"] and answer["threshold"] == direct["threshold"]
        assert answer["warning"] == (direct["warning"] or "")
        assert answer["gradcam"].startswith("data:image/png;base64,")


def test_a_chunked_upload_just_over_the_limit_is_a_413(server):
    # No Content-Length: the limit is found while reading, in the body's last piece.
    limit = 5 << 20
    head = b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'
    tail = b"\r\n--XyZ--\r\n"
    payload = b"\0" * (limit + 100 - len(head) - len(tail))

    def chunks():
        yield head
        for start in range(0, len(payload), 1 << 16):
            yield payload[start : start + (1 << 16)]
        yield tail

    headers = {"Content-Type": "multipart/form-data; boundary=XyZ"}
    answer = httpx.post(f"{server}/api/predict", content=chunks(), headers=headers, timeout=60)
    assert answer.status_code == 413 and "5 MB" in answer.json()["error"]
    assert httpx.get(f"{server}/api/health", timeout=10).status_code == 200


def test_bad_input_is_a_4xx_naming_the_problem_and_the_server_keeps_serving(server, tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("L", (14000, 14000)).save(bomb)  # 196 MP: over Pillow's decompression-bomb limit
    cases = {
        "notes.txt": (b"not an image at all", 422, "not an image"),
        "empty.png": (b"", 400, "empty"),
        "bomb.png": (bomb.read_bytes(), 422, "pixels"),
        "cut.jpeg": (SAMPLES[0].read_bytes()[:2000], 422, "cut.jpeg"),
    }
    for name, (payload, status, words) in cases.items():
        response = httpx.post(f"{server}/api/predict", files=[("file", (name, payload))], timeout=60)
        assert response.status_code == status, (name, response.text)
        assert words in response.json()["error"], (name, response.json())
    too_big = httpx.post(f"{server}/api/predict", files=[("file", ("big.png", b"\0" * (6 << 20)))], timeout=60)
    assert too_big.status_code == 413 and "5 MB" in too_big.json()["error"]
    no_file = httpx.post(f"{server}/api/predict", files={"other": (None, "x")}, timeout=60)
    assert no_file.status_code == 400 and "'file'" in no_file.json()["error"]
    not_multipart = httpx.post(f"{server}/api/predict", data={"file": "x"}, timeout=60)
    assert not_multipart.status_code == 400 and "multipart" in not_multipart.json()["error"]
    assert httpx.get(f"{server}/api/health").json()["status"] == "ok"
    ok = _post(server, SAMPLES[0])
    assert ok.status_code == 200


def test_a_dicom_without_pixels_is_a_clear_error(server, tmp_path):
    pydicom = pytest.importorskip("pydicom")  # the [dicom] extra: run by `nox -s extras`
    from pydicom.dataset import FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    dataset = pydicom.Dataset()
    dataset.file_meta = meta
    dataset.PatientName = "Nobody"
    path = tmp_path / "empty.dcm"
    dataset.save_as(path, enforce_file_format=True)
    response = _post(server, path)
    assert response.status_code == 422 and "empty.dcm" in response.json()["error"]


def test_a_dicom_film_is_answered_as_predict_answers_it(server, model, tmp_path):
    pytest.importorskip("pydicom")  # the [dicom] extra: run by `nox -s extras`
    from test_dicom import _grey, _write

    path = _write(tmp_path / "film.dcm", _grey())
    answer = _post(server, path).json()["results"][0]
    direct = next(predict_files(model, [path]))
    assert abs(answer["probability"] - direct["probability"]) <= 1e-4 and answer["decision"] == direct["decision"]


@pytest.mark.slow
def test_24_concurrent_uploads_all_answered_alike(server):
    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        responses = list(pool.map(lambda i: _post(server, SAMPLES[i % len(SAMPLES)]), range(24)))
    assert [r.status_code for r in responses] == [200] * 24
    by_file: dict[str, set] = {}
    for r in responses:
        row = r.json()["results"][0]
        by_file.setdefault(row["file"], set()).add(round(row["probability"], 5))
    assert all(len(values) == 1 for values in by_file.values())


def test_a_full_queue_answers_503_with_retry_after(model):
    with running(create_app(model, max_queue=1)) as url:
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(lambda _: _post(url, *SAMPLES), range(12)))
        codes = sorted(r.status_code for r in responses)
        assert set(codes) <= {200, 503} and 200 in codes and 503 in codes, codes
        busy = next(r for r in responses if r.status_code == 503)
        assert busy.headers["retry-after"] == "2" and "busy" in busy.json()["error"]
        assert httpx.get(f"{url}/api/health").json()["status"] == "ok"


def test_uploads_leave_nothing_behind_and_cors_only_when_asked(model):
    before = set(Path(tempfile.gettempdir()).glob(".keras-pneumonia-serve.*"))
    with running(create_app(model, gradcam=False, cors_origins=["http://example.test"])) as url:
        response = _post(url, SAMPLES[0], headers={"Origin": "http://example.test"})
        assert response.status_code == 200 and response.json()["results"][0]["gradcam"] is None
        assert response.headers["access-control-allow-origin"] == "http://example.test"
    assert set(Path(tempfile.gettempdir()).glob(".keras-pneumonia-serve.*")) == before


def test_the_overlay_is_a_picture_of_the_film(server):
    answer = _post(server, SAMPLES[0]).json()["results"][0]
    with Image.open(io.BytesIO(base64.b64decode(answer["gradcam"].split(",", 1)[1]))) as image:
        assert image.mode == "RGB" and min(image.size) >= 160


def test_draining_a_body_that_was_already_read_to_its_end_returns_quietly():
    import asyncio

    from keras_pneumonia.serve import _drain

    class Consumed:  # Starlette's request once its last piece is read: stream() refuses
        async def stream(self):
            raise RuntimeError("Stream consumed")
            yield b""  # an async generator, as Request.stream is

    asyncio.run(_drain(Consumed()))
