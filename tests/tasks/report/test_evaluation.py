"""tasks/report/evaluation.py: the evaluation page has its sections and escapes every value."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from renalflow.tasks.report import write_html
from tests.factory import ESCAPED, HOSTILE


def _metrics(evaluated: str, model_version: str = "m1") -> dict:
    return {
        "evaluated": evaluated,
        "store": "/store",
        "model_version": model_version,
        "image_threshold": 0.5,
        "vote_threshold": 0.51,
        "image": {
            "auc": 0.9,
            "auc_ci95": [0.8, 0.95],
            "accuracy": 0.8,
            "sensitivity": 0.9,
            "specificity": 0.7,
            "n": 40,
            "tp": 10,
            "fn": 2,
            "fp": 3,
            "tn": 25,
        },
        "patient": {
            "accuracy": 0.5,
            "sensitivity": 1.0,
            "specificity": float("nan"),
            "n": 2,
            "false_negatives": 0,
        },
        "heatmaps": {
            "method": "grad-cam",
            "per_side": 3,
            "patients": {"RF00002": ['heatmaps/RF00002-1.png" onerror="alert(1)']},
        },
    }


def _evaluation(tmp_path: Path, evaluated: str, note: str | None, patient_id: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    fig.savefig(tmp_path / "roc.png")
    plt.close(fig)
    patients = pd.DataFrame(
        {
            "patient_id": ["RF00001", patient_id],
            "label": ["malignant", "benign"],
            "n_images": [20, 20],
            "n_malignant": [15, 12],
            "fraction_malignant": [0.75, 0.6],
            "vote": ["malignant", "malignant"],
        }
    )
    y = np.array([1] * 20 + [0] * 20)
    paper = {
        "DataTest_1": {"auc": 0.973, "accuracy": 0.9, "specificity": 0.8, "patient_accuracy": 0.95}
    }
    path = write_html(
        _metrics(evaluated, model_version=HOSTILE),
        patients,
        y,
        np.linspace(0, 1, 40),
        tmp_path,
        paper,
        None,
        note,
    )
    return path.read_text()


def test_evaluation_report_has_its_sections_and_numbers(tmp_path):
    page = _evaluation(tmp_path, "test split", "cpu-demo model", "RF00002")
    for section in (
        "Beside the paper",
        "Plots",
        "what the network looked at (grad-cam)",
        "Patients",
    ):
        assert section in page
    assert "<td><b>test split (this run)</b></td><td>0.900 (0.800-0.950)</td>" in page
    assert "<td>DataTest_1 (paper)</td><td>0.973</td><td>90.0%</td>" in page
    assert "at least\n51% of the images are" in page and "specificity undefined" in page
    assert page.count("data:image/png;base64,") == 4  # roc, confusion, trade-off, calibration
    assert "<tr class='wrong'><td>RF00002</td><td>benign</td>" in page
    assert '<p class="note">cpu-demo model</p>' in page


def test_evaluation_report_escapes_names_notes_and_paths(tmp_path):
    page = _evaluation(tmp_path, HOSTILE, f"model note {HOSTILE}", f"RF{HOSTILE}")
    assert "<script>" not in page and 'onerror="' not in page
    assert f"<title>renalflow evaluation: {ESCAPED}</title>" in page
    assert f"<h1>renalflow evaluation: {ESCAPED}</h1>" in page
    assert f'<p class="note">model note {ESCAPED}</p>' in page
    assert f"Model {ESCAPED};" in page and f"<td>RF{ESCAPED}</td>" in page
    assert 'src="heatmaps/RF00002-1.png&#34; onerror=&#34;alert(1)"' in page
