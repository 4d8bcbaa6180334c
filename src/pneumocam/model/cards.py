"""The bundled models' cards: what `pneumocam models` shows, from the files shipped in pneumocam/weights/."""

from __future__ import annotations

from pneumocam.errors import PneumocamError
from pneumocam.model.checkpoints import BUNDLED_MODELS, bundled_file, load_checkpoint


def _bundled(name: str):
    if name not in BUNDLED_MODELS:
        raise PneumocamError(f"{name}: no bundled model of that name; choose from {sorted(BUNDLED_MODELS)}")
    return BUNDLED_MODELS[name]


def model_card(name: str) -> str:
    """The model card (markdown) of a bundled model."""
    return bundled_file(_bundled(name).card).read_text(encoding="utf-8")


def describe(name: str) -> dict:
    """A bundled model's facts in plain types: file, size, recipe, and validation metrics per source."""
    model = _bundled(name)
    weights = bundled_file(model.weights)
    meta = load_checkpoint(name)["pneumocam"]
    card = meta.get("model_card", {})
    return {
        "name": name, "summary": model.summary, "weights": str(weights),
        "size_mb": round(weights.stat().st_size / 2**20, 1), "card": str(bundled_file(model.card)),
        "recipe": card.get("recipe"), "train_command": card.get("train_command"),
        "lineage": card.get("lineage"), "prepare_commands": card.get("prepare_commands"),
        "validation": card.get("validation", {}), "localization": card.get("localization"),
        "cross_validation": card.get("cross_validation"),
        "normalization": meta.get("normalization"), "threshold": meta.get("threshold", 0.5),
        # the operating point and probability a film of a named view gets instead (calibrate --per-view)
        "thresholds_by_view": meta.get("thresholds_by_view", {}), "calibration": meta.get("calibration"),
        "calibration_by_view": meta.get("calibration_by_view", {}),
        "data_fingerprint": meta.get("data_fingerprint"), "versions": meta.get("versions"),
    }
