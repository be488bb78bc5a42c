"""Scoring logic: what is still to score, the vote per study, and what reaches R."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from renalflow.tasks.config import PreprocessConfig
from renalflow.tasks.model_dir import ModelInfo
from renalflow.tasks.pseudonym import pseudonym
from renalflow.tasks.results import FORBIDDEN_COLUMNS
from renalflow.tasks.score import ScoreConfig, plan_scoring, result_rows, score_batches

KEY = b"test-key-for-scoring-0123456789"
INFO = ModelInfo("/models/m", "mv1", "cpu-demo", PreprocessConfig())


def inventory(studies: dict[str, tuple[str, int, list[str]]]) -> pd.DataFrame:
    """studies: study uid -> (patient id, images, phases of the images in turn)."""
    rows = []
    for study, (patient, n, phases) in studies.items():
        for i in range(n):
            rows.append(
                {
                    "source_uri": f"file:///archive/{study}/{i}.dcm",
                    "patient_id": patient,
                    "study_instance_uid": study,
                    "series_instance_uid": f"{study}.{phases[i % len(phases)]}",
                    "sop_instance_uid": f"{study}.{i}",
                    "instance_number": i + 1,
                    "z": float(i),
                    "phase": phases[i % len(phases)],
                    "manufacturer": "SIEMENS",
                    "study_date": "20170314",
                    "cohort": "screening",
                    "label": None,
                    "preprocess_version": INFO.preprocess.version,
                    "part": f"/store/slices/part-{study}.parquet",
                }
            )
    return pd.DataFrame(rows)


def test_plan_scores_new_studies_and_studies_that_grew():
    frame = inventory(
        {
            "1.2.3": ("PAT1", 10, ["venous"]),
            "1.2.4": ("PAT2", 12, ["venous"]),
            "1.2.5": ("PAT3", 8, ["venous"]),
        }
    )
    scored = {pseudonym(KEY, "1.2.3"): 10, pseudonym(KEY, "1.2.4"): 11}
    plan = plan_scoring(pa.Table.from_pandas(frame), scored, KEY)
    assert plan.studies_in_archive == 3 and plan.already_scored == 1 and plan.rescored == 1
    assert sorted(plan.slices["study_instance_uid"].unique()) == ["1.2.4", "1.2.5"]
    assert len(plan.slices) == 20


def test_batches_keep_part_files_together():
    frame = inventory({"a": ("P", 30, ["venous"]), "b": ("Q", 5, ["venous"])})
    batches = score_batches(frame, 16)
    assert [len(b) for b in batches] == [16, 14, 5]
    assert all(b["part"].nunique() == 1 for b in batches)


def test_votes_follow_the_51_percent_rule_and_flag_qc():
    frame = inventory(
        {
            "1.1": ("PAT1", 10, ["arterial", "venous"]),  # 6 of 10 malignant -> malignant
            "1.2": ("PAT2", 10, ["venous"]),  # 5 of 10 -> benign (a tie is not 51%)
            "1.3": ("PAT3", 4, ["noncontrast"]),  # few images, no contrast
        }
    )
    probabilities = {}
    for study, positives in (("1.1", 6), ("1.2", 5), ("1.3", 4)):
        uids = frame.loc[frame["study_instance_uid"] == study, "sop_instance_uid"]
        for i, uid in enumerate(uids):
            probabilities[uid] = 0.9 if i < positives else 0.1
    slices, votes = result_rows(frame, probabilities, KEY, INFO, ScoreConfig(), "/archive", "run-1")
    by_study = {r["study_key"]: r for r in votes.to_pylist()}
    first = by_study[pseudonym(KEY, "1.1")]
    assert first["vote"] == "malignant" and first["n_malignant"] == 6 and first["n_series"] == 2
    assert first["phases"] == "arterial,venous" and first["study_year_month"] == "2017-03"
    assert first["patient_key"] == pseudonym(KEY, "PAT1")
    assert by_study[pseudonym(KEY, "1.2")]["vote"] == "benign"
    third = by_study[pseudonym(KEY, "1.3")]
    assert third["qc_too_few_images"] and third["qc_noncontrast_only"]
    assert third["qc_flags"] == "too_few_images,noncontrast_only"
    assert slices.num_rows == 24 and votes.num_rows == 3


def test_no_identifier_reaches_the_result_rows():
    frame = inventory({"1.2.840.99.1": ("SECRET-PATIENT-ID", 10, ["venous"])})
    probabilities = dict.fromkeys(frame["sop_instance_uid"], 0.7)
    tables = result_rows(frame, probabilities, KEY, INFO, ScoreConfig(), "/archive", "r")
    identifiers = {"SECRET-PATIENT-ID", "1.2.840.99.1", "20170314", *frame["sop_instance_uid"]}
    identifiers |= set(frame["series_instance_uid"])
    for table in tables:
        assert not FORBIDDEN_COLUMNS & set(table.column_names)
        for column in table.columns:
            values = {str(v) for v in column.to_pylist()}
            assert not values & identifiers


def test_every_planned_slice_must_be_scored():
    frame = inventory({"1.1": ("PAT1", 3, ["venous"])})
    with pytest.raises(Exception, match="never scored"):
        result_rows(frame, {}, KEY, INFO, ScoreConfig(), "/archive", "r")


def test_score_config_checks_thresholds():
    with pytest.raises(ValueError, match="vote_threshold"):
        ScoreConfig(vote_threshold=1.5)
