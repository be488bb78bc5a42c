"""Synthetic renal-mass CT archives that look and behave like a hospital export.

Real CT of renal masses cannot be shipped, so renalflow makes its own: per patient
one to three axial series (non-contrast, arterial/corticomedullary, venous/
nephrographic) through an abdomen with liver, spine, aorta, IVC, both kidneys and a
renal mass. The mass follows the radiology literature:

- oncocytoma (benign): well circumscribed, homogeneous, avid enhancement, a central
  stellate scar in about a third;
- clear-cell RCC: heterogeneous avid enhancement, central necrosis, irregular margin;
- papillary RCC: homogeneous but hypo-enhancing;
- chromophobe RCC: homogeneous, moderately enhancing, sometimes a scar; the classic
  mimic of oncocytoma.

Sizes overlap between classes and the non-contrast phase carries little signal, so
a CNN can learn the task but not trivially. Everything is drawn from one seeded
generator per patient: the same seed gives byte-identical files.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from renalflow.tasks.config import Phase

SIZE = 512

# Transfer syntaxes the generator writes, with their default shares.
DEFAULT_SYNTAXES: dict[str, float] = {
    str(ExplicitVRLittleEndian): 0.40,
    str(ImplicitVRLittleEndian): 0.20,
    str(RLELossless): 0.25,
    str(JPEG2000Lossless): 0.15,
}


@dataclass(frozen=True)
class SynthConfig:
    """What `renalflow synth` makes. Defaults follow the paper's cohort (19% benign)."""

    patients: int = 20
    seed: int = 0
    benign_fraction: float = 0.19
    max_slices_per_series: int = 30
    syntaxes: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SYNTAXES))
    first_study_year: int = 2015
    last_study_year: int = 2018
    patient_prefix: str = "RF"

    def __post_init__(self) -> None:
        if self.patients < 1:
            raise ValueError(f"patients must be at least 1, got {self.patients}")
        if not 0 <= self.benign_fraction <= 1:
            raise ValueError(f"benign_fraction must be in [0, 1], got {self.benign_fraction}")
        if self.max_slices_per_series < 1:
            raise ValueError("max_slices_per_series must be at least 1")
        for uid in self.syntaxes:
            if uid not in DEFAULT_SYNTAXES:
                raise ValueError(
                    f"transfer syntax {uid} is not one the generator writes; choose from "
                    + ", ".join(f"{u} ({UID(u).name})" for u in DEFAULT_SYNTAXES)
                )


@dataclass(frozen=True)
class Vendor:
    manufacturer: str
    model: str
    signed: bool  # PixelRepresentation 1 with intercept 0, else unsigned with -1024
    kernel: str
    noise_hu: float
    descriptions: dict[Phase, tuple[str, ...]]


VENDORS = (
    Vendor(
        "SIEMENS",
        "SOMATOM Definition AS+",
        False,
        "B30f",
        11.0,
        {
            Phase.NONCONTRAST: ("Abdomen NATIVE {t} B30f", "NATIV {t}"),
            Phase.ARTERIAL: ("Abdomen ARTERIAL {t} B30f", "ART {t} Br40"),
            Phase.VENOUS: ("Abdomen PORTAL {t} B30f", "Nephro {t} Br40"),
        },
    ),
    Vendor(
        "GE MEDICAL SYSTEMS",
        "Revolution CT",
        True,
        "STANDARD",
        13.0,
        {
            Phase.NONCONTRAST: ("NON CONTRAST {t}mm", "Plain {t}"),
            Phase.ARTERIAL: ("Arterial {t}mm", "Abd {t} STND"),
            Phase.VENOUS: ("PV {t}mm", "Abd {t} STND"),
        },
    ),
    Vendor(
        "Philips",
        "IQon Spectral CT",
        False,
        "B",
        10.0,
        {
            Phase.NONCONTRAST: ("Unenhanced {t}", "Kidney NC {t}"),
            Phase.ARTERIAL: ("Corticomedullary {t}", "Arterial {t}"),
            Phase.VENOUS: ("Nephrographic {t}", "Venous {t}"),
        },
    ),
    Vendor(
        "TOSHIBA",
        "Aquilion ONE",
        False,
        "FC18",
        14.0,
        {
            Phase.NONCONTRAST: ("Plain {t}", "Abd {t} FC18"),
            Phase.ARTERIAL: ("ART {t}", "Abd {t} FC18"),
            Phase.VENOUS: ("Venous {t}", "Abd {t} FC18"),
        },
    ),
)

# HU of each tissue by phase: noncontrast, arterial, venous.
TISSUE_HU: dict[str, tuple[float, float, float]] = {
    "air": (-1000, -1000, -1000),
    "fat": (-100, -100, -100),
    "muscle": (50, 60, 70),
    "liver": (60, 80, 115),
    "spleen": (45, 120, 120),
    "bone_cortex": (800, 800, 800),
    "bone_marrow": (230, 240, 240),
    "aorta": (40, 320, 160),
    "ivc": (40, 90, 150),
    "cortex": (35, 190, 165),
    "medulla": (30, 80, 165),
    "sinus_fat": (-90, -90, -90),
    "bowel_gas": (-900, -900, -900),
}
TISSUES = list(TISSUE_HU)
TISSUE_INDEX = {name: i for i, name in enumerate(TISSUES)}
PHASE_INDEX = {Phase.NONCONTRAST: 0, Phase.ARTERIAL: 1, Phase.VENOUS: 2}

# Lesion appearance: HU by phase, texture amplitude (HU), necrosis, margin irregularity.
HISTOLOGY: dict[str, dict[str, object]] = {
    "oncocytoma": {
        "hu": (38, 140, 120),
        "texture": 5.0,
        "necrosis": 0.0,
        "irregular": 0.03,
        "scar": 0.35,
    },
    "clear cell RCC": {
        "hu": (34, 170, 110),
        "texture": 45.0,
        "necrosis": 0.75,
        "irregular": 0.14,
        "scar": 0.0,
    },
    "papillary RCC": {
        "hu": (36, 60, 80),
        "texture": 10.0,
        "necrosis": 0.2,
        "irregular": 0.05,
        "scar": 0.0,
    },
    "chromophobe RCC": {
        "hu": (37, 100, 105),
        "texture": 12.0,
        "necrosis": 0.1,
        "irregular": 0.05,
        "scar": 0.2,
    },
}
MALIGNANT_MIX = (("clear cell RCC", 0.75), ("papillary RCC", 0.15), ("chromophobe RCC", 0.10))


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


def _grid() -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    return x, y


def _ellipse(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float
) -> np.ndarray:
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Smooth random texture in [-1, 1]: coarse noise upsampled bicubically."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    img = Image.fromarray(coarse, mode="F").resize((shape[1], shape[0]), Image.Resampling.BICUBIC)
    out = np.asarray(img, dtype=np.float32)
    return np.clip(out / 1.5, -1.0, 1.0)


@dataclass
class _Anatomy:
    """A patient's body: fixed geometry, and cross-sections that change along z.

    Organs do not look the same on every slice: the liver and spleen shrink towards
    their tips, vertebral bodies alternate with discs, the body outline tapers. Maps
    are computed per 4 mm of z and cached, so a series costs a few maps, not one a slice.
    """

    c: float
    cy: float
    mm: float
    body: tuple[float, float, float]  # rx, ry, subcutaneous fat thickness (pixels)
    taper: float  # relative change of the body outline per mm of z
    liver_z: float  # mm above the kidneys' mid-plane where the liver is widest
    spleen_z: float
    vertebra_z: float  # phase of the 32 mm vertebral cycle
    kidneys: list[tuple[float, float, float, float]]  # cx, cy, rx, ry at the mid-plane
    outside_fov: np.ndarray  # pixels outside the reconstructed circle
    gas_box: tuple[float, float, float, float]  # where bowel gas moves, slice to slice
    cache: dict[int, np.ndarray] = field(default_factory=dict)

    def tissue_at(self, dz_mm: float) -> np.ndarray:
        key = round(dz_mm / 4.0)
        if key not in self.cache:
            self.cache[key] = self._draw(key * 4.0)
        return self.cache[key]

    def _draw(self, z: float) -> np.ndarray:
        x, y = _grid()
        c, cy, mm = self.c, self.cy, self.mm
        rx0, ry0, fat = self.body
        scale = 1.0 + self.taper * z
        body_rx, body_ry = rx0 * scale, ry0 * scale
        tissue = np.full((SIZE, SIZE), TISSUE_INDEX["air"], dtype=np.uint8)
        tissue[_ellipse(x, y, c, cy, body_rx, body_ry)] = TISSUE_INDEX["fat"]
        tissue[_ellipse(x, y, c, cy, body_rx - fat, body_ry - fat)] = TISSUE_INDEX["muscle"]
        # Retroperitoneal and visceral fat around the organs.
        visceral = _ellipse(x, y, c, cy + 15 * mm, body_rx * 0.62, body_ry * 0.55)
        tissue[visceral] = TISSUE_INDEX["fat"]
        # Liver on the patient's right (image left), spleen on the left; both taper.
        liver = math.sqrt(max(0.0, 1 - ((z - self.liver_z) / 90.0) ** 2))
        if liver > 0.15:
            lx, ly = c - body_rx * 0.45, cy - body_ry * 0.2
            mask = _ellipse(x, y, lx, ly, body_rx * 0.42 * liver, body_ry * 0.55 * liver)
            tissue[mask] = TISSUE_INDEX["liver"]
        spleen = math.sqrt(max(0.0, 1 - ((z - self.spleen_z) / 60.0) ** 2))
        if spleen > 0.15:
            sx, sy = c + body_rx * 0.55, cy - body_ry * 0.05
            mask = _ellipse(x, y, sx, sy, body_rx * 0.18 * spleen, body_ry * 0.3 * spleen)
            tissue[mask] = TISSUE_INDEX["spleen"]
        # Spine: vertebral bodies alternate with discs every ~32 mm.
        spine_y = cy + ry0 * 0.45
        cycle = ((z - self.vertebra_z) % 32.0) / 32.0
        if cycle < 0.18:
            tissue[_ellipse(x, y, c, spine_y, 21 * mm, 18 * mm)] = TISSUE_INDEX["muscle"]  # disc
        else:
            tissue[_ellipse(x, y, c, spine_y, 22 * mm, 19 * mm)] = TISSUE_INDEX["bone_cortex"]
            tissue[_ellipse(x, y, c, spine_y, 18 * mm, 15 * mm)] = TISSUE_INDEX["bone_marrow"]
        if 0.3 < cycle < 0.85:
            process = _ellipse(x, y, c, spine_y + 30 * mm, 6 * mm, 14 * mm)
            tissue[process] = TISSUE_INDEX["bone_cortex"]
        for side in (-1, 1):
            psoas = _ellipse(x, y, c + side * 30 * mm, spine_y + 5 * mm, 26 * mm, 17 * mm)
            tissue[psoas & (tissue == TISSUE_INDEX["fat"])] = TISSUE_INDEX["muscle"]
        aorta = _ellipse(x, y, c + 14 * mm, spine_y - 27 * mm, 11 * mm, 11 * mm)
        tissue[aorta] = TISSUE_INDEX["aorta"]
        tissue[_ellipse(x, y, c - 18 * mm, spine_y - 25 * mm, 12 * mm, 9 * mm)] = TISSUE_INDEX[
            "ivc"
        ]
        return tissue


def _build_anatomy(rng: np.random.Generator, spacing: float) -> _Anatomy:
    x, y = _grid()
    mm = 1.0 / spacing
    c = SIZE / 2
    body_rx = rng.uniform(140, 175) * mm
    body_ry = rng.uniform(100, 125) * mm
    cy = c + rng.uniform(-8, 8) * mm
    fat = rng.uniform(8, 30) * mm
    spine_y = cy + body_ry * 0.45
    kidneys = []
    for side in (-1, 1):
        kidneys.append(
            (
                c + side * rng.uniform(55, 70) * mm,
                spine_y - rng.uniform(0, 10) * mm,
                rng.uniform(27, 33) * mm,
                rng.uniform(30, 38) * mm,
            )
        )
    outside = (x - c) ** 2 + (y - c) ** 2 > (SIZE / 2 - 2) ** 2
    gas_box = (c - 0.4 * body_rx, cy - 0.7 * body_ry, c + 0.4 * body_rx, cy)
    return _Anatomy(
        c=c,
        cy=cy,
        mm=mm,
        body=(body_rx, body_ry, fat),
        taper=float(rng.uniform(-0.0015, 0.0015)),
        liver_z=float(rng.uniform(10, 60)),
        spleen_z=float(rng.uniform(0, 40)),
        vertebra_z=float(rng.uniform(0, 32)),
        kidneys=kidneys,
        outside_fov=outside,
        gas_box=gas_box,
    )


@dataclass(frozen=True)
class _Lesion:
    side: int
    cx: float
    cy: float
    radius_mm: float
    z_scale: float
    histology: str
    scar: bool
    irregular_phases: tuple[float, ...]
    necrosis_seed: int


def _lesion_slice(
    rng_seed: int, lesion: _Lesion, spacing: float, dz_mm: float, phase: Phase, hu: np.ndarray
) -> None:
    """Paint the lesion cross-section `dz_mm` from its centre into `hu` (in place)."""
    props = HISTOLOGY[lesion.histology]
    r_mm = lesion.radius_mm * math.sqrt(
        max(0.0, 1 - (dz_mm / (lesion.radius_mm * lesion.z_scale)) ** 2)
    )
    if r_mm < 1.5:
        return
    r = r_mm / spacing
    half = int(r * 1.4) + 4
    x0, y0 = int(lesion.cx) - half, int(lesion.cy) - half
    ys, xs = np.mgrid[y0 : y0 + 2 * half, x0 : x0 + 2 * half].astype(np.float32)
    dx, dy = xs - lesion.cx, ys - lesion.cy
    theta = np.arctan2(dy, dx)
    irregular = float(props["irregular"])  # type: ignore[arg-type]
    boundary = r * (
        1
        + irregular
        * sum(math.sin(k) * np.cos((k + 2) * theta + lesion.irregular_phases[k]) for k in range(3))
    )
    dist = np.sqrt(dx * dx + dy * dy)
    inside = dist <= boundary
    if not inside.any():
        return
    rng = np.random.default_rng(
        [lesion.necrosis_seed, round(dz_mm * 10) & 0xFFFF, rng_seed & 0xFFFF]
    )
    base = float(props["hu"][PHASE_INDEX[phase]])  # type: ignore[index]
    contrast = 0.25 if phase is Phase.NONCONTRAST else 1.0
    texture = float(props["texture"]) * contrast  # type: ignore[arg-type]
    region = np.full(inside.shape, base, dtype=np.float32)
    if texture > 0:
        region += texture * _smooth_noise(rng, inside.shape, 6)
    necrosis = float(props["necrosis"])  # type: ignore[arg-type]
    if necrosis > 0:
        # Necrosis: patchy low-attenuation, non-enhancing foci of 5-10 mm scattered
        # through the mass (a little darker than viable tumour even without contrast),
        # the heterogeneity that sets clear-cell RCC apart on CT.
        cells = max(4, round(2 * half * spacing / 7.0))
        field = _smooth_noise(np.random.default_rng(lesion.necrosis_seed), inside.shape, cells)
        cut = float(np.quantile(field[inside], necrosis * 0.5))
        foci = inside & (field <= cut)
        region[foci] = 15.0 + 5.0 * field[foci]
    if lesion.scar and phase is not Phase.NONCONTRAST:
        # Central stellate scar: thin low-enhancing spokes meeting in the centre.
        spokes = np.abs(np.sin(2.5 * (theta + lesion.irregular_phases[0]))) < 0.22
        scar = (dist <= r * 0.45) & (spokes | (dist <= r * 0.12))
        region[scar] = base * 0.45
    # A rim of partial volume against the kidney, then paste.
    target = hu[y0 : y0 + 2 * half, x0 : x0 + 2 * half]
    target[inside] = region[inside]


def _bowel_gas(rng: np.random.Generator, anatomy: _Anatomy, spacing: float, hu: np.ndarray) -> None:
    """Bowel gas changes from slice to slice, as bowel loops do."""
    x0, y0, x1, y1 = anatomy.gas_box
    for _ in range(int(rng.integers(3, 8))):
        r = rng.uniform(4, 14) / spacing
        gx, gy = rng.uniform(x0, x1), rng.uniform(y0, y1)
        ry = r * rng.uniform(0.6, 1.0)
        ys, xs = np.ogrid[int(gy - ry) : int(gy + ry) + 1, int(gx - r) : int(gx + r) + 1]
        mask = ((xs - gx) / r) ** 2 + ((ys - gy) / ry) ** 2 <= 1.0
        hu[int(gy - ry) : int(gy + ry) + 1, int(gx - r) : int(gx + r) + 1][mask] = TISSUE_HU[
            "bowel_gas"
        ][0]


def _kidney_slice(
    anatomy: _Anatomy, spacing: float, dz_mm: float, phase: Phase, hu: np.ndarray
) -> None:
    mm = 1.0 / spacing
    p = PHASE_INDEX[phase]
    for cx, cy, rx, ry in anatomy.kidneys:
        scale = math.sqrt(max(0.0, 1 - (dz_mm / 55.0) ** 2))
        if scale <= 0.1:
            continue
        half = int(max(rx, ry) * scale) + 3
        x0, y0 = int(cx) - half, int(cy) - half
        ys, xs = np.mgrid[y0 : y0 + 2 * half, x0 : x0 + 2 * half].astype(np.float32)
        e = ((xs - cx) / (rx * scale)) ** 2 + ((ys - cy) / (ry * scale)) ** 2
        target = hu[y0 : y0 + 2 * half, x0 : x0 + 2 * half]
        target[e <= 1.0] = TISSUE_HU["cortex"][p]
        target[e <= 0.55] = TISSUE_HU["medulla"][p]
        sinus = ((xs - (cx - np.sign(cx - SIZE / 2) * 8 * mm)) / (rx * scale * 0.35)) ** 2 + (
            (ys - cy) / (ry * scale * 0.3)
        ) ** 2
        target[sinus <= 1.0] = TISSUE_HU["sinus_fat"][p]


def _syntax_for_series(rng: np.random.Generator, syntaxes: dict[str, float]) -> UID:
    uids = list(syntaxes)
    weights = np.array([syntaxes[u] for u in uids], dtype=float)
    return UID(uids[int(rng.choice(len(uids), p=weights / weights.sum()))])


def _uid(*parts: object) -> str:
    # With entropy sources, pydicom derives the UID from a hash: same inputs, same UID.
    return str(generate_uid(entropy_srcs=[str(p) for p in parts]))


def _name(rng: np.random.Generator, length: int) -> str:
    return "".join(rng.choice(list("0123456789ABCDEF"), size=length))


def _base_dataset(sop_uid: str, syntax: UID) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "RENALFLOW_SYNTH"
    ds = Dataset()
    ds.file_meta = meta
    return ds


def write_patient(
    plan: PatientPlan, config: SynthConfig, archive: Path
) -> tuple[int, int, dict[str, int]]:
    """Write every series of one patient; returns (series, slices, files per syntax)."""
    rng = np.random.default_rng(plan.seed)
    vendor = VENDORS[int(rng.integers(len(VENDORS)))]
    spacing = float(rng.uniform(0.68, 0.86))
    anatomy = _build_anatomy(rng, spacing)
    props = HISTOLOGY[plan.histology]
    side = int(rng.choice([0, 1]))
    kcx, kcy, krx, _ = anatomy.kidneys[side]
    angle = rng.uniform(0, 2 * math.pi)
    # Sizes overlap: oncocytoma median ~3.5 cm, RCC ~4.5 cm, both 1.5-8 cm.
    median = 17.0 if plan.label == "benign" else 22.0
    radius_mm = float(np.clip(rng.lognormal(math.log(median), 0.3), 8.0, 40.0))
    # Renal masses found on CT usually bulge from the kidney's outline (exophytic).
    offset = krx * rng.uniform(0.75, 1.05)
    lesion = _Lesion(
        side=side,
        cx=kcx + offset * math.cos(angle),
        cy=kcy + offset * math.sin(angle) * 0.8,
        radius_mm=radius_mm,
        z_scale=float(rng.uniform(0.85, 1.15)),
        histology=plan.histology,
        scar=bool(rng.random() < float(props["scar"])),  # type: ignore[arg-type]
        irregular_phases=tuple(float(v) for v in rng.uniform(0, 2 * math.pi, size=3)),
        necrosis_seed=int(rng.integers(0, 2**31)),
    )
    roll = rng.random()
    if roll < 0.5:
        phases = [Phase.NONCONTRAST, Phase.ARTERIAL, Phase.VENOUS]
    elif roll < 0.85:
        phases = (
            [Phase.NONCONTRAST, Phase.VENOUS]
            if rng.random() < 0.5
            else [Phase.ARTERIAL, Phase.VENOUS]
        )
    elif roll < 0.97:
        phases = [Phase.VENOUS]
    else:
        phases = [Phase.NONCONTRAST]  # contrast allergy, as 9 of the study's patients
    year = int(rng.integers(config.first_study_year, config.last_study_year + 1))
    study_date = date(year, 1, 1) + timedelta(days=int(rng.integers(0, 365)))
    birth = date(int(rng.integers(1935, 1990)), int(rng.integers(1, 13)), int(rng.integers(1, 29)))
    sex = str(rng.choice(["M", "F"]))
    study_uid = _uid(config.seed, plan.patient_id, "study")
    accession = f"A{plan.seed % 10**8:08d}"
    folder_a = _name(rng, 2)
    bolus_start = 10 * 3600 + int(rng.integers(0, 6 * 3600))
    table_z = rng.uniform(-250.0, -120.0)
    by_syntax: dict[str, int] = {}
    n_slices = 0
    for s_no, phase in enumerate(phases, start=1):
        syntax = _syntax_for_series(rng, config.syntaxes)
        thickness = float(rng.choice([1.5, 2.0, 2.5, 3.0, 5.0]))
        # Like the study, keep only images that show the mass: slices where its
        # cross-section is at least a third of its largest diameter.
        extent = 2 * radius_mm * lesion.z_scale * math.sqrt(1 - (1 / 3) ** 2)
        n = int(np.clip(round(extent / thickness), 2, config.max_slices_per_series))
        z0 = table_z - (n - 1) * thickness / 2
        series_uid = _uid(config.seed, plan.patient_id, "series", s_no)
        description = str(rng.choice(vendor.descriptions[phase])).format(t=f"{thickness:.1f}")
        folder = archive / folder_a / _name(rng, 8)
        folder.mkdir(parents=True, exist_ok=True)
        extension = ".dcm" if rng.random() < 0.5 else ""
        delay = {Phase.ARTERIAL: 35, Phase.VENOUS: 85}.get(phase, 0)
        acq_seconds = bolus_start + delay if delay else bolus_start - 300
        phase_lut = np.array([TISSUE_HU[t][PHASE_INDEX[phase]] for t in TISSUES], dtype=np.float32)
        for i in range(n):
            z = z0 + i * thickness
            dz = z - table_z
            hu = phase_lut[anatomy.tissue_at(dz)]
            _bowel_gas(rng, anatomy, spacing, hu)
            _kidney_slice(anatomy, spacing, dz, phase, hu)
            _lesion_slice(s_no, lesion, spacing, dz, phase, hu)
            noise = rng.standard_normal((SIZE, SIZE), dtype=np.float32)
            # Tube current modulation: the dose, and so the noise, changes from slice to slice.
            modulation = float(np.exp(rng.normal(0.0, 0.3)))
            hu += vendor.noise_hu * modulation * (thickness / 3.0) ** -0.5 * noise
            sop_uid = _uid(config.seed, plan.patient_id, "sop", s_no, i)
            ds = _base_dataset(sop_uid, syntax)
            _fill_tags(
                ds,
                plan,
                vendor,
                study_uid,
                series_uid,
                sop_uid,
                s_no,
                i,
                phase,
                description,
                thickness,
                spacing,
                z,
                study_date,
                birth,
                sex,
                accession,
                bolus_start,
                acq_seconds,
            )
            stored, padding = _to_stored(hu, vendor, anatomy.outside_fov)
            if padding is not None:
                ds.PixelPaddingValue = padding
            _set_pixels(ds, stored, vendor, syntax)
            path = folder / f"{_name(rng, 8)}{extension}"
            while path.exists():  # never overwrite a slice already written
                path = folder / f"{_name(rng, 8)}{extension}"
            ds.save_as(path, enforce_file_format=True)
            by_syntax[syntax.name] = by_syntax.get(syntax.name, 0) + 1
            n_slices += 1
    return len(phases), n_slices, by_syntax


def _hms(seconds: int) -> str:
    seconds %= 86400
    return f"{seconds // 3600:02d}{(seconds // 60) % 60:02d}{seconds % 60:02d}"


def _fill_tags(
    ds: Dataset,
    plan: PatientPlan,
    vendor: Vendor,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    series_number: int,
    index: int,
    phase: Phase,
    description: str,
    thickness: float,
    spacing: float,
    z: float,
    study_date: date,
    birth: date,
    sex: str,
    accession: str,
    bolus_start: int,
    acq_seconds: int,
) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study_date.strftime("%Y%m%d")
    ds.SeriesDate = ds.StudyDate
    ds.AcquisitionDate = ds.StudyDate
    ds.ContentDate = ds.StudyDate
    ds.StudyTime = _hms(bolus_start - 600)
    ds.SeriesTime = _hms(acq_seconds)
    ds.AcquisitionTime = _hms(acq_seconds)
    ds.ContentTime = _hms(acq_seconds)
    ds.AccessionNumber = accession
    ds.Modality = "CT"
    ds.Manufacturer = vendor.manufacturer
    ds.InstitutionName = "RENALFLOW SYNTHETIC HOSPITAL"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT ABDOMEN KIDNEYS"
    ds.SeriesDescription = description
    ds.ManufacturerModelName = vendor.model
    ds.PatientName = f"SYNTH^PATIENT{plan.index + 1:05d}"
    ds.PatientID = plan.patient_id
    ds.PatientBirthDate = birth.strftime("%Y%m%d")
    ds.PatientSex = sex
    ds.BodyPartExamined = "ABDOMEN"
    ds.SliceThickness = f"{thickness:.1f}"
    ds.KVP = "120"
    ds.ConvolutionKernel = vendor.kernel
    ds.PatientPosition = "FFS"
    if phase is not Phase.NONCONTRAST:
        ds.ContrastBolusAgent = "Omnipaque 350"
        ds.ContrastBolusRoute = "IV"
        ds.ContrastBolusVolume = "90"
        ds.ContrastBolusStartTime = _hms(bolus_start)
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = index + 1
    half = SIZE / 2 * spacing
    ds.ImagePositionPatient = [f"{-half:.3f}", f"{-half:.3f}", f"{z:.3f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = _uid(study_uid, "for")
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = f"{z:.3f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = SIZE
    ds.Columns = SIZE
    ds.PixelSpacing = [f"{spacing:.6f}", f"{spacing:.6f}"]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 1 if vendor.signed else 0
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = "0" if vendor.signed else "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"


def _to_stored(
    hu: np.ndarray, vendor: Vendor, outside: np.ndarray
) -> tuple[np.ndarray, int | None]:
    """HU to 12-bit stored values; signed vendors pad outside the field of view."""
    if vendor.signed:
        stored = np.clip(np.rint(hu), -2048, 2047).astype(np.int16)
        stored[outside] = -2000
        return stored, -2000
    return np.clip(np.rint(hu) + 1024, 0, 4095).astype(np.uint16), None


def _set_pixels(ds: Dataset, stored: np.ndarray, vendor: Vendor, syntax: UID) -> None:
    if syntax.is_compressed:
        ds.compress(syntax, stored, generate_instance_uid=False)
    else:
        ds.PixelData = stored.tobytes()
        ds["PixelData"].VR = "OW"
        ds.file_meta.TransferSyntaxUID = syntax


def write_labels(plans: list[PatientPlan], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient_id", "label", "histology"])
        for plan in plans:
            writer.writerow([plan.patient_id, plan.label, plan.histology])


def _write_patient_job(
    args: tuple[PatientPlan, SynthConfig, str],
) -> tuple[int, int, dict[str, int]]:
    plan, config, archive = args
    return write_patient(plan, config, Path(archive))


def synthesize_archive(
    out_dir: str | os.PathLike[str],
    config: SynthConfig,
    jobs: int | None = None,
    progress: Callable[[int, int, int], None] | None = None,
) -> SynthReport:
    """Write `OUT/archive/` and `OUT/labels.csv`; deterministic for `config.seed`.

    `progress(done_patients, total_patients, slices_so_far)` is called after each patient.
    """
    import time

    started = time.perf_counter()
    out = Path(out_dir)
    archive = out / "archive"
    archive.mkdir(parents=True, exist_ok=True)
    plans = plan_patients(config)
    write_labels(plans, out / "labels.csv")
    report = SynthReport(patients=len(plans), benign=sum(p.label == "benign" for p in plans))
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(plans)))
    work = [(plan, config, str(archive)) for plan in plans]
    results: list[tuple[int, int, dict[str, int]]]
    if jobs == 1:
        results = []
        for done, item in enumerate(work, start=1):
            results.append(_write_patient_job(item))
            report.slices += results[-1][1]
            if progress:
                progress(done, len(work), report.slices)
    else:
        results = []
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for done, result in enumerate(pool.map(_write_patient_job, work), start=1):
                results.append(result)
                report.slices += result[1]
                if progress:
                    progress(done, len(work), report.slices)
    report.slices = 0
    for series, slices, by_syntax in results:
        report.series += series
        report.slices += slices
        for name, count in by_syntax.items():
            report.by_syntax[name] = report.by_syntax.get(name, 0) + count
    report.seconds = time.perf_counter() - started
    return report


def archive_digest(archive: str | os.PathLike[str]) -> str:
    """SHA-256 over every file's relative path and bytes (for determinism checks)."""
    digest = hashlib.sha256()
    root = Path(archive)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
