import math

import numpy as np
import pytest

from renalflow.tasks.metrics import (
    binary_metrics,
    bootstrap_auc_ci,
    evaluation_warnings,
    roc_auc,
    roc_curve,
    wilson_interval,
)


def test_auc_against_hand_computed_pairs():
    # Positive scores 0.9, 0.4; negative 0.5, 0.1: pairs (0.9>0.5), (0.9>0.1), (0.4<0.5), (0.4>0.1).
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.9, 0.4, 0.5, 0.1])) == pytest.approx(0.75)


def test_auc_counts_ties_as_half():
    assert roc_auc(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert np.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_roc_curve_runs_from_origin_to_corner():
    fpr, tpr = roc_curve(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.3, 0.1]))
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.75)


def test_binary_metrics_confusion_matrix():
    m = binary_metrics(np.array([1, 1, 1, 0, 0]), np.array([1, 1, 0, 0, 1]))
    assert (m.tp, m.fn, m.tn, m.fp) == (2, 1, 1, 1)
    assert m.accuracy == pytest.approx(3 / 5)
    assert m.sensitivity == pytest.approx(2 / 3) and m.specificity == pytest.approx(1 / 2)


def test_bootstrap_ci_resamples_patients_and_brackets_the_auc():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 10)
    y = np.repeat(rng.integers(0, 2, 40), 10)
    scores = y * 0.6 + rng.random(400) * 0.7
    interval = bootstrap_auc_ci(y, scores, groups, n_boot=200, seed=1)
    low, high = interval.low, interval.high
    auc = roc_auc(y, scores)
    assert low < auc < high
    assert interval == bootstrap_auc_ci(y, scores, groups, n_boot=200, seed=1)


def test_one_class_and_tiny_sets_are_named_not_printed_as_numbers():
    groups = np.repeat(np.arange(4), 5)
    y = np.ones(20, int)  # every image malignant: DataTest_3 the other way round
    scores = np.linspace(0, 1, 20)
    interval = bootstrap_auc_ci(y, scores, groups, n_boot=50, seed=1)
    assert np.isnan(roc_auc(y, scores)) and interval.used == 0 and interval.requested == 50
    notes = evaluation_warnings(y, interval, patients=4)
    assert notes[0].startswith("every image is malignant: AUC and the specificity")
    assert notes[-1] == "only 4 patients: every rate here is very uncertain"
    # Two classes, but few patients: some resamples draw one class and are left out.
    y = np.repeat([0, 0, 0, 1], 5)
    interval = bootstrap_auc_ci(y, scores, groups, n_boot=200, seed=1)
    assert 0 < interval.used < 200
    assert (
        f"rests on {interval.used} of 200 bootstrap resamples"
        in evaluation_warnings(y, interval, patients=4)[0]
    )


def test_wilson_interval_gives_newcombes_published_figures():
    """Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (Wilson score)."""
    for (k, n), (low, high) in {
        (81, 263): (0.2553, 0.3662),
        (15, 148): (0.0624, 0.1605),
        (0, 20): (0.0, 0.1611),
        (1, 29): (0.0061, 0.1718),
    }.items():
        got = wilson_interval(k, n)
        assert got == pytest.approx((low, high), abs=5e-5), (k, n)
    assert wilson_interval(20, 20)[1] == 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_an_undefined_auc_is_null_in_its_record_and_the_method_says_what_was_used():
    from renalflow.tasks.metrics import AucInterval, auc_record

    record = auc_record(float("nan"), AucInterval(float("nan"), float("nan"), 0, 200), seed=7)
    assert record["auc"] is None and record["auc_ci95"] == [None, None]
    assert record["auc_ci_method"] == (
        "percentile bootstrap over patients, 0 of 200 resamples usable, seed 7"
    )
