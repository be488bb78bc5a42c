"""The slice selector: which slices of a whole CT study show the renal mass.

The classifier learnt benign vs malignant from slices through the tumour only, as in the
paper; a whole study also holds chest, liver, pelvis and bowel slices it has never seen.
The selector learns "this slice shows a renal mass" from the slices whose lesion
annotation is known (DICOM SEG or a lesions CSV at ingest), with the classifier's network
(tasks/model.py) and training loop (tasks/train.py). This module owns what is particular
to it: its labels, its decision threshold, the one selection rule, its evaluation and
its report.

Training data: the development cohort's annotated slices, split by patient with the
classifier's seeded split (stratified by the patient's histology where known), so that
with the same store and seed the two models hold out the same test patients. Other
cohorts stay external test sets (`renalflow evaluate --cohort NAME`). Lesion slices are
the minority of a whole study; training resamples them to 50:50 (`oversample`, seeded),
as the paper resampled benign patients.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from renalflow.tasks.config import (
    SEED,
    SELECTOR_HARD_NEGATIVE_MM,
    SELECTOR_HARD_NEGATIVE_SHARE,
    SELECTOR_SENSITIVITY,
    Split,
    Task,
)
from renalflow.tasks.dataset import SliceSet, load_slices
from renalflow.tasks.errors import InputError
from renalflow.tasks.metrics import (
    auc_record,
    binary_metrics,
    bootstrap_auc_ci,
    defined,
    roc_auc,
    roc_curve,
    wilson_interval,
)
from renalflow.tasks.model import predict_probabilities
from renalflow.tasks.model_dir import (
    ModelDir,
    check_store_matches,
    evaluated_set,
    load_model,
    profile_note,
    read_model_info,
    require_task,
)
from renalflow.tasks.split import oversample_indices

UNLABELLED = "unlabelled"
"""The split stratum of a patient without a histology label (annotated, not labelled)."""
CLASS_NAMES = ("no lesion", "lesion")
"""A selector's two classes (label 0 and 1), as its records and warnings name them."""
MIN_STUDIES = 10
"""Our choice: fewer studies with a lesion make every per-study figure very uncertain."""


def selected_slices(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """The one selection rule: a slice shows the renal mass when the selector's
    P(renal mass) is at least the model's stored threshold (bool per slice)."""
    return np.asarray(probabilities) >= threshold


def selector_slices(slices: SliceSet) -> SliceSet:
    """The slices whose lesion annotation is known, labelled 1 (shows the mass) or 0."""
    known = slices.meta["lesion"].notna().to_numpy(dtype=bool)
    part = slices.subset(known)
    labels = part.meta["lesion"].astype(bool).to_numpy().astype(np.int8)
    return SliceSet(part.images, labels, part.meta)


def patient_strata(slices: SliceSet) -> dict[str, str]:
    """Per patient, what the split stratifies by: the histology label where known (the
    classifier's strata, so both models split alike), `unlabelled` otherwise."""
    meta = slices.meta[["patient_id", "label"]].drop_duplicates("patient_id")
    labels = meta["label"].where(meta["label"].notna(), UNLABELLED)
    return dict(zip(meta["patient_id"], labels.astype(str), strict=True))


def row_classes(labels: np.ndarray) -> pd.Series:
    """A selector's slice classes by name, for the lineage's counts."""
    return pd.Series(np.where(np.asarray(labels) == 1, CLASS_NAMES[1], CLASS_NAMES[0]))


def no_annotations_error(store_uri: str, cohort: str) -> InputError:
    return InputError(
        f"no slices of cohort {cohort!r} in {store_uri} have a known lesion annotation: a "
        "slice selector learns from annotated studies, so ingest an archive with its DICOM "
        "SEG lesion objects, or pass --lesions CSV to renalflow ingest"
    )


@dataclass(frozen=True)
class SelectorThreshold:
    """A selector's decision threshold and how it was chosen on the validation split.

    Attributes:
        threshold: the highest P(renal mass) cut-off whose validation sensitivity for
            lesion slices is at least `target_sensitivity`.
        sensitivity, specificity: per validation slice at `threshold` (specificity NaN
            when the split holds no slice without a lesion).
        lesion_slices, other_slices: validation slices of each class.
    """

    threshold: float
    target_sensitivity: float
    sensitivity: float
    specificity: float
    lesion_slices: int
    other_slices: int

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["specificity"] = None if math.isnan(self.specificity) else self.specificity
        return out

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> SelectorThreshold:
        spec = record.get("specificity")
        return cls(
            threshold=float(record["threshold"]),
            target_sensitivity=float(record["target_sensitivity"]),
            sensitivity=float(record["sensitivity"]),
            specificity=float("nan") if spec is None else float(spec),
            lesion_slices=int(record["lesion_slices"]),
            other_slices=int(record["other_slices"]),
        )


def choose_threshold(
    lesion: np.ndarray, probabilities: np.ndarray, target: float = SELECTOR_SENSITIVITY
) -> SelectorThreshold:
    """The highest threshold at which `selected_slices` finds at least `target` of the
    lesion slices: the k-th highest lesion-slice probability, k = ceil(target x lesion
    slices). Raises InputError when there is no lesion slice to choose it on."""
    if not 0 < target <= 1:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target}")
    y = np.asarray(lesion).astype(bool)
    p = np.asarray(probabilities)
    positives = np.sort(p[y])[::-1]
    if len(positives) == 0:
        raise InputError(
            "the validation split holds no lesion slice, so the selector's threshold cannot "
            "be chosen: annotate more patients, or train with another --seed"
        )
    needed = max(1, math.ceil(target * len(positives) - 1e-9))
    threshold = float(positives[needed - 1])
    chosen = binary_metrics(y, selected_slices(p, threshold))
    return SelectorThreshold(
        threshold=threshold,
        target_sensitivity=float(target),
        sensitivity=chosen.sensitivity,
        specificity=chosen.specificity,
        lesion_slices=int(y.sum()),
        other_slices=int((~y).sum()),
    )


def write_threshold(model_dir: str | Path, chosen: SelectorThreshold) -> None:
    """Record the chosen threshold in the model directory (its file is model_dir's)."""
    where = ModelDir(model_dir)
    where.write_json(where.selector, chosen.to_dict())


def read_threshold(model_dir: str | Path) -> SelectorThreshold:
    """The threshold a selector was trained with (ModelError if it is no selector)."""
    require_task(read_model_info(model_dir), Task.SELECTOR)
    return SelectorThreshold.from_dict(json.loads(ModelDir(model_dir).selector.read_text()))


def study_recall(meta: pd.DataFrame, lesion: np.ndarray, selected: np.ndarray) -> pd.DataFrame:
    """Per study with at least one lesion slice: its lesion slices, how many the selector
    found, the share found, and the other slices it selected."""
    frame = pd.DataFrame(
        {
            "patient_id": meta["patient_id"].to_numpy(),
            "study_instance_uid": meta["study_instance_uid"].to_numpy(),
            "lesion": np.asarray(lesion).astype(bool),
            "selected": np.asarray(selected).astype(bool),
        }
    )
    rows = []
    for (patient, study), group in frame.groupby(["patient_id", "study_instance_uid"], sort=True):
        lesion_slices = int(group["lesion"].sum())
        if lesion_slices == 0:
            continue
        found = int((group["lesion"] & group["selected"]).sum())
        rows.append(
            {
                "patient_id": patient,
                "study_instance_uid": study,
                "lesion_slices": lesion_slices,
                "found": found,
                "share_found": found / lesion_slices,
                "other_selected": int((~group["lesion"] & group["selected"]).sum()),
            }
        )
    columns = ["patient_id", "study_instance_uid", "lesion_slices", "found", "share_found"]
    return pd.DataFrame(rows, columns=[*columns, "other_selected"])


def selector_warnings(lesion: np.ndarray, studies: int, patients: int) -> list[str]:
    """What makes a selector's figures undefined or very uncertain on this set."""
    y = np.asarray(lesion).astype(bool)
    notes = []
    if not y.any():
        notes.append(
            "no slice here shows a lesion: sensitivity, the per-study share found and the AUC "
            "are undefined"
        )
    if y.all():
        notes.append("every slice here shows a lesion: specificity and the AUC are undefined")
    if 0 < studies < MIN_STUDIES:
        notes.append(f"only {studies} studies with a lesion: per-study figures are very uncertain")
    if patients < MIN_STUDIES:
        notes.append(f"only {patients} patients: every rate here is very uncertain")
    return notes


def evaluate_selector(
    store_uri: str,
    model_dir: str | Path,
    report_dir: str | Path,
    *,
    split: str | None = Split.TEST.value,
    cohort: str | None = None,
    n_bootstrap: int = 1000,
    seed: int = SEED,
) -> dict[str, Any]:
    """A selector on a split or an external cohort's annotated slices, at its stored
    threshold: slice sensitivity and specificity with Wilson 95% CIs, the AUC with a
    patient bootstrap CI, and per study the share of its lesion slices found. Writes
    metrics.json, studies.csv, report.md and report.html under `report_dir`."""
    started = time.perf_counter()
    model_dir, report = Path(model_dir), Path(report_dir)
    info = read_model_info(model_dir)
    require_task(info, Task.SELECTOR)
    chosen = read_threshold(model_dir)
    check_store_matches(model_dir, store_uri)
    target = evaluated_set(model_dir, split, cohort)
    slices = selector_slices(
        load_slices(store_uri, cohorts=[target.cohort], patients=target.patients)
    )
    if len(slices) == 0:
        raise no_annotations_error(store_uri, target.cohort)
    report.mkdir(parents=True, exist_ok=True)
    probabilities = predict_probabilities(load_model(model_dir), slices.images)
    y = slices.labels.astype(bool)
    selected = selected_slices(probabilities, chosen.threshold)
    counts = binary_metrics(y, selected)
    sensitivity_ci = wilson_interval(counts.tp, counts.tp + counts.fn)
    specificity_ci = wilson_interval(counts.tn, counts.tn + counts.fp)
    groups = slices.meta["patient_id"].to_numpy()
    interval = bootstrap_auc_ci(y, probabilities, groups, n_boot=n_bootstrap, seed=seed)
    studies = study_recall(slices.meta, y, selected)
    shares = studies["share_found"].to_numpy(dtype=float)
    metrics: dict[str, Any] = {
        "evaluated": target.name,
        "task": Task.SELECTOR.value,
        "store": store_uri,
        "model_dir": str(model_dir),
        "model_version": info.model_version,
        "threshold": chosen.threshold,
        "target_sensitivity": chosen.target_sensitivity,
        "validation": chosen.to_dict(),
        "slice": {
            **{k: defined(v) for k, v in counts.to_dict().items()},
            "sensitivity_ci95": [defined(v) for v in sensitivity_ci],
            "specificity_ci95": [defined(v) for v in specificity_ci],
            "ci_method": "Wilson score interval, 95%, counting slices as independent (slices "
            "of one study are not, so the intervals are narrower than a patient-level one)",
            **auc_record(roc_auc(y, probabilities), interval, seed),
        },
        "study": {
            "studies_with_lesion": len(studies),
            "share_found_median": defined(float(np.median(shares))) if len(shares) else None,
            "share_found_min": defined(float(shares.min())) if len(shares) else None,
            "studies_none_found": int((studies["found"] == 0).sum()),
        },
        "patients": len(set(groups)),
        "warnings": selector_warnings(y, len(studies), len(set(groups))),
    }
    studies.to_csv(report / "studies.csv", index=False)
    metrics["seconds"] = time.perf_counter() - started
    (report / "metrics.json").write_text(json.dumps(metrics, indent=2))
    note = profile_note(model_dir)
    (report / "report.md").write_text(_markdown(metrics, note))
    _write_html(metrics, studies, y, probabilities, report, note)
    return metrics


def format_summary(metrics: dict[str, Any]) -> str:
    """What `renalflow evaluate` prints for a selector."""
    from renalflow.tasks.report.render import decimal, percent

    part, study = metrics["slice"], metrics["study"]
    low, high = part["sensitivity_ci95"]
    s_low, s_high = part["specificity_ci95"]
    return (
        f"{metrics['evaluated']}: slice selector at threshold {metrics['threshold']:.4g} "
        f"(chosen for {percent(metrics['target_sensitivity'])} validation sensitivity)\n"
        f"slices: {part['n']}, sensitivity {percent(part['sensitivity'])} "
        f"(95% CI {percent(low)}-{percent(high)}), specificity {percent(part['specificity'])} "
        f"(95% CI {percent(s_low)}-{percent(s_high)}), AUC {decimal(part['auc'])}\n"
        f"studies with a lesion: {study['studies_with_lesion']}, share of lesion slices found "
        f"median {percent(study['share_found_median'])}, min {percent(study['share_found_min'])}"
        f", none found in {study['studies_none_found']}"
    )


def _markdown(metrics: dict[str, Any], note: str | None) -> str:
    from renalflow.tasks.report.render import percent

    part, study, validation = metrics["slice"], metrics["study"], metrics["validation"]
    lines = [
        f"# renalflow slice selector evaluation: {metrics['evaluated']}",
        "",
        f"Model `{metrics['model_dir']}` (version {metrics['model_version']}), store "
        f"`{metrics['store']}`.",
    ]
    if note:
        lines += ["", f"> **{note}**"]
    lines += [f"\n> Caution: {warning}." for warning in metrics["warnings"]]
    lines += [
        "",
        f"A slice is selected when P(renal mass) >= {metrics['threshold']:.6g}, the highest "
        f"threshold that found at least {percent(metrics['target_sensitivity'])} of the "
        f"validation split's {validation['lesion_slices']} lesion slices (it found "
        f"{percent(validation['sensitivity'])}, specificity "
        f"{percent(validation['specificity'])}).",
        "",
        "| | selected | not selected |",
        "|---|---|---|",
        f"| lesion slice | {part['tp']} | {part['fn']} |",
        f"| other slice | {part['fp']} | {part['tn']} |",
        "",
        f"Sensitivity {percent(part['sensitivity'])} (95% CI "
        f"{percent(part['sensitivity_ci95'][0])}-{percent(part['sensitivity_ci95'][1])}), "
        f"specificity {percent(part['specificity'])} (95% CI "
        f"{percent(part['specificity_ci95'][0])}-{percent(part['specificity_ci95'][1])}); "
        f"{part['ci_method']}.",
        "",
        f"Per study ({study['studies_with_lesion']} with a lesion): share of lesion slices "
        f"found, median {percent(study['share_found_median'])}, min "
        f"{percent(study['share_found_min'])}; no lesion slice found in "
        f"{study['studies_none_found']} (see studies.csv).",
    ]
    return "\n".join(lines) + "\n"


def _roc_plot(y: np.ndarray, probabilities: np.ndarray, threshold: float) -> str | None:
    if y.all() or not y.any():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from renalflow.tasks.report.plots import embed

    fpr, tpr = roc_curve(y, probabilities)
    chosen = binary_metrics(y, selected_slices(probabilities, threshold))
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, lw=2, label="slice selector")
    ax.plot([1 - chosen.specificity], [chosen.sensitivity], "o", label=f"threshold {threshold:.3g}")
    ax.plot([0, 1], [0, 1], "k--", lw=1, alpha=0.5)
    ax.set_xlabel("1 - specificity (other slices selected)")
    ax.set_ylabel("sensitivity (lesion slices found)")
    ax.set_title("ROC per slice")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return embed(fig)


def _write_html(
    metrics: dict[str, Any],
    studies: pd.DataFrame,
    y: np.ndarray,
    probabilities: np.ndarray,
    report: Path,
    note: str | None,
) -> Path:
    from renalflow.tasks.report.render import render

    page = render(
        "selector.html.j2",
        metrics=metrics,
        part=metrics["slice"],
        study=metrics["study"],
        validation=metrics["validation"],
        studies=list(studies.itertuples()),
        roc=_roc_plot(y, probabilities, float(metrics["threshold"])),
        note=note,
    )
    path = report / "report.html"
    path.write_text(page)
    return path


@dataclass(frozen=True)
class SelectorTraining:
    """What training a selector takes besides the network's TrainConfig (all ours).

    Attributes:
        target_sensitivity: its threshold is the highest that finds at least this share
            of the validation split's lesion slices.
        hard_negative_mm: a slice without the mass this close along z to a lesion slice
            of its series is a hard negative.
        hard_negative_share: the share of each epoch's negatives drawn from them.
    """

    target_sensitivity: float = SELECTOR_SENSITIVITY
    hard_negative_mm: float = SELECTOR_HARD_NEGATIVE_MM
    hard_negative_share: float = SELECTOR_HARD_NEGATIVE_SHARE

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def hard_negatives(meta: pd.DataFrame, lesion: np.ndarray, within_mm: float) -> np.ndarray:
    """Per slice: it shows no mass, and a lesion slice of its series lies within
    `within_mm` along z (bool). These show the same kidneys as the mass's slices; the
    selector must learn to tell them apart."""
    lesion = np.asarray(lesion).astype(bool)
    out = np.zeros(len(lesion), dtype=bool)
    series = meta["series_instance_uid"].to_numpy()
    z = meta["z"].to_numpy(dtype=float)
    for uid in np.unique(series[lesion]):
        rows = np.flatnonzero(series == uid)
        marked = np.sort(z[rows[lesion[rows]]])
        here = z[rows]
        after = np.searchsorted(marked, here)
        below = np.abs(here - marked[np.clip(after - 1, 0, len(marked) - 1)])
        above = np.abs(here - marked[np.clip(after, 0, len(marked) - 1)])
        out[rows] = (np.minimum(below, above) <= within_mm) & ~lesion[rows]
    return out


def selector_draw(
    labels: np.ndarray, hard: np.ndarray, share: float, rng: np.random.Generator
) -> np.ndarray:
    """One epoch's indices for the selector, shuffled, as many as a plain 50:50 draw
    (twice the negatives): half lesion slices, drawn with replacement; half negatives, of
    which `share` are hard negatives (`hard`, drawn with replacement where there are too
    few) and the rest other slices (drawn without replacement, so that a few epochs see
    them all). Every lesion slice is drawn at least once. With no hard negative, or share
    0, every negative is drawn once; with more lesion slices than negatives, the plain
    50:50 draw."""
    labels, hard = np.asarray(labels), np.asarray(hard).astype(bool)
    pos = np.flatnonzero(labels == 1)
    near = np.flatnonzero((labels == 0) & hard)
    other = np.flatnonzero((labels == 0) & ~hard)
    total = len(near) + len(other)
    if len(pos) == 0 or len(pos) >= total:
        return oversample_indices(labels, rng)
    if len(near) == 0 or len(other) == 0 or share <= 0:
        negatives = np.concatenate([near, other])
    else:
        n_near = min(total, max(len(near), round(share * total)))
        n_other = total - n_near
        negatives = np.concatenate(
            [
                rng.choice(near, size=n_near, replace=n_near > len(near)),
                rng.choice(other, size=n_other, replace=False),
            ]
        )
    drawn = rng.choice(pos, size=len(negatives) - len(pos), replace=True)
    return rng.permutation(np.concatenate([negatives, pos, drawn]))
