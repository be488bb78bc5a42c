"""GPU training benchmark for the GPU machine: Keras on JAX, no TensorFlow, no Prefect.

Trains the paper's ResNet50V2 (224x224, binary head, RMSprop, random initial weights)
with `model.fit`, as `renalflow train` does, and prints training images/s for
  1. a synthetic uint8 batch already in memory, fed as the same batch every step
     (the ceiling: no input work at all), and
  2. the real input path: the Parquet slice store read by `tasks.dataset.load_slices`
     and fed through `tasks.train.make_sequence` (reshuffled, benign oversampled to
     50:50, uint8 batches gathered per step).
Each figure is the fastest whole epoch after the first (the first one compiles).
With --full it then runs `tasks.train.train_model` itself for two epochs on the same
store (validation, checkpoints and every artifact included) and prints its rate.
Target: (2) within 10% of (1), and at least 6,500 images/s on an H200 in bf16.

On the GPU machine (Keras and pydicom travel as wheels, see ../shared/GPU.md):
  pip install --no-index --no-deps --target /tmp/site WHEELS
  KERAS_BACKEND=jax PYTHONPATH=/tmp/site:. python bench/bench_gpu_train.py --precision bf16

It writes its own Parquet store (random pixels, 19% benign patients) unless --store is
given, so it needs neither a DICOM archive nor Prefect.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import add_gpu_options, keras_precision, script_parser


def epoch_timer() -> tuple[Any, list[float]]:
    """A Keras callback that records each epoch's wall time (metrics synced at its end)."""
    import keras

    seconds: list[float] = []

    class EpochTimer(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            seconds.append(time.perf_counter() - self.started)

    return EpochTimer(), seconds


def fit_rate(model: Any, batches: Any, epochs: int, images_per_epoch: int) -> float:
    """Images/s of the fastest epoch after the first."""
    timer, seconds = epoch_timer()
    model.fit(batches, epochs=epochs, verbose=0, callbacks=[timer])
    per_epoch = ", ".join(f"{s:.2f}" for s in seconds)
    print(f"  epoch seconds: {per_epoch} ({images_per_epoch:,} images per epoch)")
    return images_per_epoch / min(seconds[1:])


def main() -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3, help="timed fits per path (min 2)")
    parser.add_argument("--full", action="store_true", help="also run train_model for 2 epochs")
    add_gpu_options(parser)
    args = parser.parse_args()

    import keras

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_input import build_store

    from renalflow.tasks.dataset import load_slices
    from renalflow.tasks.model import TrainConfig, build_model
    from renalflow.tasks.train import make_sequence, train_model

    precision = keras_precision(args.precision)
    config = TrainConfig(
        weights="none",
        mixed_precision=precision,
        batch_size=args.batch_size,
        input_size=args.size,
        seed=0,
    )

    work = Path(tempfile.gettempdir()) / "renalflow-gpu-train"
    started = time.perf_counter()
    store = args.store or build_store(work / "store", args.images, size=args.size)
    slices = load_slices(store, labelled_only=True)
    print(
        f"store {store}: {len(slices):,} slices, read into memory in "
        f"{time.perf_counter() - started:.1f} s"
    )

    sequence = make_sequence(
        slices.images, slices.labels, args.batch_size, config.seed, oversample=True, shuffle=True
    )
    steps = len(sequence)
    images_per_epoch = steps * args.batch_size

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(args.batch_size, args.size, args.size, 1), dtype=np.uint8)
    y = rng.integers(0, 2, size=args.batch_size).astype(np.float32)

    class SameBatch(keras.utils.PyDataset):  # type: ignore[misc]
        def __len__(self) -> int:
            return steps

        def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
            return x, y

    model = build_model(config)
    print(f"1. synthetic in-memory batch, model.fit, batch {args.batch_size}, {args.precision}")
    ceiling = fit_rate(model, SameBatch(), args.epochs, images_per_epoch)
    print(f"   {ceiling:,.0f} images/s")
    print("2. slice store -> make_sequence (shuffled, oversampled 50:50) -> model.fit")
    piped = fit_rate(model, sequence, args.epochs, images_per_epoch)
    print(f"   {piped:,.0f} images/s ({100 * piped / ceiling:.0f}% of the synthetic ceiling)")

    if args.full:
        print("3. tasks.train.train_model, 2 epochs (validation, checkpoints, artifacts)")
        result = train_model(
            store,
            work / "model",
            TrainConfig(
                weights="none",
                mixed_precision=precision,
                batch_size=args.batch_size,
                epochs=2,
                input_size=args.size,
                seed=0,
            ),
        )
        print(
            f"   {result.images_per_second:,.0f} images/s over the whole run "
            f"({result.seconds:.0f} s, compilation and checkpoints included)"
        )
        env = (Path(result.model_dir) / "environment.json").read_text()
        print(f"   environment.json: {env}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("KERAS_BACKEND", "jax")
    sys.exit(main())
