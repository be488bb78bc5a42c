from pathlib import Path

import numpy as np

from renalflow.tasks.config import PreprocessConfig
from renalflow.tasks.dataset import load_slices
from renalflow.tasks.ingest import commit_batch, convert_files, discover_files, read_labels
from renalflow.tasks.synth import SynthConfig, synthesize_archive


def test_two_stores_of_one_archive_give_the_same_slices_in_the_same_order(tmp_path: Path):
    """Training shuffles by index, so the order load_slices returns must not depend on
    the order files were converted or batches committed."""
    synthesize_archive(
        tmp_path / "synth",
        SynthConfig(patients=4, seed=3, max_slices_per_series=3, lesion_only=True),
        jobs=1,
    )
    uris = discover_files(str(tmp_path / "synth" / "archive"))
    labels = read_labels(str(tmp_path / "synth" / "labels.csv"))
    config = PreprocessConfig(output_size=32)
    stores = []
    for name, batches in (("sorted", [uris]), ("reversed", [uris[::-1][:5], uris[::-1][5:]])):
        store = str(tmp_path / name)
        for i, batch in enumerate(batches):
            staged = convert_files(store, batch, config, "development", labels, f"run{i}")
            commit_batch(store, staged, {}, "development", f"run{i}", config.version)
        stores.append(load_slices(store))
    first, second = stores
    assert len(first) == len(uris) > 5
    assert first.meta["sop_instance_uid"].tolist() == second.meta["sop_instance_uid"].tolist()
    assert np.array_equal(first.images, second.images)
    keys = first.meta[["patient_id", "series_instance_uid", "z"]]
    assert keys.equals(keys.sort_values(["patient_id", "series_instance_uid", "z"]))
