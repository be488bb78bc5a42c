from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import apply_modality_lut
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from renalflow.tasks.config import Interpolation, PreprocessConfig, WindowSource
from renalflow.tasks.convert import convert_file, decode_pixels
from renalflow.tasks.dicom import RejectedFile, RejectReason
from renalflow.tasks.image import resize_slice, window_hu
from tests.factory import make_ct, save

SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEG2000Lossless,
    JPEGLSLossless,
]


def _phantom(signed: bool = False) -> np.ndarray:
    rng = np.random.default_rng(7)
    hu = rng.normal(40, 60, size=(64, 64)).clip(-1024, 2000)
    hu[:8] = -1000
    return (np.rint(hu) if signed else np.rint(hu) + 1024).astype(np.int16 if signed else np.uint16)


@pytest.mark.parametrize("signed", [False, True])
def test_same_image_in_every_lossless_encoding_gives_identical_pixels(tmp_path: Path, signed):
    ds = make_ct(_phantom(signed), signed=signed, intercept=0.0 if signed else -1024.0)
    config = PreprocessConfig(output_size=32)
    outputs = {}
    for syntax in SYNTAXES:
        path = save(ds, tmp_path / f"{syntax.name}.dcm", syntax)
        assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
        outputs[syntax.name] = convert_file(str(path), config).pixels
    reference = outputs[ExplicitVRLittleEndian.name]
    for name, pixels in outputs.items():
        np.testing.assert_array_equal(pixels, reference, err_msg=name)


def test_hu_and_window_values_match_hand_computation(tmp_path: Path):
    # Stored 0/884/1064/1264/4095 with intercept -1024 are HU -1024/-140/40/240/3071.
    stored = np.array([[0, 884, 1064, 1264, 4095, 1024, 1024, 1024]] * 8, dtype=np.uint16)
    path = save(make_ct(stored), tmp_path / "ramp.dcm")
    pixels = convert_file(str(path), PreprocessConfig(output_size=8)).pixels
    # ((HU - 39.5) / 399 + 0.5) * 255: -140 -> 12.8 -> 13; 40 -> 127.8 -> 128; 0 -> 102.3 -> 102.
    assert pixels[0].tolist() == [0, 13, 128, 255, 255, 102, 102, 102]


def test_rescale_slope_and_intercept_are_applied(tmp_path: Path):
    stored = np.full((8, 8), 2080, dtype=np.uint16)  # 2080 * 0.5 - 1000 = 40 HU
    path = save(make_ct(stored, slope=0.5, intercept=-1000), tmp_path / "slope.dcm")
    assert set(convert_file(str(path), PreprocessConfig(output_size=8)).pixels.ravel()) == {128}


def test_monochrome1_shows_the_same_anatomy_as_monochrome2(tmp_path: Path):
    stored = _phantom()
    mono2 = save(make_ct(stored), tmp_path / "m2.dcm")
    mono1 = save(make_ct(stored, PhotometricInterpretation="MONOCHROME1"), tmp_path / "m1.dcm")
    config = PreprocessConfig(output_size=32)
    a = convert_file(str(mono2), config)
    b = convert_file(str(mono1), config)
    assert b.header.photometric_interpretation == "MONOCHROME1"
    np.testing.assert_array_equal(a.pixels, b.pixels)
    # Air (first rows) is black and soft tissue grey, as on any CT workstation.
    assert a.pixels[:3].max() == 0 and a.pixels[20:].mean() > 80


def test_pydicom_ct_small_matches_reference_pipeline():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    expected = resize_slice(
        window_hu(apply_modality_lut(ds.pixel_array, ds), 40, 400), 224, Interpolation.NEAREST
    )
    np.testing.assert_array_equal(convert_file(path, PreprocessConfig()).pixels, expected)


@pytest.mark.parametrize("interpolation", [Interpolation.BILINEAR, Interpolation.LANCZOS])
def test_smoothing_filters_resize_after_windowing(interpolation):
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    windowed = window_hu(apply_modality_lut(ds.pixel_array, ds), 40, 400)
    config = PreprocessConfig(output_size=64, interpolation=interpolation)
    expected = resize_slice(windowed, 64, interpolation)
    np.testing.assert_array_equal(convert_file(path, config).pixels, expected)


def test_file_window_is_used_when_asked(tmp_path: Path):
    stored = np.full((8, 8), 1024 + 400, dtype=np.uint16)  # 400 HU: white in a soft-tissue window
    ds = make_ct(stored, WindowCenter="400", WindowWidth="1800")
    path = save(ds, tmp_path / "bone.dcm")
    fixed = convert_file(str(path), PreprocessConfig(output_size=8))
    own = convert_file(str(path), PreprocessConfig(output_size=8, window_source=WindowSource.FILE))
    assert (fixed.window_center, fixed.window_width) == (40, 400)
    assert (own.window_center, own.window_width) == (400, 1800)
    assert fixed.pixels[0, 0] == 255 and own.pixels[0, 0] == 128


@pytest.mark.parametrize(("signed", "bits"), [(False, 12), (True, 12), (False, 16), (True, 16)])
def test_native_fast_path_equals_pixel_array(signed, bits):
    rng = np.random.default_rng(bits)
    if signed:
        low, high = -(1 << (bits - 1)), (1 << (bits - 1))
        stored = rng.integers(low, high, size=(32, 32)).astype(np.int16)
    else:
        stored = rng.integers(0, 1 << bits, size=(32, 32)).astype(np.uint16)
    ds = make_ct(stored, signed=signed, bits_stored=bits)
    # decode_pixels views uncompressed little-endian bytes instead of calling pydicom's
    # decoder: bits above BitsStored dropped, signed values sign-extended, as pydicom does.
    np.testing.assert_array_equal(decode_pixels(ds), ds.pixel_array)


def test_colour_screen_capture_is_rejected():
    ds = pydicom.dcmread(get_testdata_file("SC_rgb.dcm"))
    ds.Modality = "CT"
    with pytest.raises(RejectedFile, match="greyscale") as info:
        decode_pixels(ds)
    assert info.value.code is RejectReason.UNSUPPORTED_PIXELS


def test_corrupt_jpeg2000_stream_names_the_decoder(tmp_path: Path):
    path = save(make_ct(_phantom()), tmp_path / "j2k.dcm", JPEG2000Lossless)
    ds = pydicom.dcmread(path)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 3]])  # the stream stops a third in
    with pytest.raises(RejectedFile, match="JPEG 2000") as info:
        decode_pixels(ds)
    assert info.value.code in (RejectReason.DECODE_ERROR, RejectReason.TRUNCATED)
