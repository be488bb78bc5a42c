"""GPU training benchmark for the GPU machine: Keras on JAX, no TensorFlow, no Prefect.

Runs the paper's ResNet50V2 (224x224, binary head, RMSprop) by calling the functions
in `tasks/` directly, and prints training images/s for
  1. synthetic uint8 batches already in memory (the ceiling), and
  2. batches from a Parquet slice store through the renalflow input pipeline
     (`tasks.dataset.load_slices` + oversampling + `iterate_batches`).
Target: (2) within 10% of (1), and at least 6,500 images/s on an H200 in bf16.

On the GPU machine (Keras travels as wheels, see ../shared/GPU.md):
  pip install --no-index --no-deps --target /tmp/site WHEELS
  KERAS_BACKEND=jax PYTHONPATH=/tmp/site:. python bench/bench_gpu_train.py --precision bf16

It writes its own small Parquet store (random pixels, 19% benign) unless --store is
given, so it needs neither pydicom nor Prefect; besides Keras, carry the pure-Python
fsspec wheel (tasks/store.py opens stores through it).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tasks.dataset import iterate_batches, load_slices
from tasks.model import TrainConfig, build_model
from tasks.split import oversample_indices


def make_store(path: Path, n: int) -> str:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_input import build_store

    return build_store(path, n)


def time_steps(model, batches, steps: int, warmup: int) -> float:
    """Images/s over `steps` train steps after `warmup` steps (compilation excluded)."""
    it = iter(batches)
    for _ in range(warmup):
        x, y = next(it)
        model.train_on_batch(x, y)
    started = time.perf_counter()
    seen = 0
    for _ in range(steps):
        x, y = next(it)
        logs = model.train_on_batch(x, y, return_dict=True)
        seen += len(y)
    float(logs["loss"])  # wait for the device
    return seen / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="bf16")
    parser.add_argument("--images", type=int, default=8192, help="slices in the generated store")
    parser.add_argument("--store", help="an existing slice store instead of a generated one")
    args = parser.parse_args()

    import keras

    print(
        f"keras {keras.__version__}, backend {keras.backend.backend()}, "
        f"python {platform.python_version()}, {platform.machine()}"
    )
    if keras.backend.backend() == "jax":
        import jax

        print(f"devices: {jax.devices()}")
    precision = None if args.precision == "fp32" else args.precision
    model = build_model(
        TrainConfig(weights="none", mixed_precision=precision, batch_size=args.batch_size)
    )

    rng = np.random.default_rng(0)
    synthetic_x = rng.integers(0, 256, size=(args.batch_size, 224, 224, 1), dtype=np.uint8)
    synthetic_y = rng.integers(0, 2, size=args.batch_size).astype(np.float32)

    def synthetic():
        while True:
            yield synthetic_x, synthetic_y

    ceiling = time_steps(model, synthetic(), args.steps, args.warmup)
    print(
        f"synthetic in-memory batches: {ceiling:,.0f} images/s "
        f"(batch {args.batch_size}, {args.precision})"
    )

    store = args.store or make_store(
        Path(tempfile.gettempdir()) / "renalflow-gpu-store", args.images
    )
    started = time.perf_counter()
    slices = load_slices(store, labelled_only=True)
    print(f"loaded {len(slices)} slices from {store} in {time.perf_counter() - started:.1f} s")

    def from_store():
        while True:
            order = oversample_indices(slices.labels, rng)
            yield from iterate_batches(slices.images, slices.labels, order, args.batch_size)

    piped = time_steps(model, from_store(), args.steps, args.warmup)
    print(
        f"batches from the slice store: {piped:,.0f} images/s "
        f"({100 * piped / ceiling:.0f}% of the synthetic ceiling)"
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("KERAS_BACKEND", "jax")
    sys.exit(main())
