"""Patient-level splits and class balancing, as in the study: never split by image."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from renalflow.tasks.config import SEED, Split
from renalflow.tasks.errors import InputError


@dataclass(frozen=True)
class SplitConfig:
    """Shares of the development cohort's patients (paper: 70/10/20) and the seed."""

    train: float = 0.70
    validation: float = 0.10
    test: float = 0.20
    seed: int = SEED

    def __post_init__(self) -> None:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6 or min(self.train, self.validation, self.test) < 0:
            raise ValueError(f"split shares must be non-negative and sum to 1, got {total:g}")


def split_patients(labels: dict[str, str], config: SplitConfig) -> dict[str, str]:
    """Assign each patient to train/validation/test, stratified by label and seeded.

    Within each label the patients are shuffled with the seed and cut by the shares
    (rounded, at least one validation and one test patient per label when the label
    has three or more patients). The result does not depend on the order of `labels`.
    """
    if not labels:
        raise InputError("no labelled patients to split: ingest with --labels first")
    rng = np.random.default_rng(config.seed)
    assignment: dict[str, str] = {}
    for label in sorted(set(labels.values())):
        patients = sorted(p for p, lab in labels.items() if lab == label)
        order = [patients[i] for i in rng.permutation(len(patients))]
        n = len(order)
        n_test = round(n * config.test)
        n_val = round(n * config.validation)
        if n >= 3:
            n_test = max(n_test, 1 if config.test > 0 else 0)
            n_val = max(n_val, 1 if config.validation > 0 else 0)
        n_train = n - n_test - n_val
        if n_train < 1:
            raise InputError(
                f"only {n} {label} patients: too few to split into train/validation/test"
            )
        for i, patient in enumerate(order):
            split = (
                Split.TRAIN
                if i < n_train
                else Split.VALIDATION
                if i < n_train + n_val
                else Split.TEST
            )
            assignment[patient] = split.value
    return assignment


def save_split(
    assignment: dict[str, str], labels: dict[str, str], config: SplitConfig, path: Path
) -> None:
    payload = {
        "config": asdict(config),
        "patients": [
            {"patient_id": p, "label": labels[p], "split": s} for p, s in sorted(assignment.items())
        ],
    }
    path.write_text(json.dumps(payload, indent=2))


def load_split(path: Path) -> dict[str, str]:
    data = json.loads(path.read_text())
    return {row["patient_id"]: row["split"] for row in data["patients"]}


def _balance(
    labels: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The majority class's indices, the minority's, and minority indices drawn with
    replacement until both classes count the same; None when a class is missing."""
    pos = np.flatnonzero(labels == 1)
    neg = np.flatnonzero(labels == 0)
    if len(pos) == 0 or len(neg) == 0:
        return None
    minority, majority = (pos, neg) if len(pos) < len(neg) else (neg, pos)
    extra = rng.choice(minority, size=len(majority) - len(minority), replace=True)
    return majority, minority, extra


def oversample_indices(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices that resample the minority class (with replacement) up to 50:50, shuffled.

    `labels` holds 0/1 per image. Every image of the majority class appears once; the
    minority class is drawn until both classes have the same count. Only indices are
    made: no image is copied on disk or in memory.
    """
    labels = np.asarray(labels)
    balance = _balance(labels, rng)
    if balance is None:
        return rng.permutation(len(labels))
    majority, minority, extra = balance
    return rng.permutation(np.concatenate([majority, minority, extra]))


def oversample_patient_indices(
    labels: np.ndarray, patients: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Indices that resample the minority class's patients up to 50:50 patients, shuffled.

    The paper's rule: "sampling all patients in the benign training set until a 50:50
    ratio was reached between benign and malignant patients". `labels` holds 0/1 per
    image and `patients` the image's patient; every image of every patient appears
    once, then minority patients are drawn with replacement, each bringing all its
    images, until both classes have the same number of patients. Only indices are made.
    """
    labels = np.asarray(labels)
    patients = np.asarray(patients)
    names, first, inverse = np.unique(patients, return_index=True, return_inverse=True)
    rows = [np.flatnonzero(inverse == i) for i in range(len(names))]
    balance = _balance(labels[first], rng)
    if balance is None:
        return rng.permutation(len(labels))
    _, _, extra = balance
    drawn = [rows[i] for i in extra]
    return rng.permutation(np.concatenate([np.arange(len(labels)), *drawn]))


def extend_split(
    existing: dict[str, str], labels: dict[str, str], config: SplitConfig
) -> dict[str, str]:
    """`existing` with every patient of `labels` it lacks added: each new patient's split
    is drawn by the shares from a hash of (seed, patient ID), so it never depends on
    which other patients arrived with it. Patients already split keep their split, so a
    model retrained on a grown cohort is tested on patients no earlier model of the
    same lineage trained on."""
    out = dict(existing)
    for patient in sorted(set(labels) - set(existing)):
        digest = hashlib.sha256(f"{config.seed}:{patient}".encode()).digest()
        draw = int.from_bytes(digest[:8], "big") / 2**64
        if draw < config.train:
            out[patient] = Split.TRAIN.value
        elif draw < config.train + config.validation:
            out[patient] = Split.VALIDATION.value
        else:
            out[patient] = Split.TEST.value
    return out
