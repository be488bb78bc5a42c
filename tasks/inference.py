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

from renalflow.tasks.config import Task
from renalflow.tasks.errors import InputError
from renalflow.tasks.explain import heatmaps, write_overlay
from renalflow.tasks.ingest import worker_name
from renalflow.tasks.model import predict_probabilities
from renalflow.tasks.model_dir import (
    ModelInfo,
    check_same_preprocessing,
    load_model,
    read_model_info,
)
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


_MODELS_KEPT = 2  # the classifier and the slice selector of one scoring run


def cached_model(model_dir: str, model_version: str, cpu_threads: int | None = None) -> Any:
    """The Keras model, loaded once per process (workers score many batches); the two
    most recently used models stay loaded (a classifier and its slice selector)."""
    if cpu_threads:
        limit_cpu_threads(cpu_threads)
    key = (model_dir, model_version)
    if key in _MODELS:
        _MODELS[key] = _MODELS.pop(key)  # most recently used last
    else:
        while len(_MODELS) >= _MODELS_KEPT:
            del _MODELS[next(iter(_MODELS))]
        _MODELS[key] = load_model(model_dir)
    return _MODELS[key]


@dataclass(frozen=True)
class SelectorRef:
    """The slice selector a scoring task runs first, and its stored decision threshold."""

    model_dir: str
    model_version: str
    threshold: float


def load_selector(selector_dir: str, classifier: ModelInfo) -> SelectorRef:
    """The slice selector at `selector_dir` for this classifier: refused (one line) when
    it is not a selector or was trained on slices made another way."""
    found = read_model_info(selector_dir)
    if found.task is not Task.SELECTOR or found.selector_threshold is None:
        raise InputError(
            f"{found.model_dir} is not a slice selector (no stored threshold): train one with "
            "`renalflow train --task selector` and pass its folder to --selector"
        )
    check_same_preprocessing(classifier, found)
    return SelectorRef(found.model_dir, found.model_version, found.selector_threshold)


@dataclass
class ScoredBatch:
    """Per slice of a task: P(malignant) (NaN where the selector left the slice out, so
    the classifier never saw it) and, with a selector, P(renal mass)."""

    sop_instance_uid: list[str]
    probability: np.ndarray
    seconds: float
    worker: str
    selector_probability: np.ndarray | None = None


def score_slices(
    store_uri: str,
    parts: dict[str, list[str]],
    model_dir: str,
    model_version: str,
    batch_size: int = 64,
    cpu_threads: int | None = None,
    selector: SelectorRef | None = None,
) -> ScoredBatch:
    """P(malignant) of the given slices (SOPInstanceUIDs per part file of the store).

    With a `selector`, every slice goes through it first and only the slices at or above
    its threshold go through the classifier: a whole study costs one selector pass and a
    classifier pass over the slices that show a mass."""
    started = time.perf_counter()
    model = cached_model(model_dir, model_version, cpu_threads)
    finder = (
        cached_model(selector.model_dir, selector.model_version, cpu_threads) if selector else None
    )
    fs, _ = open_store(store_uri)

    uids: list[str] = []
    chunks: list[np.ndarray] = []
    found: list[np.ndarray] = []
    # The next parts are read (I/O and decompression release the GIL) while the model
    # scores the current one; two readers keep up with a GPU.
    with ThreadPoolExecutor(max_workers=2) as reader:
        pending = [
            reader.submit(read_part_slices, fs, part, wanted) for part, wanted in parts.items()
        ]
        for future in pending:
            part_uids, images = future.result()
            uids.extend(part_uids)
            if finder is None or selector is None:
                chunks.append(predict_probabilities(model, images, batch_size))
                continue
            mass = predict_probabilities(finder, images, batch_size)
            keep = mass >= selector.threshold
            probability = np.full(len(images), np.nan, np.float32)
            if keep.any():
                probability[keep] = predict_probabilities(model, images[keep], batch_size)
            chunks.append(probability)
            found.append(mass)
    empty = np.zeros(0, np.float32)
    return ScoredBatch(
        uids,
        np.concatenate(chunks) if chunks else empty,
        time.perf_counter() - started,
        worker_name(),
        (np.concatenate(found) if found else empty) if selector else None,
    )


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
