"""GPU scoring benchmark for the GPU machine: Keras on JAX, no TensorFlow, no Prefect.

Runs the paper's ResNet50V2 (random weights) in inference and prints images/s for
  1. synthetic uint8 batches already in memory (the ceiling), and
  2. the scoring path of `renalflow score`: `tasks.inference.score_slices` reading the
     slices of every part of a Parquet slice store, as a score task does on a GPU
     Dask worker.
Target: (2) at least 8,000 images/s on an H200 in bf16.

On the GPU machine (Keras travels as wheels, see ../shared/GPU.md):
  pip install --no-index --no-deps --target /tmp/site WHEELS
  KERAS_BACKEND=jax PYTHONPATH=/tmp/site:. python bench/bench_gpu_score.py --precision bf16

It writes its own Parquet store (random pixels) unless --store is given; besides
Keras, carry the pure-Python fsspec wheel.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import add_gpu_options, keras_precision, script_parser


def main() -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=40)
    add_gpu_options(parser)
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_input import build_store

    from renalflow.tasks.inference import score_slices
    from renalflow.tasks.model import TrainConfig, build_model
    from renalflow.tasks.store import SLICES, list_parts
    from renalflow.tasks.train import file_digest

    precision = keras_precision(args.precision)
    config = TrainConfig(weights="none", mixed_precision=precision, input_size=args.size)
    model = build_model(config)
    work = Path(tempfile.gettempdir()) / "renalflow-gpu-score"
    model_dir = work / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save(model_dir / "model.keras")
    version = file_digest(model_dir / "model.keras")

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(args.batch_size, args.size, args.size, 1), dtype=np.uint8)
    for _ in range(3):
        model.predict_on_batch(x)  # compile
    started = time.perf_counter()
    for _ in range(args.steps):
        out = model.predict_on_batch(x)
    np.asarray(out)
    ceiling = args.steps * args.batch_size / (time.perf_counter() - started)
    print(f"synthetic in-memory batches: {ceiling:,.0f} images/s (batch {args.batch_size})")

    store = args.store or build_store(work / "store", args.images, size=args.size)
    parts = list_parts(store, SLICES)
    import pyarrow.parquet as pq

    wanted = {
        p: pq.read_table(p, columns=["sop_instance_uid"]).column(0).to_pylist() for p in parts
    }
    n = sum(len(v) for v in wanted.values())
    # Warm-up: the scorer's own model cache loads model.keras once, as on a worker, and
    # one whole part compiles the full-batch shape.
    first = next(iter(wanted))
    score_slices(store, {first: wanted[first]}, str(model_dir), version, args.batch_size)
    started = time.perf_counter()
    scored = score_slices(store, wanted, str(model_dir), version, args.batch_size)
    seconds = time.perf_counter() - started
    assert len(scored.probability) == n
    rate = n / seconds
    print(
        f"score_slices from the store: {n:,} images in {seconds:.1f} s = {rate:,.0f} images/s "
        f"({100 * rate / ceiling:.0f}% of the synthetic ceiling)"
    )

    # Where the time goes: the store reads alone (two threads, as score_slices), and
    # the model alone on the slices already read.
    from concurrent.futures import ThreadPoolExecutor

    from renalflow.tasks.inference import cached_model
    from renalflow.tasks.model import predict_probabilities
    from renalflow.tasks.store import open_store, read_part_slices

    fs, _ = open_store(store)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        read = list(pool.map(lambda item: read_part_slices(fs, *item)[1], wanted.items()))
    seconds = time.perf_counter() - started
    print(f"  reads alone: {n / seconds:,.0f} images/s")
    cached = cached_model(str(model_dir), version, None)
    started = time.perf_counter()
    for images in read:
        predict_probabilities(cached, images, args.batch_size)
    seconds = time.perf_counter() - started
    print(f"  model alone on the read slices: {n / seconds:,.0f} images/s")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("KERAS_BACKEND", "jax")
    sys.exit(main())
