"""Atomic file output: a reader never sees a half-written file, even after kill -9.

Each writer writes to a temporary file in the target's folder and renames it into place; a rename
within one file system is atomic on POSIX and Windows.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np


def _temporary_beside(path: Path) -> Path:
    """A hidden name in `path`'s folder, unique across processes (the rename target must be on the same disk)."""
    return path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"


_TEMPORARY_NAME = re.compile(r"\..+\.(\d+)\.[0-9a-f]{32}\.tmp")  # what _temporary_beside makes


def remove_stale_temporaries(root: str | Path) -> int:
    """Delete the temporary files under `root` whose writer has died; returns how many.

    kill -9 gives a writer no chance to delete its temporary file, so a resumed batch job calls this
    first. A file whose writing process is still alive (by the PID in its name) is left alone. POSIX
    only: elsewhere nothing is removed (os.kill(pid, 0) would not be a harmless probe).
    """
    if os.name != "posix":
        return 0
    removed = 0
    for path in Path(root).rglob(".*.tmp"):
        match = _TEMPORARY_NAME.fullmatch(path.name)
        if match and not _process_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


_EXCLUSIVE_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL


@contextlib.contextmanager
def atomic_path(path: str | Path, mode: int = 0o666) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it to `path`, on error delete it.

    The temporary file is created with `mode` minus the umask: by default like an ordinary new file
    (mkstemp's 0600 would make every output unreadable to other users); 0o600 for files that hold
    patient-related data.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _temporary_beside(path)
    os.close(os.open(tmp_path, _EXCLUSIVE_CREATE, mode))
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", permissions: int = 0o666, **kwargs: Any) -> Iterator[IO]:
    with atomic_path(path, permissions) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle


def write_json(path: str | Path, data: Any, permissions: int = 0o666) -> None:
    with atomic_open(path, "w", permissions, encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=False, allow_nan=False)
        f.write("\n")


def write_csv(path: str | Path, fieldnames: Sequence[str], rows: Iterable[dict]) -> None:
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fieldnames))
        writer.writeheader()
        writer.writerows(rows)


def save_npy(path: str | Path, array: np.ndarray) -> None:
    """np.save, atomically, with the same bytes. The hot path of `prepare` (one call per image), so it
    does the fewest system calls that keep the guarantee: one exclusive create, one gathered write of
    header and pixels straight from the array's memory, one rename (through a Python file object, numpy's
    writer flushes, duplicates the descriptor and seeks around its write)."""
    path = Path(path)
    array = np.asanyarray(array)
    if array.dtype.hasobject:
        raise ValueError(f"{path}: object arrays cannot be saved without pickle")
    header_data = np.lib.format.header_data_from_array_1_0(array)  # Fortran order kept, as np.save does
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, header_data)
    pixels = array.T if header_data["fortran_order"] else np.ascontiguousarray(array)  # C order either way
    tmp_path = _temporary_beside(path)
    try:
        fd = os.open(tmp_path, _EXCLUSIVE_CREATE, 0o666)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp_path, _EXCLUSIVE_CREATE, 0o666)
    try:
        try:
            _write_all(fd, [header.getbuffer(), memoryview(pixels.reshape(-1).view(np.uint8))])
        finally:
            os.close(fd)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _write_all(fd: int, buffers: list[memoryview]) -> None:
    """Write every byte of `buffers` in order: one gathered write where the system has writev, and
    again from where it stopped if a write comes back short."""
    while buffers:
        written = os.writev(fd, buffers) if hasattr(os, "writev") else os.write(fd, buffers[0])
        if written <= 0:
            raise OSError(f"no bytes written to file descriptor {fd}")
        while buffers and written >= len(buffers[0]):
            written -= len(buffers[0])
            buffers = buffers[1:]
        if written:
            buffers[0] = buffers[0][written:]


def prefetch(paths: Iterable[str | Path]) -> None:
    """Ask the kernel to start reading these files into memory now, so that reading them later does not
    wait on the disk: a batch job calls it for the next files while it decodes the current one. Only a
    hint (posix_fadvise WILLNEED starts the reads and returns): nothing happens where the system lacks it,
    and a file that cannot be opened is left for the real read to report."""
    if not hasattr(os, "posix_fadvise"):
        return
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass  # e.g. a pipe or a file system without read-ahead: the read itself still works
        finally:
            os.close(fd)


def save_figure(path: str | Path, figure, **kwargs: Any) -> None:
    """Save a matplotlib figure atomically; the format follows the target's suffix."""
    path = Path(path)
    fmt = path.suffix.lstrip(".") or "png"
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=fmt, **kwargs)


def unique_stems(paths: Iterable[str | Path]) -> list[str]:
    """File stems made unique in order: a.png, b/a.png -> a, a_1 (output names for many inputs)."""
    names, seen = [], {}
    for path in paths:
        stem = Path(path).stem or "image"
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        names.append(stem if count == 0 else f"{stem}_{count}")
    return names


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))
