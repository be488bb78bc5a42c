"""Synthetic renal-mass CT archives that look and behave like a hospital export.

Real CT of renal masses cannot be shipped, so renalflow makes its own: per patient
one to three axial series (non-contrast, arterial/corticomedullary, venous/
nephrographic) through an abdomen with liver, spine, aorta, IVC, both kidneys and a
renal mass. Everything is drawn from one seeded generator per patient: the same seed
gives byte-identical files.

- `anatomy`: the body, its tissues and their HU by phase;
- `lesions`: the renal mass of each histology, placed and painted;
- `writer`: scanners, transfer syntaxes, DICOM tags and pixels;
- `archive`: the patient plan, labels, and `synthesize_archive`.
"""

from renalflow.tasks.synth.archive import (
    PatientPlan,
    SynthConfig,
    SynthReport,
    archive_digest,
    plan_patients,
    synthesize_archive,
    write_labels,
    write_patient,
)
from renalflow.tasks.synth.writer import DEFAULT_SYNTAXES

__all__ = [
    "DEFAULT_SYNTAXES",
    "PatientPlan",
    "SynthConfig",
    "SynthReport",
    "archive_digest",
    "plan_patients",
    "synthesize_archive",
    "write_labels",
    "write_patient",
]
