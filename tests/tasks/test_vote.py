import numpy as np
import pytest

from renalflow.tasks.config import VOTE_THRESHOLD, Label
from renalflow.tasks.vote import check_thresholds, deciding_slices, vote


def _probabilities(malignant: int, images: int) -> np.ndarray:
    return np.array([0.9] * malignant + [0.1] * (images - malignant))


@pytest.mark.parametrize(
    ("malignant", "images", "decided"),
    [(51, 100, Label.MALIGNANT), (50, 100, Label.BENIGN), (1, 2, Label.BENIGN),
     (2, 3, Label.MALIGNANT), (0, 5, Label.BENIGN), (5, 5, Label.MALIGNANT)],
)  # fmt: skip
def test_majority_vote_needs_51_percent(malignant, images, decided):
    outcome = vote(_probabilities(malignant, images))
    assert outcome.vote is decided
    assert (outcome.n_malignant, outcome.n_images) == (malignant, images)
    assert outcome.fraction_malignant == pytest.approx(malignant / images)


def test_the_default_is_the_papers_51_percent():
    assert VOTE_THRESHOLD == 0.51


def test_thresholds_are_configurable_and_empty_patients_have_no_vote():
    assert vote(_probabilities(1, 2), vote_threshold=0.5).vote is Label.MALIGNANT
    assert vote(np.array([0.6, 0.6]), image_threshold=0.7).vote is Label.BENIGN
    with pytest.raises(ValueError, match="no vote"):
        vote(np.array([]))
    with pytest.raises(ValueError, match="vote_threshold must be in"):
        check_thresholds(0.5, 1.5)


def test_deciding_slices_take_the_winning_side_first():
    p = np.array([0.9, 0.2, 0.6, 0.05, 0.99, 0.4])
    assert deciding_slices(p, "malignant", per_side=2) == [4, 0, 3, 1]
    assert deciding_slices(p, Label.BENIGN, per_side=2) == [3, 1, 4, 0]
    assert deciding_slices(np.array([0.7, 0.8]), "malignant") == [1, 0]
