"""Agreement of the votes with reference outcomes: sensitivity, specificity, PPV and NPV
with Wilson 95% CIs and percentile bootstrap 95% CIs, overall and by group (positive
class: malignant).

Only voted rows with exactly one reference outcome count; what is left out (no vote,
no reference, references that disagree with each other) is counted, never dropped
silently. Wilson score intervals (tasks.metrics) are used because they stay inside
[0, 1] and say something at 0% and 100%, where small groups often sit. The bootstrap
resamples the group's compared rows (as a multinomial draw of its 2x2 table, seeded),
so a figure's denominator varies as it would in another sample of the same cohort.
Both treat rows as independent: at the study level, studies of one patient are not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from renalflow.tasks.config import (
    AGREEMENT_BOOTSTRAP,
    MIN_AGREEMENT_N,
    SEED,
    Label,
    StudyStatus,
)
from renalflow.tasks.metrics import wilson_interval

FIGURES = ("sensitivity", "specificity", "ppv", "npv")
"""The agreement figures, in the order the report shows them."""

FIGURE_NAMES = {
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "ppv": "PPV",
    "npv": "NPV",
}


@dataclass(frozen=True)
class Proportion:
    """A share with its Wilson 95% CI: `successes` of `n` (NaN when n is 0)."""

    successes: int
    n: int
    low: float
    high: float

    @property
    def value(self) -> float:
        return self.successes / self.n if self.n else float("nan")


@dataclass(frozen=True)
class Agreement:
    """The 2x2 table of votes against references for one group, and its figures."""

    group: str
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    def figure(self, name: str) -> Proportion:
        successes, n = {
            "sensitivity": (self.tp, self.tp + self.fn),
            "specificity": (self.tn, self.tn + self.fp),
            "ppv": (self.tp, self.tp + self.fp),
            "npv": (self.tn, self.tn + self.fn),
        }[name]
        low, high = wilson_interval(successes, n)
        return Proportion(successes, n, low, high)

    def bootstrap(
        self, n_boot: int = AGREEMENT_BOOTSTRAP, seed: int = SEED
    ) -> dict[str, tuple[float, float]]:
        """Each figure's percentile bootstrap 95% CI: the compared rows resampled with
        replacement `n_boot` times (a multinomial draw of the 2x2 table, seeded);
        resamples where a figure has no cases do not count. NaN bounds when fewer than
        half the resamples define it."""
        cells = np.array([self.tp, self.fp, self.tn, self.fn], dtype=float)
        if cells.sum() == 0:
            return {name: (float("nan"), float("nan")) for name in FIGURES}
        rng = np.random.default_rng([seed, 0xA6EE])
        tp, fp, tn, fn = rng.multinomial(int(cells.sum()), cells / cells.sum(), n_boot).T
        pairs = {
            "sensitivity": (tp, tp + fn),
            "specificity": (tn, tn + fp),
            "ppv": (tp, tp + fp),
            "npv": (tn, tn + fn),
        }
        out = {}
        for name in FIGURES:
            successes, n = pairs[name]
            defined = n > 0
            if defined.sum() < n_boot / 2:
                out[name] = (float("nan"), float("nan"))
                continue
            shares = successes[defined] / n[defined]
            low, high = np.percentile(shares, [2.5, 97.5])
            out[name] = (float(low), float(high))
        return out

    def warnings(self, min_n: int = MIN_AGREEMENT_N) -> list[str]:
        """What a reader must know before quoting this group's figures."""
        notes = []
        for name in FIGURES:
            n = self.figure(name).n
            if n == 0:
                notes.append(f"{FIGURE_NAMES[name]} undefined (no cases)")
            elif n < min_n:
                notes.append(f"{FIGURE_NAMES[name]} rests on {n} cases (fewer than {min_n})")
        return notes


def count_agreement(votes: pd.Series, outcomes: pd.Series, group: str = "all") -> Agreement:
    """The 2x2 table of `votes` (benign/malignant) against `outcomes`, row by row."""
    vote = votes.astype(str) == Label.MALIGNANT.value
    truth = outcomes.astype(str) == Label.MALIGNANT.value
    return Agreement(
        group=group,
        tp=int((vote & truth).sum()),
        fp=int((vote & ~truth).sum()),
        tn=int((~vote & ~truth).sum()),
        fn=int((~vote & truth).sum()),
    )


@dataclass(frozen=True)
class Comparable:
    """The rows that can be compared, and the counts of those that cannot."""

    rows: pd.DataFrame
    no_vote: int
    no_reference: int
    conflicting: int


def comparable_rows(votes: pd.DataFrame, references: pd.DataFrame) -> Comparable:
    """Vote rows joined to their patient's reference outcome.

    `votes` has patient_key, status and vote; `references` patient_key and outcome (one
    row per patient and source). A patient whose sources disagree is left out and counted.
    """
    outcomes = references.groupby("patient_key")["outcome"].agg(lambda v: sorted(set(v)))
    conflicting = {p for p, values in outcomes.items() if len(values) > 1}
    single = {p: values[0] for p, values in outcomes.items() if len(values) == 1}
    voted = votes["status"] == StudyStatus.VOTED.value
    frame = votes[voted].copy()
    frame["outcome"] = frame["patient_key"].map(single)
    in_conflict = frame["patient_key"].isin(conflicting)
    missing = frame["outcome"].isna() & ~in_conflict
    return Comparable(
        rows=frame[frame["outcome"].notna()],
        no_vote=int((~voted).sum()),
        no_reference=int(missing.sum()),
        conflicting=int(in_conflict.sum()),
    )


def agreement_by(rows: pd.DataFrame, column: str) -> list[Agreement]:
    """One Agreement per value of `column` (missing values as `unknown`), in order."""
    keys = rows[column].fillna("unknown").astype(str)
    return [
        count_agreement(group["vote"], group["outcome"], str(name))
        for name, group in rows.assign(_group=keys).groupby("_group", sort=True)
    ]
