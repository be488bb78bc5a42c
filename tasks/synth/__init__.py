"""Synthetic renal-mass CT archives that look and behave like a hospital export.

Real CT of renal masses cannot be shipped, so renalflow makes its own: per patient
one to three axial series (non-contrast, arterial/corticomedullary, venous/
nephrographic) through an abdomen with liver, spine, aorta, IVC, both kidneys and a
renal mass. By default these are whole studies (liver dome to iliac crest, with
scouts, thin+thick reconstructions, chest and head CTs, and the lesion as a DICOM SEG
and in lesions.csv); `lesion_only` keeps the paper's curated slices through the mass.
Everything is drawn from seeded generators per patient: the same seed gives
byte-identical files.

- `anatomy`: the body, its tissues and their HU by phase;
- `lesions`: the renal mass of each histology, placed and painted;
- `writer`: scanners, transfer syntaxes, DICOM tags and pixels;
- `studies`: whole studies, and series.csv describing them;
- `seg`: the lesion truth as DICOM SEG objects and lesions.csv;
- `archive`: the patient plan, labels, and `synthesize_archive`.
"""

from renalflow.tasks.synth.archive import (
    LESIONS_CSV,
    SERIES_CSV,
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
    "LESIONS_CSV",
    "SERIES_CSV",
    "PatientPlan",
    "SynthConfig",
    "SynthReport",
    "archive_digest",
    "plan_patients",
    "synthesize_archive",
    "write_labels",
    "write_patient",
]
