"""The evaluation report: one self-contained HTML page (plots embedded as PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from renalflow.tasks.report.plots import calibration_plot, confusion_plot, embed_file, tradeoff_plot
from renalflow.tasks.report.render import render


def vote_tradeoff(patients: pd.DataFrame, thresholds: np.ndarray) -> pd.DataFrame:
    """Patient-vote sensitivity and specificity as the vote threshold moves."""
    truth = (patients["label"] == "malignant").to_numpy()
    fraction = patients["fraction_malignant"].to_numpy()
    rows = []
    for t in thresholds:
        voted = fraction >= t - 1e-12
        sens = float((voted & truth).sum() / truth.sum()) if truth.any() else float("nan")
        spec = float((~voted & ~truth).sum() / (~truth).sum()) if (~truth).any() else float("nan")
        rows.append({"threshold": float(t), "sensitivity": sens, "specificity": spec})
    return pd.DataFrame(rows)


def calibration(y: np.ndarray, p: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Mean predicted probability against the observed malignant share, per bin."""
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    rows = []
    for b in range(bins):
        inside = index == b
        if inside.any():
            rows.append(
                {
                    "predicted": float(p[inside].mean()),
                    "observed": float(y[inside].mean()),
                    "n": int(inside.sum()),
                }
            )
    return pd.DataFrame(rows)


def write_html(
    metrics: dict[str, Any],
    patients: pd.DataFrame,
    y: np.ndarray,
    probabilities: np.ndarray,
    report: Path,
    paper_results: dict[str, dict[str, float]],
    curves: Path | None,
    note: str | None = None,
) -> Path:
    """REPORT/report.html (beside the REPORT/roc.png `evaluate` drew): the paper's table
    beside this run's, ROC, confusion matrix,
    vote-threshold trade-off, calibration, training curves and the heat-map gallery."""
    tradeoff = vote_tradeoff(patients, np.linspace(0.0, 1.0, 101))
    plots = [
        embed_file(report / "roc.png"),  # drawn by `evaluate` for report.md too
        confusion_plot(metrics["image"], float(metrics["image_threshold"])),
        tradeoff_plot(tradeoff, float(metrics["vote_threshold"])),
        calibration_plot(calibration(y, probabilities)),
    ]
    if curves is not None and curves.exists():
        plots.append(embed_file(curves))
    page = render(
        "evaluation.html.j2",
        metrics=metrics,
        image=metrics["image"],
        patient=metrics["patient"],
        paper_results=paper_results,
        plots=plots,
        patients=list(patients.itertuples()),
        heat=metrics.get("heatmaps") or {},
        note=note,
    )
    path = report / "report.html"
    path.write_text(page)
    return path
