"""Load on `pneumocam serve` over loopback, and single-image predict latency vs the bare forward.

Starts the server as a real process on 127.0.0.1, then N client threads post one real chest X-ray
(a 1024x1024 JPEG DICOM from the phantom generator, or --image) to /v1/predict for a bounded time.
Reports requests/s, p50/p95 latency, errors (target 0) and the server's peak RSS. Then, in this
process: Predictor.predict_arrays on one image (read + resize + forward + CAM + overlay-ready) vs the
bare network forward on the same input (target <= 1.1x).
The traffic goes to 127.0.0.1 only; every loop is bounded in count and time.

usage: python benchmarks/serve_load.py CKPT [--clients 4] [--seconds 20] [--image FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _multipart(data: bytes, name: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load(url: str, image: Path, clients: int, seconds: float, max_requests: int, pictures: str = "") -> dict:
    """`clients` threads posting `image` for `seconds`; `pictures`: the answer's ?pictures= (none by default)."""
    body, content_type = _multipart(image.read_bytes(), image.name)
    endpoint = f"{url}/v1/predict" + (f"?pictures={pictures}" if pictures else "")
    latencies, errors, lock = [], [], threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client():
        while time.perf_counter() < stop_at:
            with lock:
                if len(latencies) + len(errors) >= max_requests:
                    return
            request = urllib.request.Request(endpoint, data=body, headers={"Content-Type": content_type})
            start = time.perf_counter()
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    response.read()
                    ok = response.status == 200
            except OSError as exc:
                ok, _ = False, exc
            with lock:
                (latencies if ok else errors).append(time.perf_counter() - start)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=20) if len(latencies) > 1 else [float("nan")] * 19
    return {"requests": len(latencies), "errors": len(errors), "rps": len(latencies) / wall,
            "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"), "p95_ms": 1000 * q[18]}


@contextlib.contextmanager
def running_server(checkpoint: str, *options: str):
    """`pneumocam serve CHECKPOINT OPTIONS` as a real process on a free loopback port -> (url, process)."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "pneumocam.cli", "serve", checkpoint, "--port", str(port),
                               *options], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{url}/v1/health", timeout=1).read()
                break
            except OSError:
                if server.poll() is not None:
                    raise RuntimeError(f"pneumocam serve exited with {server.returncode}") from None
                time.sleep(0.5)
        yield url, server
    finally:
        server.terminate()
        server.wait(timeout=30)


def predict_vs_forward(checkpoint: str, image: Path, repeats: int) -> tuple[float, float]:
    from pneumocam.data import collate_images, read_image, to_model_input
    from pneumocam.deploy import Predictor

    predictor = Predictor.from_checkpoint(checkpoint)
    array = to_model_input(read_image(image))
    x = collate_images([array], predictor.normalization)
    forward, predict = [], []
    for _ in range(3):
        predictor.predict_arrays([array])
    for _ in range(repeats):  # interleaved, so noise hits both alike
        start = time.perf_counter()
        with torch.no_grad():
            predictor.net(x)
        forward.append(time.perf_counter() - start)
        start = time.perf_counter()
        predictor.predict_arrays([array], cam=True)
        predict.append(time.perf_counter() - start)
    return 1000 * statistics.median(forward), 1000 * statistics.median(predict)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--max-requests", type=int, default=2000)
    parser.add_argument("--image", type=Path, default=None)
    parser.add_argument("--pictures", default="", help="ask for these pictures in each answer (e.g. all)")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    image = args.image
    if image is None:
        from pneumocam.config import SynthConfig
        from pneumocam.data import synthesize

        folder = synthesize(tempfile.mkdtemp(prefix="pneumocam-load-"), SynthConfig(n_images=1, seed=3))
        image = next((folder / "stage_2_train_images").glob("*.dcm"))
    with running_server(args.checkpoint) as (url, server):
        result = load(url, image, args.clients, args.seconds, args.max_requests, args.pictures)
        peak = _peak_rss_mb(server.pid)
    forward_ms, predict_ms = predict_vs_forward(args.checkpoint, image, args.repeats)
    print(f"image {image.name} ({image.stat().st_size // 1024} KB), {args.clients} clients, {args.seconds:g} s, "
          f"pictures: {args.pictures or 'none'}, "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads\n")
    print(f"{'requests':>9}{'errors':>8}{'req/s':>8}{'p50 ms':>9}{'p95 ms':>9}{'peak RSS MB':>13}")
    print(f"{result['requests']:>9}{result['errors']:>8}{result['rps']:>8.2f}{result['p50_ms']:>9.1f}"
          f"{result['p95_ms']:>9.1f}{peak:>13.0f}")
    print(f"\nsingle image, median of {args.repeats}: bare forward {forward_ms:.1f} ms, predict_arrays "
          f"(forward + CAM + upsample) {predict_ms:.1f} ms -> {predict_ms / forward_ms:.3f}x (target <= 1.1x)")
    print(f"errors: {result['errors']} (target 0)")


if __name__ == "__main__":
    main()
