"""`renalflow pipeline` end to end on a tiny archive and a real local Dask cluster: a model
is trained, gated, registered and promoted; scheduled-style scoring follows the
production alias and records its version; a worse model leaves production unchanged."""

from __future__ import annotations

import shutil

import pytest

from renalflow.flows.jobs import pipeline_job, score_job
from renalflow.tasks import registry
from renalflow.tasks.errors import InputError
from renalflow.tasks.params import PipelineParams, ScoreParams
from renalflow.tasks.pseudonym import KEY_ENV
from renalflow.tasks.query import run_query
from tests.factory import curated_archive

SIZE = 64


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    curated_archive(root / "synth", patients=12, seed=41, slices=4, jobs=2, benign_fraction=0.5)
    return root


def _pipeline(root, cluster, **options):
    params = PipelineParams(
        archive=str(root / "synth" / "archive"),
        store=str(root / "store"),
        labels=str(root / "synth" / "labels.csv"),
        results=str(root / "results"),
        models_dir=str(root / "models"),
        size=options.pop("size", SIZE),
        profile="cpu-demo",
        dask_address=cluster.scheduler_address,
        bootstrap=20,
        **options,
    )
    return pipeline_job(params)


@pytest.mark.slow
def test_pipeline_promotes_a_model_scoring_follows_it_and_a_worse_one_is_held_back(
    archive, dask_cluster, monkeypatch
):
    results = str(archive / "results")
    first = _pipeline(archive, dask_cluster, epochs=2)
    assert first.promoted and first.production_before is None
    assert registry.alias_version(results) == first.model_version
    assert first.metrics["patient"]["n"] >= 2  # evaluated on the held-out test patients

    monkeypatch.setenv(KEY_ENV, "renalflow-test-key-0123456789abcdef")
    score = ScoreParams(
        archive=str(archive / "synth" / "archive"),
        model_alias="production",
        results=results,
        all_slices=True,
        dask_address=dask_cluster.scheduler_address,
    )
    summary = score_job(score)
    assert summary.model_version == first.model_version
    used = run_query(results, "select distinct model_version from study_votes").to_pylist()
    assert used == [{"model_version": first.model_version}]

    # A second run held to a margin no model can pass: registered, production unchanged,
    # and compared with production on the same held-out patients.
    second = _pipeline(archive, dask_cluster, epochs=1, seed=7, gate_margin=1.0)
    assert not second.promoted and "does not exceed" in second.reason
    assert second.production_before == second.production_after == first.model_version
    assert second.production_metrics["patient"]["n"] == second.metrics["patient"]["n"]
    assert registry.alias_version(results) == first.model_version
    rows = run_query(results, "select model_version from models order by registered_at")
    assert rows.column("model_version").to_pylist() == [first.model_version, second.model_version]

    # A person promotes it anyway, then rolls back: production is the first model again,
    # and the history of production is a query.
    registry.promote(results, second.model_version[:8], "by hand")
    assert registry.alias_version(results) == second.model_version
    assert registry.rollback(results, "by hand") == (second.model_version, first.model_version)
    assert registry.alias_version(results) == first.model_version
    actions = run_query(results, "select action from model_aliases order by changed_at")
    assert actions.column("action").to_pylist() == ["promote", "promote", "rollback"]
    with pytest.raises(InputError, match="no earlier version to roll back to"):
        registry.rollback(results, "again")

    # A model made another way (48 px): its slices go to a store of their own. With the
    # store gone, production (64 px) is compared on slices made its way, on demand.
    shutil.rmtree(archive / "store")
    third = _pipeline(archive, dask_cluster, epochs=1, seed=9, size=48, gate="manual")
    assert not third.promoted
    assert [p.name for p in archive.glob("store.*")] != []  # production's, made on demand
    assert third.production_metrics["patient"]["n"] == third.metrics["patient"]["n"]
    registry.promote(results, third.model_version, "by hand")
    summary = score_job(score)  # the same nightly parameters, now the 48-px model
    assert summary.model_version == third.model_version
    assert summary.store != str(archive / "results.slices")  # beside the 64-px slices
    used = run_query(results, "select distinct model_version from study_votes order by 1")
    assert sorted(used.column("model_version").to_pylist()) == sorted(
        [first.model_version, third.model_version]
    )
