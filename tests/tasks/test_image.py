import numpy as np
import pytest
from PIL import Image

from renalflow.tasks.config import Interpolation
from renalflow.tasks.image import apply_lut, resize_slice, stored_value_lut, window_hu


def test_window_hu_matches_dicom_linear_function_at_known_points():
    # Level 40 / width 400: the DICOM linear function is 0 up to -160 HU, 255 from 239 HU.
    hu = np.array([-1000, -160, 39.5, 40, 238, 239, 3000])
    out = window_hu(hu, 40, 400)
    assert out.tolist() == [0, 0, 128, 128, 254, 255, 255]
    # Hand computation for 40 HU: ((40 - 39.5) / 399 + 0.5) * 255 = 127.82 -> 128.
    assert round(((40 - 39.5) / 399 + 0.5) * 255) == 128


def test_window_hu_with_bone_window():
    out = window_hu(np.array([-450.0, 400.0, 1250.0]), 400, 1700)
    assert out.tolist() == [0, 128, 255]


def test_window_hu_rejects_zero_width():
    with pytest.raises(ValueError, match="at least 1"):
        window_hu(np.zeros(3), 40, 0)


@pytest.mark.parametrize("signed", [False, True])
def test_stored_value_lut_equals_float_path(signed):
    rng = np.random.default_rng(3)
    if signed:
        stored = rng.integers(-2048, 2048, size=(64, 64)).astype(np.int16)
        slope, intercept = 1.0, 0.0
    else:
        stored = rng.integers(0, 4096, size=(64, 64)).astype(np.uint16)
        slope, intercept = 1.0, -1024.0
    lut = stored_value_lut(slope, intercept, 40.0, 400.0, signed)
    expected = window_hu(stored * slope + intercept, 40, 400)
    np.testing.assert_array_equal(apply_lut(stored, lut), expected)


def test_stored_value_lut_handles_non_unit_slope():
    stored = np.arange(0, 4000, 7, dtype=np.uint16).reshape(1, -1)
    lut = stored_value_lut(0.5, -1000.0, 40.0, 400.0, False)
    np.testing.assert_array_equal(apply_lut(stored, lut), window_hu(stored * 0.5 - 1000, 40, 400))


def test_padding_value_maps_to_black():
    lut = stored_value_lut(1.0, 0.0, -600.0, 1600.0, True, -2000)
    stored = np.array([[-2000, -1000]], dtype=np.int16)
    out = apply_lut(stored, lut)
    assert out[0, 0] == 0
    assert out[0, 1] > 0  # air in a lung window is not black


def test_nearest_resize_of_stored_values_picks_the_same_pixels_as_pillow():
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 4096, size=(512, 512)).astype(np.uint16)
    lut = stored_value_lut(1.0, -1024.0, 40.0, 400.0, False)
    windowed_first = np.asarray(
        Image.fromarray(apply_lut(stored, lut)).resize((224, 224), Image.Resampling.NEAREST)
    )
    resized_first = apply_lut(resize_slice(stored, 224, Interpolation.NEAREST), lut)
    np.testing.assert_array_equal(resized_first, windowed_first)


@pytest.mark.parametrize("interpolation", list(Interpolation))
def test_resize_uint8_uses_pillow_filter(interpolation):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(100, 80)).astype(np.uint8)
    out = resize_slice(image, 32, interpolation)
    assert out.shape == (32, 32) and out.dtype == np.uint8


def test_resize_refuses_arithmetic_filters_on_stored_values():
    with pytest.raises(ValueError, match="window them to uint8 first"):
        resize_slice(np.zeros((64, 64), np.uint16), 32, Interpolation.BILINEAR)


def test_box_resize_keeps_the_density_and_averages_the_noise():
    """What the demo's `--interpolation box` is for: a 40 HU organ with 20 HU of pixel
    noise keeps its mean grey level, and its noise falls to under half of nearest's."""
    rng = np.random.default_rng(0)
    slice_ = window_hu(40.0 + 20.0 * rng.standard_normal((512, 512)), 40.0, 400.0)
    nearest = resize_slice(slice_, 224, Interpolation.NEAREST).astype(float)
    box = resize_slice(slice_, 224, Interpolation.BOX).astype(float)
    assert abs(box.mean() - nearest.mean()) < 0.5
    assert box.std() < 0.5 * nearest.std()
