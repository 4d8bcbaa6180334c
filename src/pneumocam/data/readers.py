"""Read any supported chest X-ray file as a float32 (H, W) array in [0, 1].

This is the only module that reads files with pydicom (dicom_results writes results as DICOM). Every
reader returns the same thing so the rest of pneumocam never branches on file formats: a 2-D float32
array where 0 is black (air) and 1 is white (bone), i.e. MONOCHROME2 orientation, scaled by the bit
depth the file declares, not by the image's own min/max (so a dark image stays dark).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pneumocam.data.limits import embedded_frame_size, npy_header, size_problem
from pneumocam.data.metadata import HEADER_KEYWORDS
from pneumocam.errors import PneumocamError

DICOM_SUFFIXES = {".dcm", ".dicom", ""}
RASTER_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
NPY_SUFFIXES = {".npy"}
SUPPORTED_SUFFIXES = DICOM_SUFFIXES | RASTER_SUFFIXES | NPY_SUFFIXES


class ImageReadError(PneumocamError):
    """A file could not be read as a chest X-ray; the message names the file and the reason."""

    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def read_image(path: str | Path, min_side: int | None = None) -> np.ndarray:
    """Read a DICOM, PNG/JPEG/BMP/TIFF or .npy file -> float32 (H, W) in [0, 1]; see read_image_and_size."""
    return read_image_and_size(path, min_side)[0]


def read_image_and_size(path: str | Path, min_side: int | None = None,
                        header: dict | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Read a DICOM, PNG/JPEG/BMP/TIFF or .npy file -> float32 (H, W) in [0, 1].

    min_side: the caller will shrink the image until its longer side is this long, so a JPEG-coded
    image (JPEG files, JPEG Baseline DICOM) may be decoded at a reduced DCT scale (libjpeg's 1/2,
    1/4, 1/8 decoding through Pillow's `draft`), keeping the longer side >= min_side and the aspect
    ratio. That is an anti-aliased downscale done inside the decoder, 4-6x faster for RSNA's 1024 px
    files. None (default): full resolution.

    Returns the image and the file's full-resolution (height, width), which differ only when a
    reduced-scale decode was used (boxes given in source pixels need the full size).
    header: a dict that, for a DICOM, receives the patient fields of HEADER_FIELDS as written in the file
    (read from the same parse as the pixels).
    Raises ImageReadError (with the file and the reason) for anything that is missing, empty,
    corrupt, not a single grayscale-convertible image, or larger than MAX_PIXELS.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "file not found")
    if not path.is_file():
        raise ImageReadError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    suffix = path.suffix.lower()
    try:
        if suffix in NPY_SUFFIXES:
            array = read_npy(path)
            return array, array.shape
        if suffix in RASTER_SUFFIXES:
            return read_raster(path, min_side)
        if suffix in DICOM_SUFFIXES or _looks_like_dicom(path):
            return read_dicom(path, min_side, header)
    except ImageReadError:
        raise
    except Exception as exc:  # a malformed header (e.g. an IS value '1A') can fail anywhere in a reader
        raise ImageReadError(path, f"malformed file ({type(exc).__name__}: {exc})") from exc
    raise ImageReadError(path, f"unsupported file type {suffix!r} (expected DICOM, PNG, JPEG, BMP, TIFF or .npy)")


def read_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file from its header alone (no pixel decoding)."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in NPY_SUFFIXES:
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
            return int(shape[0]), int(shape[1])
        if suffix in RASTER_SUFFIXES:
            with Image.open(path) as img:
                return _oriented_size(img)
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return int(ds.Rows), int(ds.Columns)
    except Exception as exc:
        raise ImageReadError(path, f"cannot read the image size ({type(exc).__name__}: {exc})") from exc


def read_header(path: str | Path) -> tuple[dict[str, str], tuple[int, int]]:
    """The raw HEADER_FIELDS and the (Rows, Columns) of a DICOM, from one parse without the pixels (what a
    resumed prepare needs of a finished image)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return _header_fields(ds), (int(ds.Rows), int(ds.Columns))
    except Exception as exc:
        raise ImageReadError(path, f"cannot read the DICOM header ({type(exc).__name__}: {exc})") from exc


def is_dicom(path: str | Path) -> bool:
    """True for a file that starts like a DICOM file (the DICM preamble), whatever its name."""
    try:
        return _looks_like_dicom(Path(path))
    except OSError:
        return False


def read_dicom_dataset(path: str | Path):
    """The DICOM header of a file (a pydicom Dataset without the pixel data), for results that refer to it."""
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:
        raise ImageReadError(path, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from exc


def import_dicom_support() -> None:
    """Import pydicom and its pixel decoders now (~0.1-0.15 s). A process pool forked afterwards
    inherits them, so its workers do not each import them again before their first image."""
    import pydicom  # noqa: F401
    import pydicom.encaps  # noqa: F401
    import pydicom.pixels  # noqa: F401


def _looks_like_dicom(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(132)
    return head[128:132] == b"DICM"


def read_npy(path: Path) -> np.ndarray:
    """A 2-D (or (H, W, 1)) numeric array. Integers are scaled by their dtype's maximum; floats must
    already lie in [0, 1] (that is what `pneumocam prepare` writes)."""
    try:
        shape, dtype = npy_header(path)  # judged before numpy allocates what the header asks for
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise ImageReadError(path, f"not a readable .npy array ({exc})") from exc
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[-1] != 1):
        raise ImageReadError(path, f"expected a 2-D image array, got shape {shape}")
    if dtype == np.bool_ or not np.issubdtype(dtype, np.number) or dtype.itemsize > 8:
        raise ImageReadError(path, f"expected a numeric array, got dtype {dtype}")
    _check_size(path, shape[0], shape[1])
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ImageReadError(path, f"not a readable .npy array ({exc})") from exc
    if arr.ndim == 3:  # (H, W, 1): the header check above allows no other third axis
        arr = arr[..., 0]
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        if info.min < 0 and arr.min() < 0:
            raise ImageReadError(path, "negative pixel values in an integer array")
        return (arr.astype(np.float64) / info.max).astype(np.float32)
    arr = arr.astype(np.float32)
    problem = _unit_range_problem(arr, "array")
    if problem:
        raise ImageReadError(path, problem)
    return np.clip(arr, 0.0, 1.0)


def _unit_range_problem(arr: np.ndarray, kind: str) -> str | None:
    """Why float pixels cannot be read as [0, 1] intensities (NaN, infinity, values outside), or None: a float
    image must already be in that range, never clipped into it silently."""
    if not np.isfinite(arr).all():
        return f"float {kind} contains NaN or infinite values"
    low, high = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if low < -1e-6 or high > 1 + 1e-6:
        return f"float {kind} values must lie in [0, 1], found [{low:.4g}, {high:.4g}]"
    return None


def _check_size(path: Path, height: int, width: int) -> None:
    problem = size_problem(height, width)
    if problem:
        raise ImageReadError(path, problem)


def _oriented_size(img: Image.Image) -> tuple[int, int]:
    """(height, width) after EXIF orientation, read from the header (orientations 5-8 swap the axes)."""
    width, height = img.size
    return (width, height) if img.getexif().get(0x0112, 1) in (5, 6, 7, 8) else (height, width)


def _draft_size(width: int, height: int, min_side: int | None) -> tuple[int, int] | None:
    """The size to ask libjpeg for so that the longer side stays >= min_side (aspect kept)."""
    if not min_side or max(width, height) < 2 * min_side:
        return None
    scale = min_side / max(width, height)
    return max(1, int(np.ceil(width * scale))), max(1, int(np.ceil(height * scale)))


def read_raster(path: Path, min_side: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """PNG/JPEG/BMP/TIFF: 8 or 16 bit, L/RGB/RGBA/P -> one gray channel, EXIF orientation applied.
    Returns (image, full-resolution (height, width) after orientation)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                _check_size(path, height, width)
                full_size = _oriented_size(img)
                draft = _draft_size(width, height, min_side)
                if draft and img.format == "JPEG":
                    img.draft("L" if img.mode in ("L", "RGB", "CMYK") else None, draft)
                img = ImageOps.exif_transpose(img)
                return _pil_to_gray(img), full_size
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(path, f"image too large, refused as a possible decompression bomb ({exc})") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(path, f"not a readable image ({exc})") from exc


def _declared_bits(img: Image.Image) -> int:
    """Bits per sample a 32-bit-integer ("I") image declares: TIFF's BitsPerSample; 16 for PNG (its deepest)."""
    bits = getattr(img, "tag_v2", {}).get(258) if img.format == "TIFF" else None
    bits = bits[0] if isinstance(bits, tuple) else bits
    return int(bits) if bits else (16 if img.format == "PNG" else 32)


def _pil_to_gray(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L"):
        return (np.asarray(img, dtype=np.float64) / 65535.0).astype(np.float32)
    if img.mode == "I":  # 32-bit integers: scaled by the bit depth the file declares, never by its own maximum
        arr = np.asarray(img, dtype=np.float64)
        if arr.size and arr.min() < 0:
            raise ValueError("negative pixel values in an integer image")
        return (arr / (2.0 ** _declared_bits(img) - 1)).astype(np.float32)
    if img.mode == "F":  # floats: must already lie in [0, 1], like a .npy
        arr = np.asarray(img, dtype=np.float32)
        problem = _unit_range_problem(arr, "image")
        if problem:
            raise ValueError(problem)
        return np.clip(arr, 0, 1)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels carry no X-ray signal: composite on black (air).
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    gray = img.convert("L")
    return np.asarray(gray, dtype=np.float32) / 255.0


HEADER_FIELDS = tuple(HEADER_KEYWORDS.values())  # the patient fields prepare keeps (metadata.py judges them)


def _header_fields(ds) -> dict[str, str]:
    """HEADER_FIELDS as raw strings ("" where absent); a malformed value never fails the read."""
    return {k: str(ds.get(k, "") or "") for k in HEADER_FIELDS}


def read_dicom(path: Path, min_side: int | None = None,
               header: dict | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """A single-frame grayscale DICOM -> (float32 (H, W) in [0, 1], full-resolution (Rows, Columns)).

    Applies the Modality LUT (rescale slope/intercept), then the VOI LUT or window if present, inverts
    MONOCHROME1, and scales by the range the pixel values can take (BitsStored, or the window's output
    range). JPEG Baseline is decoded with Pillow, the fastest of the plugins for it.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
        if header is not None:
            header.update(_header_fields(ds))
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise ImageReadError(path, f"not a readable DICOM file ({exc})") from exc
    if "PixelData" not in ds:
        raise ImageReadError(path, "DICOM file has no pixel data")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise ImageReadError(path, f"multi-frame DICOM ({frames} frames) is not a single radiograph")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    _check_size(path, rows, cols)
    try:
        _check_embedded_frame(path, ds, rows, cols)
        arr = _decode_pixels(ds, min_side)
    except ImageReadError:
        raise
    except Exception as exc:  # decoders raise many unrelated types; report them all with the file
        raise ImageReadError(path, f"cannot decode pixel data ({type(exc).__name__}: {exc})") from exc
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        if arr.ndim == 3 and arr.shape[-1] == 3:
            arr = arr.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
            bits = int(ds.get("BitsStored", 8))
            return np.clip(arr / (2**bits - 1), 0, 1).astype(np.float32), (rows, cols)
        raise ImageReadError(path, f"unsupported photometric interpretation {photometric}")
    if arr.ndim != 2:
        raise ImageReadError(path, f"expected a 2-D grayscale image, got shape {arr.shape}")
    return _scale_dicom(ds, arr, apply_modality_lut, apply_voi_lut, photometric), (rows, cols)


def _check_embedded_frame(path: Path, ds, rows: int, cols: int) -> None:
    """An encapsulated frame must be the size the header says: the decoder allocates what the frame says."""
    from pydicom.encaps import generate_frames

    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None or not syntax.is_encapsulated:
        return
    size = embedded_frame_size(next(generate_frames(ds.PixelData, number_of_frames=1)))
    if size is not None and size != (rows, cols):
        raise ImageReadError(path, f"the embedded image is {size[1]}x{size[0]} pixels but the DICOM header says "
                                   f"{cols}x{rows} (Columns x Rows)")


def _has_pointwise_luts(ds) -> bool:
    return any(k in ds for k in ("ModalityLUTSequence", "VOILUTSequence", "WindowCenter")) or \
        float(ds.get("RescaleSlope", 1) or 1) != 1 or float(ds.get("RescaleIntercept", 0) or 0) != 0


def _decode_pixels(ds, min_side: int | None = None) -> np.ndarray:
    from pydicom.encaps import generate_frames
    from pydicom.pixels import pixel_array
    from pydicom.uid import JPEGBaseline8Bit, JPEGExtended12Bit

    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    draft = _draft_size(int(ds.Columns), int(ds.Rows), min_side)
    # Reduced-scale decoding averages pixels before any LUT, so only where no nonlinear LUT follows
    if draft and syntax == JPEGBaseline8Bit and int(ds.get("SamplesPerPixel", 1)) == 1 and \
            not _has_pointwise_luts(ds):
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        with Image.open(io.BytesIO(frame)) as img:
            img.draft("L", draft)
            return np.asarray(img.convert("L"))
    if syntax in (JPEGBaseline8Bit, JPEGExtended12Bit):
        try:
            return pixel_array(ds, decoding_plugin="pillow")
        except (RuntimeError, ValueError, ImportError):
            pass  # fall through to pydicom's own plugin choice (pylibjpeg/gdcm when installed)
    return ds.pixel_array


def _modality_output_range(ds) -> tuple[float, float]:
    """The range of the values after the Modality LUT stage, which pydicom's windowing also maps into:
    a Modality LUT's own range [0, 2^bits - 1], else the stored range, rescaled when the file says how."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(ds.get("BitsStored", 8))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        low, high = low * float(slope) + float(intercept), high * float(slope) + float(intercept)
    return float(min(low, high)), float(max(low, high))


def _scale_dicom(ds, arr, apply_modality_lut, apply_voi_lut, photometric: str) -> np.ndarray:
    """Stored values -> [0, 1]: Modality LUT or rescale, then a VOI LUT or window (LINEAR, LINEAR_EXACT,
    SIGMOID), each output divided by the range that stage maps into (PS3.3 C.11), MONOCHROME1 inverted."""
    has_voi = "VOILUTSequence" in ds or "WindowCenter" in ds
    values = apply_modality_lut(arr, ds) if _has_pointwise_luts(ds) else arr
    if "VOILUTSequence" in ds:  # preferred over a window, as pydicom does
        if values.dtype.kind == "f" and np.array_equal(values, np.round(values)):
            values = values.astype(np.int64)  # a LUT is indexed by integers; an integral rescale gives them
        values = apply_voi_lut(values, ds).astype(np.float64)
        low, high = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    else:  # a window maps into the modality stage's output range; without one that range is the image's
        if has_voi:
            values = apply_voi_lut(values, ds).astype(np.float64)
        low, high = _modality_output_range(ds)
    if high <= low:
        raise ImageReadError(getattr(ds, "filename", "?"), f"degenerate pixel range [{low}, {high}]")
    out = np.asarray(values, dtype=np.float32) - np.float32(low)  # float32 throughout: 1024^2 px per file
    out *= np.float32(1.0 / (high - low))
    np.clip(out, 0.0, 1.0, out=out)
    if photometric == "MONOCHROME1":
        np.subtract(np.float32(1.0), out, out=out)
    return out
