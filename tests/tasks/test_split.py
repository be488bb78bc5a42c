import numpy as np
import pytest

from renalflow.tasks.errors import InputError
from renalflow.tasks.split import (
    SplitConfig,
    load_split,
    oversample_indices,
    oversample_patient_indices,
    save_split,
    split_patients,
)


def _labels(n_benign: int, n_malignant: int) -> dict[str, str]:
    labels = {f"B{i:03d}": "benign" for i in range(n_benign)}
    labels.update({f"M{i:03d}": "malignant" for i in range(n_malignant)})
    return labels


def test_split_is_patient_level_stratified_and_seeded():
    labels = _labels(69, 300)
    split = split_patients(labels, SplitConfig())
    assert set(split) == set(labels)  # every patient in exactly one split
    for label, n in (("benign", 69), ("malignant", 300)):
        shares = [
            sum(1 for p, s in split.items() if s == name and labels[p] == label) / n
            for name in ("train", "validation", "test")
        ]
        assert shares == pytest.approx([0.7, 0.1, 0.2], abs=0.02)
    assert split_patients(dict(reversed(labels.items())), SplitConfig()) == split
    assert split_patients(labels, SplitConfig(seed=1)) != split


def test_small_cohorts_still_get_validation_and_test_patients():
    split = split_patients(_labels(3, 5), SplitConfig())
    for label in ("B", "M"):
        names = {s for p, s in split.items() if p.startswith(label)}
        assert names == {"train", "validation", "test"}


def test_too_few_patients_explains():
    labels = {"B1": "benign", "B2": "benign", "M1": "malignant", "M2": "malignant"}
    with pytest.raises(InputError, match="only 2 benign patients: too few to split"):
        split_patients(labels, SplitConfig(train=0.0, validation=0.5, test=0.5))


def test_split_round_trips_through_its_file(tmp_path):
    labels = _labels(5, 10)
    split = split_patients(labels, SplitConfig())
    save_split(split, labels, SplitConfig(), tmp_path / "split.json")
    assert load_split(tmp_path / "split.json") == split


def test_oversampling_balances_classes_without_dropping_images():
    labels = np.array([0] * 19 + [1] * 81)
    order = oversample_indices(labels, np.random.default_rng(0))
    assert (labels[order] == 0).sum() == (labels[order] == 1).sum() == 81
    assert set(np.flatnonzero(labels == 1)) <= set(order)
    assert set(np.flatnonzero(labels == 0)) <= set(order)
    again = oversample_indices(labels, np.random.default_rng(0))
    np.testing.assert_array_equal(order, again)


def test_patient_oversampling_draws_whole_benign_patients_to_50_50_patients():
    """The paper's unit is the patient: 2 benign patients (3 and 5 images) against 6
    malignant ones become 6 benign draws, each bringing all its images."""
    patients = np.array(["b1"] * 3 + ["b2"] * 5 + [f"m{i}" for i in range(6) for _ in range(4)])
    labels = np.array([0] * 8 + [1] * 24)
    order = oversample_patient_indices(labels, patients, np.random.default_rng(0))
    assert set(order) == set(range(len(labels)))  # no image dropped
    counts = {p: int((patients[order] == p).sum()) for p in set(patients)}
    assert all(counts[f"m{i}"] == 4 for i in range(6))
    draws = counts["b1"] // 3 + counts["b2"] // 5
    assert counts["b1"] % 3 == 0 and counts["b2"] % 5 == 0 and draws == 6
    again = oversample_patient_indices(labels, patients, np.random.default_rng(0))
    np.testing.assert_array_equal(order, again)
