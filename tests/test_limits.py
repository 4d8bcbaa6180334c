"""Size limits judged from headers: what a decode would allocate is known before it happens."""

import io

import numpy as np
import pytest
from PIL import Image

from pneumocam.data import (
    MAX_ASPECT,
    MAX_SIDE,
    TOO_LARGE,
    ImageReadError,
    embedded_frame_size,
    npy_header,
    read_image,
    size_problem,
)


def test_the_longer_side_and_the_aspect_ratio_are_limited():
    assert size_problem(4280, 3520) is None and size_problem(MAX_SIDE, MAX_SIDE) is None
    assert size_problem(40, 20_000).startswith(TOO_LARGE)
    assert size_problem(MAX_SIDE + 1, 4000).startswith(TOO_LARGE)
    assert "too elongated" in size_problem(100, int(100 * MAX_ASPECT) + 1)
    assert "no pixels" in size_problem(0, 10)


def test_npy_header_is_read_without_the_data(tmp_path):
    path = tmp_path / "a.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (70_000, 3)})
    assert npy_header(path) == ((70_000, 3), np.dtype("<f4"))  # no 840 kB of data behind it, and no error
    with pytest.raises(ImageReadError, match=TOO_LARGE):
        read_image(path)
    (tmp_path / "b.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError):
        npy_header(tmp_path / "b.npy")


def _encoded(fmt: str, size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros(size[::-1], np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def test_an_embedded_frame_states_its_own_size():
    assert embedded_frame_size(_encoded("JPEG", (64, 48))) == (48, 64)  # (height, width)
    if "JPEG2000" in Image.registered_extensions().values():
        j2k = io.BytesIO()
        Image.fromarray(np.zeros((48, 64), np.uint8)).save(j2k, format="JPEG2000", no_jp2=True)
        assert embedded_frame_size(j2k.getvalue()) == (48, 64)
    assert embedded_frame_size(b"\x00" * 64) is None  # RLE or anything else: the decoder decides


def test_a_dicom_whose_header_and_embedded_jpeg_disagree_is_refused_before_decoding(tmp_path):
    import pydicom

    from pneumocam.data import write_dicom_jpeg

    write_dicom_jpeg(tmp_path / "x.dcm", np.full((64, 64), 90, np.uint8), "p")
    assert read_image(tmp_path / "x.dcm").shape == (64, 64)
    ds = pydicom.dcmread(tmp_path / "x.dcm")
    ds.Columns = 32
    ds.save_as(tmp_path / "y.dcm")
    with pytest.raises(ImageReadError, match=r"embedded image is 64x64 pixels but the DICOM header says 32x64"):
        read_image(tmp_path / "y.dcm")
