"""The web app behind ``keras-pneumonia serve``: a page to drop X-rays on, and a REST API.

Built on FastAPI and uvicorn (``pip install 'keras-pneumonia[serve]'``): the Python
serving standard, with request validation and OpenAPI docs at ``/docs`` for free,
and small enough to read. Gradio was not used: its page loads fonts and scripts
from the internet by default, and this app must work on a machine with no network.

Every answer comes from the same code as ``keras-pneumonia predict``
(`keras_pneumonia.prediction.predict_files`: decoding, the input check, the
out-of-distribution flag, the model's threshold), so the two agree.

How requests use the CPU: one worker thread owns the model. Requests put their
files on a bounded queue; the worker takes every request waiting (up to
``max_batch`` files) and runs them through the model together, so concurrent
clients share batches instead of fighting over two cores. When the queue is full
the server answers ``503`` with ``Retry-After`` instead of growing its memory.

Uploads are read into memory (at most ``max_upload_mb`` a request), written to a
private temporary folder (mode 0700) for decoding, and that folder is removed
as soon as the answer is ready. Nothing else is written.

Example:

>>> import keras_pneumonia as kp
>>> from keras_pneumonia.serve import create_app
>>> app = create_app(kp.PneumoniaCNN.from_pretrained(compile=False), gradcam=False)
>>> sorted(r.path for r in app.routes if r.path.startswith("/api"))
['/api/health', '/api/model', '/api/predict']
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request) at run time.
import asyncio
import base64
import concurrent.futures
import contextlib
import io
import logging
import queue
import re
import tempfile
import threading
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from keras_pneumonia._io import owner, remove_stale

logger = logging.getLogger(__name__)

#: Largest accepted request (all its files), in MB (``--max-upload-mb``).
DEFAULT_MAX_UPLOAD_MB = 50
#: Requests waiting for the model before new ones get 503 (``--max-queue``).
DEFAULT_MAX_QUEUE = 32
_EXTRA = "pip install 'keras-pneumonia[serve]'"
#: The name of the private temporary folders that hold a request's uploads.
_UPLOADS = "keras-pneumonia-serve"


class QueueFull(RuntimeError):
    """The server already has ``max_queue`` requests waiting."""


class Predictor:
    """One worker thread that owns the model and batches the queued requests' files.

    Args:
        model: A `~keras_pneumonia.PneumoniaCNN`.
        max_queue: Requests allowed to wait; `submit` raises `QueueFull` beyond.
        max_batch: Files per model call at most (several requests share one call).
        gradcam: Add a Grad-CAM overlay to each answer.
    """

    def __init__(self, model, max_queue: int = DEFAULT_MAX_QUEUE, max_batch: int = 16, gradcam: bool = True):
        self.model = model
        self.max_batch = max_batch
        self.gradcam = gradcam
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._run, name="keras-pneumonia-model", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        """Requests waiting for the model."""
        return self._queue.qsize()

    def submit(self, paths: list[Path]) -> concurrent.futures.Future:
        """Queues one request's files.

        The future's result is one row per file, as `~keras_pneumonia.prediction.predict_files`
        yields them, with ``gradcam`` added.
        """
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            self._queue.put_nowait((paths, future))
        except queue.Full:
            raise QueueFull from None
        return future

    def _take(self) -> list[tuple[list[Path], concurrent.futures.Future]]:
        """The next request, and every other one already waiting, up to ``max_batch`` files."""
        jobs = [self._queue.get()]
        files = len(jobs[0][0])
        while files < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            jobs.append(job)
            files += len(job[0])
        return jobs

    def _run(self) -> None:
        from keras_pneumonia.prediction import predict_files

        while True:
            jobs = self._take()
            paths = [p for job_paths, _ in jobs for p in job_paths]
            try:
                rows = list(predict_files(self.model, paths, batch_size=min(self.max_batch, max(1, len(paths)))))
                self._add_overlays(rows)
            except Exception as error:  # a bug, not bad input (that is a row's "error"): fail these requests only
                logger.exception("Prediction failed")
                for _, future in jobs:
                    future.set_exception(error)
                continue
            start = 0
            for job_paths, future in jobs:
                future.set_result(rows[start : start + len(job_paths)])
                start += len(job_paths)

    def _add_overlays(self, rows: list[dict]) -> None:
        """Sets each answered row's ``gradcam``: a PNG data URL (``None`` for a failed file or with overlays off).

        One Grad-CAM call per decided class for the whole batch (building the
        explainer costs more than explaining one more image).
        """

        for row in rows:
            row["gradcam"] = None
        if not self.gradcam:
            return
        answered = [row for row in rows if not row["error"]]
        from keras_pneumonia.gradcam import gradcam
        from keras_pneumonia.images import load_image

        for class_index, name in enumerate(self.model.class_names):
            group = [row for row in answered if row["decision"] == name]
            if not group:
                continue
            images = [load_image(row["path"], None, "grayscale") for row in group]
            for row, image, heat in zip(group, images, gradcam(self.model, images, class_index=class_index)):
                row["gradcam"] = _png_data_url(image, heat)


def _png_data_url(image: np.ndarray, heatmap: np.ndarray) -> str:
    """The Grad-CAM overlay of one X-ray (at most 512 px a side) as a PNG data URL."""
    from PIL import Image

    from keras_pneumonia.plots import overlay

    picture = Image.fromarray(overlay(image, heatmap))
    picture.thumbnail((512, 512))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _safe_suffix(filename: str | None) -> str:
    """The upload's suffix if it is a plain one (``.png``, ``.dcm``...), else none: names never reach the disk."""
    suffix = Path(filename or "").suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ""


def model_info(model, source: str | None = None) -> dict[str, Any]:
    """What ``GET /api/model`` answers: name, version, input spec, thresholds and the preset's metrics.

    Args:
        model: The served model.
        source: What it was loaded from: a preset name, a path or a URL (``None``: the default preset).
    """
    from keras_pneumonia._version import __version__
    from keras_pneumonia.presets import DEFAULT_PRESET, PRESETS

    name = DEFAULT_PRESET if source is None else str(source)
    preset = PRESETS.get(name, {})
    return {
        "model": name,
        "preset": name if preset else None,
        "keras_pneumonia_version": __version__,
        "input": model.input_config.to_dict(),
        "class_names": list(model.class_names),
        "threshold": model.threshold,
        "ood_threshold": None if model.ood is None else model.ood["threshold"],
        "metrics": preset.get("metrics"),
        "notice": "Research and education only: not a medical device.",
    }


def create_app(
    model,
    *,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_queue: int = DEFAULT_MAX_QUEUE,
    max_batch: int = 16,
    gradcam: bool = True,
    cors_origins: list[str] | None = None,
    source: str | None = None,
):
    """The FastAPI application: ``GET /``, ``POST /api/predict``, ``GET /api/health``, ``GET /api/model``.

    Args:
        model: A `~keras_pneumonia.PneumoniaCNN` (a preset, a ``.keras`` file, a calibrated model).
        max_upload_mb: Largest request accepted (all its files together); larger ones get ``413``.
        max_queue: Requests allowed to wait for the model; more get ``503`` with ``Retry-After``.
        max_batch: Files per model call at most.
        gradcam: Add Grad-CAM overlays to the answers.
        cors_origins: Origins allowed to call the API from other pages (none by default).
        source: What the model was loaded from (a preset name, a path), shown by ``/api/model``.

    Returns:
        A ``fastapi.FastAPI`` application, to run with uvicorn.
    """
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import HTMLResponse, JSONResponse
        from fastapi.staticfiles import StaticFiles
    except ImportError:
        raise ImportError(f"The web app needs FastAPI and uvicorn: {_EXTRA}") from None
    from starlette.formparsers import MultiPartException

    limit = int(max_upload_mb * 1024 * 1024)
    predictor = Predictor(model, max_queue=max_queue, max_batch=max_batch, gradcam=gradcam)
    web = Path(str(resources.files("keras_pneumonia") / "assets" / "web"))
    info = model_info(model, source)
    app = FastAPI(
        title="keras-pneumonia", version=info["keras_pneumonia_version"], description=__doc__.split("\n\n")[0]
    )
    app.mount("/static", StaticFiles(directory=web), name="static")
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["GET", "POST"])

    def error(status: int, message: str, headers: dict | None = None, **extra) -> JSONResponse:
        return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return (web / "index.html").read_text(encoding="utf-8")

    @app.get("/api/health")
    def health() -> dict:
        """``{"status": "ok", "queued": n}`` while the server can answer."""
        return {"status": "ok", "model": info["model"], "queued": predictor.queued}

    @app.get("/api/model")
    def model_card() -> dict:
        """The model's name, version, input spec, thresholds and metrics."""
        return info

    @app.post("/api/predict")
    async def predict(request: Request):
        """One or more files in the multipart field ``file``; one result per file, in order."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            await _drain(request)
            return error(413, f"Upload too large: {int(declared)} bytes (at most {max_upload_mb:g} MB a request).")
        try:
            form = await _read_form(request, limit)
        except _TooLarge:
            await _drain(request)
            return error(413, f"Upload too large (at most {max_upload_mb:g} MB a request).")
        except MultiPartException as exc:
            return error(400, f"Could not read the upload as multipart form data: {exc}")
        uploads = [f for f in form.getlist("file") if hasattr(f, "read")]
        if not uploads:
            return error(400, "No file: send one or more files in the multipart field 'file'.")
        contents: list[tuple[str, bytes]] = []
        for upload in uploads:
            data = await upload.read()
            if not data:
                return error(400, f"{upload.filename}: the file is empty.", file=upload.filename)
            contents.append((upload.filename or f"file{len(contents)}", data))
        # Mode 0700, named by this process: a server killed mid-request leaves it, the next one removes it.
        with tempfile.TemporaryDirectory(prefix=f".{_UPLOADS}.{owner()}.") as folder:
            paths = []
            for i, (_, data) in enumerate(contents):
                path = Path(folder) / f"{i}{_safe_suffix(contents[i][0])}"
                path.write_bytes(data)
                paths.append(path)
            try:
                future = predictor.submit(paths)
            except QueueFull:
                return error(503, "The server is busy; try again shortly.", headers={"Retry-After": "2"})
            rows = await asyncio.wrap_future(future)
        results = [_public(row, name) for row, (name, _) in zip(rows, contents)]
        if all(r["error"] for r in results):
            problems = "; ".join(f"{r['file']}: {r['error']}" for r in results)
            return error(422, f"No file could be read as an X-ray: {problems}", results=results)
        return {"model": info["model"], "results": results}

    return app


_DRAIN_BYTES = 64 * 1024 * 1024


class _TooLarge(Exception):
    pass


async def _drain(request, cap: int = _DRAIN_BYTES, seconds: float = 10.0) -> None:
    """Reads and drops the rest of a refused request's body (at most ``cap`` bytes or ``seconds``).

    A server that answers 413 and closes while the client is still sending makes clients
    (browsers, urllib, requests) report a broken pipe instead of the answer; nginx's
    "lingering close" reads the rest for the same reason. Past the cap the connection closes.
    """
    from starlette.requests import ClientDisconnect

    async def read():
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > cap:
                return

    # RuntimeError: Starlette's "Stream consumed", when the piece that crossed the limit was the last one.
    with contextlib.suppress(asyncio.TimeoutError, ClientDisconnect, RuntimeError):
        await asyncio.wait_for(read(), timeout=seconds)


async def _read_form(request, limit: int):
    """The multipart form, held in memory (never spooled to disk), refused past ``limit`` bytes in all."""
    from starlette.formparsers import MultiPartParser

    async def stream():
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise _TooLarge
            yield chunk

    parser = MultiPartParser(request.headers, stream(), max_files=64, max_fields=64)
    parser.spool_max_size = limit + 1  # Starlette spools larger parts to a temporary file; these never are
    return await parser.parse()


def _public(row: dict, name: str) -> dict:
    """A result row as the API answers it: the uploaded name instead of the temporary path."""
    out = {key: row.get(key) for key in ("probability", "decision", "threshold", "warning", "error", "gradcam")}
    out["warning"] = out["warning"] or ""
    return {"file": name, **out}


def serve(
    model,
    host: str = "127.0.0.1",
    port: int = 8000,
    **app_kwargs,
) -> None:
    """Runs the app with uvicorn until interrupted (what ``keras-pneumonia serve`` calls)."""
    try:
        import uvicorn
    except ImportError:
        raise ImportError(f"The web app needs FastAPI and uvicorn: {_EXTRA}") from None
    remove_stale(Path(tempfile.gettempdir()), _UPLOADS)  # what a killed server's requests left
    app = create_app(model, **app_kwargs)
    logger.info("Serving %s on http://%s:%d (API docs at /docs)", model.name, host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning")
