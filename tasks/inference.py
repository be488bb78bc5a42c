"""Inference on store slices: the model loaded once per process, per-image probabilities
of a batch of slices, and heat maps of the slices that decided a vote.

Called on the workers by the score flow (and by the web page for `cached_model`); the
planning around it is in tasks/score.py, the rows it leads to in tasks/results.py.
"""

from __future__ import annotations

import io
import posixpath
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np

from renalflow.tasks.explain import heatmaps, write_overlay
from renalflow.tasks.ingest import worker_name
from renalflow.tasks.model import predict_probabilities
from renalflow.tasks.model_dir import load_model
from renalflow.tasks.store import open_store, read_part_slices

_MODELS: dict[tuple[str, str], Any] = {}


def limit_cpu_threads(threads: int) -> None:
    """Let TensorFlow use `threads` cores in this process, so worker processes sharing a
    machine do not each spread over every core. No effect once TensorFlow has started,
    or on other backends."""
    # Keras and TensorFlow are heavy (seconds) and only predicting processes need them.
    import keras

    if keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        pass  # TensorFlow already initialised in this process


def cached_model(model_dir: str, model_version: str, cpu_threads: int | None = None) -> Any:
    """The Keras model, loaded once per process (workers score many batches)."""
    if cpu_threads:
        limit_cpu_threads(cpu_threads)
    key = (model_dir, model_version)
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = load_model(model_dir)
    return _MODELS[key]


@dataclass
class ScoredBatch:
    sop_instance_uid: list[str]
    probability: np.ndarray
    seconds: float
    worker: str


def score_slices(
    store_uri: str,
    parts: dict[str, list[str]],
    model_dir: str,
    model_version: str,
    batch_size: int = 64,
    cpu_threads: int | None = None,
) -> ScoredBatch:
    """P(malignant) of the given slices (SOPInstanceUIDs per part file of the store)."""
    started = time.perf_counter()
    model = cached_model(model_dir, model_version, cpu_threads)
    fs, _ = open_store(store_uri)

    uids: list[str] = []
    chunks: list[np.ndarray] = []
    # The next parts are read (I/O and decompression release the GIL) while the model
    # scores the current one; two readers keep up with a GPU.
    with ThreadPoolExecutor(max_workers=2) as reader:
        pending = [
            reader.submit(read_part_slices, fs, part, wanted) for part, wanted in parts.items()
        ]
        for future in pending:
            part_uids, images = future.result()
            uids.extend(part_uids)
            chunks.append(predict_probabilities(model, images, batch_size))
    probability = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return ScoredBatch(uids, probability, time.perf_counter() - started, worker_name())


def explain_slices(
    store_uri: str,
    parts: dict[str, list[str]],
    model_dir: str,
    model_version: str,
    targets: dict[str, str],
    outputs: dict[str, tuple[str, str]],
    cpu_threads: int | None = None,
) -> dict[str, str]:
    """Heat-map overlays of the given slices: `targets` maps a SOPInstanceUID to the
    class explained, `outputs` to (PNG URI, caption). Returns SOPInstanceUID -> URI."""
    model = cached_model(model_dir, model_version, cpu_threads)
    fs, _ = open_store(store_uri)
    written: dict[str, str] = {}
    for part, wanted in parts.items():
        uids, images = read_part_slices(fs, part, wanted)
        for target in sorted({targets[u] for u in uids}):
            index = [i for i, u in enumerate(uids) if targets[u] == target]
            maps, method = heatmaps(model, images[index], target)
            for i, heat in zip(index, maps, strict=True):
                uri, caption = outputs[uids[i]]
                buffer = io.BytesIO()
                write_overlay(images[i], heat, caption, buffer, method=method, target=target)
                out_fs, path = fsspec.core.url_to_fs(uri)
                out_fs.makedirs(posixpath.dirname(path), exist_ok=True)
                with out_fs.open(path, "wb") as handle:
                    handle.write(buffer.getvalue())
                written[uids[i]] = uri
    return written
