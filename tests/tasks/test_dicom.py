from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from renalflow.tasks.config import Phase, PreprocessConfig
from renalflow.tasks.dicom import (
    RejectedFile,
    RejectReason,
    detect_phase,
    read_dataset,
    read_header,
)
from tests.factory import CORONAL, make_ct, save, save_without_meta

CONFIG = PreprocessConfig(output_size=16)


def _reject(ds, config=CONFIG) -> RejectedFile:
    with pytest.raises(RejectedFile) as info:
        read_header(ds, config)
    return info.value


def test_read_header_of_pydicom_ct_small():
    ds = read_dataset(get_testdata_file("CT_small.dcm"), with_pixels=False)
    header = read_header(ds, CONFIG)
    assert header.rows == header.columns == 128
    assert header.rescale_slope == 1 and header.rescale_intercept == -1024
    assert header.z == pytest.approx(-75.699997)
    assert header.transfer_syntax == "1.2.840.10008.1.2.1"
    assert header.sop_instance_uid == str(ds.SOPInstanceUID)
    # What series selection reads: kept as the file has it, empty when absent.
    assert header.image_type == "ORIGINAL\\PRIMARY\\AXIAL"
    assert header.frame_of_reference_uid == "1.3.6.1.4.1.5962.1.4.1.1.20040119072730.12322"
    assert header.acquisition_number == 2
    assert header.body_part_examined == ""


def test_modality_mr_is_rejected_with_its_modality():
    ds = read_dataset(get_testdata_file("MR_small.dcm"), with_pixels=False)
    err = _reject(ds)
    assert err.code is RejectReason.NOT_CT
    assert err.reason == "modality MR, not CT"


def test_missing_rescale_says_values_are_not_hu():
    err = _reject(make_ct(intercept=None, slope=None))
    assert err.code is RejectReason.NO_RESCALE
    assert "no RescaleSlope/RescaleIntercept: pixel values are not Hounsfield units" in err.reason


def test_coronal_reformat_is_rejected_as_not_axial():
    err = _reject(make_ct(orientation=CORONAL))
    assert err.code is RejectReason.NOT_AXIAL
    assert "90 degrees" in err.reason and "coronal" in err.reason


def test_gantry_tilt_within_limit_is_axial():
    tilt = np.radians(15)
    orientation = ["1", "0", "0", "0", f"{np.cos(tilt):.6f}", f"{np.sin(tilt):.6f}"]
    header = read_header(make_ct(orientation=orientation), CONFIG)
    assert header.z is not None
    strict = PreprocessConfig(output_size=16, max_axial_angle_deg=10)
    assert _reject(make_ct(orientation=orientation), strict).code is RejectReason.NOT_AXIAL


def test_z_is_position_along_the_slice_normal():
    header = read_header(make_ct(ImagePositionPatient=["-10", "20", "-42.5"]), CONFIG)
    assert header.z == pytest.approx(-42.5)
    flipped = make_ct(
        orientation=["1", "0", "0", "0", "-1", "0"], ImagePositionPatient=["0", "0", "7"]
    )
    assert read_header(flipped, CONFIG).z == pytest.approx(-7.0)


@pytest.mark.parametrize(
    ("image_type", "code"),
    [
        (["DERIVED", "SECONDARY", "MPR"], RejectReason.NOT_ORIGINAL),
        (["ORIGINAL", "PRIMARY", "LOCALIZER"], RejectReason.LOCALIZER),
    ],
)
def test_derived_and_localizer_images_are_rejected(image_type, code):
    assert _reject(make_ct(ImageType=image_type)).code is code


def test_keep_derived_admits_reformatted_axials():
    config = PreprocessConfig(output_size=16, keep_derived=True)
    assert read_header(make_ct(ImageType=["DERIVED", "SECONDARY", "AXIAL"]), config)


def test_missing_orientation_is_explained():
    err = _reject(make_ct(ImageOrientationPatient=None))
    assert "no ImageOrientationPatient" in err.reason


def test_multiframe_enhanced_ct_is_rejected():
    ds = read_dataset(get_testdata_file("eCT_Supplemental.dcm"), with_pixels=False)
    assert _reject(ds).code is RejectReason.MULTIFRAME


@pytest.mark.parametrize(
    ("tags", "phase"),
    [
        ({"SeriesDescription": "Abdomen NATIVE 5.0 B30f"}, Phase.NONCONTRAST),
        ({"SeriesDescription": "ART 1.5 Br40", "ContrastBolusAgent": "Omnipaque"}, Phase.ARTERIAL),
        ({"SeriesDescription": "Nephrographic 2.0"}, Phase.VENOUS),
        ({"SeriesDescription": "PV 3.0mm"}, Phase.VENOUS),
        ({"ProtocolName": "kidney_corticomedullary"}, Phase.ARTERIAL),
        (
            {
                "SeriesDescription": "Abd 3.0",
                "ContrastBolusAgent": "Visipaque",
                "ContrastBolusStartTime": "101500",
                "AcquisitionTime": "101535.25",
            },
            Phase.ARTERIAL,
        ),
        (
            {
                "SeriesDescription": "Abd 3.0",
                "ContrastBolusAgent": "Visipaque",
                "ContrastBolusStartTime": "101500",
                "AcquisitionTime": "101625",
            },
            Phase.VENOUS,
        ),
        ({"SeriesDescription": "Abd 3.0", "ContrastBolusAgent": "Visipaque"}, Phase.UNKNOWN),
        ({"SeriesDescription": "Abd 3.0", "ContrastBolusAgent": ""}, Phase.NONCONTRAST),
        ({"SeriesDescription": "Abd 3.0"}, Phase.UNKNOWN),
    ],
)
def test_detect_phase(tags, phase):
    assert detect_phase(make_ct(**tags)) is phase


def test_header_less_file_is_read(tmp_path: Path):
    path = save_without_meta(make_ct(), tmp_path / "bare")
    with pytest.raises(pydicom.errors.InvalidDicomError):
        pydicom.dcmread(path)
    ds = read_dataset(str(path), with_pixels=True)
    assert read_header(ds, CONFIG).transfer_syntax == "1.2.840.10008.1.2"


def test_junk_file_is_not_dicom(tmp_path: Path):
    junk = tmp_path / "notes.txt"
    junk.write_text("radiology worklist export\n" * 20)
    with pytest.raises(RejectedFile, match="not a DICOM file") as info:
        read_dataset(str(junk), with_pixels=False)
    assert info.value.code is RejectReason.NOT_DICOM


def test_empty_file_is_not_dicom(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(RejectedFile) as info:
        read_dataset(str(empty), with_pixels=False)
    assert info.value.code in (RejectReason.NOT_DICOM, RejectReason.TRUNCATED)


def test_file_cut_inside_its_header_is_truncated(tmp_path: Path):
    path = save(make_ct(), tmp_path / "whole.dcm")
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(path.read_bytes()[:500])
    with pytest.raises(
        RejectedFile, match=r"file ends after 500 bytes .*\(truncated file\)"
    ) as info:
        read_dataset(str(cut), with_pixels=False)
    assert info.value.code is RejectReason.TRUNCATED


def test_file_cut_inside_its_pixel_data_is_truncated_from_the_header_alone(tmp_path: Path):
    path = save(make_ct(), tmp_path / "whole.dcm")
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(RejectedFile, match=r"pixel data ends early \(truncated file\): 412 of 512"):
        read_dataset(str(cut), with_pixels=False)


def test_ct_without_pixel_data_says_so(tmp_path: Path):
    ds = make_ct()
    del ds.PixelData
    path = save(ds, tmp_path / "nopix.dcm")
    with pytest.raises(RejectedFile, match="no pixel data") as info:
        read_dataset(str(path), with_pixels=False)
    assert info.value.code is RejectReason.NO_PIXEL_DATA
