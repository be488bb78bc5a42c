"""The watermark of a PACS source: what was delivered, what failed and why, where the
last finished run stopped."""

from __future__ import annotations

from renalflow.tasks.sources.query import StudyRef
from renalflow.tasks.sources.watermark import (
    Delivery,
    StudyRecord,
    advance_watermark,
    is_delivered,
    read_watermark,
    record_study,
)

A = StudyRef("1.2.3.1", "20240105", "CT ABDOMEN", ("CT",))
B = StudyRef("1.2.3.2", "20240107", "CT NIERE", ("CT", "SR"))


def test_a_new_source_has_an_empty_watermark(tmp_path):
    mark = read_watermark(str(tmp_path / "none"))
    assert mark.since is None and not mark.delivered and not mark.failed


def test_failures_keep_their_reason_until_delivered(tmp_path):
    root = str(tmp_path / "source")
    record_study(root, StudyRecord(A, Delivery.DELIVERED, instances=40))
    record_study(root, StudyRecord(B, Delivery.FAILED, "PACS busy (HTTP 503)"))
    mark = read_watermark(root)
    assert is_delivered(mark, A) and not is_delivered(mark, B)
    assert list(mark.failed) == ["1.2.3.2"]
    failed = mark.failed["1.2.3.2"]
    assert failed.study == B and failed.reason == "PACS busy (HTTP 503)" and failed.at

    record_study(root, StudyRecord(B, Delivery.DELIVERED, instances=12))
    mark = read_watermark(root)
    assert is_delivered(mark, B) and not mark.failed
    assert not (tmp_path / "source" / "studies" / "1.2.3.2.failed.json").exists()


def test_the_watermark_moves_only_when_a_run_finishes(tmp_path):
    root = str(tmp_path / "source")
    advance_watermark(root, None)  # a run that delivered nothing leaves no mark
    assert read_watermark(root).since is None
    advance_watermark(root, "20240107")
    assert read_watermark(root).since == "20240107"


def test_works_on_object_storage_paths():
    root = "memory://store/_pacs/src"
    record_study(root, StudyRecord(A, Delivery.FAILED, "gone"))
    advance_watermark(root, "20240105")
    mark = read_watermark(root)
    assert mark.since == "20240105" and mark.failed["1.2.3.1"].reason == "gone"
