import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import strategies as st
from PIL import Image

from conftest import RSNA_SAMPLE, SHARED_DATA, bomb_png, require
from pneumocam.data import ImageReadError, expand_inputs, read_image, read_size


def _write_dicom(path, pixels, photometric="MONOCHROME2", bits=8, **extra):
    """An uncompressed grayscale DICOM written with pydicom (explicit VR little endian)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    for key, value in extra.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype(np.uint8 if bits == 8 else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_real_rsna_dicom_is_read_in_unit_range():
    path = sorted((require(RSNA_SAMPLE) / "stage_2_train_images").glob("*.dcm"))[0]
    image = read_image(path)
    assert image.shape == (1024, 1024) and image.dtype == np.float32
    assert 0 <= image.min() and image.max() <= 1 and image.std() > 0.05
    assert read_size(path) == (1024, 1024)


def test_real_kermany_jpeg_keeps_its_aspect():
    path = sorted((require(SHARED_DATA / "kermany_sample" / "val" / "NORMAL")).glob("*.jpeg"))[0]
    image = read_image(path)
    with Image.open(path) as img:
        assert image.shape == (img.height, img.width)
    assert 0 <= image.min() and image.max() <= 1


def test_eight_bit_dicom_scales_by_255(tmp_path):
    pixels = np.array([[0, 51], [204, 255]], dtype=np.uint8)
    image = read_image(_write_dicom(tmp_path / "a.dcm", pixels))
    assert np.allclose(image, pixels / 255.0, atol=1e-6)


def test_monochrome1_is_inverted(tmp_path):
    pixels = np.array([[0, 255], [255, 0]], dtype=np.uint8)
    image = read_image(_write_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1"))
    assert np.allclose(image, 1 - pixels / 255.0)


def test_twelve_bit_dicom_scales_by_bits_stored(tmp_path):
    pixels = np.array([[0, 4095], [1024, 2048]], dtype=np.uint16)
    image = read_image(_write_dicom(tmp_path / "b12.dcm", pixels, bits=12))
    assert np.allclose(image, pixels / 4095.0, atol=1e-6)


def test_window_is_applied(tmp_path):
    pixels = np.array([[0, 100], [200, 255]], dtype=np.uint8)
    path = _write_dicom(tmp_path / "w.dcm", pixels, WindowCenter=100, WindowWidth=100)
    image = read_image(path)
    assert image[0, 0] == 0.0 and image[1, 0] == 1.0  # outside the window: clipped
    assert 0.4 < image[0, 1] < 0.6  # the centre maps to the middle


def test_png_modes_become_one_gray_channel_with_their_values(tmp_path):
    g16 = np.array([[0, 1000, 32768, 65535]], np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    rgb = np.array([[[200, 100, 50], [0, 255, 0], [10, 20, 30]]], np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 200, [0, 128, 255]  # transparent parts are air: composited on black
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert np.allclose(read_image(tmp_path / "g16.png"), g16 / 65535, atol=1e-6)
    luma = rgb.astype(float) @ [0.299, 0.587, 0.114]  # ITU-R 601-2, as Pillow converts
    assert np.allclose(read_image(tmp_path / "rgb.png"), np.round(luma) / 255, atol=1 / 255)
    assert np.allclose(read_image(tmp_path / "rgba.png"), [[0, 200 * 128 / 255 / 255, 200 / 255]], atol=1.5 / 255)
    assert read_image(tmp_path / "rgb.png").shape == (1, 3)


def test_a_32_bit_tiff_is_scaled_by_its_declared_depth_not_its_maximum(tmp_path):
    pixels = np.full((4, 4), 200, np.int32)
    Image.fromarray(pixels).save(tmp_path / "a.tif")
    pixels[0, 0] = 256  # one pixel over 255 must not change how the others read
    Image.fromarray(pixels).save(tmp_path / "b.tif")
    a, b = read_image(tmp_path / "a.tif"), read_image(tmp_path / "b.tif")
    assert a[1, 1] == b[1, 1] == pytest.approx(200 / (2**32 - 1))
    Image.fromarray(np.full((4, 4), 1000, np.uint16)).save(tmp_path / "c.tif")  # 16-bit: by 65535
    assert read_image(tmp_path / "c.tif")[0, 0] == pytest.approx(1000 / 65535)


def test_a_float_tiff_outside_the_unit_range_is_refused_not_clipped(tmp_path):
    Image.fromarray(np.array([[0.2, 0.7]], np.float32)).save(tmp_path / "ok.tif")
    assert np.allclose(read_image(tmp_path / "ok.tif"), [[0.2, 0.7]])
    Image.fromarray(np.array([[0.2, 1.5]], np.float32)).save(tmp_path / "bright.tif")
    with pytest.raises(ImageReadError, match=r"must lie in \[0, 1\], found \[0.2, 1.5\]"):
        read_image(tmp_path / "bright.tif")


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.dcm", b"", "empty file"),
        ("text.png", b"hello, not an image", "not a readable image"),
        ("text.dcm", b"hello, not a dicom", "not a readable DICOM"),
        ("notes.txt", b"hello", "unsupported file type"),
    ],
)
def test_bad_files_raise_with_file_and_reason(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=reason) as info:
        read_image(path)
    assert name in str(info.value)


def test_npy_checks(tmp_path):
    np.save(tmp_path / "ok.npy", np.full((3, 3), 0.5, np.float32))
    np.save(tmp_path / "nan.npy", np.array([[np.nan, 0.0]], np.float32))
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 3), np.float32))
    np.save(tmp_path / "range.npy", np.full((3, 3), 7.0, np.float32))
    assert np.allclose(read_image(tmp_path / "ok.npy"), 0.5)
    with pytest.raises(ImageReadError, match="NaN"):
        read_image(tmp_path / "nan.npy")
    with pytest.raises(ImageReadError, match="2-D"):
        read_image(tmp_path / "cube.npy")
    with pytest.raises(ImageReadError, match=r"\[0, 1\]"):
        read_image(tmp_path / "range.npy")


def test_missing_file_and_dicom_without_pixels(tmp_path):
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "nope.dcm")
    path = _write_dicom(tmp_path / "nopix.dcm", np.zeros((2, 2), np.uint8))
    import pydicom

    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(ImageReadError, match="no pixel data"):
        read_image(path)


def test_expand_inputs_recurses_into_folders(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    np.save(tmp_path / "a" / "b" / "x.npy", np.zeros((2, 2), np.float32))
    (tmp_path / "a" / "readme.txt").write_text("skip me")
    assert expand_inputs([tmp_path]) == [tmp_path / "a" / "b" / "x.npy"]
    with pytest.raises(ImageReadError, match="not found"):
        expand_inputs([tmp_path / "missing"])


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("00000001_000.png", (512, 512)),
        ("00027426_000.png", (512, 512)),
        ("1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm", (1024, 1024)),
        ("16747_3_1.jpg", (885, 1036)),
        ("ryct.2020003.fig2-a.png", (156, 157)),
        ("yxppt-2020-02-19_00-51-27_287214-day8.jpg", (324, 331)),
    ],
)
def test_real_other_formats(name, shape):
    path = require(SHARED_DATA / "other_formats") / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    image = read_image(path)
    assert image.dtype == np.float32 and image.shape == shape == read_size(path)
    assert 0 <= image.min() and image.max() <= 1 and image.std() > 0.02


def test_every_real_other_format_file_reads():
    folder = require(SHARED_DATA / "other_formats")
    for path in sorted(folder.iterdir()):
        image = read_image(path)
        assert image.ndim == 2 and 0 <= image.min() and image.max() <= 1, path.name


def test_decompression_bomb_header_is_refused(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png())  # declares 100000 x 100000 pixels
    with pytest.raises(ImageReadError, match="image too large"):
        read_image(path)


def test_truncated_and_corrupted_files(tmp_path):
    from pneumocam.data import write_dicom_jpeg

    write_dicom_jpeg(tmp_path / "ok.dcm", (np.arange(64 * 64) % 255).reshape(64, 64).astype(np.uint8), "p1")
    data = (tmp_path / "ok.dcm").read_bytes()
    (tmp_path / "truncated.dcm").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError):
        read_image(tmp_path / "truncated.dcm")
    Image.fromarray(np.full((32, 32), 128, np.uint8)).save(tmp_path / "ok.jpg")
    jpeg = bytearray((tmp_path / "ok.jpg").read_bytes())
    (tmp_path / "corrupt.jpg").write_bytes(bytes(jpeg[: len(jpeg) // 3]))
    with pytest.raises(ImageReadError, match="not a readable image"):
        read_image(tmp_path / "corrupt.jpg")


def test_reduced_scale_decoding_keeps_geometry_and_values(tmp_path):
    from pneumocam.data import to_model_input, write_dicom_jpeg

    rng = np.random.default_rng(0)
    smooth = np.asarray(Image.fromarray(rng.uniform(0, 255, (16, 16)).astype(np.uint8)).resize((1024, 1024),
                                                                                                 Image.BICUBIC))
    write_dicom_jpeg(tmp_path / "big.dcm", smooth, "p")
    Image.fromarray(smooth[:, :768]).save(tmp_path / "wide.jpg", quality=95)
    for path, full_shape, small_shape in [(tmp_path / "big.dcm", (1024, 1024), (256, 256)),
                                          (tmp_path / "wide.jpg", (1024, 768), (256, 192))]:
        full, small = read_image(path), read_image(path, min_side=224)
        assert full.shape == full_shape == read_size(path) and small.shape == small_shape
        difference = np.abs(to_model_input(full) - to_model_input(small))
        # the largest differences sit where the image meets the black padding of a non-square image
        assert difference.mean() < 0.005 and difference.max() < 0.1
    # no reduction when the image is not at least twice the needed size
    assert read_image(tmp_path / "wide.jpg", min_side=600).shape == (1024, 768)


def test_reduced_scale_is_not_used_under_a_window(tmp_path):
    from pneumocam.data import write_dicom_jpeg

    write_dicom_jpeg(tmp_path / "w.dcm", np.full((1024, 1024), 100, np.uint8), "p")
    import pydicom

    ds = pydicom.dcmread(tmp_path / "w.dcm")
    ds.WindowCenter, ds.WindowWidth = 100, 50
    ds.save_as(tmp_path / "w.dcm")
    assert read_image(tmp_path / "w.dcm", min_side=224).shape == (1024, 1024)


def _pydicom_test_file(name):
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom's bundled test file {name} is not available")
    return path


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_lossless_transfer_syntaxes_decode_to_the_uncompressed_pixels(name):
    reference = read_image(_pydicom_test_file("MR_small.dcm"))  # explicit VR little endian, 16-bit signed
    image = read_image(_pydicom_test_file(name))
    assert image.shape == (64, 64) and np.array_equal(image, reference)


@pytest.mark.parametrize(
    ("name", "shape"),
    [("JPGExtended.dcm", (1024, 256)), ("JPEG2000.dcm", (1024, 256)), ("JPEGLSNearLossless_08.dcm", (45, 10)),
     ("693_J2KI.dcm", (512, 512)), ("SC_jpeg_no_color_transform.dcm", (256, 256))],
)
def test_lossy_and_12_bit_syntaxes_decode(name, shape):
    image = read_image(_pydicom_test_file(name))
    assert image.shape == shape and image.dtype == np.float32 and 0 <= image.min() <= image.max() <= 1


@pytest.mark.parametrize(
    ("name", "reason"),
    [("SC_rgb_rle_2frame.dcm", "multi-frame"), ("rtplan.dcm", "no pixel data"), ("JPEG-lossy.dcm", "cannot decode")],
)
def test_unusable_dicoms_are_rejected_with_a_reason(name, reason):
    with pytest.raises(ImageReadError, match=reason):
        read_image(_pydicom_test_file(name))


def _pydicom_test_files():
    import pydicom.data

    folder = Path(pydicom.data.__file__).parent / "test_files"
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_every_pydicom_test_file_is_read_in_unit_range_or_rejected_with_our_error():
    files = _pydicom_test_files()
    assert len(files) > 50 and any(p.name == "badVR.dcm" for p in files)
    read = 0
    for path in files:
        try:
            image = read_image(path, min_side=224)
        except ImageReadError as exc:
            assert str(path) in str(exc) and exc.reason
            continue
        read += 1
        assert image.dtype == np.float32 and image.ndim == 2 and 0 <= image.min() and image.max() <= 1, path
    assert read >= 50


def test_malformed_header_value_is_our_read_error():
    path = next(p for p in _pydicom_test_files() if p.name == "badVR.dcm")
    with pytest.raises(ImageReadError, match="badVR.dcm.*malformed file.*1A"):
        read_image(path)


def _mutations(data: bytes, draw) -> bytes:
    """Flip bytes, truncate, or splice a random slice of the file elsewhere into it."""
    kind = draw(st.sampled_from(("flip", "truncate", "splice")))
    data = bytearray(data)
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, len(data)))])
    if kind == "flip":
        for index in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=16)):
            data[index] ^= draw(st.integers(1, 255))
        return bytes(data)
    start, stop, at = sorted(draw(st.lists(st.integers(0, len(data)), min_size=3, max_size=3)))
    return bytes(data[:at] + data[start:stop] + data[at:])


FUZZ_EXAMPLES = int(os.environ.get("PNEUMOCAM_FUZZ_EXAMPLES", 40))


@pytest.mark.parametrize("suffix", [".dcm", ".png", ".jpg"])
def test_mutated_real_files_are_read_or_rejected_with_our_error(suffix, tmp_path_factory):
    from hypothesis import HealthCheck, given, settings

    sources = {".dcm": RSNA_SAMPLE / "stage_2_train_images",
               ".png": SHARED_DATA / "other_formats", ".jpg": SHARED_DATA / "other_formats"}
    original = sorted(require(sources[suffix]).glob(f"*{suffix}"))[0].read_bytes()
    folder = tmp_path_factory.mktemp("fuzz")

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(st.data())
    def check(data):
        path = folder / f"mutant{suffix}"
        path.write_bytes(_mutations(original, data.draw))
        try:
            image = read_image(path, min_side=224)
        except ImageReadError:
            return
        assert image.ndim == 2 and np.isfinite(image).all() and 0 <= image.min() and image.max() <= 1

    check()


def _lut_sequence(descriptor, data):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    item = Dataset()
    item.add_new(0x00283002, "US", list(descriptor))  # LUT Descriptor: entries, first value mapped, bits
    item.add_new(0x00283006, "US", list(data))  # LUT Data
    return Sequence([item])


def _linear_window(x, center, width):
    """PS3.3 C.11.2.1.2.1 (LINEAR), as a fraction of the output range."""
    return np.clip((np.asarray(x, dtype=np.float64) - (center - 0.5)) / (width - 1) + 0.5, 0, 1)


def test_window_after_rescale_maps_into_the_rescaled_range(tmp_path):
    raw = np.array([[1024, 2048], [3072, 4095]], dtype=np.uint16)  # 12 bit; HU = raw - 1024
    path = _write_dicom(tmp_path / "w.dcm", raw, bits=12, RescaleSlope=1, RescaleIntercept=-1024,
                        WindowCenter=1024, WindowWidth=2048)
    expected = _linear_window(raw - 1024.0, 1024, 2048)  # HU 0, 1024, 2048, 3071 -> 0, .5, 1, 1
    assert np.allclose(read_image(path), expected, atol=1e-5)
    assert np.allclose(expected.ravel(), [0.0, 0.500244, 1.0, 1.0], atol=1e-5)


def test_window_without_rescale(tmp_path):
    raw = np.array([[0, 1000], [2047, 4095]], dtype=np.uint16)
    path = _write_dicom(tmp_path / "w.dcm", raw, bits=12, WindowCenter=2048, WindowWidth=4096)
    assert np.allclose(read_image(path), _linear_window(raw, 2048, 4096), atol=1e-5)


def test_sigmoid_window(tmp_path):
    raw = np.array([[0, 100], [128, 255]], dtype=np.uint8)
    path = _write_dicom(tmp_path / "s.dcm", raw, WindowCenter=128, WindowWidth=64, VOILUTFunction="SIGMOID")
    expected = 1 / (1 + np.exp(-4 * (raw - 128.0) / 64))  # PS3.3 C.11.2.1.3.1
    assert np.allclose(read_image(path), expected, atol=1e-5)


def test_modality_lut_sequence_maps_into_its_own_range(tmp_path):
    raw = np.array([[0, 1], [2, 3]], dtype=np.uint16)
    # LUT entries are 8 or 16 bits (PS3.3 C.11.1.1.1); the range is that of the entries, as pydicom windows into
    path = _write_dicom(tmp_path / "m.dcm", raw, bits=12, ModalityLUTSequence=_lut_sequence((4, 0, 16),
                                                                                           (0, 100, 512, 65535)))
    assert np.allclose(read_image(path), np.array([[0, 100], [512, 65535]]) / 65535, atol=1e-6)


def test_voi_lut_sequence_after_rescale(tmp_path):
    raw = np.array([[10, 11], [12, 13]], dtype=np.uint8)  # rescaled: 0..3, the LUT's first mapped value is 0
    path = _write_dicom(tmp_path / "v.dcm", raw, RescaleSlope=1, RescaleIntercept=-10,
                        VOILUTSequence=_lut_sequence((4, 0, 8), (0, 64, 128, 255)))
    assert np.allclose(read_image(path), np.array([[0, 64], [128, 255]]) / 255, atol=1e-6)


def test_monochrome1_with_rescale_and_window_is_inverted_after_windowing(tmp_path):
    raw = np.array([[1024, 2048], [3072, 4095]], dtype=np.uint16)
    path = _write_dicom(tmp_path / "w1.dcm", raw, bits=12, photometric="MONOCHROME1", RescaleSlope=1,
                        RescaleIntercept=-1024, WindowCenter=1024, WindowWidth=2048)
    assert np.allclose(read_image(path), 1 - _linear_window(raw - 1024.0, 1024, 2048), atol=1e-5)


REDUCED_SCALE_MEAN, REDUCED_SCALE_P99 = 0.01, 0.08  # per image, on [0, 1]; measured by benchmarks/reduced_scale.py


@pytest.mark.parametrize(("folder", "pattern"), [("kermany_sample", "**/*.jpeg"),
                                                 ("rsna_1000/stage_2_train_images", "*.jpg"),
                                                 ("rsna_sample/stage_2_train_images", "*.dcm")])
def test_reduced_scale_decoding_stays_within_its_tolerance_on_real_images(folder, pattern):
    from pneumocam.data import to_model_input

    files = sorted(require(SHARED_DATA / folder.split("/")[0]).parent.joinpath(folder).glob(pattern))[:3]
    assert files
    for path in files:
        diff = np.abs(to_model_input(read_image(path, min_side=224)) - to_model_input(read_image(path)))
        assert diff.mean() <= REDUCED_SCALE_MEAN and np.percentile(diff, 99) <= REDUCED_SCALE_P99, path
