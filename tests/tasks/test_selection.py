"""Series and slice selection on headers read by renalflow's own header reader, from
pydicom's real CT files and from series built the way scanners write them."""

from __future__ import annotations

from dataclasses import asdict

import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from renalflow.tasks.config import PreprocessConfig, SelectionSource, SeriesRule
from renalflow.tasks.dicom import read_header
from renalflow.tasks.errors import InputError
from renalflow.tasks.selection import (
    RegionBasis,
    SeriesDecision,
    check_selection_possible,
    judge_region,
    mass_slices,
    select_series,
    select_slices,
    thickness_distance,
)
from tests.factory import ct_series

CONFIG = PreprocessConfig()
RULE = SeriesRule()


def _rows(datasets, config: PreprocessConfig = CONFIG) -> pd.DataFrame:
    return pd.DataFrame([asdict(read_header(ds, config)) for ds in datasets])


def _series(
    study: str,
    *,
    n: int,
    thickness: float,
    start: float = -300.0,
    frame_of_reference: str | None = None,
    acquisition: int = 1,
    patient: str = "P1",
    **tags,
) -> list[pydicom.Dataset]:
    """A contiguous axial series of `n` slices `thickness` mm apart, from z=`start` up."""
    return ct_series(
        study, patient, n=n, thickness=thickness, start=start,
        frame_of_reference=frame_of_reference, AcquisitionNumber=acquisition, **tags,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("body_part", "description", "abdominal", "basis"),
    [
        ("ABDOMEN", "", True, RegionBasis.BODY_PART),
        ("Chest Abdomen", "", True, RegionBasis.BODY_PART),  # CHESTABDOMEN once spaces go
        ("CHEST", "CT ABDOMEN", False, RegionBasis.BODY_PART),  # the coded value decides
        ("", "CT THORAX/ABDOMEN 1.0 B30f", True, RegionBasis.DESCRIPTION),  # inclusion wins
        ("", "Thorax 1.0 B70f", False, RegionBasis.DESCRIPTION),
        ("", "Nieren nativ", True, RegionBasis.DESCRIPTION),
        ("", "5/5mm Plain", True, RegionBasis.UNKNOWN),
        ("", "", True, RegionBasis.UNKNOWN),
    ],
)
def test_region_by_body_part_then_description(body_part, description, abdominal, basis):
    region = judge_region(body_part, description, RULE)
    assert (region.abdominal, region.basis) == (abdominal, basis)


def test_pydicoms_head_and_neck_ct_are_not_screened_its_pancreas_ct_is():
    """Real scanners' headers: BodyPartExamined HEAD, NECK and PANCREAS."""
    datasets = [
        pydicom.dcmread(get_testdata_file(name))
        for name in ("J2K_pixelrep_mismatch.dcm", "bad_sequence.dcm", "explicit_VR-UN.dcm")
    ]
    frame = _rows(datasets, PreprocessConfig(max_axial_angle_deg=25))  # a 22-degree tilt
    decided = select_series(frame)
    by_part = dict(zip(decided["body_part_examined"], decided["decision"], strict=True))
    assert by_part == {
        "HEAD": SeriesDecision.NOT_ABDOMINAL,
        "NECK": SeriesDecision.NOT_ABDOMINAL,
        "PANCREAS": SeriesDecision.SELECTED,
    }
    # A rule that asks for 20 mm of body refuses a lone slice.
    assert set(select_series(frame, SeriesRule(min_z_extent_mm=20))["decision"]) == {
        SeriesDecision.NOT_ABDOMINAL,
        SeriesDecision.TOO_SHORT,
    }


def test_thin_and_thick_reconstructions_of_one_acquisition_are_voted_once():
    study, frame_of_reference = generate_uid(), generate_uid()
    thin = _series(study, n=60, thickness=1.0, frame_of_reference=frame_of_reference,
                   BodyPartExamined="ABDOMEN")  # fmt: skip
    thick = _series(study, n=12, thickness=5.0, frame_of_reference=frame_of_reference,
                    BodyPartExamined="ABDOMEN")  # fmt: skip
    chest = _series(study, n=30, thickness=5.0, BodyPartExamined="CHEST", start=0)
    decided = select_series(_rows(thin + thick + chest)).set_index("series_instance_uid")
    thin_uid, thick_uid, chest_uid = (s[0].SeriesInstanceUID for s in (thin, thick, chest))
    assert decided.at[thick_uid, "decision"] == SeriesDecision.SELECTED  # 5 mm: in 1.5-5
    assert decided.at[thin_uid, "decision"] == SeriesDecision.TWIN
    assert decided.at[thin_uid, "twin_of"] == thick_uid
    assert "1 mm against 5 mm" in decided.at[thin_uid, "reason"]
    assert decided.at[chest_uid, "decision"] == SeriesDecision.NOT_ABDOMINAL


def test_two_phases_of_one_study_are_not_twins():
    study, frame_of_reference = generate_uid(), generate_uid()
    plain = _series(study, n=20, thickness=3.0, frame_of_reference=frame_of_reference,
                    acquisition=1, BodyPartExamined="ABDOMEN")  # fmt: skip
    venous = _series(study, n=20, thickness=3.0, frame_of_reference=frame_of_reference,
                     acquisition=2, BodyPartExamined="ABDOMEN",
                     ContrastBolusAgent="Omnipaque")  # fmt: skip
    decided = select_series(_rows(plain + venous))
    assert list(decided["decision"]) == [SeriesDecision.SELECTED] * 2


def test_a_monitoring_series_at_one_level_is_never_screened():
    study = generate_uid()
    bolus = _series(study, n=15, thickness=0.0, BodyPartExamined="ABDOMEN")  # one z, 15 times
    decided = select_series(_rows(bolus))
    assert list(decided["decision"]) == [SeriesDecision.ONE_LEVEL]


def test_thickness_distance_to_the_papers_range():
    assert thickness_distance(3.0) == thickness_distance(1.5) == thickness_distance(5.0) == 0
    assert thickness_distance(0.625) == pytest.approx(0.875)
    assert thickness_distance(None) == float("inf")


def _study_with_lesion(study: str, patient: str) -> pd.DataFrame:
    rows = _rows(_series(study, n=30, thickness=3.0, BodyPartExamined="ABDOMEN",
                         patient=patient))  # fmt: skip
    rows["lesion"] = [10 <= i < 18 for i in range(30)]
    return rows


def test_annotations_then_selector_then_all_slices_decide_which_slices_vote():
    annotated_study, bare_study = generate_uid(), generate_uid()
    annotated_rows = _study_with_lesion(annotated_study, "A")
    bare_rows = _rows(_series(bare_study, n=30, thickness=3.0, BodyPartExamined="ABDOMEN",
                              patient="B"))  # fmt: skip
    bare_rows["lesion"] = None
    slices = pd.concat([annotated_rows, bare_rows], ignore_index=True)
    series = select_series(slices)

    with pytest.raises(InputError, match="1 of 2 studies with an abdominal series carry no"):
        check_selection_possible(slices, series, selector=False, all_slices=False)
    check_selection_possible(slices, series, selector=True, all_slices=False)

    picked = {s.study_instance_uid: s for s in select_slices(slices, series)}
    assert picked[annotated_study].source is SelectionSource.ANNOTATION
    assert picked[annotated_study].slices_selected == 8
    assert picked[bare_study].source is None and picked[bare_study].slices_selected == 0

    chosen = set(bare_rows["sop_instance_uid"].iloc[5:9])
    by_selector = {
        s.study_instance_uid: s
        for s in select_slices(slices, series, selector=dict.fromkeys(chosen, True))
    }
    assert by_selector[annotated_study].source is SelectionSource.ANNOTATION  # truth first
    assert by_selector[bare_study].source is SelectionSource.SELECTOR
    assert by_selector[bare_study].selected == chosen
    everything = {s.study_instance_uid: s for s in select_slices(slices, series, all_slices=True)}
    assert everything[bare_study].source is SelectionSource.ALL
    assert everything[bare_study].slices_selected == 30


def test_a_chest_ct_has_nothing_to_select():
    study = generate_uid()
    chest = _rows(_series(study, n=40, thickness=5.0, BodyPartExamined="CHEST"))
    chest["lesion"] = None
    # Not refused without annotations or a selector: it has no mass to find.
    check_selection_possible(chest, select_series(chest), selector=False, all_slices=False)
    (only,) = select_slices(chest, select_series(chest), all_slices=True)
    assert only.series_used == () and only.slices_selected == 0
    assert only.slices_in_study == 40


def test_the_classifier_learns_only_from_slices_through_the_mass():
    """Annotated studies give their lesion slices (of one reconstruction); curated series
    without annotations are taken whole; chest series never."""
    annotated_rows = _study_with_lesion(generate_uid(), "A")
    curated_study, frame = generate_uid(), generate_uid()
    curated = _rows(
        _series(curated_study, n=12, thickness=3.0, BodyPartExamined="ABDOMEN", patient="C",
                frame_of_reference=frame)
        + _series(curated_study, n=36, thickness=1.0, BodyPartExamined="ABDOMEN", patient="C",
                  frame_of_reference=frame)  # the same levels reconstructed thin
    )  # fmt: skip
    chest = _rows(_series(generate_uid(), n=10, thickness=5.0, BodyPartExamined="CHEST",
                          patient="D"))  # fmt: skip
    for rows in (curated, chest):
        rows["lesion"] = None
    slices = pd.concat([annotated_rows, curated, chest], ignore_index=True)
    keep = pd.Series(mass_slices(slices), index=slices.index)
    assert keep[slices["patient_id"] == "A"].tolist() == annotated_rows["lesion"].tolist()
    kept_curated = slices[keep & (slices["patient_id"] == "C")]
    assert len(kept_curated) == 12  # the 3 mm reconstruction, nearest the paper's range
    assert not keep[slices["patient_id"] == "D"].any()


def test_a_whole_scan_without_annotations_is_never_learnt_from():
    whole = _rows(_series(generate_uid(), n=60, thickness=5.0, BodyPartExamined="ABDOMEN"))
    whole["lesion"] = None
    with pytest.raises(InputError, match=r"1 study without lesion annotations holds series "
                       r"over 160 mm along the body \(up to 295 mm\).*--lesions CSV"):  # fmt: skip
        mass_slices(whole)
    assert mass_slices(whole, SeriesRule(curated_max_z_mm=300)).all()
    whole["lesion"] = [20 <= i < 30 for i in range(60)]  # annotated: its lesion slices
    assert mass_slices(whole).sum() == 10
