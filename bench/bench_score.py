"""Scoring benchmark: the score flow against plain `model.predict` on the same images.

Builds (or reuses) an archive and its slice store, then for each model profile:

- baseline: one process, the images already in memory, `model.predict(images)`;
- `score_flow` on a warm local Dask cluster (one single-threaded worker per core, the
  model already loaded on each worker, the archive already in the store), timed from
  the flow's start to its last commit: planning, reading the store, inference on the
  workers, pseudonymising, both Delta merges. That is "everything after start-up".

Figures are images/s in all and per core. Model weights are random (`weights=none`):
throughput does not depend on them, and nothing is downloaded.

Usage: python bench/bench_score.py [--patients 60] [--workdir DIR] [--profiles paper cpu-demo]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from common import add_workdir, machine

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RENALFLOW_PSEUDONYM_KEY", "benchmark-key-not-secret-0123456789")


def build_store(root: Path, patients: int) -> tuple[str, str]:
    from renalflow.tasks.config import PreprocessConfig
    from renalflow.tasks.ingest import commit_batch, convert_files, discover_files
    from renalflow.tasks.store import check_manifest
    from renalflow.tasks.synth import SynthConfig, synthesize_archive

    archive, store = root / "synth" / "archive", str(root / "store")
    if not archive.exists():
        synthesize_archive(
            root / "synth",
            SynthConfig(patients=patients, seed=5000, max_slices_per_series=10, lesion_only=True),
        )
    if not Path(store, "slices").exists():
        config = PreprocessConfig()
        check_manifest(store, config.to_dict(), config.version)
        staged = convert_files(store, discover_files(str(archive)), config, "bench", {}, "bench")
        commit_batch(store, staged, {}, "bench", "bench", config.version)
    return str(archive), store


def model_dir(root: Path, store: str, profile: str) -> str:
    """A model directory as `renalflow train` leaves it, with untrained weights."""
    from renalflow.tasks.model import build_model, profile_config
    from renalflow.tasks.store import read_manifest
    from renalflow.tasks.train import file_digest

    out = root / f"model-{profile}"
    if (out / "model.keras").exists():
        return str(out)
    out.mkdir(parents=True, exist_ok=True)
    config = profile_config(profile, weights="none")
    build_model(config).save(out / "model.keras")
    (out / "model_version.txt").write_text(file_digest(out / "model.keras"))
    (out / "config.json").write_text(json.dumps({"train": config.to_dict()}))
    manifest = read_manifest(store)
    lineage = {"store": store, "preprocess": manifest["preprocess"]}
    (out / "lineage.json").write_text(json.dumps(lineage))
    return str(out)


def baseline(store: str, model_path: str) -> tuple[int, float]:
    from renalflow.tasks.dataset import load_slices
    from renalflow.tasks.model_dir import load_model

    images = load_slices(store).images[..., None]
    model = load_model(model_path)
    model.predict(images[:64], batch_size=64, verbose=0)  # warm-up
    started = time.perf_counter()
    model.predict(images, batch_size=64, verbose=0)
    return len(images), time.perf_counter() - started


def flow_run(archive: str, store: str, model_path: str, results: str, cluster: object) -> object:
    from prefect_dask import DaskTaskRunner

    from renalflow.flows.score import score_flow

    runner = DaskTaskRunner(address=cluster.scheduler_address)  # type: ignore[attr-defined]
    from renalflow.tasks.score import ScoreConfig

    return score_flow.with_options(task_runner=runner)(
        archive=archive,
        model_dir=model_path,
        results=results,
        store=store,
        config=ScoreConfig(all_slices=True),  # synth's curated lesion slices
    )


def _load_model(path: str, version: str) -> None:
    from renalflow.tasks.inference import cached_model

    cached_model(path, version)  # kept in the worker process; nothing sent back


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=60)
    add_workdir(parser, "score")
    parser.add_argument("--profiles", nargs="+", default=["cpu-demo", "paper"])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    from distributed import LocalCluster

    from renalflow.flows.runtime import prefect_api

    root = Path(args.workdir)
    archive, store = build_store(root, args.patients)
    print(machine())
    with (
        prefect_api(),
        LocalCluster(
            n_workers=args.workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            preload=["renalflow.flows.ingest"],
        ) as cluster,
    ):
        for profile in args.profiles:
            path = model_dir(root, store, profile)
            n, seconds = baseline(store, path)
            base = n / seconds
            # Start-up: the model loaded in every worker process, and one small flow run
            # (over copies of a few files, which the store counts as the same slices).
            from distributed import Client

            from renalflow.tasks.model_dir import read_model_info

            version = read_model_info(path).model_version
            with Client(cluster) as client:
                client.run(_load_model, path, version)
            warm_archive = root / "warm-archive"
            if not warm_archive.exists():
                files = sorted(p for p in Path(archive).rglob("*") if p.is_file())[:40]
                for i, file in enumerate(files):
                    target = warm_archive / f"{i:03d}" / file.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(file, target)
            warm = str(root / f"R-warm-{profile}")
            shutil.rmtree(warm, ignore_errors=True)
            flow_run(str(warm_archive), store, path, warm, cluster)
            results = str(root / f"R-{profile}")
            shutil.rmtree(results, ignore_errors=True)
            started = time.perf_counter()
            summary = flow_run(archive, store, path, results, cluster)
            wall = time.perf_counter() - started
            scored = summary.images_scored  # type: ignore[attr-defined]
            # The warm-up run scored into another table, so this run scores everything.
            rate = scored / wall
            print(
                f"{profile:>9}: baseline model.predict {n} images in {seconds:.1f} s = "
                f"{base:.1f} img/s ({base / args.workers:.1f} per core) | score flow "
                f"{scored} images in {wall:.1f} s = {rate:.1f} img/s "
                f"({rate / args.workers:.1f} per core) -> {rate / base:.2f}x the baseline"
            )


if __name__ == "__main__":
    main()
