"""What produced a result: package versions and the git commit, stored in checkpoints and reports."""

from __future__ import annotations

import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("pneumocam", "torch", "torchvision", "lightning", "torchmetrics", "numpy", "pydicom", "pillow",
            "scikit-learn", "matplotlib")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit of the pneumocam source tree when it runs from a git checkout, else None."""
    here = Path(path) if path else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


# an absolute POSIX path (not the path part of a URL) or a Windows drive path, within a longer string too
_MACHINE_PATH = re.compile(r"(?<![\w:/.~-])/(?:[^\s/'\"]+/)*[^\s/'\"]+|\b[A-Za-z]:\\[^\s'\"]+")


def _shortened(match: re.Match) -> str:
    parts = [part for part in re.split(r"[/\\]", match.group(0)) if part]
    keep = 3 if len(parts) >= 3 and parts[-2] == "checkpoints" else 1  # a checkpoint keeps its run's name
    return ".../" + "/".join(parts[-keep:])


def without_machine_paths(value: Any) -> Any:
    """`value` (nested dicts, lists, strings) with every absolute path shortened to what a reader needs: the
    file's or folder's name (a checkpoint: RUN/checkpoints/NAME). Checkpoints travel, answers are public: the
    folders of the machine a model was trained on are neither's business."""
    if isinstance(value, dict):
        return {key: without_machine_paths(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(without_machine_paths(item) for item in value)
    if isinstance(value, str):
        return _MACHINE_PATH.sub(_shortened, value)
    return value
