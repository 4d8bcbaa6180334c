import io
import os

import numpy as np
import pytest

from conftest import dead_pid
from pneumocam.files import (
    atomic_open,
    prefetch,
    remove_stale_temporaries,
    save_npy,
    unique_stems,
    write_csv,
    write_json,
)


def test_outputs_get_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        save_npy(tmp_path / "b.npy", np.zeros(3))
    finally:
        os.umask(old)
    for name in ("a.json", "b.npy"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644


def test_a_failed_write_leaves_neither_the_file_nor_a_temporary(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_open(tmp_path / "out.csv") as f:
            f.write("partial")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    write_csv(tmp_path / "out.csv", ["a"], [{"a": 1}])
    assert (tmp_path / "out.csv").read_text().splitlines() == ["a", "1"]
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_json_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        write_json(tmp_path / "m.json", {"x": float("nan")})
    assert list(tmp_path.iterdir()) == []


def test_unique_stems():
    assert unique_stems(["a/x.png", "b/x.png", "y.dcm", "c/x.npy"]) == ["x", "x_1", "y", "x_2"]


def test_save_npy_creates_folders_round_trips_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a" / "b" / "x.npy"
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    save_npy(target, array)
    loaded = np.load(target, allow_pickle=False)
    assert loaded.dtype == np.float32 and np.array_equal(loaded, array)
    with pytest.raises(ValueError):  # object arrays are refused (no pickles), and nothing is left behind
        save_npy(tmp_path / "a" / "b" / "y.npy", np.array([{"a": 1}], dtype=object))
    assert [p.name for p in target.parent.iterdir()] == ["x.npy"]


@pytest.mark.parametrize("array", [
    np.linspace(0, 1, 224 * 224, dtype=np.float32).reshape(224, 224),  # what prepare writes
    np.asfortranarray(np.arange(35.0).reshape(5, 7)),  # Fortran order is kept, as np.save keeps it
    np.arange(48.0).reshape(6, 8)[:, ::2],  # not contiguous
    np.array(5.0),  # 0-d
    np.zeros((0, 3), dtype=np.float32),  # empty
    np.array([1, 2], dtype=">i4"),  # big-endian
    np.ones((2, 2), dtype=bool),
], ids=["image", "fortran", "strided", "scalar", "empty", "big-endian", "bool"])
def test_save_npy_writes_the_bytes_np_save_writes(tmp_path, array):
    expected = io.BytesIO()
    np.save(expected, array)
    save_npy(tmp_path / "x.npy", array)
    assert (tmp_path / "x.npy").read_bytes() == expected.getvalue()


def test_save_npy_finishes_a_write_that_stops_short(tmp_path, monkeypatch):
    writev = os.writev if hasattr(os, "writev") else None
    calls = []

    def short_writev(fd, buffers):  # the system writes at most 1,000 bytes per call
        calls.append(1)
        data = b"".join(bytes(b) for b in buffers)[:1000]
        return os.write(fd, data)

    monkeypatch.setattr(os, "writev", short_writev, raising=writev is not None)
    array = np.arange(1000, dtype=np.float64)
    save_npy(tmp_path / "x.npy", array)
    assert len(calls) > 8 and np.array_equal(np.load(tmp_path / "x.npy"), array)


@pytest.mark.skipif(os.name != "posix", reason="stale temporaries are only removed on POSIX")
def test_only_temporaries_of_dead_writers_are_removed(tmp_path):
    folder = tmp_path / "Processed" / "train"
    folder.mkdir(parents=True)
    stale = folder / f".a.npy.{dead_pid()}.{'0' * 32}.tmp"  # a writer killed with -9 left it
    live = folder / f".b.npy.{os.getpid()}.{'1' * 32}.tmp"  # a writer still at work
    users = folder / ".notes.tmp"  # not ours
    for path in (stale, live, users):
        path.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == 1
    assert not stale.exists() and live.exists() and users.exists()


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="posix_fadvise is POSIX-only")
def test_prefetch_hints_each_readable_file_and_never_fails(tmp_path, monkeypatch):
    present = tmp_path / "a.dcm"
    present.write_bytes(b"x" * 5000)
    hinted = []
    real_fadvise = os.posix_fadvise
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, *args: hinted.append((os.fstat(fd).st_ino, *args)))
    prefetch([present, tmp_path / "missing.dcm", str(present)])
    assert hinted == [(present.stat().st_ino, 0, 0, os.POSIX_FADV_WILLNEED)] * 2

    def refuse(fd, *args):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "posix_fadvise", refuse)
    prefetch([present])  # a file system that refuses the hint: the real read still works later
    monkeypatch.setattr(os, "posix_fadvise", real_fadvise)
    prefetch([present, tmp_path])  # the real call, on a file and on a folder
    monkeypatch.delattr(os, "posix_fadvise")
    prefetch([present])  # systems without it: nothing to do
    assert present.read_bytes() == b"x" * 5000
