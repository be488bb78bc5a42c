"""Where the runs of one PACS source stopped, kept beside its cache in the slice store:

- `studies/UID.delivered.json`: a study fetched whole (never asked for again);
- `studies/UID.failed.json`: a study the PACS listed but did not deliver, with the reason
  (retried on every run until delivered);
- `watermark.json`: the newest StudyDate delivered, written when a run has tried every
  study it listed. The next run queries from there (less a few days' lookback for late
  arrivals); a run killed before that point leaves it as it was, so its studies are
  listed again, and the delivered ones skipped by UID.

Each study is recorded the moment its fetch ends, so a crash loses at most the studies in
flight, whose instances already in the cache are not fetched again.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import fsspec

from renalflow.tasks.sources import uid_name
from renalflow.tasks.sources.query import StudyRef
from renalflow.tasks.store import now_utc

STUDIES = "studies"
WATERMARK = "watermark.json"


class Delivery(StrEnum):
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True)
class StudyRecord:
    study: StudyRef
    status: Delivery
    reason: str = ""
    instances: int = 0
    at: str = ""


@dataclass
class Watermark:
    """What earlier runs of one source delivered, and what they could not."""

    since: str | None = None  # the newest StudyDate delivered by a finished run
    delivered: set[str] = field(default_factory=set)  # uid_name of StudyInstanceUIDs
    failed: dict[str, StudyRecord] = field(default_factory=dict)


def _record_path(root: str, study_uid: str, status: Delivery) -> str:
    return f"{root}/{STUDIES}/{uid_name(study_uid)}.{status.value}.json"


def read_watermark(root: str) -> Watermark:
    """The watermark of the source whose folder is `root` (empty for a new source)."""
    fs, _ = fsspec.core.url_to_fs(root)
    mark = Watermark()
    try:
        mark.since = json.loads(fs.cat_file(f"{root}/{WATERMARK}")).get("since") or None
    except FileNotFoundError:
        pass
    try:
        names = [str(n).rsplit("/", 1)[-1] for n in fs.ls(f"{root}/{STUDIES}", detail=False)]
    except FileNotFoundError:
        names = []
    for name in names:
        stem, _, status = name.removesuffix(".json").rpartition(".")
        if status == Delivery.DELIVERED:
            mark.delivered.add(stem)
    for name in names:
        stem, _, status = name.removesuffix(".json").rpartition(".")
        if status == Delivery.FAILED and stem not in mark.delivered:
            record = json.loads(fs.cat_file(f"{root}/{STUDIES}/{name}"))
            mark.failed[stem] = _record(record)
    return mark


def _record(data: dict[str, Any]) -> StudyRecord:
    study = data["study"]
    study["modalities_in_study"] = tuple(study.get("modalities_in_study", ()))
    return StudyRecord(
        StudyRef(**study), Delivery(data["status"]), data["reason"], data["instances"], data["at"]
    )


def record_study(root: str, record: StudyRecord) -> None:
    """Write what happened to one study (replacing a failure once it is delivered)."""
    fs, _ = fsspec.core.url_to_fs(root)
    uid = record.study.study_instance_uid
    data = asdict(record)
    data["at"] = data["at"] or now_utc().isoformat()
    fs.makedirs(f"{root}/{STUDIES}", exist_ok=True)
    fs.pipe_file(_record_path(root, uid, record.status), json.dumps(data).encode())
    if record.status is Delivery.DELIVERED:
        failed = _record_path(root, uid, Delivery.FAILED)
        if fs.exists(failed):
            fs.rm_file(failed)


def advance_watermark(root: str, since: str | None) -> None:
    """Record the newest StudyDate delivered, once a run has tried every study it listed."""
    if not since:
        return
    fs, _ = fsspec.core.url_to_fs(root)
    fs.makedirs(root, exist_ok=True)
    fs.pipe_file(f"{root}/{WATERMARK}", json.dumps({"since": since}).encode())


def is_delivered(mark: Watermark, study: StudyRef) -> bool:
    return uid_name(study.study_instance_uid) in mark.delivered
