"""The CPU inference path in one run: backends at batch 1 and 16, offline throughput, `serve` under load.

1. Images/s of Predictor.forward (network + CAM, what predict and serve run) at batch 1 and 16 for eager
   torch, torch.compile (inductor), torch under bfloat16 autocast, onnxruntime and openvino in float32 and on
   the INT8 copy (made first with `pneumocam quantize` from --calibration where this model has none cached), on
   real chest X-rays, the backends taking turns in each round; each backend's largest |difference| to eager
   torch in logit and CAM. Targets: an INT8 backend >= 2.5x eager at batch 16 and >= 1.5x at batch 1.
2. Offline batched throughput: Predictor.predict_files (read + decode + resize + forward + CAM) over the same
   files at batch 16, with the serving backend.
3. `pneumocam serve` as a real process on loopback under 1, 4 and 16 concurrent clients posting a real
   DICOM for the default answer (probability, call, the CAM's cells; no pictures): requests/s, p50/p95.
   Target at 16 clients: >= 0.95x the offline throughput, p95 < 1 s. Then 16 clients asking for all three
   pictures (?pictures=all), to show what drawing them costs.
Writes the tables as JSON with --out.

usage: python benchmarks/cpu_inference.py [CKPT] [--images DIR] [--serve-backend onnxruntime] [--seconds 20]
                                         [--calibration DIR ...] [--serve-only] [--clients 1,4,16]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import load, running_server  # noqa: E402

from pneumocam.commands.quantize import quantize_model  # noqa: E402
from pneumocam.deploy import Predictor
from pneumocam.deploy.backends import BACKENDS, torch_runner  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_IMAGES = SHARED / "rsna_sample" / "stage_2_train_images"
DEFAULT_CALIBRATION = [SHARED / "rsna_1000" / "stage_2_train_images", SHARED / "kermany224" / "train"]
EXTRA = ("compile", "bf16")  # eager torch run another way: torch.compile, bfloat16 autocast


def bf16_runner(net: torch.nn.Module):
    """Eager torch under CPU bfloat16 autocast (measured, kept or not: see the table)."""
    def run(x: torch.Tensor):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logit, features = net(x)
        return logit.float(), features.float()

    return torch_runner(run)


def predictor_for(checkpoint: str, backend: str) -> tuple[Predictor, float]:
    """A Predictor on `backend` ("compile": eager torch under torch.compile, "bf16": under bfloat16 autocast),
    and its start-up seconds (torch.compile compiles on the first batches)."""
    start = time.perf_counter()
    if backend in EXTRA:
        predictor = Predictor.from_checkpoint(checkpoint, backend="torch")
        predictor.run = torch_runner(torch.compile(predictor.net)) if backend == "compile" else \
            bf16_runner(predictor.net)
    else:
        predictor = Predictor.from_checkpoint(checkpoint, backend=backend)
    return predictor, time.perf_counter() - start


def timed_rate(predictor: Predictor, chunk: list[np.ndarray], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        predictor.forward(chunk)
    return calls * len(chunk) / (time.perf_counter() - start)


def backend_table(checkpoint: str, images: list[np.ndarray], rounds: int) -> list[dict]:
    """Backends take turns within each round, so that a slower minute of this shared machine hits them all alike;
    each rate is the median over rounds and each speed-up the median of the per-round ratios to eager torch."""
    predictors, rows = {}, []
    reference = None
    for backend in (*BACKENDS, *EXTRA):
        try:
            predictor, startup = predictor_for(checkpoint, backend)
            first = time.perf_counter()
            got = predictor.forward(images[:16])
            predictor.forward(images[:1])
            startup += time.perf_counter() - first
        except Exception as exc:  # a backend that is not installed: say so in the table
            rows.append({"backend": backend, "error": f"{type(exc).__name__}: {exc}"[:200]})
            continue
        reference = got if reference is None else reference
        predictors[backend] = predictor
        rows.append({"backend": backend, "startup_s": round(startup, 2),
                     "max_abs_diff_logit": float(np.abs(got.logits - reference.logits).max()),
                     "max_abs_diff_cam": float(np.abs(got.maps - reference.maps).max())})
    for batch, calls in ((1, 8), (16, 1)):
        chunk = (images * (batch // len(images) + 1))[:batch]
        rates = {backend: [] for backend in predictors}
        for _ in range(rounds):
            for backend, predictor in predictors.items():
                rates[backend].append(timed_rate(predictor, chunk, calls))
        for row in rows:
            if row["backend"] in rates:
                mine = rates[row["backend"]]
                row[f"batch{batch}_img_s"] = statistics.median(mine)
                row[f"batch{batch}_vs_eager"] = statistics.median(
                    [m / e for m, e in zip(mine, rates["torch"], strict=True)])
        print(f"  batch {batch}: " + ", ".join(f"{b} {statistics.median(r):.1f}" for b, r in rates.items()), flush=True)
    return rows


def offline_throughput(predictor: Predictor, files: list[Path], seconds: float) -> float:
    """Files -> predictions with Predictor.predict_files at batch 16 (what `pneumocam predict` runs), img/s."""
    paths = [str(p) for p in (files * (64 // len(files) + 1))[:64]]
    predictor.predict_files(paths[:16], batch_size=16)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done < 64:
        predictor.predict_files(paths, batch_size=16)
        done += len(paths)
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", default="pneumocam-cxr")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="a folder of DICOMs (default: the "
                                                                           "17 real RSNA DICOMs in shared/data)")
    parser.add_argument("--serve-backend", default="onnxruntime", choices=BACKENDS)
    parser.add_argument("--seconds", type=float, default=20.0, help="per load level (default 20)")
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds per batch size (default 15)")
    parser.add_argument("--rate-seconds", type=float, default=8.0, help="offline throughput run (default 8)")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--serve-only", action="store_true", help="skip the backend table (repeat the load levels)")
    parser.add_argument("--calibration", type=Path, nargs="+", default=DEFAULT_CALIBRATION,
                        help="images for `pneumocam quantize` where the model has no INT8 copy cached yet")
    args = parser.parse_args()
    files = sorted(args.images.glob("*.dcm"))
    if not files:
        sys.exit(f"no DICOM files in {args.images}")
    predictor = Predictor.from_checkpoint(args.checkpoint)
    images = [predictor.load(f) for f in files]
    print(f"{len(files)} images from {args.images}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}", flush=True)

    made = quantize_model(args.checkpoint, args.calibration)  # once: cached for later runs
    print(f"INT8 copy: {made['path']} ({'cached' if made['cached'] else 'made now'}, {made['calibration']['count']} "
          "calibration images)", flush=True)
    backends = [] if args.serve_only else backend_table(args.checkpoint, images, args.rounds)
    offline_predictor = Predictor.from_checkpoint(args.checkpoint, backend=args.serve_backend)
    serve, offline_runs = [], []
    with running_server(args.checkpoint, "--backend", args.serve_backend, "--max-queue", "64") as (url, _):
        load(url, files[0], 4, 3.0, 50)  # warm-up
        levels = [(int(c), "") for c in args.clients.split(",")] + [(int(args.clients.split(",")[-1]), "all")]
        for clients, pictures in levels:
            before = offline_throughput(offline_predictor, files, args.rate_seconds)  # the idle server beside it
            result = load(url, files[0], clients, args.seconds, 100_000, pictures)
            after = offline_throughput(offline_predictor, files, args.rate_seconds)
            offline_runs += [before, after]
            reference = (before + after) / 2  # offline measured just before and after: the same minute's machine
            serve.append({"clients": clients, "pictures": pictures or "none", **result, "offline_img_s": reference,
                          "vs_offline": result["rps"] / reference})
            print(f"  serve, {clients} clients, pictures {pictures or 'none'}: {result['rps']:.1f} req/s "
                  f"({result['rps'] / reference:.2f}x offline "
                  f"{reference:.1f} img/s), p50 {result['p50_ms']:.0f} ms, p95 {result['p95_ms']:.0f} ms, "
                  f"{result['errors']} errors", flush=True)
    offline = statistics.median(offline_runs)

    print(f"\n{'backend':<18}{'batch 1 img/s':>14}{'batch 16 img/s':>15}{'x eager (1)':>12}{'x eager (16)':>13}"
          f"{'|d logit|':>11}{'|d CAM|':>10}{'start s':>9}")
    for row in backends:
        if "error" in row:
            print(f"{row['backend']:<18}  not run: {row['error']}")
            continue
        print(f"{row['backend']:<18}{row['batch1_img_s']:>14.1f}{row['batch16_img_s']:>15.1f}"
              f"{row['batch1_vs_eager']:>12.2f}{row['batch16_vs_eager']:>13.2f}{row['max_abs_diff_logit']:>11.1e}"
              f"{row['max_abs_diff_cam']:>10.1e}"
              f"{row['startup_s']:>9.1f}")
    best = max((r for r in backends if "batch16_vs_eager" in r), key=lambda r: r["batch16_vs_eager"],
               default={"backend": "none measured", "batch16_vs_eager": float("nan")})
    print(f"best at batch 16: {best['backend']}, {best['batch16_vs_eager']:.2f}x eager; targets for an INT8 "
          "backend: >= 2.5x at batch 16, >= 1.5x at batch 1")
    print(f"\noffline batched (files -> predictions, batch 16, {args.serve_backend}): median {offline:.1f} img/s, "
          f"each load level compared with the runs just before and after it")
    print(f"{'clients':>8}{'pictures':>9}{'req/s':>8}{'offline img/s':>14}{'x offline':>10}{'p50 ms':>8}"
          f"{'p95 ms':>8}{'errors':>8}")
    for row in serve:
        print(f"{row['clients']:>8}{row['pictures']:>9}{row['rps']:>8.1f}{row['offline_img_s']:>14.1f}"
              f"{row['vs_offline']:>10.2f}"
              f"{row['p50_ms']:>8.0f}{row['p95_ms']:>8.0f}{row['errors']:>8}")
    print("target at 16 clients (the default answer, no pictures): >= 0.95x offline, p95 < 1000 ms; the last row "
          "asks for all three pictures in every answer")
    if args.out:
        args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": platform.platform(),
                                        "threads": torch.get_num_threads(), "torch": torch.__version__,
                                        "images": str(args.images), "backends": backends,
                                        "offline_img_s": offline, "offline_runs": offline_runs,
                                        "serve_backend": args.serve_backend, "serve": serve}, indent=2))


if __name__ == "__main__":
    main()
