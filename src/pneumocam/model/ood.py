"""Does this input look like the frontal chest X-rays the model was trained on? Flag, never refuse.

The method (Lee et al. 2018, one layer): the Mahalanobis distance of the network's pooled 512-d feature
vector (the same vector the classifier reads) from the training images' feature distribution, with a
Ledoit-Wolf shrunk covariance because 512 dimensions need more images than a split has for a stable
inverse. An input is flagged when its distance exceeds the `quantile` (default 0.99) of the distances of a
held-out calibration split, so about 1% of in-distribution images are flagged by construction. Lateral
views, photographs, inverted images and other non-radiographs land far from the training features.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from pneumocam.config import OOD_QUANTILE


@dataclass(frozen=True)
class OutOfRange:
    mean: np.ndarray  # (512,)
    precision: np.ndarray  # (512, 512), inverse of the shrunk covariance
    threshold: float  # distances above this are flagged
    quantile: float
    n_train: int
    n_calibration: int

    def distances(self, features: np.ndarray) -> np.ndarray:
        """(B, 512) pooled features -> (B,) Mahalanobis distances."""
        x = np.asarray(features, dtype=np.float64) - np.asarray(self.mean, dtype=np.float64)
        squared = np.einsum("bi,ij,bj->b", x, np.asarray(self.precision, dtype=np.float64), x)
        return np.sqrt(np.clip(squared, 0, None))

    def reason(self, distance: float) -> str:
        if distance <= self.threshold:
            return ""
        return (f"does not look like the frontal chest X-rays the model was trained on: feature distance "
                f"{distance:.1f} > {self.threshold:.1f} (the {self.quantile:.0%} quantile of held-out training-like "
                "images); the prediction is unreliable")

    def to_metadata(self) -> dict:
        """As a checkpoint stores it: the arrays as float32 tensors (torch.load's weights_only allows them)."""
        import torch

        mean, precision = (torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in (self.mean, self.precision))
        return {"method": "mahalanobis-pooled-features", "mean": mean, "precision": precision,
                "threshold": self.threshold, "quantile": self.quantile, "n_train": self.n_train,
                "n_calibration": self.n_calibration}

    @classmethod
    def from_metadata(cls, meta: dict | None) -> OutOfRange | None:
        if not meta:
            return None
        return cls(np.asarray(meta["mean"], dtype=np.float32), np.asarray(meta["precision"], dtype=np.float32),
                   float(meta["threshold"]), float(meta["quantile"]), int(meta["n_train"]), int(meta["n_calibration"]))


def fit_out_of_range(train_features: np.ndarray, calibration_features: np.ndarray,
                     quantile: float = OOD_QUANTILE) -> OutOfRange:
    """Gaussian of the training features; threshold at `quantile` of the calibration split's distances."""
    from sklearn.covariance import LedoitWolf

    train = np.asarray(train_features, dtype=np.float64)
    estimate = LedoitWolf().fit(train)
    detector = OutOfRange(estimate.location_, estimate.precision_, 0.0, quantile, len(train),
                          len(calibration_features))
    return replace(detector, threshold=float(np.quantile(detector.distances(calibration_features), quantile)))
