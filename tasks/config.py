"""Typed configuration for preprocessing; defaults are the paper's choices.

Where the paper (Pedersen et al. 2020) is silent, the default is what a radiologist
and a data engineer would expect, and the reason is written next to the value.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from enum import StrEnum
from functools import cached_property

# The decision rule, once. Everything that votes (evaluation per patient, scoring per
# study, the web page) takes its defaults from here.
VOTE_THRESHOLD = 0.51
"""A patient (or study) is malignant when at least this share of its images are (paper)."""
IMAGE_THRESHOLD = 0.5
"""An image is malignant when P(malignant) >= this (the paper's sigmoid output at 0.5)."""
MIN_IMAGES = 10
"""Our choice: votes on fewer images are flagged `too_few_images` (the paper had 20-100)."""
SEED = 2020
"""Our choice: the default seed of every random step (split, weights, shuffling)."""

DEVELOPMENT = "development"
"""The cohort that is split for training; any other cohort name is an external test set."""
SCREENING = "screening"
"""Our choice: the cohort name scoring gives newly ingested screening files."""


class Label(StrEnum):
    """Reference label of a patient, and the vote's outcome."""

    BENIGN = "benign"
    MALIGNANT = "malignant"


class InTraining(StrEnum):
    """Whether a vote's patient was among those its model learnt from (for that model).

    `training` and `validation`: the patient is in the model's train or validation split
    (its figures on that patient overstate accuracy); `none`: the model never trained on
    the patient (a held-out test patient, or a patient it never saw); `unknown`: the
    model directory has no split to tell (a model copied without split.json, or rows
    written before renalflow recorded this).
    """

    TRAINING = "training"
    VALIDATION = "validation"
    NONE = "none"
    UNKNOWN = "unknown"


MIN_AGREEMENT_N = 10
"""Our choice: an agreement figure (sensitivity, specificity, PPV, NPV) resting on fewer
cases than this is flagged: one case more or less moves it by 10 points or more."""
AGREEMENT_BOOTSTRAP = 2000
"""Our choice: resamples of the 2x2 table behind each agreement figure's percentile
bootstrap 95% CI (given beside the Wilson interval; 2,000 puts the 2.5th and 97.5th
percentiles 50 resamples from the ends)."""


ID_COLUMN = "patient_id"
"""Our choice: the column of an outside table `renalflow pseudonymise` replaces, unless
told another (the name renalflow's own labels CSV uses)."""
OUTCOME_COLUMN = "outcome"
"""Our choice: the column of reference outcomes (benign/malignant) `renalflow
load-references` reads, unless told another."""


class Task(StrEnum):
    """What a model learns from the slices.

    `classifier`: benign (oncocytoma) vs malignant (RCC), the paper's model, trained on
    slices through the tumour; `selector` (ours): whether a slice shows the renal mass,
    trained on annotated whole studies, so that only those slices vote.
    """

    CLASSIFIER = "classifier"
    SELECTOR = "selector"


SELECTOR_SENSITIVITY = 0.95
"""Our choice: a slice selector's decision threshold is the highest at which it still
finds at least this share of the validation split's lesion slices (missing a few slices
of a mass costs little, as the others still vote; missing a study's mass loses it)."""


SELECTOR_HARD_NEGATIVE_MM = 60.0
"""Our choice: a slice without the mass within this distance along z of a lesion slice of
its series is a hard negative for the selector: the same kidneys, no mass. A selector
that does not learn them apart learns "the kidneys' level" instead of "the renal mass"
(BENCHMARKS.md, "Slice selection")."""

SELECTOR_HARD_NEGATIVE_SHARE = 0.75
"""Our choice: the share of each training epoch's negatives drawn from the hard negatives
(SELECTOR_HARD_NEGATIVE_MM); 0 draws the negatives as they come (at 60 mm, about two
thirds of the benchmark's annotated negatives)."""


class Split(StrEnum):
    """Patient-level split of the development cohort (paper: 70/10/20)."""

    TRAIN = "train"
    VALIDATION = "validation"
    TEST = "test"


class Profile(StrEnum):
    """Training profile: `paper` (ResNet50V2 as published) or `cpu-demo` (ours, small)."""

    PAPER = "paper"
    CPU_DEMO = "cpu-demo"


class OversampleUnit(StrEnum):
    """What benign oversampling resamples: `patient` (the paper: benign training patients,
    each with all their images, drawn until benign and malignant patients are 50:50) or
    `image` (benign images drawn until the images are 50:50)."""

    PATIENT = "patient"
    IMAGE = "image"


class Device(StrEnum):
    """Where training runs: `auto` (a Dask worker started with `--resources GPU=1` when
    the cluster has one, else this process, said in the log), `gpu` (a GPU worker or a
    GPU this process sees, else refused at once) or `cpu` (this process)."""

    AUTO = "auto"
    GPU = "gpu"
    CPU = "cpu"


class ModelAlias(StrEnum):
    """Registry aliases: `production` is the model scheduled scoring uses."""

    PRODUCTION = "production"


class ModelsAction(StrEnum):
    """What `renalflow models` does with the registry."""

    LIST = "list"
    REGISTER = "register"
    PROMOTE = "promote"
    ROLLBACK = "rollback"


class Gate(StrEnum):
    """How a pipeline's new model reaches production: `auto` (promoted when it passes
    the rule below) or `manual` (registered only; a person runs `renalflow models
    promote VERSION`)."""

    AUTO = "auto"
    MANUAL = "manual"


class GateMetric(StrEnum):
    """The held-out test figure the gate compares: `auc` (image ROC AUC, the paper's
    headline figure) or `patient_accuracy` (the 51% vote per patient)."""

    AUC = "auc"
    PATIENT_ACCURACY = "patient_accuracy"


GATE_MARGIN = 0.0
"""Our choice: a new model is promoted only when its gate metric exceeds production's, on
the same held-out test patients, by more than this (0: strictly better; a tie keeps the
model already in production, so retraining on the same data does not churn it)."""


class ServerAction(StrEnum):
    """What `renalflow server` does with the local Prefect server kept warm between
    commands: `status` (where it runs, its database, when it stops) or `stop` (now)."""

    STATUS = "status"
    STOP = "stop"


class Schedule(StrEnum):
    """Learning-rate schedule: `constant` (paper) or `cosine` (falls to zero)."""

    CONSTANT = "constant"
    COSINE = "cosine"


class MixedPrecision(StrEnum):
    """Mixed-precision policy for training and inference on accelerators."""

    BF16 = "bf16"
    FP16 = "fp16"


class Interpolation(StrEnum):
    """Pillow resampling filter used to downscale slices (paper: Keras `load_img` -> nearest)."""

    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    LANCZOS = "lanczos"
    BOX = "box"


class WindowSource(StrEnum):
    """Where the display window comes from.

    `fixed` applies the configured level/width to every slice, so brightness is the same
    across scanners (the authors' wish for normalisation); `file` uses each file's own
    WindowCenter/WindowWidth, falling back to the fixed window when a file has none.
    """

    FIXED = "fixed"
    FILE = "file"


class StudyStatus(StrEnum):
    """What a study's (or patient's) row in the results says happened.

    `voted`: the selected slices voted benign or malignant; `no_mass_found`: no slice of
    a screened series was selected (annotations or the selector found no renal mass,
    or no series is abdominal), so there is no vote, never a benign one.
    """

    VOTED = "voted"
    NO_MASS_FOUND = "no_mass_found"


class Phase(StrEnum):
    """Contrast phase of a CT series, inferred from its tags."""

    NONCONTRAST = "noncontrast"
    ARTERIAL = "arterial"
    VENOUS = "venous"
    UNKNOWN = "unknown"


SLICE_THICKNESS_MM = (1.5, 5.0)
"""The slice thicknesses of the study's images (paper): of two reconstructions of one
acquisition, the one nearest this range is voted on."""

# PACS sources (tasks/sources): our choices, gentle on a system the whole hospital uses.
PACS_CONCURRENCY = 2
"""Studies retrieved at once from one PACS."""
PACS_TIMEOUT_S = 60.0
"""Seconds a PACS may stay silent before a request counts as timed out."""
PACS_LOOKBACK_DAYS = 3
"""A run without a date range queries from this many days before the newest StudyDate
already delivered, for studies that reach the PACS late (already delivered ones are
skipped by their UID)."""
CALLING_AE = "RENALFLOW"
"""renalflow's AE title towards a DIMSE PACS (its administrator registers it)."""


@dataclass(frozen=True)
class SynthDefaults:
    """What `renalflow synth` writes by default (our choices): whole studies, as a
    hospital archive holds them; `lesion_only` gives the paper's curated slices instead.

    Attributes:
        study_slices: fewest and most slices of a whole-study series: the scan range
            (liver dome to iliac crest, 220-290 mm) at the series' thickness, clipped.
        matrix: Rows and Columns of every image (512 as scanners write; tests use less).
        chest_share, head_share: shares of patients who also have a chest CT (no
            kidneys, BodyPartExamined CHEST) or a head CT study.
        scout_share: share of abdominal studies with a scout (LOCALIZER) image.
        twin_share: share of abdominal studies where one contrast phase is also
            reconstructed thin (same acquisition and FrameOfReferenceUID, another series).
        seg_share: share of patients whose lesion comes as a DICOM SEG in the archive
            (OUT/lesions.csv always has every patient's lesion).
        max_lesion_slices: the curated archives' cap on slices per series through the mass.
    """

    study_slices: tuple[int, int] = (40, 150)
    matrix: int = 512
    chest_share: float = 0.3
    head_share: float = 0.15
    scout_share: float = 0.5
    twin_share: float = 0.3
    seg_share: float = 1.0
    max_lesion_slices: int = 30


class SelectionSource(StrEnum):
    """What decided which slices of a study vote.

    `annotation`: lesion annotations (DICOM SEG in the archive, or a lesions CSV);
    `selector`: a slice-selector model (`renalflow train --task selector`);
    `all`: every slice of the selected series (curated lesion slices, as in the paper).
    """

    ANNOTATION = "annotation"
    SELECTOR = "selector"
    ALL = "all"


@dataclass(frozen=True)
class SeriesRule:
    """Which series of a study are candidates for screening: abdominal axial original CT.

    Our choice throughout (the paper's images were picked by a radiologist). A series is
    judged by its BodyPartExamined when it has one, else by the words of its
    SeriesDescription (matched as the start of a word, case-insensitive; an including
    word wins over an excluding one, as in "CHEST ABDOMEN PELVIS"), else it is kept and
    its region recorded as unknown. Localizers, derived images and other modalities never
    reach the store (ingest rejects them).

    Attributes:
        body_parts: BodyPartExamined values (DICOM CID 4031 terms) whose scan range
            covers the kidneys (the adrenal glands and the pancreas lie at their level).
        include_words: description words that say the kidneys are in the scan range.
        exclude_words: description words of other regions (chest, head, limbs, ...).
        min_z_extent_mm: series covering less are not screened (0, off by default:
            curated archives hold a few slices through the mass). Whatever this is, a
            series whose slices all lie at one level (bolus tracking, monitoring,
            dynamic scans) is never screened.
        curated_max_z_mm: the classifier learns from slices through the mass. A series
            without lesion annotations counts as curated (the paper's format: a
            radiologist's slices through the mass) only when it covers at most this much
            along the body: kidneys are 10-13 cm long, masses rarely over 15 cm, while a
            whole abdominal scan covers 22-35 cm. Wider ones are refused for training
            and evaluation, never learnt from whole.
    """

    body_parts: tuple[str, ...] = (
        "ABDOMEN",
        "ABDOMENPELVIS",
        "CHESTABDOMEN",
        "CHESTABDPELVIS",
        "KIDNEY",
        "RETROPERITONEUM",
        "ADRENAL",
        "PANCREAS",
        "WHOLEBODY",
    )
    include_words: tuple[str, ...] = (
        "abd",
        "renal",
        "kidney",
        "nephr",
        "niere",
        "urogra",
        "retroperit",
        "whole",
    )
    exclude_words: tuple[str, ...] = (
        "head",
        "brain",
        "skull",
        "cerebr",
        "sinus",
        "orbit",
        "neck",
        "chest",
        "thora",
        "lung",
        "pulm",
        "cardi",
        "heart",
        "coronar",
        "spine",
        "knee",
        "hand",
        "foot",
        "extrem",
        "scout",
        "topogram",
        "localizer",
        "bolus",
        "monitor",
    )
    min_z_extent_mm: float = 0.0
    curated_max_z_mm: float = 160.0


@dataclass(frozen=True)
class PreprocessConfig:
    """How a stored CT slice becomes the uint8 image the network sees.

    Attributes:
        window_center: Window level in HU. Default 40 HU: a standard abdominal soft-tissue
            window (the paper exported images as 8-bit without stating the window).
        window_width: Window width in HU (default 400, the same abdominal window).
        window_source: `fixed` (default) or `file`; see `WindowSource`.
        output_size: Side of the square output image (paper: 224, ResNet50V2's input).
        interpolation: Downscaling filter (paper: nearest, Keras `load_img`'s default).
        max_axial_angle_deg: Largest angle between the slice normal and the patient's
            feet-head axis still counted as axial. 20 degrees admits gantry-tilted axial
            acquisitions and rejects coronal and sagittal reformats (90 degrees).
        keep_derived: Keep images whose ImageType says DERIVED (reformats, secondary
            captures). Off by default: the study used original axial acquisitions.
    """

    window_center: float = 40.0
    window_width: float = 400.0
    window_source: WindowSource = WindowSource.FIXED
    output_size: int = 224
    interpolation: Interpolation = Interpolation.NEAREST
    max_axial_angle_deg: float = 20.0
    keep_derived: bool = False

    def __post_init__(self) -> None:
        # Closed vocabularies are converted on entry: a typo raises here, not deep in a worker.
        object.__setattr__(self, "window_source", WindowSource(self.window_source))
        object.__setattr__(self, "interpolation", Interpolation(self.interpolation))
        if self.window_width < 1:
            raise ValueError(f"window_width must be at least 1 HU, got {self.window_width}")
        if not 8 <= self.output_size <= 4096:
            raise ValueError(f"output_size must be between 8 and 4096, got {self.output_size}")
        if not 0 <= self.max_axial_angle_deg < 90:
            raise ValueError(
                f"max_axial_angle_deg must be in [0, 90), got {self.max_axial_angle_deg}"
            )

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["window_source"] = self.window_source.value
        out["interpolation"] = self.interpolation.value
        return out

    @cached_property
    def version(self) -> str:
        """Content hash of everything that changes the stored pixels (`preprocess_version`)."""
        payload = json.dumps({"schema": 1, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]
