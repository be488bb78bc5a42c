"""The archive: which patients, their labels, and writing them all to `OUT/archive/`.

Every patient is drawn from its own seeded generator (seeded from the archive's
seed), so the same seed gives byte-identical files however many processes write them.

Two kinds of archive. Whole studies (the default; tasks/synth/studies.py) are what a
hospital holds: `OUT/archive/` with every series of every study and a DICOM SEG of the
lesion, plus `OUT/lesions.csv` (the lesion range of every abdominal series) and
`OUT/series.csv` (what each series is). `lesion_only` writes the paper's curated
format instead, unchanged: only slices through the mass, and no annotations (every
slice shows it).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.uid import UID

from renalflow.tasks.config import SynthDefaults
from renalflow.tasks.synth.anatomy import SIZE, paint_bowel_gas, paint_kidneys, phase_lut
from renalflow.tasks.synth.lesions import MALIGNANT_MIX, paint_lesion
from renalflow.tasks.synth.seg import LesionRange, write_lesions_csv
from renalflow.tasks.synth.studies import (
    SERIES_CSV_HEADER,
    THICKNESSES,
    PatientResult,
    SeriesRecord,
    draw_patient,
    write_whole_patient,
)
from renalflow.tasks.synth.writer import (
    DEFAULT_SYNTAXES,
    SeriesTags,
    acquisition_time,
    add_noise,
    choose_syntax,
    derive_uid,
    save_new,
    series_folder,
    slice_dataset,
)

_DEFAULTS = SynthDefaults()

LESIONS_CSV = "lesions.csv"
SERIES_CSV = "series.csv"
LABELS_CSV = "labels.csv"


@dataclass(frozen=True)
class SynthConfig:
    """What `renalflow synth` makes. Defaults follow the paper's cohort (19% benign) and
    tasks/config.py's SynthDefaults (whole studies).

    `lesion_only` writes the curated archive (slices through the mass, at most
    `max_slices_per_series` a series); the other fields shape whole studies."""

    patients: int = 20
    seed: int = 0
    benign_fraction: float = 0.19
    max_slices_per_series: int = _DEFAULTS.max_lesion_slices
    syntaxes: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SYNTAXES))
    first_study_year: int = 2015
    last_study_year: int = 2018
    patient_prefix: str = "RF"
    lesion_only: bool = False
    study_slices: tuple[int, int] = _DEFAULTS.study_slices
    matrix: int = _DEFAULTS.matrix
    chest_share: float = _DEFAULTS.chest_share
    head_share: float = _DEFAULTS.head_share
    scout_share: float = _DEFAULTS.scout_share
    twin_share: float = _DEFAULTS.twin_share
    seg_share: float = _DEFAULTS.seg_share

    def __post_init__(self) -> None:
        if self.patients < 1:
            raise ValueError(f"patients must be at least 1, got {self.patients}")
        if not 0 <= self.benign_fraction <= 1:
            raise ValueError(f"benign_fraction must be in [0, 1], got {self.benign_fraction}")
        if self.max_slices_per_series < 1:
            raise ValueError("max_slices_per_series must be at least 1")
        low, high = self.study_slices
        if not 1 <= low <= high:
            raise ValueError(f"study_slices must be 1 <= fewest <= most, got {low}, {high}")
        if self.lesion_only and self.matrix != SIZE:
            raise ValueError(f"curated (lesion-only) archives are {SIZE} x {SIZE}")
        if not 32 <= self.matrix <= 1024:
            raise ValueError(f"matrix must be 32 to 1024 pixels, got {self.matrix}")
        for name in ("chest_share", "head_share", "scout_share", "twin_share", "seg_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for uid in self.syntaxes:
            if uid not in DEFAULT_SYNTAXES:
                raise ValueError(
                    f"transfer syntax {uid} is not one the generator writes; choose from "
                    + ", ".join(f"{u} ({UID(u).name})" for u in DEFAULT_SYNTAXES)
                )


@dataclass(frozen=True)
class PatientPlan:
    index: int
    patient_id: str
    label: str
    histology: str
    seed: int


@dataclass
class SynthReport:
    patients: int = 0
    series: int = 0
    slices: int = 0
    benign: int = 0
    seconds: float = 0.0
    by_syntax: dict[str, int] = field(default_factory=dict)
    studies: dict[str, int] = field(default_factory=dict)  # whole studies: by kind
    seg_objects: int = 0
    lesion_series: int = 0  # rows of lesions.csv


def plan_patients(config: SynthConfig) -> list[PatientPlan]:
    """Labels and histologies for every patient, fixed by the seed."""
    rng = np.random.default_rng([config.seed, 0])
    n = config.patients
    n_benign = round(n * config.benign_fraction)
    if n >= 2 and 0 < config.benign_fraction < 1:
        n_benign = min(max(n_benign, 1), n - 1)
    benign = set(rng.permutation(n)[:n_benign].tolist())
    names = [h for h, _ in MALIGNANT_MIX]
    weights = np.array([w for _, w in MALIGNANT_MIX])
    plans = []
    for i in range(n):
        if i in benign:
            label, histology = "benign", "oncocytoma"
        else:
            label, histology = "malignant", names[int(rng.choice(len(names), p=weights))]
        plans.append(
            PatientPlan(
                i,
                f"{config.patient_prefix}{i + 1:05d}",
                label,
                histology,
                int(rng.integers(0, 2**62)),
            )
        )
    return plans


def write_patient(
    plan: PatientPlan, config: SynthConfig, archive: Path
) -> tuple[int, int, dict[str, int]]:
    """Write every series of one curated (lesion-only) patient; returns (series, slices,
    files per syntax)."""
    rng = np.random.default_rng(plan.seed)
    drawn = draw_patient(rng, plan, config, SIZE)
    anatomy, lesion, study, spacing = drawn.anatomy, drawn.lesion, drawn.tags, drawn.spacing
    phases = drawn.phases
    by_syntax: dict[str, int] = {}
    n_slices = 0
    for s_no, phase in enumerate(phases, start=1):
        syntax = choose_syntax(rng, config.syntaxes)
        thickness = float(rng.choice(THICKNESSES))
        # Like the study, keep only images that show the mass: slices where its
        # cross-section is at least a third of its largest diameter.
        extent = 2 * lesion.radius_mm * lesion.z_scale * math.sqrt(1 - (1 / 3) ** 2)
        n = int(np.clip(round(extent / thickness), 2, config.max_slices_per_series))
        z0 = drawn.table_z - (n - 1) * thickness / 2
        description = str(rng.choice(drawn.vendor.descriptions[phase])).format(t=f"{thickness:.1f}")
        folder, extension = series_folder(rng, archive / drawn.folder)
        series = SeriesTags(
            series_uid=derive_uid(config.seed, plan.patient_id, "series", s_no),
            number=s_no,
            phase=phase,
            description=description,
            thickness=thickness,
            syntax=syntax,
            acquired=acquisition_time(study.bolus_start, phase),
        )
        lut = phase_lut(phase)
        for i in range(n):
            z = z0 + i * thickness
            dz = z - drawn.table_z
            hu = lut[anatomy.tissue_at(dz)]
            paint_bowel_gas(rng, anatomy, spacing, hu)
            paint_kidneys(anatomy, spacing, dz, phase, hu)
            paint_lesion(s_no, lesion, spacing, dz, phase, hu)
            add_noise(rng, drawn.vendor, thickness, hu)
            sop_uid = derive_uid(config.seed, plan.patient_id, "sop", s_no, i)
            ds = slice_dataset(study, series, sop_uid, i, z, hu, anatomy.outside_fov)
            save_new(ds, rng, folder, extension)
            by_syntax[syntax.name] = by_syntax.get(syntax.name, 0) + 1
            n_slices += 1
    return len(phases), n_slices, by_syntax


def write_labels(plans: list[PatientPlan], path: Path) -> None:
    """`labels.csv`: patient_id, label (benign or malignant) and histology."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient_id", "label", "histology"])
        for plan in plans:
            writer.writerow([plan.patient_id, plan.label, plan.histology])


def write_series_csv(records: list[SeriesRecord], path: Path) -> None:
    """`series.csv`: what each series of a whole-study archive is (SeriesRecord)."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SERIES_CSV_HEADER)
        for record in records:
            row = [getattr(record, name) for name in SERIES_CSV_HEADER]
            writer.writerow("" if value is None else value for value in row)


def _write_patient_job(args: tuple[PatientPlan, SynthConfig, str]) -> PatientResult:
    plan, config, archive = args
    if not config.lesion_only:
        return write_whole_patient(plan, config, Path(archive))
    series, slices, by_syntax = write_patient(plan, config, Path(archive))
    return PatientResult(series=series, slices=slices, by_syntax=by_syntax)


def synthesize_archive(
    out_dir: str | os.PathLike[str],
    config: SynthConfig,
    jobs: int | None = None,
    progress: Callable[[int, int, int], None] | None = None,
) -> SynthReport:
    """Write `OUT/archive/` and `OUT/labels.csv` (and for whole studies `OUT/lesions.csv`
    and `OUT/series.csv`); deterministic for `config.seed`.

    `progress(done_patients, total_patients, slices_so_far)` is called after each patient.
    """
    started = time.perf_counter()
    out = Path(out_dir)
    archive = out / "archive"
    archive.mkdir(parents=True, exist_ok=True)
    plans = plan_patients(config)
    write_labels(plans, out / LABELS_CSV)
    report = SynthReport(patients=len(plans), benign=sum(p.label == "benign" for p in plans))
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(plans)))
    work = [(plan, config, str(archive)) for plan in plans]
    results: list[PatientResult] = []
    if jobs == 1:
        for done, item in enumerate(work, start=1):
            results.append(_write_patient_job(item))
            report.slices += results[-1].slices
            if progress:
                progress(done, len(work), report.slices)
    else:
        # Never fork: a process that already loaded TensorFlow (the demo synthesises
        # after training; tests do) leaves forked children that crash when they collect
        # its objects. Forkserver children start from a clean interpreter.
        context = multiprocessing.get_context("forkserver")
        with (
            _main_without_a_missing_file(),
            ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool,
        ):
            for done, result in enumerate(pool.map(_write_patient_job, work), start=1):
                results.append(result)
                report.slices += result.slices
                if progress:
                    progress(done, len(work), report.slices)
    report.slices = 0
    lesions: list[LesionRange] = []
    records: list[SeriesRecord] = []
    for result in results:
        report.series += result.series
        report.slices += result.slices
        report.seg_objects += result.seg_objects
        for name, count in result.by_syntax.items():
            report.by_syntax[name] = report.by_syntax.get(name, 0) + count
        lesions.extend(result.lesions)
        records.extend(result.records)
    if not config.lesion_only:
        write_lesions_csv(lesions, out / LESIONS_CSV)
        write_series_csv(records, out / SERIES_CSV)
        report.lesion_series = len(lesions)
        studies = {(r.study_instance_uid, r.study) for r in records}
        for _, kind in sorted(studies):
            report.studies[kind.value] = report.studies.get(kind.value, 0) + 1
    report.seconds = time.perf_counter() - started
    return report


@contextlib.contextmanager
def _main_without_a_missing_file() -> Iterator[None]:
    """While the pool runs, a __main__ read from stdin (`python -`, a notebook's kernel)
    names no file: children would try to run `<stdin>` as a path and die. They need
    nothing of __main__ (the work is this module's function)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None or os.path.exists(path):
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


def archive_digest(archive: str | os.PathLike[str]) -> str:
    """SHA-256 over every file's relative path and bytes (for determinism checks)."""
    digest = hashlib.sha256()
    root = Path(archive)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
