"""How large an image a read may allocate, judged from the file's header before any pixel is decoded.

A chest X-ray is at most ~4.3k pixels a side and near square. Without these limits a 1 kB PNG of
20,000 x 40 pixels passes a pixel-count check and is then padded to a 20,000^2 float square (1.6 GB),
and a 2,000,000-wide .npy or an embedded JPEG larger than its DICOM header says allocates whatever it
asks for. So every reader checks the longer side and the aspect ratio, which bound the padded square
(MAX_SIDE^2 floats, 105 MB), from the header: PNG/JPEG/TIFF/BMP (Pillow reads the size lazily), DICOM
(Rows, Columns, and the embedded JPEG / JPEG 2000 frame's own size), .npy (shape and dtype).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

MAX_SIDE = 5120
MAX_ASPECT = 8.0
MAX_PIXELS = MAX_SIDE * MAX_SIDE
TOO_LARGE = "image too large"  # how a reason starts when the image is over a size limit (the server answers 413)


def size_problem(height: int, width: int) -> str | None:
    """Why an image of (height, width) pixels is refused, or None."""
    if height < 1 or width < 1:
        return f"the image has no pixels ({width}x{height})"
    if max(height, width) > MAX_SIDE:
        return f"{TOO_LARGE}: {width}x{height} pixels, the longer side is over {MAX_SIDE}"
    if max(height, width) / min(height, width) > MAX_ASPECT:
        return (f"{width}x{height} pixels is too elongated for a chest X-ray (aspect ratio over "
                f"{MAX_ASPECT:g}:1)")
    return None


def npy_header(path: str | Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of a .npy file from its header alone. Raises ValueError for a file that is not one."""
    readers = {1: np.lib.format.read_array_header_1_0, 2: np.lib.format.read_array_header_2_0}
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        if major not in readers:
            raise ValueError(f"unsupported .npy format version {major}")
        shape, _, dtype = readers[major](f)
    return tuple(int(n) for n in shape), dtype


def embedded_frame_size(frame: bytes) -> tuple[int, int] | None:
    """(height, width) that an encapsulated JPEG, JPEG-LS or JPEG 2000 frame declares, or None where the
    codestream is of another kind (RLE) or unreadable (the decoder will say why)."""
    if frame[:4] == b"\xff\x4f\xff\x51" and len(frame) >= 24:  # JPEG 2000 codestream: SOC, then the SIZ segment
        x_size, y_size, x_offset, y_offset = struct.unpack(">4I", frame[8:24])
        return y_size - y_offset, x_size - x_offset
    if frame[:2] == b"\xff\xd8":
        try:
            from pydicom.pixels.utils import _get_jpg_parameters  # pydicom's own SOF parser
        except ImportError:
            return None
        found = _get_jpg_parameters(frame)
        return (found["height"], found["width"]) if found.get("height") else None  # 0: height set later (DNL)
    return None
