"""What a screening run votes on: which series of a study, and which of their slices.

A hospital archive holds whole studies: chest, head and abdominal CT, several phases,
the same acquisition reconstructed thin and thick. The model was trained (as in the
paper) on slices through the renal mass only, so a vote means something only over
such slices. Selection runs in two steps, both on metadata the store already holds:

1. Series: abdominal axial original CT only (`SeriesRule` in tasks/config.py says how
   a series is judged, with its words), and one series per
   acquisition: of two reconstructions (same FrameOfReferenceUID and phase, overlapping
   z range), the one whose slice thickness is nearest the paper's 1.5-5 mm is kept;
   never a series whose slices all lie at one level (bolus tracking, monitoring).
2. Slices: lesion annotations where the study has them, else a slice selector's
   decisions, else (only when asked for) every slice of the selected series.

Every decision is kept with its reason, so a results row can say what was voted on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import pandas as pd

from renalflow.tasks.config import SLICE_THICKNESS_MM, SelectionSource, SeriesRule
from renalflow.tasks.errors import InputError


class SeriesDecision(StrEnum):
    """Why a series is or is not screened."""

    SELECTED = "selected"
    NOT_ABDOMINAL = "not_abdominal"  # its body part or description names another region
    ONE_LEVEL = "one_level"  # every slice at one z: bolus tracking, monitoring, dynamic
    TOO_SHORT = "too_short"  # z extent below the rule's minimum
    TWIN = "twin"  # another reconstruction of the same acquisition is screened instead


class RegionBasis(StrEnum):
    """What told the series' region."""

    BODY_PART = "body_part"  # BodyPartExamined
    DESCRIPTION = "description"  # words of SeriesDescription
    UNKNOWN = "unknown"  # neither: kept, and said so


@dataclass(frozen=True)
class Region:
    abdominal: bool
    basis: RegionBasis
    reason: str


_WORD = re.compile(r"[a-z]+")


def judge_region(body_part: str, description: str, rule: SeriesRule) -> Region:
    """Does a series cover the kidneys, by BodyPartExamined, else by its description?"""
    part = (body_part or "").strip().upper().replace(" ", "")
    if part:
        if part in rule.body_parts:
            return Region(True, RegionBasis.BODY_PART, f"BodyPartExamined {part}")
        return Region(False, RegionBasis.BODY_PART, f"BodyPartExamined {part}")
    words = _WORD.findall((description or "").lower())
    including = [w for w in words if w.startswith(rule.include_words)]
    if including:
        return Region(True, RegionBasis.DESCRIPTION, f"description word {including[0]!r}")
    excluding = [w for w in words if w.startswith(rule.exclude_words)]
    if excluding:
        return Region(False, RegionBasis.DESCRIPTION, f"description word {excluding[0]!r}")
    return Region(True, RegionBasis.UNKNOWN, "no BodyPartExamined and no telling description")


def thickness_distance(thickness: float | None) -> float:
    """How far a slice thickness lies outside the paper's range (0 inside it)."""
    if thickness is None or not np.isfinite(thickness) or thickness <= 0:
        return float("inf")
    low, high = SLICE_THICKNESS_MM
    return max(low - thickness, 0.0, thickness - high)


def _first(values: pd.Series) -> object:
    present = values.dropna()
    return present.iloc[0] if len(present) else None


def describe_series(slices: pd.DataFrame) -> pd.DataFrame:
    """One row per series of the given slice rows (store inventory columns): its study,
    slice count, z range, median thickness and the header values selection reads."""
    if slices.empty:
        return pd.DataFrame(
            columns=[
                "study_instance_uid",
                "series_instance_uid",
                "slices",
                "z_min",
                "z_max",
                "slice_thickness",
                "series_description",
                "body_part_examined",
                "frame_of_reference_uid",
                "acquisition_number",
                "phase",
            ]
        )
    frame = slices.copy()
    for column in (
        "slice_thickness",
        "series_description",
        "body_part_examined",
        "frame_of_reference_uid",
        "acquisition_number",
    ):
        if column not in frame:  # a store written before selection read these
            frame[column] = None
    grouped = frame.groupby(["study_instance_uid", "series_instance_uid"], sort=True)
    series = grouped.agg(
        slices=("sop_instance_uid", "size"),
        z_min=("z", "min"),
        z_max=("z", "max"),
        slice_thickness=("slice_thickness", "median"),
        series_description=("series_description", _first),
        body_part_examined=("body_part_examined", _first),
        frame_of_reference_uid=("frame_of_reference_uid", _first),
        acquisition_number=("acquisition_number", _first),
        phase=("phase", _first),
    )
    return series.reset_index()


def _overlap(a: pd.Series, b: pd.Series) -> float:
    """Share of the shorter z range that the two series share."""
    ends = [a["z_min"], a["z_max"], b["z_min"], b["z_max"]]
    if any(pd.isna(v) for v in ends):
        return 0.0
    a_min, a_max, b_min, b_max = (float(v) for v in ends)
    shared = min(a_max, b_max) - max(a_min, b_min)
    shorter = min(a_max - a_min, b_max - b_min)
    if shorter <= 0:
        return 1.0 if shared >= 0 else 0.0
    return max(0.0, shared / shorter)


def header_text(value: object) -> str:
    """A header value from a series table as text: "" for a missing one (None or NaN)."""
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def _same_acquisition(a: pd.Series, b: pd.Series) -> bool:
    """Two reconstructions of one acquisition: same frame of reference and phase, the same
    AcquisitionNumber where both have one, and z ranges overlapping by at least half."""
    frame = header_text(a["frame_of_reference_uid"])
    if not frame or frame != header_text(b["frame_of_reference_uid"]):
        return False
    if header_text(a["phase"]) != header_text(b["phase"]):
        return False
    numbers = (a["acquisition_number"], b["acquisition_number"])
    if not any(pd.isna(n) for n in numbers) and numbers[0] != numbers[1]:
        return False
    return _overlap(a, b) >= 0.5


def _keep_order(row: pd.Series) -> tuple[float, int, str]:
    """Nearest the paper's thickness first; then more slices (the thinner of two inside
    the range: more images vote); then the series UID, so the choice is reproducible."""
    value = row["slice_thickness"]
    thickness = None if pd.isna(value) else float(value)
    return (thickness_distance(thickness), -int(row["slices"]), str(row["series_instance_uid"]))


def select_series(slices: pd.DataFrame, rule: SeriesRule | None = None) -> pd.DataFrame:
    """Every series of the given slices with its decision (`SeriesDecision`), the reason
    in words, its region basis, and for a twin the series screened instead (`twin_of`)."""
    rule = rule or SeriesRule()
    series = describe_series(slices)
    decisions: list[str] = []
    reasons: list[str] = []
    bases: list[str] = []
    for row in series.to_dict("records"):
        region = judge_region(
            header_text(row["body_part_examined"]), header_text(row["series_description"]), rule
        )
        bases.append(region.basis.value)
        ends = (row["z_min"], row["z_max"])
        extent = 0.0 if any(pd.isna(v) for v in ends) else float(ends[1]) - float(ends[0])
        if not region.abdominal:
            decisions.append(SeriesDecision.NOT_ABDOMINAL.value)
            reasons.append(f"{region.reason}: not an abdominal series")
        elif row["slices"] > 1 and extent == 0:
            decisions.append(SeriesDecision.ONE_LEVEL.value)
            reasons.append(
                f"{row['slices']} slices all at one level: a bolus-tracking, monitoring or "
                "dynamic series, not a scan through the body"
            )
        elif extent < rule.min_z_extent_mm:
            decisions.append(SeriesDecision.TOO_SHORT.value)
            reasons.append(
                f"{row['slices']} slices over {extent:.0f} mm, under the "
                f"{rule.min_z_extent_mm:g} mm a screened series needs"
            )
        else:
            decisions.append(SeriesDecision.SELECTED.value)
            reasons.append(region.reason)
    series["decision"] = decisions
    series["reason"] = reasons
    series["region_basis"] = bases
    series["twin_of"] = None
    _mark_twins(series)
    return series


def _mark_twins(series: pd.DataFrame) -> None:
    """Among a study's selected series, group reconstructions of one acquisition and keep
    one of each group (in place)."""
    selected = series[series["decision"] == SeriesDecision.SELECTED.value]
    for _, study in selected.groupby("study_instance_uid", sort=False):
        rows = [row for _, row in study.iterrows()]
        parent = list(range(len(rows)))
        for i, a in enumerate(rows):
            for j in range(i + 1, len(rows)):
                if _same_acquisition(a, rows[j]):
                    parent[_root(parent, j)] = _root(parent, i)
        groups: dict[int, list[int]] = {}
        for i in range(len(rows)):
            groups.setdefault(_root(parent, i), []).append(i)
        for members in groups.values():
            if len(members) > 1:
                _keep_one([rows[i] for i in members], series)


def _root(parent: list[int], i: int) -> int:
    while parent[i] != i:
        i = parent[i]
    return i


def _keep_one(twins: list[pd.Series], series: pd.DataFrame) -> None:
    kept = min(twins, key=_keep_order)
    low, high = SLICE_THICKNESS_MM
    thickness = float(kept["slice_thickness"])
    for row in twins:
        index = row.name
        if row is kept:
            series.loc[index, "reason"] = (
                f"{row['reason']}; of {len(twins)} reconstructions of one acquisition, the "
                f"one nearest {low:g}-{high:g} mm ({thickness:g} mm)"
            )
            continue
        series.loc[index, "decision"] = SeriesDecision.TWIN.value
        series.loc[index, "twin_of"] = kept["series_instance_uid"]
        series.loc[index, "reason"] = (
            f"another reconstruction of the acquisition of {kept['series_instance_uid']} "
            f"({float(row['slice_thickness']):g} mm against {thickness:g} mm)"
        )


@dataclass(frozen=True)
class StudySelection:
    """Which slices of one study vote, and how that was decided."""

    study_instance_uid: str
    slices_in_study: int
    series_used: tuple[str, ...]
    source: SelectionSource | None  # None: nothing could decide (see `select_slices`)
    selected: frozenset[str]  # SOPInstanceUIDs that vote

    @property
    def slices_selected(self) -> int:
        return len(self.selected)


def annotated(slices: pd.DataFrame) -> pd.Series:
    """Per study: whether lesion annotations cover its slices (`lesion` known anywhere)."""
    if "lesion" not in slices:
        return pd.Series(False, index=pd.Index(slices["study_instance_uid"].unique()))
    return slices["lesion"].notna().groupby(slices["study_instance_uid"]).any()


def select_slices(
    slices: pd.DataFrame,
    series: pd.DataFrame,
    *,
    selector: dict[str, bool] | None = None,
    all_slices: bool = False,
) -> list[StudySelection]:
    """The slices that vote in each study of `slices`.

    `series` is `select_series`' answer for these slices. Per study: its annotated lesion
    slices when annotations cover it; else the slice selector's decisions (`selector`
    maps SOPInstanceUID -> selected); else every slice of its selected series when
    `all_slices`; else nothing decides (source None). A study whose selection is empty
    gets no vote (`no_mass_found`)."""
    chosen_series = set(
        series.loc[series["decision"] == SeriesDecision.SELECTED.value, "series_instance_uid"]
    )
    has_annotations = annotated(slices)
    out: list[StudySelection] = []
    for study_uid, study in slices.groupby("study_instance_uid", sort=True):
        usable = study[study["series_instance_uid"].isin(chosen_series)]
        used = tuple(sorted(set(usable["series_instance_uid"])))
        source: SelectionSource | None
        if bool(has_annotations.get(study_uid, False)):
            source = SelectionSource.ANNOTATION
            picked = usable.loc[usable["lesion"].fillna(False).astype(bool), "sop_instance_uid"]
        elif selector is not None:
            source = SelectionSource.SELECTOR
            picked = usable.loc[
                usable["sop_instance_uid"].map(lambda uid: bool(selector.get(uid, False))),
                "sop_instance_uid",
            ]
        elif all_slices:
            source = SelectionSource.ALL
            picked = usable["sop_instance_uid"]
        else:
            source = None
            picked = usable["sop_instance_uid"].iloc[:0]
        out.append(
            StudySelection(
                study_instance_uid=str(study_uid),
                slices_in_study=int(study["sop_instance_uid"].nunique()),
                series_used=used,
                source=source,
                selected=frozenset(str(u) for u in picked),
            )
        )
    return out


def check_selection_possible(
    slices: pd.DataFrame, series: pd.DataFrame, *, selector: bool, all_slices: bool
) -> None:
    """Refuse, before any inference, studies that nothing can select slices in: a study
    with a screened series (`series`: `select_series`' decisions) and no lesion
    annotations, when there is no selector and `all_slices` is off. A study with no
    screened series (a chest or head CT) needs nothing: it has no mass to find."""
    if selector or all_slices:
        return
    covered = annotated(slices)
    screened = set(
        series.loc[series["decision"] == SeriesDecision.SELECTED.value, "study_instance_uid"]
    )
    bare = [uid for uid in screened if not bool(covered.get(uid, False))]
    if bare:
        raise InputError(
            f"{len(bare)} of {len(screened)} studies with an abdominal series carry no lesion "
            "annotations, so nothing says which of their slices show the renal mass: pass "
            "--selector MODEL (a slice selector, `renalflow train --task selector`), "
            "--lesions CSV at ingest, or --all-slices when the archive holds only curated "
            "slices through the mass (as in the paper)"
        )


def mass_slices(slices: pd.DataFrame, rule: SeriesRule | None = None) -> np.ndarray:
    """Which of these slices show the renal mass, for the classifier to learn from and
    be evaluated on (the paper's unit: slices through the tumour, never a whole study).

    The one rule, as for scoring: series selection first (no chest or head series, one
    of two reconstructions); then a study's annotated lesion slices where annotations
    cover it; else every slice of its selected series, taken as curated slices through
    the mass, which is refused (one line) for a series wider than the rule's
    `curated_max_z_mm`: that is a whole scan, and nothing says where its mass is."""
    if slices.empty:
        return np.zeros(0, dtype=bool)
    rule = rule or SeriesRule()
    series = select_series(slices, rule)
    covered = annotated(slices)
    bare = set(covered.index[~covered.to_numpy(dtype=bool)])
    extent = series["z_max"].astype(float) - series["z_min"].astype(float)
    wide = series[
        series["study_instance_uid"].isin(bare)
        & (series["decision"] == SeriesDecision.SELECTED.value)
        & (extent > rule.curated_max_z_mm)
    ]
    if len(wide):
        studies = wide["study_instance_uid"].nunique()
        widest = float(extent[wide.index].max())
        raise InputError(
            f"{studies} {'study' if studies == 1 else 'studies'} without lesion annotations "
            f"{'holds' if studies == 1 else 'hold'} series over "
            f"{rule.curated_max_z_mm:g} mm along the body (up to {widest:.0f} mm): whole "
            "scans, not slices through the mass, and nothing says which of their slices "
            "show it. Give their lesions at ingest (--lesions CSV, or the studies' DICOM "
            "SEG in the archive), or ingest only the curated slices through the mass"
        )
    chosen: set[str] = set()
    for selection in select_slices(slices, series, all_slices=True):
        chosen |= selection.selected
    return slices["sop_instance_uid"].isin(chosen).to_numpy(dtype=bool)
