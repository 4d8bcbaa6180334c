"""Shared fixtures: the real sample data in ../shared/data, and a tiny phantom set + checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PNEUMOCAM_SHARED_DATA", ROOT.parent / "shared" / "data"))
RSNA_SAMPLE = SHARED_DATA / "rsna_sample"


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real sample data not found at {path} (set PNEUMOCAM_SHARED_DATA)")
    return path


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory):
    """ONNX exports and INT8 copies go to a folder of this run, never to the user's ~/.cache."""
    before = os.environ.get("PNEUMOCAM_CACHE")
    os.environ["PNEUMOCAM_CACHE"] = str(tmp_path_factory.mktemp("model-cache"))
    yield Path(os.environ["PNEUMOCAM_CACHE"])
    if before is None:
        os.environ.pop("PNEUMOCAM_CACHE", None)
    else:
        os.environ["PNEUMOCAM_CACHE"] = before


@pytest.fixture(scope="session")
def rsna_sample() -> Path:
    return require(RSNA_SAMPLE)


@pytest.fixture(scope="session")
def phantom_source(tmp_path_factory) -> Path:
    from pneumocam.config import SynthConfig
    from pneumocam.data import synthesize

    return synthesize(tmp_path_factory.mktemp("phantom"), SynthConfig(n_images=24, positive_fraction=0.5,
                                                                         size=256, seed=7))


@pytest.fixture(scope="session")
def phantom_data(phantom_source, tmp_path_factory) -> Path:
    from pneumocam.commands.prepare import prepare
    from pneumocam.config import PrepareConfig

    out = tmp_path_factory.mktemp("prepared")
    prepare(phantom_source, out, PrepareConfig(val_fraction=0.25, seed=0, workers=1))
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(phantom_data, tmp_path_factory) -> Path:
    """A real Lightning fit of one batch (fast_dev_run) on the tiny phantom set."""
    from pneumocam.commands.train import fit
    from pneumocam.config import TrainConfig

    run = tmp_path_factory.mktemp("run")
    result = fit(phantom_data, run, TrainConfig(epochs=1, batch_size=4, pretrained="none", augment="original",
                                                fast_dev_run=True, seed=0))
    return result.last_checkpoint


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, process, seconds: float = 120.0) -> None:
    """Until `url` answers 200; fails the test when `process` (a server we started) exits or time runs out."""
    import time
    import urllib.request

    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            if process.poll() is not None:
                output = process.stdout.read() if process.stdout else ""
                pytest.fail(f"server exited with {process.returncode}: {output}")
            time.sleep(0.2)
    process.kill()
    pytest.fail(f"{url} did not answer within {seconds:g} s")


def dead_pid() -> int:
    """The PID of a process that has just exited (what a writer killed with -9 leaves in its temp names)."""
    import subprocess
    import sys

    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header (correct CRCs) that declares width x height pixels: a decompression-bomb probe."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    pixels = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + pixels + chunk(b"IEND", b"")


def receptive_field_centres(net) -> list[float]:
    """Where each last-stage cell is centred in the input, traced through the network's own layers: every conv
    and pool on the main path maps output index i to the input position i * stride - padding + (k - 1) / 2."""
    import torch

    layers = [m for name, m in net.feature_map.named_modules()
              if isinstance(m, (torch.nn.Conv2d, torch.nn.MaxPool2d)) and "downsample" not in name]

    def param(value):
        return value[0] if isinstance(value, tuple) else value

    centres = []
    for cell in range(7):
        position = float(cell)
        for layer in reversed(layers):
            k, stride, pad = param(layer.kernel_size), param(layer.stride), param(layer.padding)
            position = position * stride - pad + (k - 1) / 2
        centres.append(position)
    return centres
