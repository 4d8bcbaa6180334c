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
import torch

from pneumocam.config import OOD_QUANTILE


@dataclass(frozen=True)
class OutOfRange:
    mean: torch.Tensor  # (512,)
    precision: torch.Tensor  # (512, 512), inverse of the shrunk covariance
    threshold: float  # distances above this are flagged
    quantile: float
    n_train: int
    n_calibration: int

    def distances(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """(B, 512) pooled features -> (B,) Mahalanobis distances."""
        x = torch.as_tensor(np.asarray(features), dtype=torch.float64) - self.mean.double()
        return torch.sqrt(torch.clamp(torch.einsum("bi,ij,bj->b", x, self.precision.double(), x), min=0)).numpy()

    def reason(self, distance: float) -> str:
        if distance <= self.threshold:
            return ""
        return (f"does not look like the frontal chest X-rays the model was trained on: feature distance "
                f"{distance:.1f} > {self.threshold:.1f} (the {self.quantile:.0%} quantile of held-out training-like "
                "images); the prediction is unreliable")

    def to_metadata(self) -> dict:
        return {"method": "mahalanobis-pooled-features", "mean": self.mean.float(), "precision": self.precision.float(),
                "threshold": self.threshold, "quantile": self.quantile, "n_train": self.n_train,
                "n_calibration": self.n_calibration}

    @classmethod
    def from_metadata(cls, meta: dict | None) -> OutOfRange | None:
        if not meta:
            return None
        return cls(meta["mean"].float(), meta["precision"].float(), float(meta["threshold"]), float(meta["quantile"]),
                   int(meta["n_train"]), int(meta["n_calibration"]))


def fit_out_of_range(train_features: np.ndarray, calibration_features: np.ndarray,
                     quantile: float = OOD_QUANTILE) -> OutOfRange:
    """Gaussian of the training features; threshold at `quantile` of the calibration split's distances."""
    from sklearn.covariance import LedoitWolf

    train = np.asarray(train_features, dtype=np.float64)
    estimate = LedoitWolf().fit(train)
    detector = OutOfRange(torch.from_numpy(estimate.location_), torch.from_numpy(estimate.precision_), 0.0, quantile,
                          len(train), len(calibration_features))
    return replace(detector, threshold=float(np.quantile(detector.distances(calibration_features), quantile)))
