"""Image-level metrics and the patient-level majority vote (positive class: malignant)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from renalflow.tasks.config import SEED


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties); NaN if one class."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[distinct]
    fps = np.cumsum(~y)[distinct]
    tpr = np.r_[0.0, tps / max(int(y.sum()), 1)]
    fpr = np.r_[0.0, fps / max(int((~y).sum()), 1)]
    return fpr, tpr


@dataclass(frozen=True)
class BinaryMetrics:
    n: int
    tp: int
    tn: int
    fp: int
    fn: int
    accuracy: float
    sensitivity: float
    specificity: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def binary_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> BinaryMetrics:
    """Confusion matrix, accuracy, sensitivity (malignant found) and specificity (benign kept)."""
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(y_pred).astype(bool)
    tp, tn = int((y & p).sum()), int((~y & ~p).sum())
    fp, fn = int((~y & p).sum()), int((y & ~p).sum())
    n = len(y)

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    return BinaryMetrics(
        n, tp, tn, fp, fn, ratio(tp + tn, n), ratio(tp, tp + fn), ratio(tn, tn + fp)
    )


@dataclass(frozen=True)
class AucInterval:
    """A bootstrap interval and how many resamples it rests on: a resample that drew
    only one class has no AUC and is left out (NaN bounds when none had both)."""

    low: float
    high: float
    used: int
    requested: int


def bootstrap_auc_ci(
    y_true: np.ndarray,
    scores: np.ndarray,
    groups: np.ndarray,
    n_boot: int = 1000,
    seed: int = SEED,
    level: float = 0.95,
) -> AucInterval:
    """Percentile CI of the image-level AUC, resampling patients (groups), not images.

    Images of one patient are correlated; resampling them independently would give a
    falsely narrow interval.
    """
    y = np.asarray(y_true)
    s = np.asarray(scores)
    g = np.asarray(groups)
    unique, inverse = np.unique(g, return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(len(unique))]
    rng = np.random.default_rng(seed)
    aucs = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(unique), size=len(unique))
        index = np.concatenate([members[k] for k in pick])
        auc = roc_auc(y[index], s[index])
        if not np.isnan(auc):
            aucs.append(auc)
    if not aucs:
        return AucInterval(float("nan"), float("nan"), 0, n_boot)
    alpha = (1 - level) / 2
    low, high = float(np.quantile(aucs, alpha)), float(np.quantile(aucs, 1 - alpha))
    return AucInterval(low, high, len(aucs), n_boot)


def defined(value: Any) -> Any:
    """None for an undefined (NaN) figure, else the value: JSON has no NaN."""
    return None if isinstance(value, float) and math.isnan(value) else value


def auc_record(auc: float, interval: AucInterval, seed: int) -> dict[str, Any]:
    """The AUC, its bootstrap interval and how it was made, as metrics.json holds them."""
    return {
        "auc": defined(auc),
        "auc_ci95": [defined(interval.low), defined(interval.high)],
        "auc_ci_method": (
            f"percentile bootstrap over patients, {interval.used} of {interval.requested} "
            f"resamples usable, seed {seed}"
        ),
    }


def evaluation_warnings(
    y_true: np.ndarray, interval: AucInterval, patients: int, min_patients: int = 10
) -> list[str]:
    """What a reader must know before trusting the figures of a small or one-class set
    (our choice of `min_patients`: fewer make every rate swing by 10 points or more)."""
    y = np.asarray(y_true).astype(bool)
    notes = []
    if y.all() or not y.any():
        which = "malignant" if y.any() else "benign"
        notes.append(
            f"every image is {which}: AUC and the {'specificity' if y.any() else 'sensitivity'}"
            " are undefined for a set with one class"
        )
    elif interval.used < interval.requested:
        notes.append(
            f"the AUC's CI rests on {interval.used} of {interval.requested} bootstrap "
            "resamples: the others drew patients of one class only"
        )
    if patients < min_patients:
        notes.append(f"only {patients} patients: every rate here is very uncertain")
    return notes


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (NaN bounds when n is 0); unlike the normal
    approximation it stays inside [0, 1] and is informative at 0% and 100%."""
    if n == 0:
        return float("nan"), float("nan")
    z = NormalDist().inv_cdf(1 - (1 - level) / 2)
    share = successes / n
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the ends
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high
