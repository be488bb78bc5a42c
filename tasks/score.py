"""Retrospective scoring: which studies a model has not scored yet, per-image
probabilities, and the patient vote per study, pseudonymised for the results table.

The flow (flows/score.py) strings these together: ingest what is new, `plan_scoring`,
`score_slices` on the workers, then `result_rows` and the two merges into R.
"""

from __future__ import annotations

import posixpath
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.parquet as pq

from renalflow.tasks.config import (
    IMAGE_THRESHOLD,
    MIN_IMAGES,
    VOTE_THRESHOLD,
    Phase,
)
from renalflow.tasks.dataset import META_COLUMNS, pixels_to_array
from renalflow.tasks.dicom import RejectReason
from renalflow.tasks.errors import StoreError
from renalflow.tasks.ingest import worker_name
from renalflow.tasks.model import predict_probabilities
from renalflow.tasks.model_dir import ModelInfo, load_model
from renalflow.tasks.pseudonym import key_id, pseudonym
from renalflow.tasks.store import (
    REJECTS,
    SLICE_SCHEMA,
    SLICES,
    list_parts,
    now_utc,
    open_store,
    read_table,
)
from renalflow.tasks.vote import check_thresholds, deciding_slices, malignant_images, vote

# What the planner reads from the store: everything but the pixels.
INVENTORY_COLUMNS = ["source_uri", "instance_number", *META_COLUMNS]


@dataclass(frozen=True)
class ScoreConfig:
    """Scoring settings; defaults follow the paper.

    Attributes:
        image_threshold: an image is malignant when P(malignant) >= this (paper).
        vote_threshold: a study is malignant when at least this share of its images
            are (paper).
        min_images: studies with fewer images get the `too_few_images` QC flag (the
            paper had 20-100 images per patient; a vote on a handful is fragile).
        batch_size: images per inference batch.
        explain: also write heat maps of the slices that decided each vote.
        explain_per_side: that many most confident slices on each side of the vote.
    """

    image_threshold: float = IMAGE_THRESHOLD
    vote_threshold: float = VOTE_THRESHOLD
    min_images: int = MIN_IMAGES
    batch_size: int = 64
    explain: bool = False
    explain_per_side: int = 3

    def __post_init__(self) -> None:
        check_thresholds(self.image_threshold, self.vote_threshold)
        if self.min_images < 1 or self.batch_size < 1:
            raise ValueError("min_images and batch_size must be at least 1")


def archive_prefix(archive_uri: str) -> str:
    """The archive as the `source_uri` prefix its slices carry in the store."""
    fs, root = fsspec.core.url_to_fs(archive_uri)
    prefix: str = fs.unstrip_protocol(root.rstrip("/"))
    return prefix


def inventory(store_uri: str, archive_uri: str, preprocess_version: str) -> pa.Table:
    """Metadata (no pixels) of the store's slices that came from `archive_uri`, each with
    the part file holding it (`part`)."""
    prefix = archive_prefix(archive_uri)
    under = prefix.rstrip("/") + "/"
    fs, _ = open_store(store_uri)
    # Files of this archive whose slice the store already had from another path (a copy,
    # a moved archive, a study in two archives) are duplicates in `rejects`: they count.
    rejects = read_table(store_uri, REJECTS, ["source_uri", "reason_code", "sop_instance_uid"])
    rejects = rejects.filter(
        pc.and_(
            pc.equal(rejects.column("reason_code"), RejectReason.DUPLICATE.value),
            pc.starts_with(rejects.column("source_uri"), under),
        )
    )
    copies = pa.array(rejects.column("sop_instance_uid").to_pylist(), pa.string())
    tables = []
    for part in list_parts(store_uri, SLICES):
        table = pds.dataset(part, format="parquet", filesystem=fs).to_table(
            columns=INVENTORY_COLUMNS,
            filter=(pc.field("preprocess_version") == preprocess_version),
        )
        uris = table.column("source_uri")
        keep = pc.or_(pc.equal(uris, prefix), pc.starts_with(uris, under))
        if len(copies):
            keep = pc.or_(keep, pc.is_in(table.column("sop_instance_uid"), value_set=copies))
        table = table.filter(keep)
        if table.num_rows:
            tables.append(table.append_column("part", pa.array([part] * table.num_rows)))
    if not tables:
        empty = SLICE_SCHEMA.empty_table().select(INVENTORY_COLUMNS)
        return empty.append_column("part", pa.array([], pa.string()))
    return pa.concat_tables(tables)


@dataclass
class ScoringPlan:
    """Studies to score now, and what was skipped."""

    studies_in_archive: int
    already_scored: int
    rescored: int  # studies scored before but with images added since
    slices: pd.DataFrame  # inventory rows of the studies to score

    @property
    def studies(self) -> int:
        return int(self.slices["study_instance_uid"].nunique()) if len(self.slices) else 0


def plan_scoring(inventory_table: pa.Table, scored: dict[str, int], key: bytes) -> ScoringPlan:
    """Studies with no vote from this model yet, or whose image count changed since."""
    # Two ingests of the same files at the same time can both store a slice: count it once.
    frame = inventory_table.to_pandas().drop_duplicates("sop_instance_uid")
    if frame.empty:
        return ScoringPlan(0, 0, 0, frame)
    counts = frame.groupby("study_instance_uid").size()
    todo, done, rescored = [], 0, 0
    for study_uid, n_images in counts.items():
        previous = scored.get(pseudonym(key, str(study_uid)))
        if previous is None:
            todo.append(study_uid)
        elif previous != n_images:
            todo.append(study_uid)
            rescored += 1
        else:
            done += 1
    chosen = frame[frame["study_instance_uid"].isin(todo)].reset_index(drop=True)
    return ScoringPlan(len(counts), done, rescored, chosen)


def score_batches(slices: pd.DataFrame, target_images: int) -> list[pd.DataFrame]:
    """Split the slices to score into tasks of about `target_images`, each reading from
    as few part files as possible (slices of one part stay together where they fit)."""
    batches: list[pd.DataFrame] = []
    for _, group in slices.groupby("part", sort=True):
        for start in range(0, len(group), target_images):
            batches.append(group.iloc[start : start + target_images])
    return batches


_MODELS: dict[tuple[str, str], Any] = {}


def limit_cpu_threads(threads: int) -> None:
    """Let TensorFlow use `threads` cores in this process, so worker processes sharing a
    machine do not each spread over every core. No effect once TensorFlow has started,
    or on other backends."""
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


def read_part_slices(fs: Any, part: str, wanted: list[str]) -> tuple[list[str], np.ndarray]:
    """The SOPInstanceUIDs and uint8 images of the `wanted` slices of one store part."""
    # One whole-object read (a single GET on object storage), parsed in memory; a
    # part is at most a few tens of MB. Usually every slice of a part is wanted, and
    # then nothing is filtered (no copy of the pixels).
    with fs.open(part, "rb") as handle:
        data = handle.read()
    table = pq.read_table(
        pa.BufferReader(data), columns=["sop_instance_uid", "height", "width", "pixels"]
    )
    keep = pc.is_in(table.column("sop_instance_uid"), value_set=pa.array(wanted, pa.string()))
    if not pc.all(keep).as_py():
        table = table.filter(keep)
    if table.num_rows != len(set(wanted)):
        raise StoreError(
            f"{posixpath.basename(part)} holds {table.num_rows} of the {len(set(wanted))} "
            "slices asked for; was the store changed during scoring?"
        )
    height = table.column("height")[0].as_py()
    width = table.column("width")[0].as_py()
    uids = table.column("sop_instance_uid").to_pylist()
    return uids, pixels_to_array(table.column("pixels"), height, width)


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
    import io

    from renalflow.tasks.explain import heatmaps, write_overlay

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


def _year_month(study_date: Any) -> str | None:
    text = str(study_date or "")
    return f"{text[:4]}-{text[4:6]}" if len(text) >= 6 and text[:6].isdigit() else None


def _joined(values: pd.Series) -> str:
    return ",".join(sorted({str(v) for v in values if v is not None and str(v)}))


def result_rows(
    slices: pd.DataFrame,
    probabilities: dict[str, float],
    key: bytes,
    info: ModelInfo,
    config: ScoreConfig,
    archive_uri: str,
    run_id: str,
    scored_at: datetime | None = None,
    heatmap_uris: dict[str, str] | None = None,
) -> tuple[pa.Table, pa.Table]:
    """(slice_scores rows, patient_votes rows), pseudonymised: no identifier leaves here."""
    scored_at = scored_at or now_utc()
    frame = slices.copy()
    missing = set(frame["sop_instance_uid"]) - set(probabilities)
    if missing:
        raise StoreError(f"{len(missing)} slices were planned but never scored")
    frame["probability"] = frame["sop_instance_uid"].map(probabilities).astype(np.float32)
    frame["malignant"] = malignant_images(frame["probability"].to_numpy(), config.image_threshold)
    kid = key_id(key)
    patient_key = {p: pseudonym(key, p) for p in frame["patient_id"].unique()}
    study_key = {s: pseudonym(key, s) for s in frame["study_instance_uid"].unique()}
    series_key = {s: pseudonym(key, s) for s in frame["series_instance_uid"].unique()}
    n = len(frame)
    slice_rows = pa.table(
        {
            "image_key": [pseudonym(key, s) for s in frame["sop_instance_uid"]],
            "series_key": frame["series_instance_uid"].map(series_key).tolist(),
            "study_key": frame["study_instance_uid"].map(study_key).tolist(),
            "patient_key": frame["patient_id"].map(patient_key).tolist(),
            "key_id": [kid] * n,
            "cohort": frame["cohort"].tolist(),
            "phase": frame["phase"].tolist(),
            "instance_number": pa.array(frame["instance_number"].tolist(), pa.int32()),
            "z": pa.array(frame["z"].tolist(), pa.float64()),
            "probability": pa.array(frame["probability"].to_numpy(), pa.float32()),
            "malignant": pa.array(frame["malignant"].to_numpy()),
            "image_threshold": [config.image_threshold] * n,
            "model_version": [info.model_version] * n,
            "preprocess_version": [info.preprocess.version] * n,
            "scored_at": pa.array([scored_at] * n, pa.timestamp("us", tz="UTC")),
            "flow_run_id": [run_id] * n,
            "heatmap_uri": pa.array(
                [(heatmap_uris or {}).get(u) for u in frame["sop_instance_uid"]], pa.string()
            ),
        }
    )
    votes = []
    for study_uid, group in frame.groupby("study_instance_uid", sort=True):
        n_images = len(group)
        outcome = vote(
            group["probability"].to_numpy(), config.image_threshold, config.vote_threshold
        )
        phases = {str(p) for p in group["phase"]}
        too_few = n_images < config.min_images
        noncontrast_only = phases == {Phase.NONCONTRAST.value}
        flags = []
        if too_few:
            flags.append("too_few_images")
        if noncontrast_only:
            flags.append("noncontrast_only")
        if Phase.UNKNOWN.value in phases:
            flags.append("unknown_phase")
        if group["manufacturer"].nunique() > 1:
            flags.append("mixed_scanners")
        labels = {str(v) for v in group["label"] if v is not None and str(v) not in ("", "nan")}
        votes.append(
            {
                "patient_key": patient_key[group["patient_id"].iloc[0]],
                "study_key": study_key[study_uid],
                "key_id": kid,
                "study_year_month": _year_month(group["study_date"].iloc[0]),
                "cohort": str(group["cohort"].iloc[0]),
                "manufacturer": _joined(group["manufacturer"]),
                "phases": _joined(group["phase"]),
                "n_series": int(group["series_instance_uid"].nunique()),
                "n_images": n_images,
                "n_malignant": outcome.n_malignant,
                "fraction_malignant": outcome.fraction_malignant,
                "vote": outcome.vote.value,
                "vote_threshold": config.vote_threshold,
                "image_threshold": config.image_threshold,
                "mean_probability": float(group["probability"].mean()),
                "reference_label": labels.pop() if len(labels) == 1 else None,
                "qc_too_few_images": too_few,
                "qc_noncontrast_only": noncontrast_only,
                "qc_flags": ",".join(flags),
                "model_version": info.model_version,
                "model_profile": info.profile,
                "preprocess_version": info.preprocess.version,
                "scored_at": scored_at,
                "flow_run_id": run_id,
                "archive_uri": archive_uri,
            }
        )
    from renalflow.tasks.results import PATIENT_VOTES_SCHEMA

    vote_rows = pa.Table.from_pylist(votes, schema=PATIENT_VOTES_SCHEMA)
    return slice_rows, vote_rows


def _where(row: Any) -> str:
    """A slice's phase and position for a heat map's caption."""
    z = row.get("z")
    at = f"z {float(z):.1f} mm" if z is not None and not pd.isna(z) else "z unknown"
    return f"{row.get('phase') or 'unknown'} phase, {at}"


def plan_explanations(
    slices: pd.DataFrame,
    probabilities: dict[str, float],
    key: bytes,
    config: ScoreConfig,
    out_dir: str,
) -> tuple[dict[str, list[str]], dict[str, str], dict[str, tuple[str, str]]]:
    """Which slices to explain, per store part: the deciding slices of each study's
    vote, the class each map explains, and where each overlay goes with its caption."""
    parts: dict[str, list[str]] = {}
    targets: dict[str, str] = {}
    outputs: dict[str, tuple[str, str]] = {}
    for study_uid, group in slices.groupby("study_instance_uid", sort=True):
        p = np.array([probabilities[u] for u in group["sop_instance_uid"]])
        decided = vote(p, config.image_threshold, config.vote_threshold).vote
        picks = deciding_slices(p, decided, config.explain_per_side, config.image_threshold)
        study_key = pseudonym(key, str(study_uid))
        patient_key = pseudonym(key, str(group["patient_id"].iloc[0]))
        for i in picks:
            row = group.iloc[i]
            uid = str(row["sop_instance_uid"])
            parts.setdefault(str(row["part"]), []).append(uid)
            targets[uid] = decided.value
            outputs[uid] = (
                f"{out_dir.rstrip('/')}/{study_key}/{pseudonym(key, uid)}.png",
                f"patient {patient_key[:12]}  {_where(row)}  P(malignant) "
                f"{probabilities[uid]:.2f}  vote {decided.value}",
            )
    return parts, targets, outputs
