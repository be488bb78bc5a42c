"""The decision, once: the paper's majority vote over a patient's (or study's) slices,
and the slices that decided it.

Evaluation (per patient), scoring (per study) and the web page (per upload) all call
these functions, so they cannot disagree about a tie, a threshold or which heat maps
to show.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from renalflow.tasks.config import IMAGE_THRESHOLD, VOTE_THRESHOLD, Label

# Shares are compared with a tolerance: 51 of 100 images reach a 51% threshold.
_TOLERANCE = 1e-12


@dataclass(frozen=True)
class Vote:
    """The outcome of one vote and what it rests on."""

    n_images: int
    n_malignant: int
    fraction_malignant: float
    vote: Label


def check_thresholds(image_threshold: float, vote_threshold: float) -> None:
    """Both thresholds are shares in (0, 1]; anything else is a ValueError naming it."""
    for name, value in (("image_threshold", image_threshold), ("vote_threshold", vote_threshold)):
        if not 0.0 < value <= 1.0:
            raise ValueError(f"{name} must be in (0, 1], got {value}")


def malignant_images(
    probabilities: np.ndarray, image_threshold: float = IMAGE_THRESHOLD
) -> np.ndarray:
    """Which images count as malignant: P(malignant) >= the image threshold."""
    return np.asarray(probabilities) >= image_threshold


def vote(
    probabilities: np.ndarray,
    image_threshold: float = IMAGE_THRESHOLD,
    vote_threshold: float = VOTE_THRESHOLD,
) -> Vote:
    """The paper's rule: malignant when at least `vote_threshold` of the images are.

    With the default 51%, exactly half malignant images is benign (a tie does not reach
    51%). Nothing to vote on is a ValueError: a patient without images has no vote.
    """
    n_images = int(np.asarray(probabilities).size)
    if n_images == 0:
        raise ValueError("a patient without images has no vote")
    n_malignant = int(malignant_images(probabilities, image_threshold).sum())
    fraction = n_malignant / n_images
    decided = Label.MALIGNANT if fraction >= vote_threshold - _TOLERANCE else Label.BENIGN
    return Vote(n_images, n_malignant, fraction, decided)


def deciding_slices(
    probabilities: np.ndarray,
    decided: Label | str,
    per_side: int = 3,
    image_threshold: float = IMAGE_THRESHOLD,
) -> list[int]:
    """Indices of the slices that decided a vote: the `per_side` most confident on the
    winning side, then the `per_side` most confident on the losing side (an image is
    malignant at `image_threshold`, as in the vote)."""
    probabilities = np.asarray(probabilities)
    order = np.argsort(-probabilities)  # most malignant first
    malignant = malignant_images(probabilities, image_threshold)
    malignant_side = [int(i) for i in order if malignant[i]]
    benign_side = [int(i) for i in order[::-1] if not malignant[i]]
    if Label(decided) is Label.MALIGNANT:
        return malignant_side[:per_side] + benign_side[:per_side]
    return benign_side[:per_side] + malignant_side[:per_side]
