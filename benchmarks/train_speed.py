"""Training throughput: pneumocam's Lightning training vs a plain PyTorch loop, the data pipeline vs
what the model consumes, and (on a GPU) each speed feature on and off.

Runs unchanged on CPU or CUDA (about 5 minutes on one GPU; longer on 2 CPU cores with the defaults).
Everything uses a phantom set it makes and prepares first (--n-images, 224 px). Defaults follow the
device: batch 32 / 16 steps / 320 images on CPU, batch 256 / 20 steps / 2,048 images on a GPU.

  lightning   PneumoniaModule + PneumoniaDataModule under lightning.Trainer, S steps, no validation/checkpoints
  plain       the same network, loss, optimizer, batches and memory format in a hand-written loop, S steps
  (both time steps WARMUP..WARMUP+S, after start-up; the two are run alternately twice, best of each kept)
  pipeline    images/s of the training DataLoader alone (file path + CPU augmentation; in-memory + device aug.)
  features    images/s with in-memory data, channels-last and bf16-mixed (CPU; fast only with native bfloat16,
              AVX512-BF16 or AMX) or (GPU) precision, channels-last, in-memory data and torch.compile on/off

Target (issue 4): Lightning within 5% of the plain loop on CPU.

usage: python benchmarks/train_speed.py [--steps N] [--batch-size N] [--n-images N] [--work DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import lightning as L
import torch
from torch import nn

from pneumocam.commands.train import resolve_runtime
from pneumocam.config import TrainConfig
from pneumocam.data import augment_batch, read_normalization
from pneumocam.model import PneumoniaNet
from pneumocam.training import PneumoniaDataModule, PneumoniaModule


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


WARMUP = 2  # steps excluded from every timing (first-call allocations, Trainer start-up)


class _StepTimer(L.Callback):
    """Wall time from the start of step WARMUP to the end of the last step."""

    def __init__(self, device: torch.device):
        self.device, self.start, self.end = device, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == WARMUP:
            _sync(self.device)
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        _sync(self.device)
        self.end = time.perf_counter()


def lightning_rate(data: Path, config: TrainConfig, steps: int) -> float:
    L.seed_everything(0, verbose=False)
    norm = read_normalization(data)
    module = PneumoniaModule(vars(config), 1.0, vars(norm), {}, load_pretrained=False)
    datamodule = PneumoniaDataModule(data, norm, config)
    timer = _StepTimer(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    trainer = L.Trainer(max_steps=steps + WARMUP, accelerator=config.accelerator, devices=1,
                        precision=config.precision, deterministic=config.deterministic == "on",
                        benchmark=config.deterministic == "off", limit_val_batches=0, num_sanity_val_steps=0,
                        logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[timer])
    trainer.fit(module, datamodule=datamodule)
    return steps * config.batch_size / (timer.end - timer.start)


def plain_rate(data: Path, config: TrainConfig, steps: int, device: torch.device) -> float:
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(config.deterministic == "on", warn_only=True)
    torch.backends.cudnn.benchmark = config.deterministic == "off"
    norm = read_normalization(data)
    datamodule = PneumoniaDataModule(data, norm, config)
    datamodule.setup()
    net = PneumoniaNet("none").to(device)
    if config.channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([1.0], device=device))
    generator = torch.Generator().manual_seed(0)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(config.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    start = None
    done = 0
    while done < steps + WARMUP:
        for images, labels in datamodule.train_dataloader():
            if done == WARMUP:
                _sync(device)
                start = time.perf_counter()
            images, labels = images.to(device), labels.to(device)
            if config.in_memory == "on":
                images = (augment_batch(images.float(), generator) - norm.mean) / norm.std
            if config.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
            with autocast:  # what Lightning's mixed-precision plugin does around the forward pass
                logits, _ = net(images)
                loss = loss_fn(logits[:, 0], labels.float())
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            done += 1
            if done == steps + WARMUP:
                break
    _sync(device)
    return steps * config.batch_size / (time.perf_counter() - start)


def pipeline_rate(data: Path, config: TrainConfig, steps: int, device: torch.device) -> float:
    norm = read_normalization(data)
    datamodule = PneumoniaDataModule(data, norm, config)
    datamodule.setup()
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    seen = 0
    for images, _ in datamodule.train_dataloader():
        if config.in_memory == "on":
            images = augment_batch(images.to(device).float(), generator)
        seen += len(images)
        if seen >= steps * config.batch_size:
            break
    _sync(device)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    gpu = torch.cuda.is_available()
    parser.add_argument("--steps", type=int, default=20 if gpu else 16)
    parser.add_argument("--batch-size", type=int, default=256 if gpu else 32)
    parser.add_argument("--n-images", type=int, default=2048 if gpu else 320)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the table here as JSON")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="pneumocam-train-bench-"))
    data = work / "data"
    if not (data / "stats.json").exists():
        subprocess.run([sys.executable, "-m", "pneumocam.cli", "synth", str(work / "src"), "--n-images",
                        str(args.n_images), "--size", "512", "--workers", str(os.cpu_count() or 1)],
                       check=True, capture_output=True)
        subprocess.run([sys.executable, "-m", "pneumocam.cli", "prepare", str(work / "src"), str(data),
                        "--val-fraction", "0.1"], check=True, capture_output=True)
    device = torch.device("cuda" if gpu else "cpu")
    base = resolve_runtime(TrainConfig(batch_size=args.batch_size, pretrained="none", augment="original",
                                       accelerator="gpu" if gpu else "cpu", in_memory="off"))
    name = torch.cuda.get_device_name() if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{name}, torch {torch.__version__}, batch {args.batch_size}, {args.steps} steps per row\n")
    print(f"{'what':<58}{'images/s':>10}")
    table = {"device": name, "torch": torch.__version__, "batch_size": args.batch_size, "steps": args.steps,
             "images_per_s": {}}

    def row(label: str, rate: float, note: str = "") -> None:
        table["images_per_s"][label] = round(rate, 2)
        print(f"{label:<58}{rate:>10.1f}{note}", flush=True)
        if args.json:  # after every row, so a cut-short run keeps what it measured
            args.json.write_text(json.dumps(table, indent=2))

    # alternate the two, twice, and keep each one's best: the machine's noise hits both alike.
    # On a GPU both read the in-memory set, so the comparison is not bounded by CPU augmentation.
    memory = replace(base, in_memory="on")
    compared = memory if gpu else base
    lightning = lightning_rate(data, compared, args.steps)
    plain = plain_rate(data, compared, args.steps, device)
    lightning = max(lightning, lightning_rate(data, compared, args.steps))
    plain = max(plain, plain_rate(data, compared, args.steps, device))
    row("pneumocam training (Lightning), " + ("in-memory data, GPU augmentation" if gpu else
                                               "file data, CPU augmentation"), lightning)
    row("plain PyTorch loop, same steps", plain)
    table["lightning_over_plain"] = round(lightning / plain, 4)
    print(f"{'  Lightning / plain':<58}{lightning / plain:>10.3f}   (target >= 0.95)")
    row("data pipeline alone: files + CPU augmentation (workers 0)", pipeline_rate(data, base, args.steps, device))
    row("data pipeline alone: in memory + device augmentation", pipeline_rate(data, memory, args.steps, device))
    rows = [("in-memory data + device augmentation", memory), ("channels-last off", replace(base, channels_last=False)),
            ("bfloat16 mixed precision (bf16-mixed)", replace(base, precision="bf16-mixed"))]
    if gpu:
        fast = memory
        rows = [("all on (mixed precision, channels-last, in-memory)", fast),
                ("mixed precision off (32-true)", replace(fast, precision="32-true")),
                ("channels-last off", replace(fast, channels_last=False)),
                ("in-memory off (files + CPU augmentation, 4 workers)", replace(fast, in_memory="off", num_workers=4)),
                ("deterministic algorithms on (cuDNN autotune off)", replace(fast, deterministic="on")),
                ("torch.compile on", replace(fast, compile=True))]
    for label, config in rows:
        row("Lightning, " + label, lightning_rate(data, config, args.steps))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
