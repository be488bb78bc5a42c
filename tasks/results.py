"""The results table R: per-image scores and patient votes, as Delta Lake tables.

`R/slice_scores` and `R/patient_votes` are Delta tables (deltalake): every write is one
atomic commit, so a reader sees a run's rows all or not at all, a run killed half-way
leaves the table at its previous version, and every earlier version stays readable
(`renalflow query --as-of`).

Writes are merges on the natural key (image or study, and model version): rerunning the
same scoring inserts nothing, and two runs at the same time cannot both insert a row,
because Delta rejects the second commit when the first added data its merge had to see;
the loser re-reads the table and merges again, now finding the rows present.

Nothing in R identifies a patient directly: keys are keyed pseudonyms (tasks.pseudonym)
and the tables have no PatientID, names, dates of birth, accession numbers or UIDs.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable
from deltalake.exceptions import CommitFailedError

from renalflow.tasks.config import Phase
from renalflow.tasks.errors import InputError, StoreError
from renalflow.tasks.pseudonym import key_id, pseudonym
from renalflow.tasks.store import now_utc
from renalflow.tasks.vote import malignant_images, vote

if TYPE_CHECKING:  # types only: R's rows take what scoring hands over
    from renalflow.tasks.model_dir import ModelInfo
    from renalflow.tasks.score import ScoreConfig

SLICE_SCORES = "slice_scores"
PATIENT_VOTES = "patient_votes"
TABLES = (PATIENT_VOTES, SLICE_SCORES)

_TIMESTAMP = pa.timestamp("us", tz="UTC")

SLICE_SCORES_SCHEMA = pa.schema(
    [
        pa.field("image_key", pa.string(), nullable=False),
        pa.field("series_key", pa.string(), nullable=False),
        pa.field("study_key", pa.string(), nullable=False),
        pa.field("patient_key", pa.string(), nullable=False),
        pa.field("key_id", pa.string(), nullable=False),
        pa.field("cohort", pa.string()),
        pa.field("phase", pa.string()),
        pa.field("instance_number", pa.int32()),
        pa.field("z", pa.float64()),
        pa.field("probability", pa.float32(), nullable=False),
        pa.field("malignant", pa.bool_(), nullable=False),
        pa.field("image_threshold", pa.float64(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("preprocess_version", pa.string(), nullable=False),
        pa.field("scored_at", _TIMESTAMP, nullable=False),
        pa.field("flow_run_id", pa.string()),
        pa.field("heatmap_uri", pa.string()),
    ]
)

PATIENT_VOTES_SCHEMA = pa.schema(
    [
        pa.field("patient_key", pa.string(), nullable=False),
        pa.field("study_key", pa.string(), nullable=False),
        pa.field("key_id", pa.string(), nullable=False),
        pa.field("study_year_month", pa.string()),
        pa.field("cohort", pa.string()),
        pa.field("manufacturer", pa.string()),
        pa.field("phases", pa.string()),
        pa.field("n_series", pa.int32(), nullable=False),
        pa.field("n_images", pa.int32(), nullable=False),
        pa.field("n_malignant", pa.int32(), nullable=False),
        pa.field("fraction_malignant", pa.float64(), nullable=False),
        pa.field("vote", pa.string(), nullable=False),
        pa.field("vote_threshold", pa.float64(), nullable=False),
        pa.field("image_threshold", pa.float64(), nullable=False),
        pa.field("mean_probability", pa.float64(), nullable=False),
        pa.field("reference_label", pa.string()),
        pa.field("qc_too_few_images", pa.bool_(), nullable=False),
        pa.field("qc_noncontrast_only", pa.bool_(), nullable=False),
        pa.field("qc_flags", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("model_profile", pa.string()),
        pa.field("preprocess_version", pa.string(), nullable=False),
        pa.field("scored_at", _TIMESTAMP, nullable=False),
        pa.field("flow_run_id", pa.string()),
        pa.field("archive_uri", pa.string()),
    ]
)

SCHEMAS = {SLICE_SCORES: SLICE_SCORES_SCHEMA, PATIENT_VOTES: PATIENT_VOTES_SCHEMA}

# Merge keys: one row per image and per study, for each model version.
KEYS = {
    SLICE_SCORES: ("image_key", "model_version"),
    PATIENT_VOTES: ("study_key", "model_version"),
}

# Columns that must never appear in R (checked on every write and by the tests).
FORBIDDEN_COLUMNS = frozenset(
    {
        "patient_id",
        "patient_name",
        "patient_birth_date",
        "accession_number",
        "study_instance_uid",
        "series_instance_uid",
        "sop_instance_uid",
        "source_uri",
        "study_date",
    }
)


def table_uri(results: str, name: str) -> str:
    return f"{results.rstrip('/')}/{name}"


def storage_options(uri: str) -> dict[str, str] | None:
    """deltalake storage options for `uri`, from the same environment s3fs reads.

    Credentials come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_SESSION_TOKEN, AWS_REGION) or the machine's role; they are never written out.
    An S3-compatible endpoint is taken from AWS_ENDPOINT_URL. Concurrent writers on S3
    rely on conditional puts (`If-None-Match`), which AWS S3 and MinIO support.
    """
    if not uri.startswith("s3://"):
        return None
    options: dict[str, str] = {"conditional_put": "etag"}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["endpoint_url"] = endpoint
        if endpoint.startswith("http://"):
            options["allow_http"] = "true"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    options["region"] = region or "us-east-1"
    return options


def _is_table(uri: str) -> bool:
    """Whether a Delta table exists at `uri` (it has a transaction log).

    Asked through fsspec rather than deltalake: some S3-compatible servers answer
    deltalake's listing of a prefix that does not exist so that its client waits
    until it times out.
    """
    fs, path = fsspec.core.url_to_fs(uri)
    log = f"{path.rstrip('/')}/_delta_log"
    fs.invalidate_cache(log)
    try:
        return any(name.endswith(".json") for name in fs.ls(log, detail=False))
    except FileNotFoundError:
        return False


def open_table(results: str, name: str, version: int | datetime | None = None) -> Any:
    """The Delta table `name` of R, at its latest version or at `version`."""
    uri = table_uri(results, name)
    if not _is_table(uri):
        raise StoreError(
            f"no results table at {uri}; score an archive first with `renalflow score "
            f"ARCHIVE --model-dir M --results {results}`"
        )
    table = DeltaTable(uri, storage_options=storage_options(uri))
    if isinstance(version, datetime):
        created = datetime.fromtimestamp(table.history()[-1]["timestamp"] / 1000).astimezone()
        if version < created:
            raise InputError(
                f"{name} did not exist yet at {version.isoformat()}; it was created at "
                f"{created.isoformat(timespec='seconds')}"
            )
    if version is not None:
        try:
            table.load_as_version(version)
        except Exception as err:
            raise InputError(
                f"{name} has no version {version!s} (versions 0-{table.version()}; see "
                f"`renalflow history --results {results}`): {err}"
            ) from err
    return table


def ensure_tables(results: str) -> None:
    """Create both tables, empty, if they do not exist (safe when runs race to do it)."""
    for name, schema in SCHEMAS.items():
        uri = table_uri(results, name)
        for attempt in range(5):
            if _is_table(uri):
                break
            try:
                DeltaTable.create(
                    uri,
                    schema=schema,
                    mode="ignore",
                    name=name,
                    description=_DESCRIPTIONS[name],
                    storage_options=storage_options(uri),
                )
                break
            except Exception:
                # Another run created it between our check and our commit.
                time.sleep(0.05 * (attempt + 1))
        else:
            raise StoreError(f"could not create the results table {uri}")


_DESCRIPTIONS = {
    SLICE_SCORES: "renalflow: probability of malignancy per image, per model version",
    PATIENT_VOTES: "renalflow: patient-level 51% majority vote per study, per model version",
}


def check_rows(table: pa.Table, name: str) -> pa.Table:
    """`table` cast to the schema of `name`, refusing any identifier column."""
    leaked = FORBIDDEN_COLUMNS & {c.lower() for c in table.column_names}
    if leaked:
        raise InputError(f"refusing to write identifier columns {sorted(leaked)} to {name}")
    schema = SCHEMAS[name]
    missing = set(schema.names) - set(table.column_names)
    if missing:
        raise InputError(f"rows for {name} lack columns {sorted(missing)}")
    return table.select(schema.names).cast(schema)


def merge_rows(
    results: str,
    name: str,
    rows: pa.Table,
    *,
    replace_when: str | None = None,
    attempts: int = 20,
    run_id: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, int]:
    """Merge `rows` into table `name` in one commit; rows whose key exists are skipped
    (or replaced where the SQL condition `replace_when` on t/s holds).

    Returns the number of rows inserted and updated.
    """
    rows = check_rows(rows, name)
    if rows.num_rows == 0:
        return {"inserted": 0, "updated": 0}
    uri = table_uri(results, name)
    predicate = " AND ".join(f"t.{k} = s.{k}" for k in KEYS[name])
    metadata = {"renalflow.flow_run_id": run_id or "", "renalflow.rows": str(rows.num_rows)}
    for attempt in range(attempts):
        table = DeltaTable(uri, storage_options=storage_options(uri))
        merger = table.merge(
            rows,
            predicate,
            source_alias="s",
            target_alias="t",
            commit_properties=CommitProperties(custom_metadata=metadata),
        )
        if replace_when:
            merger = merger.when_matched_update_all(predicate=replace_when)
        merger = merger.when_not_matched_insert_all()
        try:
            stats = merger.execute()
        except CommitFailedError:
            # Another run committed first: re-read and merge again.
            sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
            continue
        return {
            "inserted": int(stats.get("num_target_rows_inserted", 0)),
            "updated": int(stats.get("num_target_rows_updated", 0)),
        }
    raise StoreError(f"gave up writing {uri} after {attempts} concurrent-commit conflicts")


def scored_studies(results: str, model_version: str) -> dict[str, int]:
    """study_key -> n_images of the studies this model version has already voted on."""
    if not _is_table(table_uri(results, PATIENT_VOTES)):
        return {}
    table = open_table(results, PATIENT_VOTES).to_pyarrow_dataset()
    rows = table.to_table(
        columns=["study_key", "n_images"], filter=pc.field("model_version") == model_version
    )
    return dict(
        zip(rows.column("study_key").to_pylist(), rows.column("n_images").to_pylist(), strict=True)
    )


def parse_as_of(value: str) -> int | datetime:
    """`--as-of`: a version number (of patient_votes) or an ISO 8601 time."""
    text = value.strip()
    if re.fullmatch(r"\d+", text):
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as err:
        raise InputError(
            f"--as-of {value!r} is neither a version number (e.g. 3) nor an ISO time "
            "(e.g. 2026-11-27T02:00:00Z)"
        ) from err
    if moment.tzinfo is None:
        moment = moment.astimezone()  # local time, as people type it
    return moment


def history(results: str) -> list[dict[str, Any]]:
    """The commits of patient_votes, newest first: version, time, operation, run."""
    table = open_table(results, PATIENT_VOTES)
    out = []
    for entry in table.history():
        metrics = entry.get("operationMetrics") or {}
        out.append(
            {
                "version": entry.get("version"),
                "timestamp": datetime.fromtimestamp(entry["timestamp"] / 1000).astimezone(),
                "operation": entry.get("operation"),
                "flow_run_id": entry.get("renalflow.flow_run_id", ""),
                "rows_inserted": metrics.get("num_target_rows_inserted"),
            }
        )
    return out


def tables_as_of(results: str, as_of: int | datetime | None) -> dict[str, Any]:
    """Both tables as pyarrow datasets, at the latest state or as of a version or time.

    A version number is a version of patient_votes; slice_scores is read as of that
    commit's time, and runs write slice_scores before patient_votes, so every vote
    read has its image scores.
    """
    votes = open_table(results, PATIENT_VOTES, as_of)
    moment: datetime | None = None
    if isinstance(as_of, int):
        stamps = {h["version"]: h["timestamp"] for h in history(results)}
        moment = stamps.get(as_of)
    elif isinstance(as_of, datetime):
        moment = as_of
    scores = open_table(results, SLICE_SCORES)
    if moment is not None:
        try:
            scores.load_as_version(moment)
        except Exception:
            scores = None  # slice_scores did not exist yet at that time
    out = {PATIENT_VOTES: votes.to_pyarrow_dataset()}
    out[SLICE_SCORES] = (
        scores.to_pyarrow_dataset() if scores is not None else SLICE_SCORES_SCHEMA.empty_table()
    )
    return out


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
    """(slice_scores rows, patient_votes rows) of scored store slices (the inventory
    rows of tasks.store), pseudonymised: no identifier leaves here."""
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
            "scored_at": pa.array([scored_at] * n, _TIMESTAMP),
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
    vote_rows = pa.Table.from_pylist(votes, schema=PATIENT_VOTES_SCHEMA)
    return slice_rows, vote_rows


def write_results(
    results: str, slice_rows: pa.Table, vote_rows: pa.Table, run_id: str
) -> dict[str, int]:
    """Merge a run's rows into R: image scores first, then votes, so a vote in R always
    has its image scores. A study whose image count changed gets its vote replaced.

    Returns the slice_scores rows inserted and the patient_votes rows inserted and updated.
    """
    scores = merge_rows(results, SLICE_SCORES, slice_rows, run_id=run_id)
    votes = merge_rows(
        results,
        PATIENT_VOTES,
        vote_rows,
        replace_when="t.n_images <> s.n_images",
        run_id=run_id,
    )
    return {
        "slice_rows_inserted": scores["inserted"],
        "vote_rows_inserted": votes["inserted"],
        "vote_rows_updated": votes["updated"],
    }


def tally_votes(vote_rows: pa.Table) -> tuple[dict[str, int], dict[str, int]]:
    """How many studies of `vote_rows` got each vote, and each QC flag."""
    votes = Counter(vote_rows.column("vote").to_pylist())
    flags = Counter(
        flag
        for text in vote_rows.column("qc_flags").to_pylist()
        for flag in filter(None, text.split(","))
    )
    return dict(sorted(votes.items())), dict(flags)
