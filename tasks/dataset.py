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
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds

from renalflow.tasks.errors import StoreError
from renalflow.tasks.model import with_channel
from renalflow.tasks.store import SLICES, list_parts, open_store

# Rows come back in this order: patient, study, series, position along the body.
SLICE_ORDER = ("patient_id", "study_instance_uid", "series_instance_uid", "z", "sop_instance_uid")
META_COLUMNS = [
    "patient_id",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "z",
    "phase",
    "manufacturer",
    "study_date",
    "cohort",
    "label",
    "preprocess_version",
]


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


def pixels_to_array(column: pa.ChunkedArray | pa.Array, height: int, width: int) -> np.ndarray:
    """Binary pixel column -> (N, height, width) uint8 without a Python loop."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(array)
    if n == 0:
        return np.zeros((0, height, width), dtype=np.uint8)
    if array.null_count:
        raise StoreError("slice store has rows without pixels; re-ingest the affected files")
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)[array.offset : array.offset + n + 1]
    size = height * width
    if not np.all(np.diff(offsets) == size):
        raise StoreError(
            f"slices in the store are not all {height}x{width}; a store holds one image size "
            "(see its preprocess_version)"
        )
    data = np.frombuffer(array.buffers()[2], dtype=np.uint8)
    return data[offsets[0] : offsets[0] + n * size].reshape(n, height, width)


def load_slices(
    store_uri: str,
    *,
    cohorts: list[str] | None = None,
    patients: set[str] | None = None,
    labelled_only: bool = False,
) -> SliceSet:
    """Read slices (pixels and metadata) from a store, filtered by cohort and patient."""
    parts = list_parts(store_uri, SLICES)
    if not parts:
        raise StoreError(
            f"no slices in {store_uri}; create the store with `renalflow ingest ARCHIVE "
            "--store STORE --labels labels.csv`"
        )
    fs, _ = open_store(store_uri)
    dataset = pds.dataset(parts, format="parquet", filesystem=fs)
    expression = None
    if cohorts:
        expression = pc.field("cohort").isin(cohorts)
    if patients is not None:
        clause = pc.field("patient_id").isin(sorted(patients))
        expression = clause if expression is None else expression & clause
    if labelled_only:
        clause = pc.field("label").is_valid()
        expression = clause if expression is None else expression & clause
    table = dataset.to_table(
        columns=[*META_COLUMNS, "height", "width", "pixels"], filter=expression
    )
    if table.num_rows == 0:
        return SliceSet(
            np.zeros((0, 224, 224), np.uint8),
            np.zeros(0, np.int8),
            pd.DataFrame(columns=META_COLUMNS),
        )
    heights = pc.unique(table.column("height")).to_pylist()
    widths = pc.unique(table.column("width")).to_pylist()
    if len(heights) != 1 or len(widths) != 1:
        raise StoreError(f"store {store_uri} mixes image sizes {heights}x{widths}")
    # One order whatever the store's part files: training shuffles by index, so two
    # stores of the same archive train the same model from the same seed.
    order = pc.sort_indices(table, sort_keys=[(key, "ascending") for key in SLICE_ORDER])
    table = table.take(order)
    meta = table.select(META_COLUMNS).to_pandas()
    # Concurrent ingests of the same files can both store a slice: keep one copy.
    unique = ~meta["sop_instance_uid"].duplicated().to_numpy()
    if not unique.all():
        table = table.filter(pa.array(unique))
        meta = meta[unique].reset_index(drop=True)
    images = pixels_to_array(table.column("pixels"), heights[0], widths[0])
    labels = np.where(
        meta["label"] == "malignant", 1, np.where(meta["label"] == "benign", 0, -1)
    ).astype(np.int8)
    return SliceSet(images=images, labels=labels, meta=meta)


def iterate_batches(
    images: np.ndarray, labels: np.ndarray, order: np.ndarray, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches of (uint8 images with a channel axis, float32 labels) in `order`."""
    for start in range(0, len(order), batch_size):
        index = np.sort(order[start : start + batch_size])  # sorted gathers read memory in order
        yield with_channel(images[index]), labels[index].astype(np.float32)
