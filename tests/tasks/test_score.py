"""Scoring plans: what is still to score, how it is cut into tasks, what to explain."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from renalflow.tasks.config import PreprocessConfig
from renalflow.tasks.model_dir import ModelInfo
from renalflow.tasks.pseudonym import pseudonym
from renalflow.tasks.score import ScoreConfig, plan_scoring, score_batches

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


def test_score_config_checks_thresholds():
    with pytest.raises(ValueError, match="vote_threshold"):
        ScoreConfig(vote_threshold=1.5)
