"""Renal masses by histology: how each looks on CT, where it sits, how it is painted.

The appearance follows the radiology literature:

- oncocytoma (benign): well circumscribed, homogeneous, avid enhancement, a central
  stellate scar in about a third;
- clear-cell RCC: heterogeneous avid enhancement, central necrosis, irregular margin;
- papillary RCC: homogeneous but hypo-enhancing;
- chromophobe RCC: homogeneous, moderately enhancing, sometimes a scar; the classic
  mimic of oncocytoma.

Sizes overlap between classes and the non-contrast phase carries little signal, so a
CNN can learn the task but not trivially.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from renalflow.tasks.config import Phase
from renalflow.tasks.synth.anatomy import PHASE_INDEX, Anatomy, smooth_noise


@dataclass(frozen=True)
class Appearance:
    """How a histology looks: HU by phase (noncontrast, arterial, venous), texture
    amplitude (HU), share of necrosis, margin irregularity, chance of a central scar."""

    hu: tuple[float, float, float]
    texture: float
    necrosis: float
    irregular: float
    scar: float


HISTOLOGY: dict[str, Appearance] = {
    "oncocytoma": Appearance(
        hu=(38, 140, 120), texture=5.0, necrosis=0.0, irregular=0.03, scar=0.35
    ),
    "clear cell RCC": Appearance(
        hu=(34, 170, 110), texture=45.0, necrosis=0.75, irregular=0.14, scar=0.0
    ),
    "papillary RCC": Appearance(
        hu=(36, 60, 80), texture=10.0, necrosis=0.2, irregular=0.05, scar=0.0
    ),
    "chromophobe RCC": Appearance(
        hu=(37, 100, 105), texture=12.0, necrosis=0.1, irregular=0.05, scar=0.2
    ),
}
# Histologies of the malignant patients, with their shares.
MALIGNANT_MIX = (("clear cell RCC", 0.75), ("papillary RCC", 0.15), ("chromophobe RCC", 0.10))


@dataclass(frozen=True)
class Lesion:
    side: int
    cx: float
    cy: float
    radius_mm: float
    z_scale: float
    histology: str
    scar: bool
    irregular_phases: tuple[float, ...]
    necrosis_seed: int


def place_lesion(rng: np.random.Generator, anatomy: Anatomy, label: str, histology: str) -> Lesion:
    """Draw the mass of one patient: which kidney, where on it, size, shape, scar."""
    looks = HISTOLOGY[histology]
    side = int(rng.choice([0, 1]))
    kcx, kcy, krx, _ = anatomy.kidneys[side]
    angle = rng.uniform(0, 2 * math.pi)
    # Sizes overlap: oncocytoma median ~3.5 cm, RCC ~4.5 cm, both 1.5-8 cm.
    median = 17.0 if label == "benign" else 22.0
    radius_mm = float(np.clip(rng.lognormal(math.log(median), 0.3), 8.0, 40.0))
    # Renal masses found on CT usually bulge from the kidney's outline (exophytic).
    offset = krx * rng.uniform(0.75, 1.05)
    return Lesion(
        side=side,
        cx=kcx + offset * math.cos(angle),
        cy=kcy + offset * math.sin(angle) * 0.8,
        radius_mm=radius_mm,
        z_scale=float(rng.uniform(0.85, 1.15)),
        histology=histology,
        scar=bool(rng.random() < float(looks.scar)),
        irregular_phases=tuple(float(v) for v in rng.uniform(0, 2 * math.pi, size=3)),
        necrosis_seed=int(rng.integers(0, 2**31)),
    )


def paint_lesion(
    rng_seed: int, lesion: Lesion, spacing: float, dz_mm: float, phase: Phase, hu: np.ndarray
) -> np.ndarray | None:
    """Paint the lesion cross-section `dz_mm` from its centre into `hu` (in place).

    Returns the mask of the pixels painted (the slice shows the mass), or None where
    the slice misses it: the lesion truth a DICOM SEG and the lesions CSV record."""
    looks = HISTOLOGY[lesion.histology]
    r_mm = lesion.radius_mm * math.sqrt(
        max(0.0, 1 - (dz_mm / (lesion.radius_mm * lesion.z_scale)) ** 2)
    )
    if r_mm < 1.5:
        return None
    r = r_mm / spacing
    half = int(r * 1.4) + 4
    x0, y0 = int(lesion.cx) - half, int(lesion.cy) - half
    ys, xs = np.mgrid[y0 : y0 + 2 * half, x0 : x0 + 2 * half].astype(np.float32)
    dx, dy = xs - lesion.cx, ys - lesion.cy
    theta = np.arctan2(dy, dx)
    irregular = float(looks.irregular)
    boundary = r * (
        1
        + irregular
        * sum(math.sin(k) * np.cos((k + 2) * theta + lesion.irregular_phases[k]) for k in range(3))
    )
    dist = np.sqrt(dx * dx + dy * dy)
    inside = dist <= boundary
    if not inside.any():
        return None
    rng = np.random.default_rng(
        [lesion.necrosis_seed, round(dz_mm * 10) & 0xFFFF, rng_seed & 0xFFFF]
    )
    base = float(looks.hu[PHASE_INDEX[phase]])
    contrast = 0.25 if phase is Phase.NONCONTRAST else 1.0
    texture = float(looks.texture) * contrast
    region = np.full(inside.shape, base, dtype=np.float32)
    if texture > 0:
        region += texture * smooth_noise(rng, inside.shape, 6)
    necrosis = float(looks.necrosis)
    if necrosis > 0:
        # Necrosis: patchy low-attenuation, non-enhancing foci of 5-10 mm scattered
        # through the mass (a little darker than viable tumour even without contrast),
        # the heterogeneity that sets clear-cell RCC apart on CT.
        cells = max(4, round(2 * half * spacing / 7.0))
        field = smooth_noise(np.random.default_rng(lesion.necrosis_seed), inside.shape, cells)
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
    mask = np.zeros(hu.shape, dtype=bool)
    mask[y0 : y0 + 2 * half, x0 : x0 + 2 * half][inside] = True
    return mask


def lesion_half_length(lesion: Lesion) -> float:
    """Half the lesion's extent along z in mm (no slice further from its centre shows it)."""
    return lesion.radius_mm * lesion.z_scale
