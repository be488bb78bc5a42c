from datetime import date
from io import BytesIO

import numpy as np
import pydicom
import pytest
from pydicom.uid import UID

from renalflow.tasks.config import Phase
from renalflow.tasks.synth.anatomy import SIZE
from renalflow.tasks.synth.writer import (
    DEFAULT_SYNTAXES,
    VENDORS,
    SeriesTags,
    StudyTags,
    derive_uid,
    slice_dataset,
)

SIGNED = next(v for v in VENDORS if v.signed)
UNSIGNED = next(v for v in VENDORS if not v.signed)


def _study(vendor) -> StudyTags:
    return StudyTags(
        patient_name="SYNTH^PATIENT00001",
        patient_id="RF00001",
        vendor=vendor,
        spacing=0.75,
        study_uid=derive_uid("test", "study"),
        accession="A00000001",
        study_date=date(2016, 3, 1),
        birth=date(1960, 5, 17),
        sex="F",
        bolus_start=11 * 3600,
    )


def _series(syntax: str, phase: Phase = Phase.ARTERIAL) -> SeriesTags:
    return SeriesTags(
        series_uid=derive_uid("test", "series"),
        number=2,
        phase=phase,
        description="ART 2.0",
        thickness=2.0,
        syntax=UID(syntax),
        acquired=11 * 3600 + 35,
    )


def _round_trip(vendor, syntax: str, hu: np.ndarray, outside: np.ndarray) -> pydicom.Dataset:
    ds = slice_dataset(_study(vendor), _series(syntax), derive_uid("sop"), 4, -180.5, hu, outside)
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


@pytest.mark.parametrize("vendor", [SIGNED, UNSIGNED], ids=["signed", "unsigned"])
@pytest.mark.parametrize("syntax", sorted(DEFAULT_SYNTAXES))
def test_hu_survive_every_syntax_and_vendor(vendor, syntax):
    hu = np.random.default_rng(0).integers(-1000, 1500, (SIZE, SIZE)).astype(np.float32)
    back = _round_trip(vendor, syntax, hu, np.zeros((SIZE, SIZE), bool))
    assert back.file_meta.TransferSyntaxUID == syntax
    restored = back.pixel_array * float(back.RescaleSlope) + float(back.RescaleIntercept)
    np.testing.assert_array_equal(restored, hu)


def test_signed_vendors_pad_outside_the_field_of_view():
    outside = np.zeros((SIZE, SIZE), bool)
    outside[:8] = True
    back = _round_trip(
        SIGNED, str(pydicom.uid.ExplicitVRLittleEndian), np.zeros((SIZE, SIZE)), outside
    )
    assert back.PixelPaddingValue == -2000 and (back.pixel_array[:8] == -2000).all()
    assert "PixelPaddingValue" not in _round_trip(
        UNSIGNED, str(pydicom.uid.ExplicitVRLittleEndian), np.zeros((SIZE, SIZE)), outside
    )


def test_tags_describe_the_slice_and_its_series():
    back = _round_trip(
        UNSIGNED,
        str(pydicom.uid.ExplicitVRLittleEndian),
        np.zeros((SIZE, SIZE)),
        np.zeros((SIZE, SIZE), bool),
    )
    assert back.InstanceNumber == 5 and back.SeriesNumber == 2
    assert float(back.ImagePositionPatient[2]) == -180.5 and float(back.SliceLocation) == -180.5
    assert back.SeriesDescription == "ART 2.0" and back.ContrastBolusAgent
    assert back.SeriesTime == "110035" and back.Manufacturer == UNSIGNED.manufacturer
    assert [float(v) for v in back.PixelSpacing] == [0.75, 0.75]


def test_uids_depend_only_on_their_parts():
    assert derive_uid("a", 1) == derive_uid("a", 1) != derive_uid("a", 2)
    assert pydicom.uid.UID(derive_uid("a", 1)).is_valid
