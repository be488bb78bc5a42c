import numpy as np
import pytest

from renalflow.tasks.config import Phase
from renalflow.tasks.synth.anatomy import SIZE, build_anatomy
from renalflow.tasks.synth.lesions import HISTOLOGY, Lesion, paint_lesion, place_lesion

SPACING = 0.75
BACKGROUND = -1000.0


def _painted(histology: str, phase: Phase, dz_mm: float = 0.0) -> np.ndarray:
    """The HU values of a 25 mm mass of `histology` at `dz_mm` from its centre."""
    lesion = Lesion(
        side=0,
        cx=SIZE / 2,
        cy=SIZE / 2,
        radius_mm=25.0,
        z_scale=1.0,
        histology=histology,
        scar=False,
        irregular_phases=(0.0, 1.0, 2.0),
        necrosis_seed=3,
    )
    hu = np.full((SIZE, SIZE), BACKGROUND, np.float32)
    paint_lesion(1, lesion, SPACING, dz_mm, phase, hu)
    return hu[hu != BACKGROUND]


def test_clear_cell_rcc_is_heterogeneous_and_oncocytoma_homogeneous():
    onco = _painted("oncocytoma", Phase.ARTERIAL)
    ccrcc = _painted("clear cell RCC", Phase.ARTERIAL)
    assert onco.size and ccrcc.size
    assert ccrcc.std() > 3 * onco.std()


def test_the_noncontrast_phase_carries_little_signal():
    means = {
        phase: {h: float(np.median(_painted(h, phase))) for h in HISTOLOGY}
        for phase in (Phase.NONCONTRAST, Phase.ARTERIAL)
    }
    plain, arterial = means[Phase.NONCONTRAST], means[Phase.ARTERIAL]
    assert max(plain.values()) - min(plain.values()) < 10
    assert max(arterial.values()) - min(arterial.values()) > 50


def test_a_mass_ends_beyond_its_extent():
    assert _painted("oncocytoma", Phase.VENOUS, dz_mm=30.0).size == 0


@pytest.mark.parametrize("histology", sorted(HISTOLOGY))
def test_placed_masses_sit_on_a_kidney(histology):
    rng = np.random.default_rng(4)
    anatomy = build_anatomy(rng, SPACING)
    lesion = place_lesion(rng, anatomy, "malignant", histology)
    kcx, kcy, krx, kry = anatomy.kidneys[lesion.side]
    assert lesion.histology == histology and 8.0 <= lesion.radius_mm <= 40.0
    assert np.hypot(lesion.cx - kcx, lesion.cy - kcy) <= 1.05 * max(krx, kry)
