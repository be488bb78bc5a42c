"""The results table R: per-image scores, study votes and patient votes, as Delta tables.

`R/slice_scores` (one row per image a model saw), `R/study_votes` (one vote per study:
what was screened, what was selected, the vote) and `R/patient_votes` (one vote per
patient over the selected slices of all their studies: the paper's unit) are Delta
tables (deltalake): every write is one atomic commit, so a reader sees a run's rows all
or not at all, a run killed half-way leaves the table at its previous version, and
every earlier version stays readable (`renalflow query --as-of`).

Writes are merges on the natural key (image or study, and model version): rerunning the
same scoring inserts nothing, and two runs at the same time cannot both insert a row,
because Delta rejects the second commit when the first added data its merge had to see;
the loser re-reads the table and merges again, now finding the rows present.

Nothing in R identifies a patient directly: keys are keyed pseudonyms (tasks.pseudonym)
and the tables have no PatientID, names, dates of birth, accession numbers or UIDs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable
from deltalake.exceptions import CommitFailedError, DeltaError
from fsspec.implementations.local import LocalFileSystem

from renalflow.tasks.config import InTraining, Phase, SelectionSource, StudyStatus
from renalflow.tasks.errors import InputError, StoreError
from renalflow.tasks.pseudonym import key_id, patient_pseudonym, pseudonym
from renalflow.tasks.store import now_utc
from renalflow.tasks.vote import malignant_images, vote

if TYPE_CHECKING:  # types only: R's rows take what scoring hands over
    from renalflow.tasks.model_dir import ModelInfo
    from renalflow.tasks.score import ScoreConfig
    from renalflow.tasks.selection import StudySelection

SLICE_SCORES = "slice_scores"
STUDY_VOTES = "study_votes"
PATIENT_VOTES = "patient_votes"
TABLES = (STUDY_VOTES, PATIENT_VOTES, SLICE_SCORES)

_TIMESTAMP = pa.timestamp("us", tz="UTC")

# The data dictionary: what every column of R means, once. The table metadata (each
# column's `comment`), `renalflow query --describe` and the README's table are made
# from it; a column without an entry here fails the tests.
COLUMN_DOCS: dict[str, str] = {
    "image_key": "pseudonym of the image (SOPInstanceUID)",
    "series_key": "pseudonym of the series (SeriesInstanceUID)",
    "study_key": "pseudonym of the study (StudyInstanceUID)",
    "patient_key": "pseudonym of the patient (PatientID, without surrounding spaces): "
    "HMAC-SHA256 under the department's key; `renalflow pseudonymise` makes the same "
    "pseudonyms for an outside table",
    "key_id": "public fingerprint of the pseudonymisation key; rows with different key "
    "ids cannot be linked",
    "cohort": "cohort name given at ingest or scoring (`screening` by default)",
    "phase": "contrast phase of the image's series: noncontrast, arterial, venous or "
    "unknown (inferred from its tags)",
    "instance_number": "InstanceNumber of the image (for reading, not for ordering)",
    "z": "position of the slice along the patient's feet-head axis, mm",
    "probability": "the classifier's P(malignant) for the image; null where the slice "
    "selector left the slice out",
    "malignant": "probability >= image_threshold; null where the classifier did not see the image",
    "voted": "the image is one of the selected slices that voted",
    "selector_probability": "the slice selector's P(renal mass) for the image; null "
    "without a selector",
    "image_threshold": "an image is malignant when P(malignant) is at least this (paper: 0.5)",
    "model_version": "content hash of the classifier (model.keras) that voted",
    "model_profile": "training profile of that model: paper or cpu-demo (not the paper's model)",
    "preprocess_version": "hash of the preprocessing the images went through (window, "
    "size, filter)",
    "scored_at": "when the row was written (UTC)",
    "flow_run_id": "the Prefect flow run that wrote the row (`renalflow history`)",
    "heatmap_uri": "heat map of the slice when it decided a vote (--explain), else null",
    "n_images": "selected images that voted (of the study; for a patient, of all their studies)",
    "n_malignant": "of those, images called malignant",
    "fraction_malignant": "n_malignant / n_images; null without selected images",
    "status": "voted, or no_mass_found (no selected slice: no vote, never a benign one)",
    "vote": "benign or malignant (malignant when fraction_malignant >= vote_threshold); "
    "null when status is no_mass_found",
    "vote_threshold": "share of malignant images that makes the vote malignant (paper: 0.51)",
    "mean_probability": "mean P(malignant) over the selected images",
    "study_year_month": "year and month of the study (YYYY-MM; never the exact date)",
    "manufacturer": "scanner vendors of the images that voted, comma-separated",
    "phases": "contrast phases of the images that voted, comma-separated",
    "n_series": "series screened in the study",
    "slices_in_study": "slices of the study in the slice store",
    "selection_source": "what chose the voting slices: annotation, selector or all",
    "selector_version": "model version of the slice selector, when it chose them",
    "selector_threshold": "the selector's decision threshold, when it chose them",
    "series_used": "series keys screened, comma-separated",
    "series_skipped": "series not screened, counted by reason (not_abdominal:2,twin:1)",
    "reference_label": "benign or malignant when the slice store knew the histology label "
    "at ingest; outcomes from elsewhere go to reference_outcomes",
    "qc_too_few_images": "fewer selected images than --min-images (our choice: 10; the "
    "paper had 20-100)",
    "qc_noncontrast_only": "only non-contrast images voted",
    "qc_flags": "every QC flag, comma-separated: too_few_images, noncontrast_only, "
    "unknown_phase, mixed_scanners",
    "archive_uri": "the archive scored",
    "n_studies": "studies of the patient this model version voted on",
    "selection_sources": "selection sources of the patient's studies, comma-separated",
    "first_study_year_month": "year and month of the patient's first study",
    "last_study_year_month": "year and month of the patient's last study",
    "in_training": "whether the model_version trained (training) or validated "
    "(validation) on this patient, never did (none), or cannot tell (unknown); analyses "
    "of accuracy exclude training and validation",
    "outcome": "the reference outcome: benign or malignant",
    "source": "where the outcome comes from (histology, follow-up, registry, ...), as "
    "given when it was loaded",
    "outcome_year_month": "year and month of the outcome (YYYY-MM; never the exact date)",
    "loaded_at": "when the outcome was loaded (UTC)",
    "model_task": "what the model was trained for: classifier or selector",
    "model_dir": "the model directory (model.keras and its records) of this model version",
    "test_patients": "held-out test patients the model was evaluated on at registration",
    "test_images": "their images (slices through the mass)",
    "test_auc": "image ROC AUC on those test patients; null when undefined (one class)",
    "test_accuracy": "image accuracy on those test patients",
    "test_patient_accuracy": "patient vote accuracy (51% rule) on those test patients",
    "registered_at": "when the model version was registered (UTC)",
    "event_id": "identifier of one change of an alias",
    "alias": "the alias changed (production: the model scheduled scoring uses)",
    "action": "promote (the alias moves to model_version) or rollback (back to the "
    "version it pointed at before)",
    "reason": "why: the gate's rule and figures, or who promoted by hand",
    "changed_at": "when the alias changed (UTC)",
}


def _field(name: str, kind: pa.DataType, nullable: bool = True) -> pa.Field:
    """A column of R, with its dictionary entry as the Delta column's comment."""
    return pa.field(name, kind, nullable=nullable, metadata={"comment": COLUMN_DOCS[name]})


def _documented(fields: list[pa.Field]) -> pa.Schema:
    return pa.schema([_field(f.name, f.type, f.nullable) for f in fields])


SLICE_SCORES_SCHEMA = _documented(
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
        # Null where a slice selector left the slice out: the classifier never saw it.
        pa.field("probability", pa.float32()),
        pa.field("malignant", pa.bool_()),
        pa.field("voted", pa.bool_(), nullable=False),
        pa.field("selector_probability", pa.float32()),
        pa.field("image_threshold", pa.float64(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("preprocess_version", pa.string(), nullable=False),
        pa.field("scored_at", _TIMESTAMP, nullable=False),
        pa.field("flow_run_id", pa.string()),
        pa.field("heatmap_uri", pa.string()),
    ]
)

# The fields of a vote and of the run that made it, shared by study and patient votes.
_VOTE_FIELDS = [
    pa.field("n_images", pa.int32(), nullable=False),
    pa.field("n_malignant", pa.int32(), nullable=False),
    pa.field("fraction_malignant", pa.float64()),
    pa.field("status", pa.string(), nullable=False),
    pa.field("vote", pa.string()),
    pa.field("vote_threshold", pa.float64(), nullable=False),
    pa.field("image_threshold", pa.float64(), nullable=False),
    pa.field("mean_probability", pa.float64()),
]
_RUN_FIELDS = [
    pa.field("model_version", pa.string(), nullable=False),
    pa.field("model_profile", pa.string()),
    pa.field("preprocess_version", pa.string(), nullable=False),
    pa.field("scored_at", _TIMESTAMP, nullable=False),
    pa.field("flow_run_id", pa.string()),
]

STUDY_VOTES_SCHEMA = _documented(
    [
        pa.field("patient_key", pa.string(), nullable=False),
        pa.field("study_key", pa.string(), nullable=False),
        pa.field("key_id", pa.string(), nullable=False),
        pa.field("study_year_month", pa.string()),
        pa.field("cohort", pa.string()),
        pa.field("manufacturer", pa.string()),
        pa.field("phases", pa.string()),
        pa.field("n_series", pa.int32(), nullable=False),
        *_VOTE_FIELDS,
        pa.field("slices_in_study", pa.int32(), nullable=False),
        pa.field("selection_source", pa.string()),
        pa.field("selector_version", pa.string()),
        pa.field("selector_threshold", pa.float64()),
        pa.field("series_used", pa.string(), nullable=False),
        pa.field("series_skipped", pa.string(), nullable=False),
        pa.field("reference_label", pa.string()),
        pa.field("qc_too_few_images", pa.bool_(), nullable=False),
        pa.field("qc_noncontrast_only", pa.bool_(), nullable=False),
        pa.field("qc_flags", pa.string(), nullable=False),
        *_RUN_FIELDS,
        pa.field("archive_uri", pa.string()),
        # Last: tables from before it get it appended by `renalflow migrate-results`.
        pa.field("in_training", pa.string()),
    ]
)

PATIENT_VOTES_SCHEMA = _documented(
    [
        pa.field("patient_key", pa.string(), nullable=False),
        pa.field("key_id", pa.string(), nullable=False),
        pa.field("n_studies", pa.int32(), nullable=False),
        *_VOTE_FIELDS,
        pa.field("selection_sources", pa.string(), nullable=False),
        pa.field("first_study_year_month", pa.string()),
        pa.field("last_study_year_month", pa.string()),
        pa.field("reference_label", pa.string()),
        *_RUN_FIELDS,
        pa.field("in_training", pa.string()),
    ]
)

SCHEMAS = {
    SLICE_SCORES: SLICE_SCORES_SCHEMA,
    STUDY_VOTES: STUDY_VOTES_SCHEMA,
    PATIENT_VOTES: PATIENT_VOTES_SCHEMA,
}

REFERENCE_OUTCOMES = "reference_outcomes"
"""Reference outcomes (histology, follow-up) loaded by `renalflow load-references`; made
when first loaded, not by scoring. (`references` is an SQL keyword.)"""

REFERENCE_OUTCOMES_SCHEMA = _documented(
    [
        pa.field("patient_key", pa.string(), nullable=False),
        pa.field("key_id", pa.string(), nullable=False),
        pa.field("outcome", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("outcome_year_month", pa.string()),
        pa.field("loaded_at", _TIMESTAMP, nullable=False),
        pa.field("flow_run_id", pa.string()),
    ]
)

MODELS = "models"
"""The model registry: one row per registered model version (tasks/registry.py)."""
MODELS_SCHEMA = _documented(
    [
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("model_task", pa.string(), nullable=False),
        pa.field("model_profile", pa.string(), nullable=False),
        pa.field("model_dir", pa.string(), nullable=False),
        pa.field("preprocess_version", pa.string(), nullable=False),
        pa.field("test_patients", pa.int64()),
        pa.field("test_images", pa.int64()),
        pa.field("test_auc", pa.float64()),
        pa.field("test_accuracy", pa.float64()),
        pa.field("test_patient_accuracy", pa.float64()),
        pa.field("registered_at", _TIMESTAMP, nullable=False),
        pa.field("flow_run_id", pa.string()),
    ]
)
MODEL_ALIASES = "model_aliases"
"""Every change of a registry alias (promote, rollback), appended, never rewritten."""
MODEL_ALIASES_SCHEMA = _documented(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("alias", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("action", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("changed_at", _TIMESTAMP, nullable=False),
        pa.field("flow_run_id", pa.string()),
    ]
)

DESCRIBED = {
    **SCHEMAS,
    REFERENCE_OUTCOMES: REFERENCE_OUTCOMES_SCHEMA,
    MODELS: MODELS_SCHEMA,
    MODEL_ALIASES: MODEL_ALIASES_SCHEMA,
}
"""Every table of R, in the order the data dictionary lists them."""

# Merge keys: one row per image, per study and per patient, for each model version.
KEYS = {
    SLICE_SCORES: ("image_key", "model_version"),
    STUDY_VOTES: ("study_key", "model_version"),
    PATIENT_VOTES: ("patient_key", "model_version"),
    REFERENCE_OUTCOMES: ("patient_key", "source"),
    MODELS: ("model_version",),
    MODEL_ALIASES: ("event_id",),
}

OPTIONAL_TABLES = (REFERENCE_OUTCOMES, MODELS, MODEL_ALIASES)
"""Tables of R made when first written (loading references, registering a model), not
by scoring: read as empty until then."""

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


def is_table(uri: str) -> bool:
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
    if not is_table(uri):
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
        except DeltaError as err:
            raise InputError(
                f"{name} has no version {version!s} (versions 0-{table.version()}; see "
                f"`renalflow history --results {results}`): {err}"
            ) from err
    return table


def ensure_tables(results: str, key: bytes | None = None) -> None:
    """Create the tables, empty, if they do not exist: once, even when runs race to do it
    (deltalake alone lets two racing creators commit two CREATEs). With `key`, refuse a
    table that holds pseudonyms made under another key."""
    check_layout(results)
    for name in SCHEMAS:
        ensure_table(results, name)
    if key is not None:
        check_key_id(results, key)


def ensure_table(results: str, name: str) -> None:
    """Create table `name` of R, empty, if it does not exist (once, even when raced)."""
    uri = table_uri(results, name)
    if is_table(uri):
        return
    with _creating(uri):
        if is_table(uri):
            return  # the run that held the lock before us made it
        DeltaTable.create(
            uri,
            schema=DESCRIBED[name],
            mode="error",
            name=name,
            description=_DESCRIPTIONS[name],
            storage_options=storage_options(uri),
        )


_CREATE_WAIT_S = 60.0


@contextlib.contextmanager
def _creating(uri: str) -> Iterator[None]:
    """One creator at a time for the table at `uri`: an exclusive file lock on a local
    filesystem; on object storage a marker object written only if absent (a conditional
    put), which the others wait on until the table appears."""
    fs, path = fsspec.core.url_to_fs(uri)
    marker = f"{path.rstrip('/')}.creating"
    if isinstance(fs, LocalFileSystem):
        os.makedirs(os.path.dirname(marker) or ".", exist_ok=True)
        with open(marker, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                # Whoever waits on the lock finds the table made and leaves it alone.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(marker)
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    bucket, key = path.split("/", 1)
    try:
        fs.call_s3("put_object", Bucket=bucket, Key=key, Body=b"", IfNoneMatch="*")
    except (OSError, ValueError):  # s3fs: 412 Precondition Failed -> another run creates it
        deadline = time.monotonic() + _CREATE_WAIT_S
        while not is_table(uri) and time.monotonic() < deadline:
            time.sleep(0.5)
        if is_table(uri):
            yield
            return
        # Its creator died before creating it (the marker is left): create it here.
    try:
        yield
    finally:
        fs.rm_file(f"{bucket}/{key}")


def check_key_id(results: str, key: bytes) -> None:
    """Refuse to mix pseudonyms of two keys in one results table: every row carries the
    key's public fingerprint (key_id), and rows of another key cannot be linked."""
    mine = key_id(key)
    uri = table_uri(results, STUDY_VOTES)
    if not is_table(uri):
        return
    dataset = open_table(results, STUDY_VOTES).to_pyarrow_dataset()
    other = dataset.head(1, columns=["key_id"], filter=pc.field("key_id") != mine)
    if other.num_rows:
        raise InputError(
            f"{results} holds pseudonyms made under another key (key id "
            f"{other.column('key_id')[0].as_py()}, this run's is {mine}): set "
            "RENALFLOW_PSEUDONYM_KEY (or --key-secret) to the key that table was written "
            "with, or score into a new results folder"
        )


_DESCRIPTIONS = {
    SLICE_SCORES: "renalflow: probability of malignancy per image, per model version",
    STUDY_VOTES: "renalflow: 51% majority vote over the selected slices of a study, per "
    "model version",
    PATIENT_VOTES: "renalflow: 51% majority vote over the selected slices of all a patient's "
    "studies (the paper's unit), per model version",
    REFERENCE_OUTCOMES: "renalflow: reference outcomes (histology, follow-up) per patient "
    "pseudonym and source, for agreement with the votes",
    MODELS: "renalflow: the model registry, one row per registered model version with its "
    "held-out test figures",
    MODEL_ALIASES: "renalflow: every promotion and rollback of a registry alias (production)",
}


def data_dictionary() -> list[dict[str, str]]:
    """Every column of R once: its name, the tables that have it and what it means."""
    tables: dict[str, list[str]] = {}
    for name, schema in DESCRIBED.items():
        for column in schema.names:
            tables.setdefault(column, []).append(name)
    return [
        {"column": column, "tables": ", ".join(names), "meaning": COLUMN_DOCS[column]}
        for column, names in tables.items()
    ]


def check_rows(table: pa.Table, name: str) -> pa.Table:
    """`table` cast to the schema of `name`, refusing any identifier column."""
    leaked = FORBIDDEN_COLUMNS & {c.lower() for c in table.column_names}
    if leaked:
        raise InputError(f"refusing to write identifier columns {sorted(leaked)} to {name}")
    schema = DESCRIBED[name]
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
    """study_key -> slices_in_study of the studies this model version has already voted
    on (a study whose stored slice count changed since is scored again)."""
    if not is_table(table_uri(results, STUDY_VOTES)):
        return {}
    table = open_table(results, STUDY_VOTES).to_pyarrow_dataset()
    rows = table.to_table(
        columns=["study_key", "slices_in_study"],
        filter=pc.field("model_version") == model_version,
    )
    return dict(
        zip(
            rows.column("study_key").to_pylist(),
            rows.column("slices_in_study").to_pylist(),
            strict=True,
        )
    )


def parse_as_of(value: str) -> int | datetime:
    """`--as-of`: a version number (of study_votes) or an ISO 8601 time."""
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
    """The commits of study_votes (every scoring run makes one), newest first: version,
    time, operation, run."""
    table = open_table(results, STUDY_VOTES)
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


@dataclass(frozen=True)
class Pinned:
    """The tables of R as read at one state, and the Delta version each was read at
    (None for a table that did not exist then)."""

    tables: dict[str, pa.Table]
    versions: dict[str, int | None]


def read_pinned(
    results: str,
    as_of: int | datetime | None,
    versions: dict[str, int | None] | None = None,
) -> Pinned:
    """Every table of R, at the latest state or as of a version or time, or (`versions`,
    as an extract's manifest records them) each table at exactly its version.

    A version number is a version of study_votes: the state that commit's run left. A
    run writes slice_scores, then study_votes, then patient_votes, so slice_scores is
    read as of that commit's time and patient_votes as of just before the next
    study_votes commit (its run's patient votes, not the next run's); every study vote
    read has its image scores. A table read as it was before a column was added
    (`renalflow migrate-results`) gets that column as nulls; reference_outcomes is
    empty until outcomes are loaded.
    """
    check_layout(results)
    if versions is not None:
        return _read_versions(results, versions)
    votes = open_table(results, STUDY_VOTES, as_of)
    moment: datetime | None = None
    until: dict[str, datetime | None] = {}
    if isinstance(as_of, int):
        stamps = {h["version"]: h["timestamp"] for h in history(results)}
        moment = stamps.get(as_of)
        # None: the version is study_votes' latest, so is patient_votes' latest.
        until[PATIENT_VOTES] = stamps.get(as_of + 1)
    elif isinstance(as_of, datetime):
        moment = as_of
    tables = {STUDY_VOTES: _conformed(votes.to_pyarrow_dataset().to_table(), STUDY_VOTES)}
    read: dict[str, int | None] = {STUDY_VOTES: int(votes.version())}
    for name in (PATIENT_VOTES, SLICE_SCORES, *OPTIONAL_TABLES):
        if name in OPTIONAL_TABLES and not is_table(table_uri(results, name)):
            tables[name], read[name] = DESCRIBED[name].empty_table(), None
            continue
        table = open_table(results, name)
        version: int | datetime | None = moment
        limit = until.get(name, moment)
        if name in until:
            version = None if limit is None else _last_version_before(table, limit)
        elif moment is not None and _created_after(table, moment):
            version = None
        if version is None and limit is not None:
            # It did not exist yet at that time.
            tables[name], read[name] = DESCRIBED[name].empty_table(), None
            continue
        if version is not None:
            table.load_as_version(version)  # a storage failure here fails, never "empty"
        tables[name] = _conformed(table.to_pyarrow_dataset().to_table(), name)
        read[name] = int(table.version())
    return Pinned(tables, read)


def _last_version_before(table: Any, moment: datetime) -> int | None:
    """The table's newest version committed before `moment` (None: none was)."""
    limit = moment.timestamp() * 1000
    earlier = [h["version"] for h in table.history() if h["timestamp"] < limit]
    return max(earlier) if earlier else None


def _read_versions(results: str, versions: dict[str, int | None]) -> Pinned:
    tables = {}
    for name in DESCRIBED:
        version = versions.get(name)
        if version is None:
            tables[name] = DESCRIBED[name].empty_table()
            continue
        table = open_table(results, name, int(version))
        tables[name] = _conformed(table.to_pyarrow_dataset().to_table(), name)
    return Pinned(tables, {name: versions.get(name) for name in DESCRIBED})


def tables_as_of(results: str, as_of: int | datetime | None) -> dict[str, pa.Table]:
    """Every table of R as an Arrow table (read_pinned without the versions)."""
    return read_pinned(results, as_of).tables


def _conformed(table: pa.Table, name: str) -> pa.Table:
    """`table` with the columns of today's schema that it was written without, as nulls
    (Delta hands strings over as string_view: cast back to the schema's types)."""
    schema = DESCRIBED[name]
    for field in schema:
        if field.name not in table.column_names:
            table = table.append_column(field.name, pa.nulls(table.num_rows, field.type))
    return table.select(schema.names).cast(pa.schema([f.with_nullable(True) for f in schema]))


def _created_after(table: Any, moment: datetime) -> bool:
    """Whether the table's first commit is later than `moment`."""
    first = min(table.history(), key=lambda entry: entry["version"])
    created = datetime.fromtimestamp(first["timestamp"] / 1000).astimezone()
    return created > moment


LEGACY_HELP = "renalflow migrate-results --results {results}"  # the one command that upgrades R


def check_layout(results: str) -> None:
    """Refuse a results table written by an earlier renalflow, whose rows and today's
    would mix silently: one written before study_votes existed (its patient_votes holds
    one vote per study), or before votes said whether their model trained on the
    patient (no in_training)."""
    votes_uri = table_uri(results, PATIENT_VOTES)
    study_uri = table_uri(results, STUDY_VOTES)
    if is_table(study_uri):
        if _lacks_in_training(results):
            raise InputError(
                f"{results} was written by an earlier renalflow: its votes do not say "
                "whether their model trained on the patient (in_training). Upgrade it once "
                "with `" + LEGACY_HELP.format(results=results) + "` (it keeps every row and "
                "version; old votes get in_training 'unknown', or what --model-dir says)"
            )
        return
    if not is_table(votes_uri):
        return
    columns = DeltaTable(votes_uri, storage_options=storage_options(votes_uri)).schema()
    if "study_key" in {field.name for field in columns.fields}:
        raise InputError(
            f"{results} was written by an earlier renalflow: its patient_votes holds one "
            "vote per study. Upgrade it once with `"
            + LEGACY_HELP.format(results=results)
            + "` (it keeps every row and version; study votes move to study_votes)"
        )


def _lacks_in_training(results: str) -> bool:
    for name in (STUDY_VOTES, PATIENT_VOTES):
        uri = table_uri(results, name)
        if not is_table(uri):
            continue
        schema = DeltaTable(uri, storage_options=storage_options(uri)).schema()
        if "in_training" not in {field.name for field in schema.fields}:
            return True
    return False


def migrate_results(
    results: str, membership: dict[str, dict[str, InTraining] | None] | None = None
) -> dict[str, int]:
    """Upgrade a results table written by an earlier renalflow, in place.

    A table without in_training gets the column on its votes, filled for the old rows:
    from `membership` (model version -> patient key -> membership, tasks.model_dir.
    training_membership) for the model versions it has, `unknown` for the others.

    The old patient_votes (one vote per study) becomes study_votes with its history: its
    folder is moved, the new columns are added and filled for the old rows (every slice
    voted: selection_source `all`, status `voted`, slices_in_study = n_images). The
    image scores get `voted` = true. Then patient_votes is made anew from them.
    Returns the rows migrated per table.
    """
    check_key_columns = {"study_key"}
    votes_uri, study_uri = table_uri(results, PATIENT_VOTES), table_uri(results, STUDY_VOTES)
    if is_table(study_uri):
        if not _lacks_in_training(results):
            raise InputError(f"{results} is up to date: nothing to migrate")
        return _add_in_training(results, membership or {})
    if not is_table(votes_uri):
        raise InputError(f"{results} holds no results table to migrate")
    old = DeltaTable(votes_uri, storage_options=storage_options(votes_uri))
    if not check_key_columns <= {field.name for field in old.schema().fields}:
        raise InputError(f"{results}/patient_votes is already a per-patient table")
    fs, path = fsspec.core.url_to_fs(votes_uri)
    _, study_path = fsspec.core.url_to_fs(study_uri)
    fs.mv(path, study_path, recursive=True)
    studies = DeltaTable(study_uri, storage_options=storage_options(study_uri))
    _add_new_columns(studies, STUDY_VOTES_SCHEMA)
    studies.update(
        updates={
            "status": f"'{StudyStatus.VOTED.value}'",
            "slices_in_study": "n_images",
            "selection_source": f"'{SelectionSource.ALL.value}'",
            "series_used": "''",
            "series_skipped": "''",
        },
        predicate="status IS NULL",
    )
    scores_uri = table_uri(results, SLICE_SCORES)
    scores = DeltaTable(scores_uri, storage_options=storage_options(scores_uri))
    _add_new_columns(scores, SLICE_SCORES_SCHEMA)
    scores.update(updates={"voted": "true"}, predicate="voted IS NULL")
    _fill_in_training(studies, membership or {})
    ensure_tables(results)
    migrated = {STUDY_VOTES: int(studies.count()), SLICE_SCORES: int(scores.count())}
    for model_version, patients in _patients_by_model(results).items():
        rows = patient_rows(results, patients, model_version, run_id="migration")
        migrated[PATIENT_VOTES] = migrated.get(PATIENT_VOTES, 0) + rows.num_rows
        merge_rows(results, PATIENT_VOTES, rows, run_id="migration")
    return migrated


def _add_in_training(
    results: str, membership: dict[str, dict[str, InTraining] | None]
) -> dict[str, int]:
    """Add in_training to the votes of a table written before it existed, and fill it."""
    migrated = {}
    for name in (STUDY_VOTES, PATIENT_VOTES):
        uri = table_uri(results, name)
        table = DeltaTable(uri, storage_options=storage_options(uri))
        _add_new_columns(table, SCHEMAS[name])
        _fill_in_training(table, membership)
        migrated[name] = int(table.count())
    return migrated


def _fill_in_training(table: Any, membership: dict[str, dict[str, InTraining] | None]) -> None:
    """Set in_training where it is null: from `membership` for its model versions (a
    merge on patient and model), `unknown` for the rest."""
    rows = [
        {"patient_key": patient, "model_version": model, "in_training": value.value}
        for model, patients in sorted(membership.items())
        if patients is not None
        for patient, value in sorted(patients.items())
    ]
    if rows:
        source = pa.Table.from_pylist(
            rows,
            schema=pa.schema(
                [(name, pa.string()) for name in ("patient_key", "model_version", "in_training")]
            ),
        )
        (
            table.merge(
                source,
                "t.patient_key = s.patient_key AND t.model_version = s.model_version",
                source_alias="s",
                target_alias="t",
            )
            .when_matched_update(
                updates={"in_training": "s.in_training"}, predicate="t.in_training IS NULL"
            )
            .execute()
        )
    # A model version in the split has patients outside it: they never trained on it.
    known = sorted(model for model, patients in membership.items() if patients is not None)
    if known:
        listed = ", ".join("'" + model.replace("'", "''") + "'" for model in known)
        table.update(
            updates={"in_training": f"'{InTraining.NONE.value}'"},
            predicate=f"in_training IS NULL AND model_version IN ({listed})",
        )
    table.update(
        updates={"in_training": f"'{InTraining.UNKNOWN.value}'"}, predicate="in_training IS NULL"
    )


def _add_new_columns(table: Any, schema: pa.Schema) -> None:
    from deltalake.schema import Field as DeltaField
    from deltalake.schema import PrimitiveType

    present = {field.name for field in table.schema().fields}
    new = [schema.field(name) for name in schema.names if name not in present]
    if new:
        table.alter.add_columns(
            [
                DeltaField(
                    f.name,
                    PrimitiveType(_delta_type(f.type)),
                    nullable=True,
                    metadata={"comment": COLUMN_DOCS[f.name]},
                )
                for f in new
            ]
        )
    for name in schema.names:
        if name in present and schema.field(name).nullable:
            field = next(f for f in table.schema().fields if f.name == name)
            if not field.nullable:
                table.alter.drop_column_not_null(name)


def _delta_type(kind: pa.DataType) -> str:
    names = {pa.string(): "string", pa.int32(): "integer", pa.float32(): "float",
             pa.float64(): "double", pa.bool_(): "boolean"}  # fmt: skip
    return names[kind]


def _patients_by_model(results: str) -> dict[str, set[str]]:
    rows = (
        open_table(results, STUDY_VOTES)
        .to_pyarrow_dataset()
        .to_table(columns=["patient_key", "model_version"])
    )
    out: dict[str, set[str]] = {}
    for patient, model in zip(
        rows.column("patient_key").to_pylist(),
        rows.column("model_version").to_pylist(),
        strict=True,
    ):
        out.setdefault(str(model), set()).add(str(patient))
    return out


def _year_month(study_date: Any) -> str | None:
    text = str(study_date or "")
    return f"{text[:4]}-{text[4:6]}" if len(text) >= 6 and text[:6].isdigit() else None


def _joined(values: pd.Series) -> str:
    return ",".join(sorted({str(v) for v in values if v is not None and str(v)}))


@dataclass(frozen=True)
class SelectorUsed:
    """The slice selector of a run, as the study rows record it."""

    model_version: str
    threshold: float


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
    *,
    selections: list[StudySelection] | None = None,
    series: pd.DataFrame | None = None,
    selector_probabilities: dict[str, float] | None = None,
    selector: SelectorUsed | None = None,
    membership: dict[str, InTraining] | None = None,
) -> tuple[pa.Table, pa.Table]:
    """(slice_scores rows, study_votes rows) of a run, pseudonymised: no identifier
    leaves here.

    `membership` (tasks.model_dir.training_membership) says which patients the model
    trained or validated on; None: it cannot tell, and every vote says `unknown`.

    `slices` are the inventory rows of the studies scored (tasks.store); `selections`
    says which of them voted (tasks.selection; default: every slice, source `all`) and
    `series` why series were skipped. A slice the classifier saw has a probability; one
    the selector left out has only its selector probability."""
    scored_at = scored_at or now_utc()
    selector_probabilities = selector_probabilities or {}
    frame = slices.drop_duplicates("sop_instance_uid").copy()
    if selections is None:
        selections = _every_slice(frame)
    voting = {uid for s in selections for uid in s.selected}
    missing = voting - set(probabilities)
    if missing:
        raise StoreError(f"{len(missing)} slices were planned but never scored")
    seen = set(probabilities) | set(selector_probabilities)
    frame = frame[frame["sop_instance_uid"].isin(seen)].reset_index(drop=True)
    probability = frame["sop_instance_uid"].map(probabilities).astype(np.float32)
    frame["probability"] = probability
    known = probability.notna().to_numpy()
    # The image rule (tasks.vote) on the slices the classifier saw; null for the others.
    malignant = malignant_images(np.nan_to_num(probability.to_numpy()), config.image_threshold)
    frame["voted"] = frame["sop_instance_uid"].isin(voting)
    kid = key_id(key)
    everyone = slices.drop_duplicates("sop_instance_uid")
    patient_key = {p: patient_pseudonym(key, p) for p in everyone["patient_id"].unique()}
    study_key = {s: pseudonym(key, s) for s in everyone["study_instance_uid"].unique()}
    series_key = {s: pseudonym(key, s) for s in everyone["series_instance_uid"].unique()}
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
            "probability": pa.array(probability.to_numpy(), pa.float32(), mask=~known),
            "malignant": pa.array(malignant, pa.bool_(), mask=~known),
            "voted": pa.array(frame["voted"].to_numpy()),
            "selector_probability": pa.array(
                [selector_probabilities.get(u) for u in frame["sop_instance_uid"]], pa.float32()
            ),
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
    skipped = _skipped_series(series)
    votes = []
    by_study = {uid: group for uid, group in everyone.groupby("study_instance_uid", sort=True)}
    for selection in sorted(selections, key=lambda s: s.study_instance_uid):
        group = by_study[selection.study_instance_uid]
        patient = patient_key[group["patient_id"].iloc[0]]
        chosen = group[group["sop_instance_uid"].isin(selection.selected)]
        p = np.array([probabilities[u] for u in chosen["sop_instance_uid"]], np.float64)
        n_images = len(chosen)
        phases = {str(v) for v in chosen["phase"]}
        flags = []
        if 0 < n_images < config.min_images:
            flags.append("too_few_images")
        noncontrast_only = phases == {Phase.NONCONTRAST.value}
        if noncontrast_only:
            flags.append("noncontrast_only")
        if Phase.UNKNOWN.value in phases:
            flags.append("unknown_phase")
        if chosen["manufacturer"].nunique() > 1:
            flags.append("mixed_scanners")
        outcome = vote_fields(p, config.image_threshold, config.vote_threshold)
        labels = {str(v) for v in group["label"] if v is not None and str(v) not in ("", "nan")}
        source = selection.source
        votes.append(
            {
                "patient_key": patient,
                "study_key": study_key[selection.study_instance_uid],
                "key_id": kid,
                "study_year_month": _year_month(group["study_date"].iloc[0]),
                "cohort": str(group["cohort"].iloc[0]),
                "manufacturer": _joined(chosen["manufacturer"]),
                "phases": _joined(chosen["phase"]),
                "n_series": len(selection.series_used),
                **outcome,
                "vote_threshold": config.vote_threshold,
                "image_threshold": config.image_threshold,
                "slices_in_study": selection.slices_in_study,
                "selection_source": source.value if source else None,
                "selector_version": selector.model_version
                if selector and source is SelectionSource.SELECTOR
                else None,
                "selector_threshold": selector.threshold
                if selector and source is SelectionSource.SELECTOR
                else None,
                "series_used": ",".join(sorted(series_key[u] for u in selection.series_used)),
                "series_skipped": skipped.get(selection.study_instance_uid, ""),
                "reference_label": labels.pop() if len(labels) == 1 else None,
                "qc_too_few_images": "too_few_images" in flags,
                "qc_noncontrast_only": noncontrast_only,
                "qc_flags": ",".join(flags),
                "model_version": info.model_version,
                "model_profile": info.profile,
                "preprocess_version": info.preprocess.version,
                "scored_at": scored_at,
                "flow_run_id": run_id,
                "archive_uri": archive_uri,
                "in_training": _in_training(membership, patient),
            }
        )
    vote_rows = pa.Table.from_pylist(votes, schema=STUDY_VOTES_SCHEMA)
    return slice_rows, vote_rows


def _in_training(membership: dict[str, InTraining] | None, patient: str) -> str:
    if membership is None:
        return InTraining.UNKNOWN.value
    return membership.get(patient, InTraining.NONE).value


def vote_fields(p: np.ndarray, image_threshold: float, vote_threshold: float) -> dict[str, Any]:
    """A study's or patient's vote columns over the probabilities of its selected
    images: status `no_mass_found` and no vote when nothing was selected."""
    if not len(p):
        return {
            "n_images": 0,
            "n_malignant": 0,
            "fraction_malignant": None,
            "status": StudyStatus.NO_MASS_FOUND.value,
            "vote": None,
            "mean_probability": None,
        }
    outcome = vote(p, image_threshold, vote_threshold)
    return {
        "n_images": len(p),
        "n_malignant": outcome.n_malignant,
        "fraction_malignant": outcome.fraction_malignant,
        "status": StudyStatus.VOTED.value,
        "vote": outcome.vote.value,
        "mean_probability": float(p.mean()),
    }


def _every_slice(frame: pd.DataFrame) -> list[StudySelection]:
    from renalflow.tasks.selection import StudySelection

    return [
        StudySelection(
            study_instance_uid=str(uid),
            slices_in_study=len(group),
            series_used=tuple(sorted(set(group["series_instance_uid"]))),
            source=SelectionSource.ALL,
            selected=frozenset(group["sop_instance_uid"]),
        )
        for uid, group in frame.groupby("study_instance_uid", sort=True)
    ]


def _skipped_series(series: pd.DataFrame | None) -> dict[str, str]:
    """Per study: the series not screened, counted by reason (`not_abdominal:2,twin:1`)."""
    if series is None or series.empty:
        return {}
    skipped = series[series["decision"] != "selected"]
    out: dict[str, str] = {}
    for study_uid, group in skipped.groupby("study_instance_uid"):
        counts = Counter(group["decision"])
        out[str(study_uid)] = ",".join(f"{k}:{v}" for k, v in sorted(counts.items()))
    return out


def patient_rows(
    results: str,
    patients: set[str],
    model_version: str,
    *,
    run_id: str,
    scored_at: datetime | None = None,
) -> pa.Table:
    """patient_votes rows of `patients` (patient keys) for one model version, from what R
    holds: the slices that voted in all their studies (slice_scores) and their study
    rows. A patient none of whose studies had a selected slice gets `no_mass_found`."""
    scored_at = scored_at or now_utc()
    # Filtered by model in the scan, by patient after it: Delta hands strings over as
    # string_view, which pyarrow's isin cannot compare with a list of strings.
    same_model = pc.field("model_version") == model_version
    studies = open_table(results, STUDY_VOTES).to_pyarrow_dataset().to_table(filter=same_model)
    studies = studies.to_pandas()
    studies = studies[studies["patient_key"].isin(patients)]
    images = (
        open_table(results, SLICE_SCORES)
        .to_pyarrow_dataset()
        .to_table(
            columns=["patient_key", "probability"],
            filter=same_model & (pc.field("voted") == True),  # noqa: E712 (an expression)
        )
        .to_pandas()
    )
    images = images[images["patient_key"].isin(patients)]
    by_patient = {
        k: g["probability"].to_numpy(np.float64) for k, g in images.groupby("patient_key")
    }
    rows = []
    for patient, group in studies.groupby("patient_key", sort=True):
        p = by_patient.get(patient, np.zeros(0))
        image_threshold = float(group["image_threshold"].iloc[-1])
        vote_threshold = float(group["vote_threshold"].iloc[-1])
        outcome = vote_fields(p, image_threshold, vote_threshold)
        labels = {str(v) for v in group["reference_label"].dropna()}
        months = sorted(str(v) for v in group["study_year_month"].dropna())
        rows.append(
            {
                "patient_key": patient,
                "key_id": str(group["key_id"].iloc[0]),
                "n_studies": len(group),
                **outcome,
                "vote_threshold": vote_threshold,
                "image_threshold": image_threshold,
                "selection_sources": _joined(group["selection_source"]),
                "first_study_year_month": months[0] if months else None,
                "last_study_year_month": months[-1] if months else None,
                "reference_label": labels.pop() if len(labels) == 1 else None,
                "model_version": model_version,
                "model_profile": group["model_profile"].iloc[-1],
                "preprocess_version": str(group["preprocess_version"].iloc[-1]),
                "scored_at": scored_at,
                "flow_run_id": run_id,
                "in_training": _latest(group["in_training"], InTraining.UNKNOWN.value),
            }
        )
    return pa.Table.from_pylist(rows, schema=PATIENT_VOTES_SCHEMA)


def _latest(values: pd.Series, default: str) -> str:
    known = values.dropna()
    return str(known.iloc[-1]) if len(known) else default


def write_results(
    results: str, slice_rows: pa.Table, vote_rows: pa.Table, run_id: str
) -> dict[str, int]:
    """Merge a run's rows into R: image scores first, then study votes, then the votes
    of the patients those studies belong to (over all their studies in R), so a vote in
    R always has its image scores. A study whose slice count changed gets its vote
    replaced, and its patient's vote with it.

    Returns the rows inserted and updated per table.
    """
    scores = merge_rows(results, SLICE_SCORES, slice_rows, run_id=run_id)
    studies = merge_rows(
        results,
        STUDY_VOTES,
        vote_rows,
        replace_when="t.slices_in_study <> s.slices_in_study",
        run_id=run_id,
    )
    patients_inserted = patients_updated = 0
    if vote_rows.num_rows:
        by_model: dict[str, set[str]] = {}
        for patient, model in zip(
            vote_rows.column("patient_key").to_pylist(),
            vote_rows.column("model_version").to_pylist(),
            strict=True,
        ):
            by_model.setdefault(str(model), set()).add(str(patient))
        for model, patients in by_model.items():
            merged = merge_rows(
                results,
                PATIENT_VOTES,
                patient_rows(results, patients, model, run_id=run_id),
                replace_when="t.n_images <> s.n_images OR t.n_studies <> s.n_studies",
                run_id=run_id,
            )
            patients_inserted += merged["inserted"]
            patients_updated += merged["updated"]
    return {
        "slice_rows_inserted": scores["inserted"],
        "vote_rows_inserted": studies["inserted"],
        "vote_rows_updated": studies["updated"],
        "patient_rows_inserted": patients_inserted,
        "patient_rows_updated": patients_updated,
    }


def tally_votes(vote_rows: pa.Table) -> tuple[dict[str, int], dict[str, int]]:
    """How many studies of `vote_rows` got each vote (or `no_mass_found`), and each QC flag."""
    outcomes = Counter(
        vote if status == StudyStatus.VOTED.value else status
        for vote, status in zip(
            vote_rows.column("vote").to_pylist(),
            vote_rows.column("status").to_pylist(),
            strict=True,
        )
    )
    flags = Counter(
        flag
        for text in vote_rows.column("qc_flags").to_pylist()
        for flag in filter(None, text.split(","))
    )
    return dict(sorted(outcomes.items())), dict(flags)
