"""tasks/inference.py: a worker's scoring of store slices, with and without a slice
selector run first, on a real store and a real (tiny) trained model."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from renalflow.tasks.inference import SelectorRef, cached_model, score_slices
from renalflow.tasks.model import profile_config
from renalflow.tasks.model_dir import model_version
from renalflow.tasks.store import SLICES, list_parts
from renalflow.tasks.train import train_model
from tests.factory import build_store


@pytest.fixture(scope="module")
def scored_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference")
    store = build_store(root, patients=6, seed=9)
    model_dir = root / "model"
    config = profile_config("cpu-demo", input_size=64, epochs=1, augment=False)
    train_model(store, model_dir, config, log=lambda _: None)
    parts = {}
    for part in list_parts(store, SLICES):
        uids = pq.read_table(part, columns=["sop_instance_uid"]).column(0).to_pylist()
        if uids:  # the store's empty first part holds none
            parts[part] = uids
    return store, str(model_dir), model_version(model_dir), parts


def test_every_slice_gets_a_probability_without_a_selector(scored_setup):
    store, model_dir, version, parts = scored_setup
    batch = score_slices(store, parts, model_dir, version, batch_size=8)
    assert sorted(batch.sop_instance_uid) == sorted(u for uids in parts.values() for u in uids)
    assert np.isfinite(batch.probability).all() and batch.selector_probability is None


def test_the_classifier_sees_only_what_the_selector_selects(scored_setup):
    store, model_dir, version, parts = scored_setup
    plain = score_slices(store, parts, model_dir, version, batch_size=8)
    # The same network stands in for a selector: its own output decides, at a threshold
    # between its lowest and highest answer, so some slices pass and some do not.
    threshold = float(np.median(plain.probability))
    selector = SelectorRef(model_dir, version, threshold)
    screened = score_slices(store, parts, model_dir, version, batch_size=8, selector=selector)
    assert screened.sop_instance_uid == plain.sop_instance_uid
    assert screened.selector_probability is not None
    np.testing.assert_allclose(screened.selector_probability, plain.probability, atol=1e-5)
    kept = screened.selector_probability >= threshold
    assert 0 < kept.sum() < len(kept)
    np.testing.assert_allclose(screened.probability[kept], plain.probability[kept], atol=1e-5)
    assert np.isnan(screened.probability[~kept]).all()  # never given to the classifier


def test_a_worker_keeps_the_classifier_and_its_selector_loaded(scored_setup, tmp_path):
    import shutil

    _, model_dir, version, _ = scored_setup
    other = tmp_path / "selector"
    shutil.copytree(model_dir, other)
    first = cached_model(model_dir, version)
    selector = cached_model(str(other), version)
    assert cached_model(model_dir, version) is first  # not reloaded between the two
    assert cached_model(str(other), version) is selector
