"""The web app under load: throughput, p50/p95 latency and peak memory for 1, 8 and 32 concurrent clients.

    python benchmarks/serve.py [--requests 96] [--json benchmarks/serve.json]

Starts ``keras-pneumonia serve`` (the default preset) in its own process on
127.0.0.1, twice: with Grad-CAM overlays (the default) and ``--no-gradcam``. For each,
C concurrent clients (1, 8, 32) send ``--requests`` uploads in all, one X-ray each
(the committed test X-rays in turn), over real HTTP. Reported: images per second,
median and 95th-percentile latency, the share of 503 answers, and the server's peak
resident memory (``VmHWM``). For comparison, the same files through
`keras_pneumonia.prediction.predict_files` in this process (no HTTP), in batches
of 32 and one at a time, with and without Grad-CAM.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted((ROOT / "tests" / "data" / "chest_xray").glob("*/*/*.jpeg"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _load(url: str, clients: int, requests: int) -> dict:
    payloads = [(f.name, f.read_bytes()) for f in FILES]

    def one(i: int):
        name, data = payloads[i % len(payloads)]
        start = time.perf_counter()
        response = httpx.post(f"{url}/api/predict", files=[("file", (name, data))], timeout=600)
        return time.perf_counter() - start, response.status_code

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - started
    ok = sorted(t for t, code in results if code == 200)
    return {
        "clients": clients,
        "requests": requests,
        "answered": len(ok),
        "busy_503": sum(code == 503 for _, code in results),
        "images_per_s": len(ok) / wall,
        "latency_p50_ms": 1000 * statistics.median(ok),
        "latency_p95_ms": 1000 * ok[min(len(ok) - 1, int(0.95 * len(ok)))],
    }


def bench_server(gradcam: bool, requests: int) -> dict:
    port = _free_port()
    command = [sys.executable, "-m", "keras_pneumonia", "serve", "--port", str(port), "--max-queue", "64"]
    if not gradcam:
        command.append("--no-gradcam")
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                httpx.get(f"{url}/api/health", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        _load(url, 4, 8)  # warm-up: traces the model for the batch sizes it will see
        rows = [_load(url, clients, requests) for clients in (1, 8, 32)]
        return {"gradcam": gradcam, "load": rows, "server_peak_rss_mb": _peak_rss_mb(server.pid)}
    finally:
        server.terminate()
        server.wait(30)


def bench_direct(requests: int) -> dict:
    """`predict_files` in this process on the same files, as a floor for the server's cost."""
    import keras_pneumonia as kp
    from keras_pneumonia.gradcam import gradcam
    from keras_pneumonia.images import load_image
    from keras_pneumonia.prediction import predict_files

    model = kp.PneumoniaCNN.from_pretrained(compile=False)
    files = [FILES[i % len(FILES)] for i in range(requests)]
    list(predict_files(model, files[:32]))  # warm-up
    out = {}
    for batch in (32, 1):
        start = time.perf_counter()
        list(predict_files(model, files, batch_size=batch))
        out[f"images_per_s_batch{batch}"] = requests / (time.perf_counter() - start)
    rows = list(predict_files(model, files[:8]))
    start = time.perf_counter()
    for row in rows:
        image = load_image(row["path"], None, "grayscale")
        gradcam(model, image, class_index=model.class_names.index(row["decision"]))
    out["gradcam_ms_per_image"] = 1000 * (time.perf_counter() - start) / len(rows)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=96, help="uploads per client count (96)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    results = {"cpu_count": os.cpu_count(), "files": len(FILES)}
    results["direct"] = bench_direct(args.requests)
    print(json.dumps(results["direct"]), flush=True)
    for gradcam in (True, False):
        results[f"server_gradcam_{'on' if gradcam else 'off'}"] = row = bench_server(gradcam, args.requests)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
