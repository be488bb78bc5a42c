"""The synthetic patient's body: tissues and their HU by phase, and the organs.

A body is fixed geometry (drawn once per patient from its generator) whose
cross-sections change along z: the liver and spleen shrink towards their tips,
vertebral bodies alternate with discs, the body outline tapers. The kidneys and
bowel gas are painted per slice on top.

For whole studies (`Trunk`) the body also reaches from the neck to the pelvis: lungs
and the heart above the liver dome, bowel loops and more fat below the kidneys, the
iliac wings at the bottom. A head is drawn apart (`head_tissue`). Curated lesion-only
archives draw no trunk, so their bytes do not change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from renalflow.tasks.config import Phase

SIZE = 512

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
    # Whole studies only (appended, so the curated archives' lookup stays the same).
    "lung": (-850, -850, -850),
    "bowel": (35, 60, 95),
    "brain": (35, 35, 35),
    "csf": (5, 5, 5),
}
TISSUES = list(TISSUE_HU)
TISSUE_INDEX = {name: i for i, name in enumerate(TISSUES)}
PHASE_INDEX = {Phase.NONCONTRAST: 0, Phase.ARTERIAL: 1, Phase.VENOUS: 2}


def phase_lut(phase: Phase) -> np.ndarray:
    """Each tissue's HU in `phase`, indexed as TISSUES (what `tissue_at` maps return)."""
    return np.array([TISSUE_HU[t][PHASE_INDEX[phase]] for t in TISSUES], dtype=np.float32)


def grid(size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (x, y) of a size x size slice."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return x, y


def ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Smooth random texture in [-1, 1]: coarse noise upsampled bicubically."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    img = Image.fromarray(coarse, mode="F").resize((shape[1], shape[0]), Image.Resampling.BICUBIC)
    out = np.asarray(img, dtype=np.float32)
    return np.clip(out / 1.5, -1.0, 1.0)


@dataclass
class Anatomy:
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
    size: int = SIZE  # Rows and Columns
    trunk: Trunk | None = None  # whole studies: the body above and below the kidneys
    cache: dict[int, np.ndarray] = field(default_factory=dict)

    def tissue_at(self, dz_mm: float) -> np.ndarray:
        key = round(dz_mm / 4.0)
        if key not in self.cache:
            self.cache[key] = self._draw(key * 4.0)
        return self.cache[key]

    def _draw(self, z: float) -> np.ndarray:
        x, y = grid(self.size)
        c, cy, mm = self.c, self.cy, self.mm
        rx0, ry0, fat = self.body
        scale = 1.0 + self.taper * z
        body_rx, body_ry = rx0 * scale, ry0 * scale
        visceral_scale = 1.0
        if self.trunk is not None:  # more fat towards the pelvis, less in the chest
            fat *= self.trunk.fat_scale(z)
            visceral_scale = self.trunk.visceral_scale(z)
        tissue = np.full((self.size, self.size), TISSUE_INDEX["air"], dtype=np.uint8)
        tissue[ellipse(x, y, c, cy, body_rx, body_ry)] = TISSUE_INDEX["fat"]
        tissue[ellipse(x, y, c, cy, body_rx - fat, body_ry - fat)] = TISSUE_INDEX["muscle"]
        # Retroperitoneal and visceral fat around the organs.
        visceral = ellipse(
            x, y, c, cy + 15 * mm, body_rx * 0.62 * visceral_scale, body_ry * 0.55 * visceral_scale
        )
        tissue[visceral] = TISSUE_INDEX["fat"]
        section = Section(tissue, x, y, self, z, body_rx, body_ry)
        if self.trunk is not None:
            self.trunk.paint_below_organs(section)
        # Liver on the patient's right (image left), spleen on the left; both taper.
        liver = math.sqrt(max(0.0, 1 - ((z - self.liver_z) / 90.0) ** 2))
        if liver > 0.15:
            lx, ly = c - body_rx * 0.45, cy - body_ry * 0.2
            mask = ellipse(x, y, lx, ly, body_rx * 0.42 * liver, body_ry * 0.55 * liver)
            tissue[mask] = TISSUE_INDEX["liver"]
        spleen = math.sqrt(max(0.0, 1 - ((z - self.spleen_z) / 60.0) ** 2))
        if spleen > 0.15:
            sx, sy = c + body_rx * 0.55, cy - body_ry * 0.05
            mask = ellipse(x, y, sx, sy, body_rx * 0.18 * spleen, body_ry * 0.3 * spleen)
            tissue[mask] = TISSUE_INDEX["spleen"]
        # Spine: vertebral bodies alternate with discs every ~32 mm.
        spine_y = cy + ry0 * 0.45
        cycle = ((z - self.vertebra_z) % 32.0) / 32.0
        if cycle < 0.18:
            tissue[ellipse(x, y, c, spine_y, 21 * mm, 18 * mm)] = TISSUE_INDEX["muscle"]  # disc
        else:
            tissue[ellipse(x, y, c, spine_y, 22 * mm, 19 * mm)] = TISSUE_INDEX["bone_cortex"]
            tissue[ellipse(x, y, c, spine_y, 18 * mm, 15 * mm)] = TISSUE_INDEX["bone_marrow"]
        if 0.3 < cycle < 0.85:
            process = ellipse(x, y, c, spine_y + 30 * mm, 6 * mm, 14 * mm)
            tissue[process] = TISSUE_INDEX["bone_cortex"]
        for side in (-1, 1):
            psoas = ellipse(x, y, c + side * 30 * mm, spine_y + 5 * mm, 26 * mm, 17 * mm)
            tissue[psoas & (tissue == TISSUE_INDEX["fat"])] = TISSUE_INDEX["muscle"]
        aorta = ellipse(x, y, c + 14 * mm, spine_y - 27 * mm, 11 * mm, 11 * mm)
        tissue[aorta] = TISSUE_INDEX["aorta"]
        tissue[ellipse(x, y, c - 18 * mm, spine_y - 25 * mm, 12 * mm, 9 * mm)] = TISSUE_INDEX["ivc"]
        if self.trunk is not None:
            self.trunk.paint_over_organs(section)
        return tissue

    @property
    def liver_dome(self) -> float:
        """z (mm from the kidneys' mid-plane) of the liver's top, where it is last drawn."""
        return self.liver_z + 90.0 * math.sqrt(1 - 0.15**2)


@dataclass(frozen=True)
class Section:
    """An axial cross-section as `Anatomy` draws it: the tissue indices painted so far
    (changed in place), the pixel grid, the body and its radii at `z`."""

    tissue: np.ndarray
    x: np.ndarray
    y: np.ndarray
    body: Anatomy
    z: float
    body_rx: float
    body_ry: float


@dataclass(frozen=True)
class Trunk:
    """The body above and below the kidneys, for whole studies (z in mm from the
    kidneys' mid-plane, feet to head): lungs and heart from a little below the liver
    dome, bowel loops below the liver, the iliac crest at `crest_z`."""

    crest_z: float  # top of the iliac wings (negative: below the kidneys)
    lung_z: float  # where the lung bases begin (behind the liver dome)
    bowel_cells: int  # how crowded the bowel loops are
    bowel_seed: int
    fat_gain: float  # relative gain of subcutaneous fat per cm towards the pelvis

    def fat_scale(self, z: float) -> float:
        return float(np.clip(1.0 + self.fat_gain * (-z) / 10.0, 0.6, 1.8))

    def visceral_scale(self, z: float) -> float:
        return float(np.clip(1.0 - 0.0015 * z, 0.75, 1.15))

    def paint_below_organs(self, section: Section) -> None:
        """Bowel loops in the visceral fat, more of them further down; drawn before the
        organs, which cover them."""
        tissue, x, y, body, z = section.tissue, section.x, section.y, section.body, section.z
        body_rx, body_ry = section.body_rx, section.body_ry
        share = float(np.clip((body.liver_z + 40.0 - z) / 120.0, 0.0, 0.55))
        if share <= 0:
            return
        rng = np.random.default_rng([self.bowel_seed, round(z / 4.0) & 0xFFFF])
        texture = smooth_noise(rng, tissue.shape, self.bowel_cells)
        inside = ellipse(x, y, body.c, body.cy - 5 * body.mm, body_rx * 0.6, body_ry * 0.5)
        loops = inside & (texture > np.quantile(texture[inside], 1 - share))
        tissue[loops & (tissue == TISSUE_INDEX["fat"])] = TISSUE_INDEX["bowel"]

    def paint_over_organs(self, section: Section) -> None:
        """Lungs and the heart above the lung bases; the iliac wings below the crest."""
        tissue, x, y, body, z = section.tissue, section.x, section.y, section.body, section.z
        body_rx, body_ry = section.body_rx, section.body_ry
        c, cy, mm = body.c, body.cy, body.mm
        soft = np.isin(tissue, [TISSUE_INDEX["fat"], TISSUE_INDEX["muscle"]])
        lungs = float(np.clip((z - self.lung_z) / 80.0, 0.0, 1.0))
        if lungs > 0.05:
            grow = math.sqrt(lungs)
            for side in (-1, 1):
                mask = ellipse(
                    x,
                    y,
                    c + side * body_rx * 0.42,
                    cy + body_ry * (0.25 - 0.2 * grow),
                    body_rx * 0.38 * grow,
                    body_ry * 0.7 * grow,
                )
                tissue[mask & soft] = TISSUE_INDEX["lung"]
        heart = float(np.clip((z - body.liver_dome + 10.0) / 40.0, 0.0, 1.0))
        heart *= float(np.clip((body.liver_dome + 150.0 - z) / 40.0, 0.0, 1.0))
        if heart > 0.1:
            mask = ellipse(x, y, c + 25 * mm, cy - body_ry * 0.15, 55 * mm * heart, 45 * mm * heart)
            tissue[mask] = TISSUE_INDEX["aorta"]  # the blood pool enhances like the aorta
        wings = float(np.clip((self.crest_z + 5.0 - z) / 45.0, 0.0, 1.0))
        if wings > 0:
            for side in (-1, 1):
                wx = c + side * body_rx * (0.55 - 0.15 * wings)
                outer = ellipse(x, y, wx, cy + body_ry * 0.3, 14 * mm, 45 * mm * wings + 5 * mm)
                inner = ellipse(x, y, wx, cy + body_ry * 0.3, 9 * mm, 40 * mm * wings + 2 * mm)
                tissue[outer] = TISSUE_INDEX["bone_cortex"]
                tissue[inner] = TISSUE_INDEX["bone_marrow"]


def build_trunk(rng: np.random.Generator, anatomy: Anatomy) -> Trunk:
    """Draw the body above and below the kidneys of `anatomy` from `rng` (whole studies)."""
    return Trunk(
        crest_z=float(rng.uniform(-110.0, -80.0)),
        lung_z=anatomy.liver_dome - float(rng.uniform(25.0, 45.0)),
        bowel_cells=int(rng.integers(7, 12)),
        bowel_seed=int(rng.integers(0, 2**31)),
        fat_gain=float(rng.uniform(0.0, 0.08)),
    )


def head_tissue(size: int, mm: float, z: float) -> np.ndarray:
    """An axial cross-section of a head `z` mm above the skull base (0 to ~150): skull,
    brain and the ventricles, shrinking towards the vertex."""
    x, y = grid(size)
    c = size / 2
    scale = math.sqrt(max(0.0, 1 - ((z - 60.0) / 95.0) ** 2))
    tissue = np.full((size, size), TISSUE_INDEX["air"], dtype=np.uint8)
    if scale <= 0.1:
        return tissue
    rx, ry = 72 * mm * scale, 92 * mm * scale
    tissue[ellipse(x, y, c, c, rx + 3 * mm, ry + 3 * mm)] = TISSUE_INDEX["muscle"]  # scalp
    tissue[ellipse(x, y, c, c, rx, ry)] = TISSUE_INDEX["bone_cortex"]
    tissue[ellipse(x, y, c, c, rx - 6 * mm, ry - 6 * mm)] = TISSUE_INDEX["brain"]
    ventricles = math.sqrt(max(0.0, 1 - ((z - 70.0) / 25.0) ** 2))
    if ventricles > 0.1:
        for side in (-1, 1):
            mask = ellipse(x, y, c + side * 8 * mm, c, 5 * mm * ventricles, 28 * mm * ventricles)
            tissue[mask] = TISSUE_INDEX["csf"]
    return tissue


def build_anatomy(rng: np.random.Generator, spacing: float, size: int = SIZE) -> Anatomy:
    """Draw a patient's body (size, fat, organ positions, kidneys) from `rng`, on a
    `size` x `size` matrix of `spacing` mm pixels."""
    x, y = grid(size)
    mm = 1.0 / spacing
    c = size / 2
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
    outside = (x - c) ** 2 + (y - c) ** 2 > (size / 2 - 2) ** 2
    gas_box = (c - 0.4 * body_rx, cy - 0.7 * body_ry, c + 0.4 * body_rx, cy)
    return Anatomy(
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
        size=size,
    )


def paint_bowel_gas(
    rng: np.random.Generator, anatomy: Anatomy, spacing: float, hu: np.ndarray
) -> None:
    """Paint bowel gas into `hu` (in place); it changes from slice to slice, as bowel
    loops do."""
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


def paint_kidneys(
    anatomy: Anatomy, spacing: float, dz_mm: float, phase: Phase, hu: np.ndarray
) -> None:
    """Paint both kidneys (cortex, medulla, sinus fat) `dz_mm` from their mid-plane
    into `hu` (in place)."""
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
        sinus = ((xs - (cx - np.sign(cx - anatomy.c) * 8 * mm)) / (rx * scale * 0.35)) ** 2 + (
            (ys - cy) / (ry * scale * 0.3)
        ) ** 2
        target[sinus <= 1.0] = TISSUE_HU["sinus_fat"][p]
