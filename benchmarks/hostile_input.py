"""Hostile uploads against a real `pneumocam serve` on loopback: every bad request 4xx, every good one right.

Starts `pneumocam serve CKPT` as a process on 127.0.0.1 (TMPDIR pointed at a folder of its own) and sends:
thin and wide PNG / JPEG / TIFF bombs (a few kB that decode to 20,000-60,000 pixels a side), a DICOM whose
Rows x Columns disagree with its embedded JPEG, .npy files of huge shape (one with its data, 8 MB, one with
only a header), a 200 MB chunked body, truncated multipart, a malformed JPEG, then 100 bad requests mixed
with the 17 real RSNA DICOMs as good ones from 24 threads at once. It prints, and writes as JSON with --out:
each case's status and message, the server's peak memory growth over its warmed-up peak (VmHWM; target
< 300 MB), what the server wrote while the chunked body came in (/proc/PID/io wchar: the spooled part, its
answer and log line; target < 1.1x the upload limit), 5xx answers (target 0), and whether every good
request got the probability `Predictor` gives offline (within 1e-5). Linux only (/proc); loopback only;
bounded in count and time (about a minute on 2 cores).

usage: python benchmarks/hostile_input.py [CKPT] [--out hostile_input.json] [--max-upload-mb 32]
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

SHARED = Path(os.environ.get("PNEUMOCAM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc(pid: int, name: str, key: str) -> int:
    for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    raise KeyError(key)


def multipart(data: bytes, name: str, boundary: str | None = None) -> tuple[bytes, str]:
    boundary = boundary or uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def post(port: int, body: bytes, content_type: str, timeout: float = 120) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/predict", body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        conn.close()


def _encoded(fmt: str, width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format=fmt)
    return buffer.getvalue()


def _npy(array: np.ndarray | None = None, header_shape: tuple | None = None) -> bytes:
    buffer = io.BytesIO()
    if array is not None:
        np.save(buffer, array)
    else:
        np.lib.format.write_array_header_1_0(buffer, {"descr": "<f8", "fortran_order": False,
                                                      "shape": header_shape})
        buffer.write(b"\0" * 64)
    return buffer.getvalue()


def _dicom_with_wrong_size(folder: Path) -> bytes:
    import pydicom

    from pneumocam.data import write_dicom_jpeg

    write_dicom_jpeg(folder / "x.dcm", (np.arange(512 * 512) % 200).reshape(512, 512).astype(np.uint8), "p")
    ds = pydicom.dcmread(folder / "x.dcm")
    ds.Rows, ds.Columns = 64, 64  # the header says 64 x 64; the JPEG inside is 512 x 512
    ds.save_as(folder / "y.dcm")
    return (folder / "y.dcm").read_bytes()


def bad_uploads(folder: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (body, content type) of requests that must get a 4xx."""
    files = {
        "png_thin_20000x40": ("thin.png", _encoded("PNG", 20_000, 40)),
        "png_wide_40x60000": ("wide.png", _encoded("PNG", 40, 60_000)),
        "jpeg_thin_40x20000": ("thin.jpg", _encoded("JPEG", 40, 20_000)),
        "tiff_thin_20000x40": ("thin.tif", _encoded("TIFF", 20_000, 40)),
        "png_strip_5000x40": ("strip.png", _encoded("PNG", 5_000, 40)),
        "dicom_rows_disagree_with_jpeg": ("rows.dcm", _dicom_with_wrong_size(folder)),
        "npy_1x2000000_float32": ("wide.npy", _npy(np.zeros((1, 2_000_000), np.float32))),
        "npy_header_60000x60000": ("huge.npy", _npy(header_shape=(60_000, 60_000))),
        "malformed_jpeg": ("broken.jpg", b"\xff\xd8\xff\xe0" + b"not a jpeg" * 50),
        "text_file": ("notes.png", b"just text"),
    }
    cases = {name: multipart(data, filename) for name, (filename, data) in files.items()}
    body, content_type = multipart(_encoded("PNG", 64, 64), "cut.png")
    cases["truncated_multipart"] = (body[: len(body) // 2], content_type)
    cases["not_multipart"] = (b"raw bytes", "text/plain")
    return cases


def chunked_upload(port: int, megabytes: int, pid: int) -> dict:
    """A body of `megabytes` MB without Content-Length; how much the client got to send, the answer, and what
    the server wrote meanwhile."""
    written_before = _proc(pid, "io", "wchar")
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n\r\n"
            "\x89PNG\r\n\x1a\n").encode("latin-1")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    sent, status, message = 0, None, ""
    try:
        conn.putrequest("POST", "/v1/predict")
        conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        piece = b"\0" * (1024 * 1024)
        for chunk in [head] + [piece] * megabytes + [f"\r\n--{boundary}--\r\n".encode()]:
            conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            sent += len(chunk)
        conn.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed while we were still sending
    try:
        response = conn.getresponse()
        status, message = response.status, response.read().decode("utf-8", "replace")
    except (http.client.HTTPException, OSError) as exc:
        message = f"no answer read ({type(exc).__name__})"
    conn.close()
    time.sleep(0.5)
    return {"status": status, "message": message[:200], "client_sent_mb": round(sent / 2**20, 1),
            "server_wrote_mb": round((_proc(pid, "io", "wchar") - written_before) / 2**20, 2)}


def start_server(checkpoint: str, port: int, max_upload_mb: float, tmp: Path) -> subprocess.Popen:
    env = {**os.environ, "TMPDIR": str(tmp)}
    process = subprocess.Popen([sys.executable, "-m", "pneumocam.cli", "serve", checkpoint, "--port", str(port),
                                "--max-upload-mb", str(max_upload_mb)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/v1/health")
            if conn.getresponse().status == 200:
                return process
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise SystemExit("the server did not start within 120 s")


def run(checkpoint: str, max_upload_mb: float) -> dict:
    from pneumocam.deploy import Predictor

    goods = sorted((SHARED / "rsna_sample" / "stage_2_train_images").glob("*.dcm"))[:20]
    if not goods:
        raise SystemExit(f"real DICOMs not found under {SHARED}/rsna_sample (set PNEUMOCAM_SHARED_DATA)")
    predictions = Predictor.from_checkpoint(checkpoint).predict_files(goods)[0]
    expected = {Path(p.source).name: p.probability for p in predictions}
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="hostile-") as folder:
        folder = Path(folder)
        (folder / "tmp").mkdir()
        server = start_server(checkpoint, port, max_upload_mb, folder / "tmp")
        try:
            return _attack(port, server.pid, folder, goods, expected, max_upload_mb)
        finally:
            server.terminate()
            server.wait(timeout=30)


def _attack(port: int, pid: int, folder: Path, goods: list[Path], expected: dict, max_upload_mb: float) -> dict:
    good_bodies = {path.name: multipart(path.read_bytes(), path.name) for path in goods}
    for body, content_type in list(good_bodies.values())[:3]:  # warm up: the model's first passes allocate
        post(port, body, content_type)
    baseline_mb = _proc(pid, "status", "VmHWM") / 1024
    cases = bad_uploads(folder)
    one_by_one = {}
    for name, (body, content_type) in cases.items():
        status, message = post(port, body, content_type)
        one_by_one[name] = {"status": status, "message": json.loads(message).get("detail", message)[:160]
                            if message.startswith("{") else message[:160]}
    chunked = chunked_upload(port, 200, pid)
    mixed = [("bad", name, *cases[name]) for name in list(cases) * 10][:100]
    mixed += [("good", name, *body) for name, body in good_bodies.items()]
    order = np.random.default_rng(0).permutation(len(mixed))
    start = time.perf_counter()
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda i: (mixed[i], post(port, mixed[i][2], mixed[i][3])), order))
    wall = time.perf_counter() - start
    good_ok = sum(1 for (kind, name, *_), (status, text) in answers if kind == "good" and status == 200
                  and abs(json.loads(text)["probability"] - expected[name]) <= 1e-5)
    statuses = [status for _, (status, _) in answers] + [c["status"] for c in one_by_one.values()]
    peak_mb = _proc(pid, "status", "VmHWM") / 1024
    left = list((folder / "tmp").iterdir())
    return {
        "cases": one_by_one, "chunked_200mb": chunked,
        "mixed": {"bad": 100, "good": len(good_bodies), "threads": 24, "wall_s": round(wall, 2),
                  "bad_answered_4xx": sum(1 for (kind, *_), (s, _) in answers if kind == "bad" and 400 <= s < 500),
                  "good_answered_right": good_ok},
        "server_5xx": sum(1 for s in statuses if s is not None and s >= 500) + int((chunked["status"] or 0) >= 500),
        "peak_rss_warm_mb": round(baseline_mb, 1), "peak_rss_end_mb": round(peak_mb, 1),
        "peak_growth_mb": round(peak_mb - baseline_mb, 1),
        "upload_limit_mb": max_upload_mb,
        # an upload's temporary file (the server's, or a spooled multipart part) left behind is a leak; other
        # files are not request data (onnxruntime writes a 51-byte ".ses" id file on import)
        "upload_files_left": sorted(p.name for p in left if p.name.startswith(("pneumocam-upload-", "tmp"))),
        "other_tmp_files": sorted(p.name for p in left if not p.name.startswith(("pneumocam-upload-", "tmp"))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", default="pneumocam-cxr")
    parser.add_argument("--max-upload-mb", type=float, default=32.0)
    parser.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = parser.parse_args()
    result = run(args.checkpoint, args.max_upload_mb)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    ok = (result["server_5xx"] == 0 and not result["upload_files_left"] and result["peak_growth_mb"] < 300
          and result["chunked_200mb"]["server_wrote_mb"] < 1.1 * args.max_upload_mb
          and result["mixed"]["bad_answered_4xx"] == 100
          and result["mixed"]["good_answered_right"] == result["mixed"]["good"]
          and all(400 <= case["status"] < 500 for case in result["cases"].values()))
    print("all targets met" if ok else "TARGETS MISSED", file=sys.stderr)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
