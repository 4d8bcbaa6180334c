"""A model's predictions on every image of a prepared split: what `pneumocam evaluate` measures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pneumocam.data.datasets import dataset_files, dataset_labels, manifest_patients, split_dataset
from pneumocam.data.preprocess import load_file
from pneumocam.deploy.predictor import Predictor, batches
from pneumocam.errors import PneumocamError
from pneumocam.model.calibration import sigmoid


@dataclass(frozen=True)
class SplitPredictions:
    files: list[str]
    patients: list[str]
    labels: np.ndarray  # (N,) 0/1
    logits: np.ndarray  # (N,) raw
    probabilities: np.ndarray  # (N,) in [0, 1], calibrated when the checkpoint is
    raw_probabilities: np.ndarray  # (N,) sigmoid of the raw logits


def predict_split(predictor: Predictor, data_dir: str | Path, split: str, batch_size: int = 32) -> SplitPredictions:
    """Run the model on every prepared image of a split, in batches, with a progress bar."""
    dataset = split_dataset(data_dir, split)
    files, labels = dataset_files(dataset, data_dir), dataset_labels(dataset)
    if not files:
        raise PneumocamError(f"{Path(data_dir) / 'Processed' / split}: no images to evaluate")
    paths = [path for path, _ in dataset.samples]
    logits = [predictor.forward([load_file(p) for p in chunk]).logits
              for chunk in tqdm(list(batches(paths, batch_size)), desc=f"predict {split}", unit="batch")]
    logits_arr = np.concatenate(logits)
    return SplitPredictions(files, manifest_patients(data_dir, files), labels, logits_arr,
                            predictor.probabilities(logits_arr), sigmoid(logits_arr))
