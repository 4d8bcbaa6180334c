"""The whole method on the phantom set: synth -> prepare -> train -> evaluate -> cam -> localize, on CPU.

Layout under OUT:
  source/     phantom DICOMs + labels CSV (RSNA layout)
  data/       Processed/{train,val}/{0,1}/*.npy, manifest.csv, boxes.csv, stats.json, rejected.csv
  run/        checkpoints/{best,last}.ckpt, config.json, logs/metrics.csv
  eval/       metrics.json, predictions.csv
  cam/        side-by-side overlays of validation images (boxes dashed), raw maps, cams.csv
  localize/   localization.json (pointing game, IoU, IoBB vs random/centre baselines), overlay grid
  real/       the bundled real-data model pneumocam-cxr on the bundled real X-rays: overlays, cams.csv
  summary.json
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from importlib import resources
from pathlib import Path

from pneumocam.commands.cam import CAM_FIELDS, explain_files, write_cam_outputs
from pneumocam.commands.evaluate import evaluate
from pneumocam.commands.localize import localize
from pneumocam.commands.prepare import prepare
from pneumocam.commands.train import fit
from pneumocam.config import CamConfig, DemoConfig, EvalConfig, LocalizeConfig, PrepareConfig, SynthConfig, TrainConfig
from pneumocam.data import dataset_files, load_boxes, split_dataset, synthesize
from pneumocam.deploy import Predictor
from pneumocam.files import write_csv, write_json
from pneumocam.model import BUNDLED_MODELS

log = logging.getLogger(__name__)
BUNDLED_MODEL = next(iter(BUNDLED_MODELS))


def _cam_examples(data_dir: Path, n: int) -> tuple[list[Path], list[list]]:
    """Up to n - n//2 boxed positive validation images, then negatives; with each image's boxes."""
    dataset = split_dataset(data_dir, "val")
    boxes = load_boxes(data_dir)
    relative = list(zip((Path(p) for p, _ in dataset.samples), dataset_files(dataset, data_dir), strict=True))
    positives = [(p, boxes[key]) for p, key in relative if key in boxes]
    negatives = [(p, []) for p, key in relative if "/0/" in key]
    chosen = positives[: n - n // 2] + negatives[: n // 2]
    return [p for p, _ in chosen], [b for _, b in chosen]


def real_examples() -> list[Path]:
    """The real chest X-rays shipped with the package (Kermany et al. 2018, CC BY 4.0; see their CREDITS.md)."""
    folder = Path(str(resources.files("pneumocam").joinpath("examples")))
    return sorted(folder.glob("*.jpeg"))


def explain_real_examples(out_dir: Path) -> list[dict]:
    """The bundled real-data model on the bundled real X-rays: what a user's own image will look like."""
    return explain_files(BUNDLED_MODEL, real_examples(), out_dir).rows


def run_demo(out_dir: str | Path, config: DemoConfig = DemoConfig()) -> dict:
    out_dir = Path(out_dir)
    timings: dict[str, float] = {}

    def timed(name, fn, *args):
        start = time.perf_counter()
        result = fn(*args)
        timings[name] = round(time.perf_counter() - start, 1)
        log.info("%s done in %.1f s", name, timings[name])
        return result

    synth, prep, train = stage_configs(config)
    timed("synth", synthesize, out_dir / "source", synth)
    timed("prepare", prepare, out_dir / "source", out_dir / "data", prep)
    fitted = timed("train", fit, out_dir / "data", out_dir / "run", train)
    metrics = timed("evaluate", evaluate, fitted.best_checkpoint, out_dir / "data", out_dir / "eval",
                    EvalConfig(split="val", maps_images=16))  # the report's maps section on a sample: demo time
    examples, example_boxes = _cam_examples(out_dir / "data", config.n_cam_images)

    def cams():
        predictor = Predictor.from_checkpoint(fitted.best_checkpoint)
        predictions, _ = predictor.predict_files(examples)
        rows = write_cam_outputs(predictions, out_dir / "cam", CamConfig().alpha, CamConfig().colormap, example_boxes)
        write_csv(out_dir / "cam" / "cams.csv", CAM_FIELDS, rows)
        return rows

    cam_rows = timed("cam", cams)
    real_rows = timed("real", explain_real_examples, out_dir / "real")
    loc = timed("localize", localize, fitted.best_checkpoint, out_dir / "data", out_dir / "localize",
                LocalizeConfig(split="val"))
    summary = {
        "out_dir": str(out_dir.resolve()), "timings_s": timings, "total_s": round(sum(timings.values()), 1),
        "best_checkpoint": str(fitted.best_checkpoint), "metrics": {k: metrics[k] for k in (
            "n", "n_positive", "accuracy", "precision", "recall", "f1", "specificity", "auroc", "auprc")},
        "cam_images": [str(out_dir / "cam" / r["png"]) for r in cam_rows],
        "real_examples": {"model": BUNDLED_MODEL, "images": [
            {"source": Path(r["source"]).name, "probability": float(r["probability"]),
             "overlay": str(out_dir / "real" / r["png"])} for r in real_rows]},
        "localization": {"n_images": loc["n_images"], "pointing_game": loc["pointing_game"],
                         "mean_iou": loc["mean_iou"], "random_pointing_game": loc["baseline_random"]["pointing_game"],
                         "methods": {m: v["pointing_game"] for m, v in loc["methods"].items()}},
        "config": {"demo": asdict(config), "synth": asdict(synth), "prepare": asdict(prep), "train": asdict(train)},
    }
    write_json(out_dir / "summary.json", summary)
    return summary


# the demo trains from scratch on small phantoms: a higher rate, no augmentation, and box guidance, since the
# phantoms come with boxes as RSNA does
DEMO_TRAINING = {"batch_size": 16, "lr": 2e-3, "augment": "none", "pretrained": "none", "data_stats": True,
                 "box_loss_weight": 0.1}


def stage_configs(config: DemoConfig) -> tuple[SynthConfig, PrepareConfig, TrainConfig]:
    """The settings of the demo's synth, prepare and train steps."""
    return (SynthConfig(n_images=config.n_images, seed=config.seed), PrepareConfig(seed=config.seed),
            TrainConfig(epochs=config.epochs, seed=config.seed, **DEMO_TRAINING))


def ensure_phantom_run(workdir: str | Path, n_images: int = 800, epochs: int = 6, seed: int = 0) -> tuple[Path, Path]:
    """A prepared phantom data set and a trained checkpoint under `workdir`, made only if absent.

    The notebooks call this so each runs on its own, and reuse what an earlier notebook made.
    Returns (data_dir, best_checkpoint).
    """
    workdir = Path(workdir)
    synth, prep, train = stage_configs(DemoConfig(n_images, epochs, seed))
    data_dir, checkpoint = workdir / "data", workdir / "run" / "checkpoints" / "best.ckpt"
    if not (data_dir / "stats.json").exists():
        synthesize(workdir / "source", synth)
        prepare(workdir / "source", data_dir, prep)
    if not checkpoint.exists():
        checkpoint = fit(data_dir, workdir / "run", train).best_checkpoint
    return data_dir, checkpoint
