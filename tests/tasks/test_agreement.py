"""tasks/agreement.py: agreement figures against a hand computation."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from renalflow.tasks.agreement import agreement_by, comparable_rows, count_agreement


def _votes(pairs: list[tuple[str, str]]) -> tuple[pd.Series, pd.Series]:
    return pd.Series([v for v, _ in pairs]), pd.Series([o for _, o in pairs])


# 3 true positives, 1 false positive, 4 true negatives, 2 false negatives.
HAND = (
    [("malignant", "malignant")] * 3
    + [("malignant", "benign")]
    + [("benign", "benign")] * 4
    + [("benign", "malignant")] * 2
)


def test_figures_match_a_hand_computation():
    agreement = count_agreement(*_votes(HAND))
    assert (agreement.tp, agreement.fp, agreement.tn, agreement.fn) == (3, 1, 4, 2)
    sensitivity = agreement.figure("sensitivity")
    assert (sensitivity.successes, sensitivity.n, sensitivity.value) == (3, 5, 0.6)
    assert agreement.figure("specificity").value == 4 / 5
    assert agreement.figure("ppv").value == 3 / 4
    assert agreement.figure("npv").value == 4 / 6
    # Wilson 95% for 3 of 5, by hand: centre (0.6 + z²/10) / (1 + z²/5) = 0.5566,
    # half-width z * sqrt(0.6 * 0.4 / 5 + z²/100) / (1 + z²/5) = 0.3258.
    assert (sensitivity.low, sensitivity.high) == pytest.approx((0.2307, 0.8824), abs=5e-4)
    assert "sensitivity rests on 5 cases (fewer than 10)" in agreement.warnings()


def test_a_figure_without_cases_is_undefined_and_said_so():
    agreement = count_agreement(*_votes([("benign", "benign")]))
    assert math.isnan(agreement.figure("sensitivity").value)
    assert "sensitivity undefined (no cases)" in agreement.warnings()


def test_rows_that_cannot_be_compared_are_counted_not_dropped():
    votes = pd.DataFrame(
        {
            "patient_key": ["a", "b", "c", "d"],
            "status": ["voted", "voted", "voted", "no_mass_found"],
            "vote": ["malignant", "benign", "benign", None],
            "manufacturer": ["GE", "SIEMENS", "GE", "GE"],
        }
    )
    references = pd.DataFrame(
        {
            "patient_key": ["a", "b", "b", "d"],
            "outcome": ["malignant", "benign", "malignant", "benign"],
        }
    )
    found = comparable_rows(votes, references)
    assert list(found.rows["patient_key"]) == ["a"]
    assert (found.no_vote, found.no_reference, found.conflicting) == (1, 1, 1)
    by_vendor = agreement_by(found.rows, "manufacturer")
    assert [(a.group, a.tp) for a in by_vendor] == [("GE", 1)]


def test_bootstrap_intervals_agree_with_resampling_the_rows_by_hand():
    """The 2x2 table's multinomial draw against resampling the 10 rows themselves."""
    import numpy as np

    agreement = count_agreement(*_votes(HAND))
    ours = agreement.bootstrap(n_boot=20000, seed=3)
    assert ours == agreement.bootstrap(n_boot=20000, seed=3)  # seeded
    rng = np.random.default_rng(11)
    vote = np.array([v == "malignant" for v, _ in HAND])
    truth = np.array([o == "malignant" for _, o in HAND])
    shares = []
    for _ in range(20000):
        pick = rng.integers(0, len(HAND), len(HAND))
        v, t = vote[pick], truth[pick]
        if t.sum():
            shares.append((v & t).sum() / t.sum())
    by_hand = np.percentile(shares, [2.5, 97.5])
    assert ours["sensitivity"] == pytest.approx(tuple(by_hand), abs=0.03)
    assert ours["sensitivity"][0] <= 0.6 <= ours["sensitivity"][1]
    # A figure every resample gets right has no spread; one without cases has no CI.
    perfect = count_agreement(*_votes([("malignant", "malignant")] * 12))
    assert perfect.bootstrap()["sensitivity"] == (1.0, 1.0)
    assert all(math.isnan(b) for b in perfect.bootstrap()["specificity"])
