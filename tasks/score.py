"""Retrospective scoring, the planning side: the settings, which studies a model has not
scored yet, how they are cut into tasks, which slices to explain, and the run's summary.

The flow (flows/score.py) strings the pieces together: ingest what is new, read the
store's inventory (tasks.store.read_inventory), `plan_scoring`, score the batches on the
workers (tasks.inference), then build and write R's rows (tasks.results).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from renalflow.tasks.config import IMAGE_THRESHOLD, MIN_IMAGES, VOTE_THRESHOLD, SeriesRule
from renalflow.tasks.pseudonym import pseudonym
from renalflow.tasks.selection import (
    SeriesDecision,
    StudySelection,
    annotated,
    check_selection_possible,
    select_series,
)
from renalflow.tasks.vote import check_thresholds, deciding_slices, vote

if TYPE_CHECKING:
    from renalflow.tasks.sources.fetch import SourceSummary


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
        all_slices: vote over every slice of a study's screened series when nothing else
            (annotations, a slice selector) says which show the mass: right for curated
            archives of lesion slices (the paper's), wrong for whole studies.
        series_rule: which series are screened (tasks/selection.py).
    """

    image_threshold: float = IMAGE_THRESHOLD
    vote_threshold: float = VOTE_THRESHOLD
    min_images: int = MIN_IMAGES
    batch_size: int = 64
    explain: bool = False
    explain_per_side: int = 3
    all_slices: bool = False
    series_rule: SeriesRule = field(default_factory=SeriesRule)

    def __post_init__(self) -> None:
        check_thresholds(self.image_threshold, self.vote_threshold)
        if self.min_images < 1 or self.batch_size < 1:
            raise ValueError("min_images and batch_size must be at least 1")


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


@dataclass
class SelectionPlan:
    """What the classifier sees: `direct` slices go to it as they are (annotated lesion
    slices, or every slice with all_slices); `screened` slices go through the slice
    selector first (studies without annotations, when a selector is given)."""

    series: pd.DataFrame  # tasks.selection.select_series' decisions
    direct: pd.DataFrame
    screened: pd.DataFrame


def plan_selection(slices: pd.DataFrame, config: ScoreConfig, *, selector: bool) -> SelectionPlan:
    """Series selection, then which slices go to the models; refuses (InputError) when
    nothing can decide which slices of some study vote."""
    series = select_series(slices, config.series_rule)
    check_selection_possible(slices, series, selector=selector, all_slices=config.all_slices)
    chosen = set(
        series.loc[series["decision"] == SeriesDecision.SELECTED.value, "series_instance_uid"]
    )
    usable = slices[slices["series_instance_uid"].isin(chosen)]
    covered = annotated(slices)
    with_truth = usable["study_instance_uid"].map(covered).fillna(False).astype(bool)
    lesion = (
        usable["lesion"].fillna(False).astype(bool)
        if "lesion" in usable
        else pd.Series(False, index=usable.index)
    )
    direct = usable[with_truth & lesion]
    rest = usable[~with_truth]
    if selector:
        return SelectionPlan(series, direct.reset_index(drop=True), rest.reset_index(drop=True))
    if config.all_slices:
        direct = pd.concat([direct, rest])
    return SelectionPlan(series, direct.reset_index(drop=True), rest.iloc[:0])


def score_batches(slices: pd.DataFrame, target_images: int) -> list[pd.DataFrame]:
    """Split the slices to score into tasks of about `target_images`, each reading from
    as few part files as possible (slices of one part stay together where they fit)."""
    batches: list[pd.DataFrame] = []
    for _, group in slices.groupby("part", sort=True):
        for start in range(0, len(group), target_images):
            batches.append(group.iloc[start : start + target_images])
    return batches


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


@dataclass
class ScoreSummary:
    """What a scoring run did."""

    archive: str
    results: str
    store: str
    model_version: str
    run_id: str
    files_new: int = 0
    studies_in_archive: int = 0
    already_scored: int = 0
    rescored: int = 0
    studies_scored: int = 0
    images_scored: int = 0
    votes: dict[str, int] = field(default_factory=dict)
    qc_flagged: dict[str, int] = field(default_factory=dict)
    slice_rows_inserted: int = 0
    vote_rows_inserted: int = 0
    vote_rows_updated: int = 0
    seconds: float = 0.0
    inference_seconds: float = 0.0
    busy_seconds: float = 0.0
    workers: int = 0
    score_tasks: int = 0
    key_id: str = ""
    heatmaps: int = 0
    heatmap_dir: str = ""
    slices_in_studies: int = 0
    slices_selected: int = 0
    selection_sources: dict[str, int] = field(default_factory=dict)
    series_skipped: dict[str, int] = field(default_factory=dict)
    patient_rows_written: int = 0
    source: SourceSummary | None = None  # what was fetched from a PACS archive
    reports_sent: int = 0  # SR documents the PACS acknowledged (--report-to-pacs)
    reports_not_sent: dict[str, str] = field(default_factory=dict)  # SOP UID -> reason

    def add_plan(self, plan: ScoringPlan) -> None:
        self.studies_in_archive = plan.studies_in_archive
        self.already_scored = plan.already_scored
        self.rescored = plan.rescored
        self.studies_scored = plan.studies

    def add_selection(self, selections: list[StudySelection], series: pd.DataFrame) -> None:
        self.slices_in_studies = sum(s.slices_in_study for s in selections)
        self.slices_selected = sum(s.slices_selected for s in selections)
        sources = Counter(s.source.value for s in selections if s.source is not None)
        self.selection_sources = dict(sorted(sources.items()))
        skipped = series.loc[series["decision"] != SeriesDecision.SELECTED.value, "decision"]
        self.series_skipped = dict(sorted(Counter(str(d) for d in skipped).items()))


def batch_parts(batch: pd.DataFrame) -> dict[str, list[str]]:
    """A task's slices as the scorer reads them: SOPInstanceUIDs per store part file."""
    return {str(part): group["sop_instance_uid"].tolist() for part, group in batch.groupby("part")}


def default_store(results: str) -> str:
    """The slice store beside R (`R.slices`): it holds identifiers and pixels, so it
    stays inside the department, unlike R."""
    return results.rstrip("/") + ".slices"


def default_heatmap_dir(results: str) -> str:
    """Where heat maps go unless told: beside R (`R.heatmaps`)."""
    return results.rstrip("/") + ".heatmaps"


def summary_dict(summary: ScoreSummary) -> dict[str, Any]:
    """The summary as plain JSON-ready values (for `--summary-json` and scripts)."""
    out = asdict(summary)
    out["source"] = summary.source.to_dict() if summary.source else None
    return out


def format_summary(summary: ScoreSummary) -> str:
    lines = [
        f"score run {summary.run_id}  (model_version {summary.model_version}, "
        f"key id {summary.key_id})",
        f"  archive            {summary.archive}",
        f"  slice store        {summary.store}",
        f"  results            {summary.results}",
        *(summary.source.lines() if summary.source else []),
        f"  new files          {summary.files_new:>8,}",
        f"  studies in archive {summary.studies_in_archive:>8,}",
        f"  already scored     {summary.already_scored:>8,}",
        f"  scored now         {summary.studies_scored:>8,}"
        + (f"  ({summary.rescored} rescored: images added)" if summary.rescored else ""),
        f"  images scored      {summary.images_scored:>8,}",
    ]
    if summary.slices_in_studies:
        sources = ", ".join(f"{k} {v}" for k, v in summary.selection_sources.items())
        lines.append(
            f"  slices selected    {summary.slices_selected:>8,}  of "
            f"{summary.slices_in_studies:,} in the studies (by {sources or 'nothing'})"
        )
    for decision, count in summary.series_skipped.items():
        lines.append(f"    series skipped {decision:<10} {count:>5,}")
    for decided, count in summary.votes.items():
        lines.append(f"    vote {decided:<13} {count:>8,}")
    for flag, count in sorted(summary.qc_flagged.items()):
        lines.append(f"    QC {flag:<15} {count:>8,}")
    lines.append(
        f"  rows written       {summary.slice_rows_inserted:,} slice_scores, "
        f"{summary.vote_rows_inserted:,} study_votes"
        + (f" ({summary.vote_rows_updated} updated)" if summary.vote_rows_updated else "")
        + f", {summary.patient_rows_written:,} patient_votes"
    )
    if summary.heatmaps:
        lines.append(f"  heat maps          {summary.heatmaps:>8,}  in {summary.heatmap_dir}")
    if summary.reports_sent or summary.reports_not_sent:
        lines.append(
            f"  SR to the PACS     {summary.reports_sent:>8,}  sent, "
            f"{len(summary.reports_not_sent):,} not sent (kept; sent by the next run)"
        )
        for uid, reason in list(summary.reports_not_sent.items())[:3]:
            lines.append(f"    not sent: {uid}: {reason}")
    lines.append(f"  wall time          {summary.seconds:>8.1f} s")
    if summary.inference_seconds and summary.workers:
        rate = summary.images_scored / summary.inference_seconds
        lines.append(
            f"  inference          {summary.inference_seconds:>8.1f} s  ({rate:,.0f} images/s, "
            f"{rate / summary.workers:,.0f} per worker thread, {summary.score_tasks} tasks)"
        )
    return "\n".join(lines)
