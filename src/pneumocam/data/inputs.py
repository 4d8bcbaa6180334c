"""Which image files the command-line inputs name: files as given, folders searched, glob patterns expanded."""

from __future__ import annotations

import glob
from pathlib import Path

from pneumocam.data.readers import SUPPORTED_SUFFIXES, ImageReadError
from pneumocam.errors import PneumocamError

FOLDER_SUFFIXES = sorted(SUPPORTED_SUFFIXES - {""})  # a folder's files without a suffix are not guessed at


def expand_inputs(inputs: list[str | Path]) -> list[Path]:
    """Files stay as given; folders expand (recursively, sorted) to the supported image files inside.

    A missing input raises ImageReadError; an empty folder contributes nothing.
    """
    paths: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            paths += sorted(
                p for p in item.rglob("*")
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in FOLDER_SUFFIXES
            )
        elif item.exists():
            paths.append(item)
        else:
            raise ImageReadError(item, "file or folder not found")
    return paths


def resolve_inputs(inputs: list[str | Path]) -> tuple[list[Path], list[dict]]:
    """The image files that command-line inputs name: files as given, folders and glob patterns expanded
    (`expand_inputs`); a missing path or a pattern matching nothing is a failure row {source, reason}."""
    paths, failures = [], []
    for item in inputs:
        if not Path(item).exists() and glob.has_magic(str(item)):
            matches = sorted(glob.glob(str(item), recursive=True))
            if not matches:
                failures.append({"source": str(item), "reason": "no files match this pattern"})
            for match in matches:
                paths += expand_inputs([match])
            continue
        try:
            paths += expand_inputs([item])
        except ImageReadError as exc:
            failures.append({"source": str(item), "reason": exc.reason})
    return paths, failures


def require_images(paths: list[Path], inputs: list[str | Path]) -> list[Path]:
    """`paths`, or a one-line error saying what was looked for where: an empty folder is a mistake, not an
    empty result."""
    if not paths:
        names = ", ".join(str(item) for item in inputs)
        raise PneumocamError(f"no images found in {names}: looked for files named *{', *'.join(FOLDER_SUFFIXES)} "
                             "(folders are searched recursively; hidden files are skipped)")
    return paths
