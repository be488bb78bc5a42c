"""The evaluation report as one self-contained HTML page (plots embedded as PNG)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _figure() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _embed(fig: Any) -> str:
    plt = _figure()
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


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


def _embed_file(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _confusion_plot(image: dict[str, Any]) -> str:
    plt = _figure()
    matrix = np.array([[image["tp"], image["fn"]], [image["fp"], image["tn"]]])
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    ax.imshow(matrix, cmap="Blues")
    for (r, c), value in np.ndenumerate(matrix):
        colour = "white" if value > matrix.max() / 2 else "black"
        ax.text(c, r, str(value), ha="center", va="center", color=colour, fontsize=12)
    ax.set_xticks([0, 1], ["malignant", "benign"])
    ax.set_yticks([0, 1], ["malignant", "benign"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("histology")
    ax.set_title("Images at threshold 0.5")
    return _embed(fig)


def _tradeoff_plot(tradeoff: pd.DataFrame, chosen: float) -> str:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    ax.plot(tradeoff["threshold"], tradeoff["sensitivity"], lw=2, label="sensitivity")
    ax.plot(tradeoff["threshold"], tradeoff["specificity"], lw=2, label="specificity")
    ax.axvline(chosen, color="k", ls="--", lw=1, label=f"vote threshold {chosen:.2f}")
    ax.set_xlabel("share of a patient's images called malignant")
    ax.set_ylabel("patients")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Patient vote: threshold trade-off")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    return _embed(fig)


def _calibration_plot(table: pd.DataFrame) -> str:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], "k--", lw=1, alpha=0.5, label="perfect")
    if len(table):
        ax.plot(table["predicted"], table["observed"], "o-", lw=2, label="this model")
    ax.set_xlabel("mean predicted P(malignant)")
    ax.set_ylabel("observed malignant share")
    ax.set_title("Calibration per image")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _embed(fig)


def percent(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.1f}%"


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
    image, patient = metrics["image"], metrics["patient"]
    name = html.escape(str(metrics["evaluated"]))
    tradeoff = vote_tradeoff(patients, np.linspace(0.0, 1.0, 101))
    rows = [
        f"<tr><td><b>{name} (this run)</b></td><td>{image['auc']:.3f} "
        f"({image['auc_ci95'][0]:.3f}-{image['auc_ci95'][1]:.3f})</td>"
        f"<td>{percent(image['accuracy'])}</td><td>{percent(image['specificity'])}</td>"
        f"<td>{percent(patient['accuracy'])}</td></tr>"
    ]
    for set_name, paper in paper_results.items():
        rows.append(
            f"<tr><td>{html.escape(set_name)} (paper)</td><td>{paper['auc']:.3f}</td>"
            f"<td>{percent(paper['accuracy'])}</td><td>{percent(paper['specificity'])}</td>"
            f"<td>{percent(paper['patient_accuracy'])}</td></tr>"
        )
    plots = [
        _embed_file(report / "roc.png"),  # drawn by `evaluate` for report.md too
        _confusion_plot(image),
        _tradeoff_plot(tradeoff, float(metrics["vote_threshold"])),
        _calibration_plot(calibration(y, probabilities)),
    ]
    if curves is not None and curves.exists():
        plots.append(_embed_file(curves))
    figures = "".join(f'<img src="{src}" alt="plot">' for src in plots)
    patient_rows = "".join(
        f"<tr class='{'wrong' if str(r.vote) != str(r.label) else ''}'>"
        f"<td>{html.escape(str(r.patient_id))}</td><td>{r.label}</td><td>{r.n_images}</td>"
        f"<td>{r.n_malignant}</td><td>{r.fraction_malignant:.2f}</td><td>{r.vote}</td></tr>"
        for r in patients.itertuples()
    )
    gallery = ""
    heat = metrics.get("heatmaps") or {}
    for patient_id, paths in (heat.get("patients") or {}).items():
        pictures = "".join(
            f'<img class="heat" src="{html.escape(p)}" alt="heat map">' for p in paths
        )
        gallery += f"<h3>{html.escape(patient_id)}</h3><div>{pictures}</div>"
    if gallery:
        gallery = (
            f"<h2>Misclassified patients: what the network looked at ({heat['method']})</h2>"
            f"<p>The {heat['per_side']} most confident slices on the winning side of each wrong "
            f"vote, then the {heat['per_side']} most confident on the losing side.</p>" + gallery
        )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>renalflow evaluation: {name}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; }}
tr.wrong td {{ background: #fde2e2; }}
img {{ margin: 4px; border: 1px solid #ddd; vertical-align: top; }}
img.heat {{ width: 224px; }}
.note {{ background: #fff4d6; padding: 8px; border-left: 4px solid #e0a800; }}
</style></head><body>
<h1>renalflow evaluation: {name}</h1>
<p>Model {html.escape(str(metrics.get("model_version")))};
store {html.escape(str(metrics["store"]))};
images are malignant at P &ge; {metrics["image_threshold"]}; a patient is malignant when at least
{100 * metrics["vote_threshold"]:.0f}% of the images are.</p>
{f'<p class="note">{html.escape(note)}</p>' if note else ""}
<h2>Beside the paper</h2>
<table><tr><th>set</th><th>AUC per image (95% CI)</th><th>accuracy</th><th>specificity</th>
<th>patient vote accuracy</th></tr>{"".join(rows)}</table>
<p>{image["n"]} images: sensitivity {percent(image["sensitivity"])}, specificity
{percent(image["specificity"])}. {patient["n"]} patients: vote sensitivity
{percent(patient["sensitivity"])}, specificity {percent(patient["specificity"])},
{patient["false_negatives"]} false negatives.</p>
<h2>Plots</h2><div>{figures}</div>
{gallery}
<h2>Patients</h2>
<table><tr><th>patient</th><th>histology</th><th>images</th><th>malignant images</th>
<th>fraction</th><th>vote</th></tr>{patient_rows}</table>
</body></html>
"""
    path = report / "report.html"
    path.write_text(page)
    return path


def cohort_report(results: str, out_dir: Path, as_of: Any = None) -> Path:
    """OUT/cohort.html: votes by study year, scanner vendor and phase mix, and QC flags,
    per model version, from the results table (for epidemiologists)."""
    from renalflow.tasks.query import run_query

    out_dir.mkdir(parents=True, exist_ok=True)
    plt = _figure()
    sections = []
    questions = {
        "Votes by study year": "study_year_month[1:4]",
        "Votes by scanner vendor": "manufacturer",
        "Votes by phase mix": "phases",
    }
    versions = run_query(
        results,
        "select model_version, any_value(model_profile) as profile, count(*) as studies "
        "from patient_votes group by 1 order by 1",
        as_of,
    ).to_pylist()
    for title, column in questions.items():
        table = run_query(
            results,
            f"select {column} as grp, model_version, "
            "count(*) filter (where vote = 'benign') as benign, "
            "count(*) filter (where vote = 'malignant') as malignant "
            "from patient_votes group by all order by grp, model_version",
            as_of,
        ).to_pandas()
        fig, ax = plt.subplots(figsize=(7, 3.2))
        labels = [f"{g} ({m[:6]})" if len(versions) > 1 else str(g)
                  for g, m in zip(table["grp"], table["model_version"], strict=True)]  # fmt: skip
        ax.bar(labels, table["malignant"], color="#d55", label="malignant")
        ax.bar(labels, table["benign"], bottom=table["malignant"], color="#5a5", label="benign")
        ax.set_ylabel("studies")
        ax.set_title(title)
        ax.legend(fontsize=8)
        ax.tick_params(axis="x", rotation=30, labelsize=8)
        rows = "".join(
            f"<tr><td>{html.escape(str(r.grp))}</td><td>{r.model_version}</td>"
            f"<td>{r.benign}</td><td>{r.malignant}</td>"
            f"<td>{r.benign / max(1, r.benign + r.malignant):.2f}</td></tr>"
            for r in table.itertuples()
        )
        sections.append(
            f'<h2>{title}</h2><img src="{_embed(fig)}" alt="{title}"><table><tr><th>group</th>'
            "<th>model</th><th>benign</th><th>malignant</th><th>benign share</th></tr>"
            f"{rows}</table>"
        )
    flags = run_query(
        results,
        "select qc_flags, count(*) as studies from patient_votes where qc_flags <> '' "
        "group by 1 order by 2 desc",
        as_of,
    ).to_pylist()
    flag_rows = "".join(
        f"<tr><td>{html.escape(f['qc_flags'])}</td><td>{f['studies']}</td></tr>" for f in flags
    )
    version_rows = "".join(
        f"<tr><td>{v['model_version']}</td><td>{v['profile']}</td><td>{v['studies']}</td></tr>"
        for v in versions
    )
    pinned = f" as of {html.escape(str(as_of))}" if as_of is not None else ""
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>renalflow cohort summary</title>
<style>body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 1000px; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; }}</style></head><body>
<h1>renalflow cohort summary</h1>
<p>Results table {html.escape(results)}{pinned}.
Pseudonymised: no identifiers are in the table.</p>
<h2>Model versions</h2><table><tr><th>model</th><th>profile</th><th>studies</th></tr>
{version_rows}</table>
{"".join(sections)}
<h2>Quality flags</h2><table><tr><th>flags</th><th>studies</th></tr>{flag_rows}</table>
</body></html>
"""
    path = out_dir / "cohort.html"
    path.write_text(page)
    return path
