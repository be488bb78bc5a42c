"""Evaluate a trained model: image metrics, the patient vote, and a readable report."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from renalflow.tasks.config import (
    IMAGE_THRESHOLD,
    SEED,
    VOTE_THRESHOLD,
    Label,
    Split,
    Task,
)
from renalflow.tasks.dataset import SliceSet, load_mass_slices
from renalflow.tasks.errors import InputError
from renalflow.tasks.explain import heatmaps, write_overlay
from renalflow.tasks.metrics import (
    auc_record,
    binary_metrics,
    bootstrap_auc_ci,
    defined,
    evaluation_warnings,
    roc_auc,
    roc_curve,
)
from renalflow.tasks.model import predict_probabilities
from renalflow.tasks.model_dir import (
    ModelDir,
    check_store_matches,
    evaluated_set,
    load_model,
    model_task,
    model_version,
    profile_note,
)
from renalflow.tasks.report import decimal, percent, write_html
from renalflow.tasks.selector import evaluate_selector
from renalflow.tasks.vote import deciding_slices, malignant_images, vote

# The paper's results (Pedersen et al. 2020, Table 2/3), for the report.
PAPER_RESULTS = {
    "DataTest_1": {"auc": 0.973, "accuracy": 0.933, "specificity": 0.935, "patient_accuracy": 1.0},
    "DataTest_2": {"auc": 0.946, "accuracy": 0.900, "specificity": 0.980, "patient_accuracy": 1.0},
    "DataTest_3": {"auc": 0.991, "accuracy": 0.971, "specificity": 1.000, "patient_accuracy": 1.0},
}


def patient_table(
    meta: pd.DataFrame,
    probabilities: np.ndarray,
    image_threshold: float = IMAGE_THRESHOLD,
    vote_threshold: float = VOTE_THRESHOLD,
) -> pd.DataFrame:
    """One row per patient: images, malignant images, fraction, vote and (if known) label."""
    frame = meta[["patient_id", "label"]].assign(probability=probabilities)
    rows = []
    for patient_id, group in frame.groupby("patient_id", sort=True):
        outcome = vote(group["probability"].to_numpy(), image_threshold, vote_threshold)
        rows.append(
            {
                "patient_id": patient_id,
                "label": group["label"].iloc[0],
                "n_images": outcome.n_images,
                "n_malignant": outcome.n_malignant,
                "mean_probability": float(group["probability"].mean()),
                "fraction_malignant": outcome.fraction_malignant,
                "vote": outcome.vote.value,
            }
        )
    columns = ["patient_id", "label", "n_images", "n_malignant", "mean_probability"]
    return pd.DataFrame(rows, columns=[*columns, "fraction_malignant", "vote"])


def evaluate(
    store_uri: str,
    model_dir: str | Path,
    report_dir: str | Path,
    *,
    split: str | None = Split.TEST.value,
    cohort: str | None = None,
    image_threshold: float = IMAGE_THRESHOLD,
    vote_threshold: float = VOTE_THRESHOLD,
    n_bootstrap: int = 1000,
    seed: int = SEED,
    split_from: str | Path | None = None,
) -> dict[str, Any]:
    """Score a split or external cohort; write metrics.json, patients.csv, plots and report.md.
    `split_from`: take the split's patients from that model directory's split.json (to
    compare two models on the same held-out patients).

    A slice selector is evaluated as one (tasks/selector.py), at its stored threshold."""
    if model_task(model_dir) is Task.SELECTOR:
        return evaluate_selector(
            store_uri,
            model_dir,
            report_dir,
            split=split,
            cohort=cohort,
            n_bootstrap=n_bootstrap,
            seed=seed,
        )
    started = time.perf_counter()
    model_dir, report = Path(model_dir), Path(report_dir)
    check_store_matches(model_dir, store_uri)
    report.mkdir(parents=True, exist_ok=True)
    target = evaluated_set(model_dir, split, cohort, split_from)
    slices, _ = load_mass_slices(store_uri, cohorts=[target.cohort], patients=target.patients)
    if len(slices) == 0:
        raise InputError(f"no labelled slices to evaluate ({target.name}) in {store_uri}")
    model = load_model(model_dir)
    probabilities = predict_probabilities(model, slices.images)
    y = slices.labels.astype(int)
    image_metrics = binary_metrics(y, malignant_images(probabilities, image_threshold))
    auc = roc_auc(y, probabilities)
    interval = bootstrap_auc_ci(
        y, probabilities, slices.meta["patient_id"].to_numpy(), n_boot=n_bootstrap, seed=seed
    )
    patients = patient_table(slices.meta, probabilities, image_threshold, vote_threshold)
    patient_metrics = binary_metrics(
        (patients["label"] == Label.MALIGNANT.value).to_numpy(),
        (patients["vote"] == Label.MALIGNANT.value).to_numpy(),
    )
    name = target.name
    metrics: dict[str, Any] = {
        "evaluated": name,
        "store": store_uri,
        "model_dir": str(model_dir),
        "model_version": model_version(model_dir),
        "image_threshold": image_threshold,
        "vote_threshold": vote_threshold,
        "image": {**auc_record(auc, interval, seed), **image_metrics.to_dict()},
        "patient": {**patient_metrics.to_dict(), "false_negatives": patient_metrics.fn},
        "warnings": evaluation_warnings(y, interval, len(patients)),
        "seconds": time.perf_counter() - started,
    }
    for key in ("image", "patient"):  # JSON has no NaN: an undefined figure is null
        metrics[key] = {k: defined(v) for k, v in metrics[key].items()}
    patients.to_csv(report / "patients.csv", index=False)
    _plot_roc(y, probabilities, auc, report / "roc.png", name)
    metrics["heatmaps"] = _explain_misclassified(
        model, slices, probabilities, patients, report, image_threshold
    )
    (report / "metrics.json").write_text(json.dumps(metrics, indent=2))
    note = profile_note(model_dir)
    _write_markdown(metrics, patients, model_dir, report, note)
    write_html(
        metrics, patients, y, probabilities, report, PAPER_RESULTS, ModelDir(model_dir).curves, note
    )
    return metrics


def _explain_misclassified(
    model: Any,
    slices: SliceSet,
    probabilities: np.ndarray,
    patients: pd.DataFrame,
    report: Path,
    image_threshold: float,
    per_side: int = 3,
    most: int = 10,
) -> dict[str, Any]:
    """Heat maps of the deciding slices of each misclassified patient (at most `most`),
    as PNG overlays in REPORT/heatmaps/."""

    wrong = patients[patients["vote"] != patients["label"]].head(most)
    folder = report / "heatmaps"
    written: dict[str, list[str]] = {}
    method = None
    ids = slices.meta["patient_id"].to_numpy()
    for row in wrong.itertuples():
        index = np.flatnonzero(ids == row.patient_id)
        picks = deciding_slices(probabilities[index], str(row.vote), per_side, image_threshold)
        chosen = index[picks]
        target = str(row.vote)
        maps, method = heatmaps(model, slices.images[chosen], target)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for k, (i, heat) in enumerate(zip(chosen, maps, strict=True)):
            name = f"{row.patient_id}-{k + 1}.png"
            caption = f"{row.patient_id}  P(malignant) {probabilities[i]:.2f}"
            meta = slices.meta.iloc[i]
            z = meta.get("z")
            write_overlay(
                slices.images[i], heat, caption, str(folder / name),
                phase=str(meta.get("phase") or "unknown"),
                z=None if z is None or pd.isna(z) else float(z),
                method=method, target=target,
            )  # fmt: skip
            paths.append(f"heatmaps/{name}")
        written[str(row.patient_id)] = paths
    return {"method": method, "per_side": per_side, "patients": written}


def _plot_roc(y: np.ndarray, scores: np.ndarray, auc: float, path: Path, name: str) -> None:
    # matplotlib (0.5 s) is loaded only when a plot is drawn, after choosing its backend.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fpr, tpr = roc_curve(y, scores)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, lw=2, label=f"AUC {auc:.3f}")
    ax.plot([0, 1], [0, 1], "k--", lw=1, alpha=0.5)
    ax.set_xlabel("1 - specificity (benign called malignant)")
    ax.set_ylabel("sensitivity (malignant found)")
    ax.set_title(f"ROC, per image: {name}")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write_markdown(
    metrics: dict[str, Any],
    patients: pd.DataFrame,
    model_dir: Path,
    report: Path,
    note: str | None,
) -> None:
    image, patient = metrics["image"], metrics["patient"]
    lines = [
        f"# renalflow evaluation: {metrics['evaluated']}",
        "",
        f"Model `{metrics['model_dir']}` (version {metrics['model_version']}), store "
        f"`{metrics['store']}`.",
    ]
    if note:
        lines += ["", f"> **{note}**"]
    for warning in metrics.get("warnings", []):
        lines += ["", f"> Caution: {warning}."]
    lines += [
        "",
        "## This run beside the paper",
        "",
        "| set | AUC (image) | accuracy (image) | specificity (image) | patient vote accuracy |",
        "|---|---|---|---|---|",
        f"| **{metrics['evaluated']}** (this run) | {decimal(image['auc'])} "
        f"(95% CI {decimal(image['auc_ci95'][0])}-{decimal(image['auc_ci95'][1])}) | "
        f"{percent(image['accuracy'])} | {percent(image['specificity'])} | "
        f"{percent(patient['accuracy'])}, {patient['false_negatives']} false negatives |",
    ]
    for name, paper in PAPER_RESULTS.items():
        lines.append(
            f"| {name} (paper) | {paper['auc']:.3f} | {percent(paper['accuracy'])} | "
            f"{percent(paper['specificity'])} | {percent(paper['patient_accuracy'])} |"
        )
    lines += [
        "",
        f"## Per image (threshold {metrics['image_threshold']})",
        "",
        f"{image['n']} images: sensitivity {percent(image['sensitivity'])}, specificity "
        f"{percent(image['specificity'])}, accuracy {percent(image['accuracy'])}.",
        "",
        "| | predicted malignant | predicted benign |",
        "|---|---|---|",
        f"| malignant | {image['tp']} | {image['fn']} |",
        f"| benign | {image['fp']} | {image['tn']} |",
        "",
        "![ROC curve](roc.png)",
        "",
        f"## Per patient (malignant when at least {100 * metrics['vote_threshold']:.0f}% of the "
        "images are)",
        "",
        f"{patient['n']} patients: accuracy {percent(patient['accuracy'])}, sensitivity "
        f"{percent(patient['sensitivity'])}, specificity {percent(patient['specificity'])}, "
        f"{patient['false_negatives']} false negatives (malignant voted benign).",
        "",
        "| patient | label | images | malignant images | fraction | vote |",
        "|---|---|---|---|---|---|",
    ]
    for row in patients.itertuples():
        mark = "" if str(row.vote) == str(row.label) else " **(wrong)**"
        lines.append(
            f"| {row.patient_id} | {row.label} | {row.n_images} | {row.n_malignant} | "
            f"{row.fraction_malignant:.2f} | {row.vote}{mark} |"
        )
    heat = metrics.get("heatmaps") or {}
    if heat.get("patients"):
        lines += [
            "",
            "## Misclassified patients: what the network looked at",
            "",
            f"Heat maps ({heat['method']}) of the slices that decided each wrong vote: the "
            f"{heat['per_side']} most confident slices on the winning side, then the "
            f"{heat['per_side']} most confident on the losing side.",
        ]
        for patient_id, paths in heat["patients"].items():
            lines += ["", f"### {patient_id}", "", " ".join(f"![]({p})" for p in paths)]
    curves = ModelDir(model_dir).curves
    if curves.exists():
        (report / curves.name).write_bytes(curves.read_bytes())
        lines += ["", "## Training", "", f"![training curves]({curves.name})"]
    (report / "report.md").write_text("\n".join(lines) + "\n")
