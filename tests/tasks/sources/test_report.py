"""The SR documents renalflow sends back to a PACS: what waits, what supersedes what."""

from __future__ import annotations

import copy
import shutil
import subprocess
from dataclasses import replace

import pydicom
import pytest
from highdicom.sr import EnhancedSR
from pydicom.data import get_testdata_file

from renalflow.tasks.sources.report import (
    StudyResult,
    VotedSlice,
    build_report,
    pending_reports,
    previous_reports,
    queue_reports,
    record_sent,
)


@pytest.fixture
def evidence() -> pydicom.Dataset:
    """A real CT image's header (pydicom's CT_small.dcm), not one renalflow wrote."""
    return pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)


def _result(ct: pydicom.Dataset, **changes: object) -> StudyResult:
    voted = VotedSlice(str(ct.SeriesInstanceUID), str(ct.SOPInstanceUID), "unused")
    result = StudyResult(
        study_instance_uid=str(ct.StudyInstanceUID),
        status="voted",
        vote="benign",
        fraction_malignant=0.2,
        n_images=12,
        n_malignant=2,
        vote_threshold=0.51,
        image_threshold=0.5,
        model_version="v1",
        voted=(voted,),
        any_slice=voted,
    )
    return replace(result, **changes)


def _predecessors(report: pydicom.Dataset) -> list[str]:
    return [
        str(sop.ReferencedSOPInstanceUID)
        for study in report.get("PredecessorDocumentsSequence", [])
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    ]


def test_a_study_scored_again_names_the_sr_the_pacs_has_and_withdraws_one_still_waiting(
    evidence, tmp_path
):
    root = str(tmp_path / "source")
    study = str(evidence.StudyInstanceUID)
    first = build_report(_result(evidence), [evidence])
    assert "PredecessorDocumentsSequence" not in first
    assert queue_reports(root, [first]) == 1

    # Scored again before the first reached the PACS: the first is withdrawn, unsent.
    second = build_report(_result(evidence, model_version="v2"), [evidence])
    assert queue_reports(root, [second]) == 1
    assert pending_reports(root) == [f"{root}/reports/{second.SOPInstanceUID}.dcm"]
    assert queue_reports(root, [second]) == 0  # the same instance is queued once

    # The PACS acknowledged the second; a third result of the study succeeds it.
    record_sent(root, second)
    previous = previous_reports(root)[study]
    third = build_report(
        _result(evidence, model_version="v2", fraction_malignant=0.3), [evidence], previous
    )
    assert _predecessors(third) == [str(second.SOPInstanceUID)]
    (reference,) = third.PredecessorDocumentsSequence
    assert reference.StudyInstanceUID == study
    assert reference.ReferencedSeriesSequence[0].SeriesInstanceUID == second.SeriesInstanceUID
    EnhancedSR.from_dataset(third)  # still a valid Enhanced SR, read back
    # The same result built again never names itself.
    assert (
        _predecessors(build_report(_result(evidence, model_version="v2"), [evidence], previous))
        == []
    )

    if shutil.which("dciodvfy"):  # dicom3tools: the predecessor reference is well formed
        path = tmp_path / "third.dcm"
        third.save_as(path, enforce_file_format=True)
        checked = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [line for line in checked.stderr.splitlines() if line.startswith("Error")]
        assert not errors, checked.stderr


def test_reports_of_other_studies_are_neither_withdrawn_nor_named(evidence, tmp_path):
    root = str(tmp_path / "source")
    elsewhere = copy.deepcopy(evidence)
    elsewhere.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    sent = build_report(_result(elsewhere), [elsewhere])
    assert queue_reports(root, [sent]) == 1
    record_sent(root, sent)
    waiting = build_report(_result(elsewhere, model_version="v2"), [elsewhere])
    mine = build_report(_result(evidence), [evidence], previous_reports(root).get("x", []))
    assert queue_reports(root, [waiting, mine]) == 2
    assert len(pending_reports(root)) == 2  # the other study's waiting SR stays
    assert set(previous_reports(root)) == {elsewhere.StudyInstanceUID}
    assert _predecessors(mine) == []


def test_the_same_result_is_the_same_instance_on_any_machine(evidence):
    """The SR's UIDs are derived from what it says (a rerun rebuilds the same instance,
    which the PACS keeps once): pinned, so they cannot drift between versions."""
    from renalflow.tasks.sources.report import report_uids

    assert report_uids(_result(evidence)) == (
        "2.25.254513834447499288233309927195191368283",
        "2.25.98226242674896643778217863596251467993",
    )
    series, sop = report_uids(_result(evidence, vote="malignant", fraction_malignant=0.6))
    assert series == report_uids(_result(evidence))[0]  # same study and model: same series
    assert sop != report_uids(_result(evidence))[1]


def test_a_waiting_sr_is_withdrawn_only_once_its_successor_is_queued(
    evidence, tmp_path, monkeypatch
):
    from renalflow.tasks.sources import report as reports

    root = str(tmp_path / "source")
    first = build_report(_result(evidence), [evidence])
    assert queue_reports(root, [first]) == 1
    second = build_report(_result(evidence, model_version="v2"), [evidence])

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(reports.pydicom, "dcmwrite", disk_full)
    with pytest.raises(OSError, match="No space left"):
        queue_reports(root, [second])
    assert pending_reports(root) == [f"{root}/reports/{first.SOPInstanceUID}.dcm"]
