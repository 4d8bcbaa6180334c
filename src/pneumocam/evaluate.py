"""Evaluation stage: a checkpoint on a prepared split -> metrics.json + predictions.csv.

Probabilities are sigmoid(logit); the decision is probability >= threshold (0.5 by default).
metrics.json also records the checkpoint's config, data fingerprint and versions, so a number can
always be traced to the model and data that produced it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pneumocam.data import dataset_files, dataset_labels, load_file, read_fingerprint, split_dataset
from pneumocam.files import write_csv, write_json
from pneumocam.inference import Predictor, batches
from pneumocam.metrics import Bootstrap, bootstrap_ci, classification_metrics
from pneumocam.provenance import package_versions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig:
    split: str = "val"
    threshold: float = 0.5
    batch_size: int = 32
    bootstrap: int = 1000
    seed: int = 0
    device: str = "cpu"


@dataclass(frozen=True)
class SplitPredictions:
    files: list[str]
    labels: np.ndarray  # (N,) 0/1
    logits: np.ndarray  # (N,)
    probabilities: np.ndarray  # (N,) in [0, 1]


def predict_split(predictor: Predictor, data_dir: str | Path, split: str, batch_size: int = 32) -> SplitPredictions:
    """Run the model on every prepared image of a split, in batches, with a progress bar."""
    dataset = split_dataset(data_dir, split)
    files, labels = dataset_files(dataset, data_dir), dataset_labels(dataset)
    paths = [path for path, _ in dataset.samples]
    logits = []
    for chunk in tqdm(list(batches(paths, batch_size)), desc=f"predict {split}", unit="batch"):
        batch_logits, _, _ = predictor.forward([load_file(p) for p in chunk])
        logits.append(batch_logits)
    logits_arr = np.concatenate(logits) if logits else np.zeros(0, dtype=np.float32)
    return SplitPredictions(files, labels, logits_arr, 1.0 / (1.0 + np.exp(-logits_arr.astype(np.float64))))


def evaluate(checkpoint: str | Path, data_dir: str | Path, out_dir: str | Path,
             config: EvalConfig = EvalConfig()) -> dict:
    """Write OUT/metrics.json and OUT/predictions.csv; returns the metrics dict."""
    out_dir = Path(out_dir)
    predictor = Predictor.from_checkpoint(checkpoint, device=config.device)
    start = time.perf_counter()
    preds = predict_split(predictor, data_dir, config.split, config.batch_size)
    inference_s = time.perf_counter() - start
    start = time.perf_counter()
    metrics = classification_metrics(preds.probabilities, preds.labels, config.threshold)
    metrics["ci95"] = bootstrap_ci(preds.probabilities, preds.labels, config.threshold,
                                   Bootstrap(config.bootstrap, config.seed)) if config.bootstrap else {}
    metrics_s = time.perf_counter() - start
    meta = predictor.metadata
    metrics.update({
        "split": config.split, "bootstrap_resamples": config.bootstrap,
        "timing_s": {"inference": round(inference_s, 3), "metrics": round(metrics_s, 3)},
        "checkpoint": str(Path(checkpoint).resolve()), "data_dir": str(Path(data_dir).resolve()),
        "data_fingerprint": read_fingerprint(data_dir), "train_data_fingerprint": meta.get("data_fingerprint"),
        "model_config": meta.get("config"), "normalization": meta.get("normalization"),
        "versions": package_versions(),
    })
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", metrics)
    rows = [{"file": f, "label": int(y), "probability": f"{p:.6f}", "logit": f"{z:.6f}",
             "prediction": int(p >= config.threshold)}
            for f, y, p, z in zip(preds.files, preds.labels, preds.probabilities, preds.logits, strict=True)]
    write_csv(out_dir / "predictions.csv", ["file", "label", "probability", "logit", "prediction"], rows)
    log.info("evaluated %d images: accuracy %.4f, AUROC %s", metrics["n"], metrics["accuracy"], metrics["auroc"])
    return metrics
