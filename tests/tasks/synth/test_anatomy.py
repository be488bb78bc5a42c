import numpy as np

from renalflow.tasks.config import Phase
from renalflow.tasks.synth.anatomy import SIZE, TISSUE_HU, build_anatomy, paint_kidneys

SPACING = 0.75


def _anatomy(seed: int = 1):
    return build_anatomy(np.random.default_rng(seed), SPACING)


def test_kidney_cortex_enhances_in_the_arterial_phase():
    anatomy = _anatomy()
    shown = {}
    for phase in (Phase.NONCONTRAST, Phase.ARTERIAL):
        hu = np.full((SIZE, SIZE), -100.0, np.float32)
        paint_kidneys(anatomy, SPACING, 0.0, phase, hu)
        shown[phase] = set(np.unique(hu).tolist())
    assert TISSUE_HU["cortex"][1] in shown[Phase.ARTERIAL]
    assert TISSUE_HU["cortex"][0] in shown[Phase.NONCONTRAST]
    assert TISSUE_HU["cortex"][1] not in shown[Phase.NONCONTRAST]


def test_kidneys_end_above_and_below_their_poles():
    hu = np.full((SIZE, SIZE), -100.0, np.float32)
    paint_kidneys(_anatomy(), SPACING, 60.0, Phase.VENOUS, hu)
    assert (hu == -100.0).all()


def test_cross_sections_change_along_z_and_are_cached_per_4_mm():
    anatomy = _anatomy()
    centre = anatomy.tissue_at(0.0)
    assert anatomy.tissue_at(1.5) is centre  # same 4 mm step: drawn once
    far = anatomy.tissue_at(64.0)
    assert far.shape == (SIZE, SIZE) and not np.array_equal(far, centre)


def test_the_same_generator_gives_the_same_body():
    a, b = _anatomy(7), _anatomy(7)
    assert a.kidneys == b.kidneys and a.body == b.body
    assert np.array_equal(a.tissue_at(0.0), b.tissue_at(0.0))
