"""The training input pipeline: slice store -> uint8 arrays in memory -> shuffled batches.

Slices stay one-channel uint8 all the way to the model (224x224 = 50 KB each), so a
development cohort of 20,000 images is 1 GB in memory and a batch is one gather.
Float conversion, channel replication and ResNetV2 scaling happen inside the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from renalflow.tasks.config import Label, SeriesRule
from renalflow.tasks.model import with_channel
from renalflow.tasks.selection import mass_slices
from renalflow.tasks.store import read_slices


@dataclass
class SliceSet:
    """Images (N, H, W) uint8; labels (N,): 1 malignant, 0 benign, -1 unknown; metadata."""

    images: np.ndarray
    labels: np.ndarray
    meta: pd.DataFrame

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, mask: np.ndarray) -> SliceSet:
        index = np.flatnonzero(mask)
        return SliceSet(
            self.images[index], self.labels[index], self.meta.iloc[index].reset_index(drop=True)
        )


def load_slices(
    store_uri: str,
    *,
    cohorts: list[str] | None = None,
    patients: set[str] | None = None,
    labelled_only: bool = False,
) -> SliceSet:
    """Read slices (pixels and metadata) from a store, filtered by cohort and patient."""
    meta, images = read_slices(
        store_uri, cohorts=cohorts, patients=patients, labelled_only=labelled_only
    )
    label = meta["label"]
    labels = np.where(
        label == Label.MALIGNANT.value, 1, np.where(label == Label.BENIGN.value, 0, -1)
    ).astype(np.int8)
    return SliceSet(images=images, labels=labels, meta=meta)


def load_mass_slices(
    store_uri: str,
    *,
    cohorts: list[str] | None = None,
    patients: set[str] | None = None,
    rule: SeriesRule | None = None,
) -> tuple[SliceSet, int]:
    """The labelled slices through the renal mass (tasks.selection.mass_slices: annotated
    lesion slices, or curated series), what a classifier learns from and is evaluated
    on, and how many labelled slices were left out (other levels of whole studies,
    series not screened, a second reconstruction)."""
    slices = load_slices(store_uri, cohorts=cohorts, patients=patients, labelled_only=True)
    keep = mass_slices(slices.meta, rule)
    return slices.subset(keep), int((~keep).sum())


def iterate_batches(
    images: np.ndarray, labels: np.ndarray, order: np.ndarray, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches of (uint8 images with a channel axis, float32 labels) in `order`."""
    for start in range(0, len(order), batch_size):
        index = np.sort(order[start : start + batch_size])  # sorted gathers read memory in order
        yield with_channel(images[index]), labels[index].astype(np.float32)
