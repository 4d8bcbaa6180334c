"""Checkpoints by path or by the name of a model bundled with the package, loaded without running code.

A bundled model is a pneumocam checkpoint (the same "state_dict" + "pneumocam" entries that `train`
writes) with float16 weights and no optimizer state, shipped in pneumocam/weights/ beside its model card.
Everywhere a checkpoint path is taken, its name (e.g. "pneumocam-cxr") works too, offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from pneumocam.errors import PneumocamError

if TYPE_CHECKING:
    import torch

WEIGHTS_PACKAGE = "pneumocam.weights"


@dataclass(frozen=True)
class BundledModel:
    name: str
    weights: str  # file in pneumocam/weights/
    card: str  # model card (markdown) in pneumocam/weights/
    summary: str
    calibration: str | None = None  # `pneumocam calibrate`'s calibration.pt, shipped beside the weights


BUNDLED_MODELS = {  # "NAME@N" is version N of NAME, kept loadable after NAME moved on
    "pneumocam-cxr": BundledModel(
        "pneumocam-cxr", "pneumocam-cxr.pt", "pneumocam-cxr.md",
        "version 2: ResNet18 from scratch on Kermany and RSNA, hard negatives taught apart, a threshold per view, "
        "chosen by 3-fold cross-validation",
    ),
    "pneumocam-cxr@1": BundledModel(
        "pneumocam-cxr@1", "pneumocam-cxr-v1.pt", "pneumocam-cxr-v1.md",
        "version 1: ResNet18 trained from scratch on real chest X-rays: Kermany (children) and RSNA (adults, "
        "box-guided)", "pneumocam-cxr-v1.calibration.pt",
    ),
}


def bundled_file(name: str) -> Path:
    """The path of a file in pneumocam/weights/ (inside the installed package)."""
    return Path(str(resources.files(WEIGHTS_PACKAGE).joinpath(name)))


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """A bundled model's name -> its file; anything else is taken as a path. A file of that name wins."""
    path = Path(name_or_path)
    if path.exists() or str(name_or_path) not in BUNDLED_MODELS:
        return path
    weights = bundled_file(BUNDLED_MODELS[str(name_or_path)].weights)
    if not weights.is_file():
        raise PneumocamError(f"{name_or_path}: bundled model's weights are missing from the installed package "
                             f"({weights}); reinstall pneumocam")
    return weights


def checkpoint_label(name_or_path: str | Path) -> str:
    """How reports name a checkpoint: a bundled model by its name, a file by its absolute path."""
    if str(name_or_path) in BUNDLED_MODELS and not Path(name_or_path).exists():
        return str(name_or_path)
    return str(Path(name_or_path).resolve())


def load_checkpoint(name_or_path: str | Path) -> dict:
    """torch.load with weights_only=True (no code from the file runs), with a clear error. A bundled model's
    calibration file (temperature, threshold and its rule, out-of-range detector) is merged into its metadata."""
    path = resolve_checkpoint(name_or_path)
    checkpoint = _load(path)
    model = BUNDLED_MODELS.get(str(name_or_path))
    if model and model.calibration and not Path(name_or_path).exists():
        entries = _torch_load(bundled_file(model.calibration))
        checkpoint["pneumocam"] = {**checkpoint["pneumocam"], **entries}
    return checkpoint


def _torch_load(path: Path):
    import torch  # here, not above: naming and finding a checkpoint (and an ONNX backend's start) need no torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PneumocamError(f"{path}: not a loadable checkpoint ({type(exc).__name__}: {exc})") from exc


def _load(path: Path) -> dict:
    if not path.is_file():
        names = ", ".join(BUNDLED_MODELS)
        raise PneumocamError(f"{path}: checkpoint not found (a .ckpt written by pneumocam train, or a bundled "
                             f"model: {names})")
    checkpoint = _torch_load(path)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "pneumocam" not in checkpoint:
        raise PneumocamError(f"{path}: not a pneumocam checkpoint (no model state or pneumocam metadata)")
    return checkpoint


def network_state(checkpoint: dict) -> dict[str, torch.Tensor]:
    """PneumoniaNet's state dict (in float32) from a pneumocam checkpoint's "net."-prefixed entries."""
    return {k.removeprefix("net."): v.float() if v.is_floating_point() else v
            for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}


def is_pneumocam_checkpoint(name_or_path: str | Path) -> bool:
    """True for a bundled model's name or a .ckpt file (what `train --pretrained` continues from)."""
    return str(name_or_path) in BUNDLED_MODELS or Path(name_or_path).suffix == ".ckpt"


def bundle(checkpoint_path: str | Path, out: str | Path, card: dict) -> Path:
    """Write a training checkpoint as a bundled model: float16 weights, its pneumocam metadata plus `card`
    (recipe, metrics, intended use), no optimizer state, no machine's folders (a bundled model travels).
    Written atomically."""
    import torch

    from pneumocam.files import atomic_path
    from pneumocam.provenance import without_machine_paths

    checkpoint = load_checkpoint(checkpoint_path)
    state = {k: v.half() if v.is_floating_point() else v for k, v in checkpoint["state_dict"].items()
             if k.startswith("net.")}
    meta = without_machine_paths({**checkpoint["pneumocam"], "model_card": card})
    out = Path(out)
    with atomic_path(out) as tmp:
        torch.save({"state_dict": state, "pneumocam": meta}, tmp)
    return out
