"""tasks/evaluate.py: metrics, the patient vote and the report, on a tiny trained model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from renalflow.tasks.evaluate import evaluate, patient_table
from tests.factory import build_store


def test_evaluate_writes_metrics_and_report(store, trained, tmp_path):
    _, model_dir = trained
    metrics = evaluate(store, model_dir, tmp_path / "report", n_bootstrap=50)
    for name in ("metrics.json", "patients.csv", "roc.png", "report.md", "curves.png"):
        assert (tmp_path / "report" / name).exists(), name
    assert metrics["patient"]["n"] >= 2 and 0 <= metrics["image"]["auc"] <= 1
    report = (tmp_path / "report" / "report.md").read_text()
    assert "DataTest_1 (paper) | 0.973" in report and "![ROC curve](roc.png)" in report


def test_evaluate_shows_heat_maps_of_misclassified_patients(store, trained, tmp_path):
    _, model_dir = trained
    # An image threshold no probability reaches: every malignant patient is voted benign.
    metrics = evaluate(store, model_dir, tmp_path / "report", n_bootstrap=20, image_threshold=1.0)
    shown = metrics["heatmaps"]["patients"]
    assert shown and metrics["heatmaps"]["method"] == "grad-cam"
    for paths in shown.values():
        assert 1 <= len(paths) <= 6
        assert all((tmp_path / "report" / p).exists() for p in paths)
    report = (tmp_path / "report" / "report.md").read_text()
    assert "what the network looked at" in report and f"![]({paths[0]})" in report
    page = (tmp_path / "report" / "report.html").read_text()
    assert f'src="{paths[0]}"' in page and page.count("data:image/png;base64,") >= 5
    assert "DataTest_1 (paper)" in page and "class='wrong'" in page


def test_patient_table_applies_the_51_percent_vote():
    import numpy as np

    meta = pd.DataFrame(
        {"patient_id": ["a", "a", "b", "b", "b"], "label": ["malignant"] * 2 + ["benign"] * 3}
    )
    table = patient_table(meta, np.array([0.9, 0.2, 0.7, 0.6, 0.1]))
    assert table.set_index("patient_id")["vote"].to_dict() == {"a": "benign", "b": "malignant"}
    assert table.set_index("patient_id")["n_malignant"].to_dict() == {"a": 1, "b": 2}


def test_vote_tradeoff_and_calibration_by_hand():

    from renalflow.tasks.report import calibration, vote_tradeoff

    patients = pd.DataFrame(
        {"label": ["malignant", "malignant", "benign", "benign"],
         "fraction_malignant": [0.9, 0.4, 0.6, 0.1]}
    )  # fmt: skip
    table = vote_tradeoff(patients, np.array([0.0, 0.5, 0.95]))
    assert table["sensitivity"].tolist() == [1.0, 0.5, 0.0]
    assert table["specificity"].tolist() == [0.0, 0.5, 1.0]
    cal = calibration(np.array([0, 0, 1, 1]), np.array([0.05, 0.15, 0.85, 0.95]), bins=2)
    assert cal["observed"].tolist() == [0.0, 1.0] and cal["n"].tolist() == [2, 2]


def test_evaluate_refuses_a_store_made_with_other_preprocessing(trained, tmp_path):
    from renalflow.tasks.errors import ModelError

    _, model_dir = trained
    other = build_store(tmp_path, patients=4, seed=6, size=32)  # another resize
    with pytest.raises(ModelError, match="holds slices made with preprocess_version") as info:
        evaluate(other, model_dir, tmp_path / "report")
    assert "ingest the archive again into a new store" in str(info.value)
    assert not (tmp_path / "report").exists()  # refused before any work
