import numpy as np
import pytest

from renalflow.tasks.metrics import (
    binary_metrics,
    bootstrap_auc_ci,
    roc_auc,
    roc_curve,
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
    low, high = bootstrap_auc_ci(y, scores, groups, n_boot=200, seed=1)
    auc = roc_auc(y, scores)
    assert low < auc < high
    assert (low, high) == bootstrap_auc_ci(y, scores, groups, n_boot=200, seed=1)
