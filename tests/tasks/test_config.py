import pytest

from renalflow.tasks.config import Interpolation, PreprocessConfig, WindowSource


def test_defaults_are_the_papers_choices():
    config = PreprocessConfig()
    assert config.output_size == 224
    assert config.interpolation is Interpolation.NEAREST
    assert (config.window_center, config.window_width) == (40.0, 400.0)
    assert config.window_source is WindowSource.FIXED


def test_vocabularies_are_checked_on_entry():
    with pytest.raises(ValueError, match="'cubic' is not a valid Interpolation"):
        PreprocessConfig(interpolation="cubic")  # type: ignore[arg-type]


def test_version_changes_with_anything_that_changes_pixels():
    base = PreprocessConfig().version
    assert PreprocessConfig().version == base
    assert PreprocessConfig(window_width=350).version != base
    assert PreprocessConfig(interpolation=Interpolation.BILINEAR).version != base
    assert len(base) == 16


def test_invalid_values_explain_themselves():
    with pytest.raises(ValueError, match="window_width must be at least 1 HU"):
        PreprocessConfig(window_width=0)
    with pytest.raises(ValueError, match="max_axial_angle_deg"):
        PreprocessConfig(max_axial_angle_deg=90)
