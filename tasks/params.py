"""The parameters of every renalflow job, once: the CLI, the deployments, infra/prefect.yaml
and the demo are built from these models (Prefect renders them as run forms).

Each model is one job's whole set of options. A field's description is its help text
everywhere; its default is the paper's where the paper says something (and the model
takes it from the module that owns it), ours otherwise, and the description says which.
Fields marked `positional` are arguments rather than options on the command line.
Nothing here runs anything: `flows/` turns a model into a run.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from renalflow.tasks.config import (
    CALLING_AE,
    DEVELOPMENT,
    GATE_MARGIN,
    ID_COLUMN,
    IMAGE_THRESHOLD,
    MIN_IMAGES,
    OUTCOME_COLUMN,
    PACS_CONCURRENCY,
    PACS_TIMEOUT_S,
    SCREENING,
    SEED,
    SELECTOR_HARD_NEGATIVE_MM,
    SELECTOR_HARD_NEGATIVE_SHARE,
    SELECTOR_SENSITIVITY,
    VOTE_THRESHOLD,
    Device,
    Gate,
    GateMetric,
    Interpolation,
    MixedPrecision,
    ModelAlias,
    ModelsAction,
    OversampleUnit,
    PreprocessConfig,
    Profile,
    Schedule,
    ServerAction,
    Split,
    SynthDefaults,
    Task,
    WindowSource,
)
from renalflow.tasks.model import LOWEST_VAL_LOSS, check_region

if TYPE_CHECKING:
    from renalflow.tasks.score import ScoreConfig
    from renalflow.tasks.selector import SelectorTraining
    from renalflow.tasks.sources.query import PacsSettings
    from renalflow.tasks.synth import SynthConfig

_PREPROCESS = PreprocessConfig()
_SYNTH = SynthDefaults()


Share = Annotated[float, Field(ge=0, le=1)]
"""A share of a whole, from 0 to 1 (an option's description says of what)."""

C = TypeVar("C")


def config_from(
    params: BaseModel, config_type: type[C], *, defaults: tuple[str, ...] = (), **given: Any
) -> C:
    """The task's config dataclass from a job's parameters: each of its fields from the
    parameter of the same name, or from `given`; those in `defaults` keep the config's
    default (they are not options). A field in none of them is a bug: it fails here, so
    a new config field is never silently left at its default."""
    names = {f.name for f in dataclasses.fields(config_type)}  # type: ignore[arg-type]
    taken = names & set(type(params).model_fields) - set(given) - set(defaults)
    missing = names - taken - set(given) - set(defaults)
    if missing:
        raise TypeError(
            f"{config_type.__name__} field(s) {sorted(missing)} have no parameter in "
            f"{type(params).__name__}: add the option, pass them, or name them in defaults"
        )
    return config_type(**{name: getattr(params, name) for name in taken}, **given)


def positional(**extra: Any) -> dict[str, Any]:
    """Field metadata: an argument on the command line, not an option."""
    return {"positional": True, **extra}


def cli(**extra: Any) -> dict[str, Any]:
    """Field metadata for the command line (metavar, exclusive group, ...)."""
    return extra


class JobParams(BaseModel):
    """Base of every job's parameters: frozen, unknown names refused (a typo in a
    deployment's parameters fails at once instead of being ignored)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)

    command: ClassVar[str]
    summary: ClassVar[str]


class ClusterParams(JobParams):
    """Where the work fans out: a new local Dask cluster or an existing scheduler."""

    workers: int | None = Field(
        default=None,
        ge=1,
        description="local Dask worker processes (default: one per core)",
        json_schema_extra=cli(group="where"),
    )
    dask_address: str | None = Field(
        default=None,
        description="address of an existing Dask scheduler (tcp://host:8786) instead of a "
        "local cluster",
        json_schema_extra=cli(group="where", metavar="ADDRESS"),
    )

    @model_validator(mode="after")
    def _one_cluster(self) -> ClusterParams:
        if self.workers is not None and self.dask_address:
            raise ValueError("give workers or dask_address, not both")
        return self


class SummaryParams(JobParams):
    """A run summary for scripts, beside the printed one."""

    summary_json: str | None = Field(
        default=None,
        description="also write the run summary as JSON to this file",
        json_schema_extra=cli(metavar="FILE"),
    )


ARCHIVE_HELP = (
    "archive folder or URI (file://, s3://), or a PACS: dicomweb+https://HOST/PATH "
    "(DICOMweb) or dimse://AET@HOST:PORT (C-FIND/C-GET)"
)


KEY_SECRET_HELP = (
    "Prefect Secret block holding the pseudonymisation key (default: "
    "RENALFLOW_PSEUDONYM_KEY from the environment)"
)

TABLES_HELP = (
    "study_votes, patient_votes, slice_scores, reference_outcomes and the model registry "
    "(models, model_aliases)"
)


class PacsParams(JobParams):
    """How a PACS archive is queried and fetched (ignored for folders and buckets).
    Credentials come from the environment (tasks/sources/credentials.py), never from here."""

    study_dates: str | None = Field(
        default=None,
        description="StudyDate range to fetch from a PACS: YYYYMMDD-YYYYMMDD, YYYYMMDD- or "
        "-YYYYMMDD (default: from a few days before the newest study fetched by an earlier "
        "run; everything on the first)",
        json_schema_extra=cli(metavar="RANGE"),
    )
    calling_ae: str = Field(
        default=CALLING_AE,
        description="renalflow's AE title towards a dimse:// PACS (registered there by its "
        "administrator)",
        json_schema_extra=cli(metavar="AET"),
    )
    pacs_concurrency: int = Field(
        default=PACS_CONCURRENCY,
        ge=1,
        description="studies fetched from a PACS at once (our choice: gentle on a system the "
        "whole hospital uses)",
        json_schema_extra=cli(metavar="N"),
    )
    pacs_timeout: float = Field(
        default=PACS_TIMEOUT_S,
        gt=0,
        description="seconds a PACS may stay silent before a request counts as timed out",
        json_schema_extra=cli(metavar="SECONDS"),
    )

    prune_cache: bool = Field(
        default=False,
        description="after ingest, drop the pixels of a PACS source's cached studies that "
        "were delivered whole and ingested, keeping each instance's header (what an SR "
        "cites); their slices stay in the store, but re-ingesting them with other "
        "preprocessing then needs the files again (our choice: off, the cache is kept)",
    )

    def pacs_settings(self) -> PacsSettings:
        from renalflow.tasks.sources.query import PacsSettings, parse_study_dates

        return PacsSettings(
            calling_ae=self.calling_ae,
            timeout_s=self.pacs_timeout,
            concurrency=self.pacs_concurrency,
            study_dates=parse_study_dates(self.study_dates),
            prune_cache=self.prune_cache,
        )


class SelectionParams(JobParams):
    """What decides which slices of a study vote when it carries no lesion annotations
    (tasks/selection.py): a slice selector, or every slice when asked for."""

    selector: str | None = Field(
        default=None,
        description="slice selector model (renalflow train --task selector): decides which "
        "slices of a study without lesion annotations show the renal mass and vote",
        json_schema_extra=cli(metavar="MODEL_DIR"),
    )
    all_slices: bool = Field(
        default=False,
        description="vote over every slice of the screened series when a study has no "
        "annotations and no selector is given: for curated archives of slices through the "
        "mass (the paper's images), never for whole studies; recorded in each vote's row",
    )


class ScreeningParams(PacsParams, SelectionParams):
    """What a screening run reads and writes: the archive, the model, the results table
    (scoring now, or on a schedule)."""

    archive: str = Field(description=ARCHIVE_HELP, json_schema_extra=positional())
    results: str = Field(description="results table folder or s3:// URI")
    model_dir: str | None = Field(
        default=None,
        description="trained model (renalflow train)",
        json_schema_extra=cli(group="model"),
    )
    model_alias: ModelAlias | None = Field(
        default=None,
        description="use the model the registry of RESULTS names by this alias when the run "
        "starts (renalflow models, renalflow pipeline); the votes record its version",
        json_schema_extra=cli(group="model"),
    )
    store: str | None = Field(
        default=None,
        description="slice store for the archive's slices (default: RESULTS.slices beside "
        "the results; it holds identifiers and pixels, so keep it inside the department)",
    )
    key_secret: str | None = Field(default=None, description=KEY_SECRET_HELP)
    report_to_pacs: bool = Field(
        default=False,
        description="write each study scored back to the PACS it came from as a DICOM "
        "Enhanced SR (vote, malignant share, thresholds, model version, the slices voted "
        "on; marked a research result, not a diagnosis), by STOW-RS or C-STORE; PACS "
        "archives only (our choice: off, the PACS administrator must agree)",
    )

    @model_validator(mode="after")
    def _one_model(self) -> ScreeningParams:
        if (self.model_dir is None) == (self.model_alias is None):
            raise ValueError("give --model-dir or --model-alias (e.g. production), one of them")
        return self

    @model_validator(mode="after")
    def _report_needs_pacs(self) -> ScreeningParams:
        from renalflow.tasks.sources import is_pacs

        if self.report_to_pacs and not is_pacs(self.archive):
            raise ValueError(
                f"--report-to-pacs writes results back to a PACS, and {self.archive} is not "
                "one (dicomweb+https://... or dimse://...): leave the option out"
            )
        return self


class SynthParams(JobParams):
    command: ClassVar[str] = "synth"
    summary: ClassVar[str] = "write a synthetic renal-mass CT archive and its labels"

    out: str = Field(
        description="output folder for archive/, labels.csv, synth.json and (whole studies) "
        "lesions.csv and series.csv"
    )
    patients: int = Field(default=20, ge=1, description="number of patients")
    seed: int = Field(default=0, description="random seed; recorded in OUT/synth.json")
    benign_fraction: Share = Field(
        default=0.19,
        description="share of benign (oncocytoma) patients (the paper's cohort had 0.19)",
    )
    lesion_only: bool = Field(
        default=False,
        description="write the paper's curated format instead of whole studies: only slices "
        "through the mass, no annotations (the same bytes as before whole studies existed)",
    )
    max_slices_per_series: int = Field(
        default=_SYNTH.max_lesion_slices,
        ge=1,
        description="with --lesion-only: cap on slices per series through the lesion",
    )
    min_study_slices: int = Field(
        default=_SYNTH.study_slices[0],
        ge=1,
        description="whole studies: fewest slices of an abdominal series (its scan range, "
        "liver dome to iliac crest, at its thickness, clipped to these bounds)",
    )
    max_study_slices: int = Field(
        default=_SYNTH.study_slices[1], ge=1, description="whole studies: most slices a series"
    )
    matrix: int = Field(
        default=_SYNTH.matrix,
        ge=32,
        le=1024,
        description="whole studies: Rows and Columns of every image (512 as scanners write; "
        "less for quick tests)",
    )
    chest_share: Share = Field(
        default=_SYNTH.chest_share, description="share of patients with a chest CT"
    )
    head_share: Share = Field(
        default=_SYNTH.head_share, description="share of patients with a head CT"
    )
    scout_share: Share = Field(
        default=_SYNTH.scout_share,
        description="share of abdominal studies with a scout (localizer) image",
    )
    twin_share: Share = Field(
        default=_SYNTH.twin_share,
        description="share of abdominal studies with one phase also reconstructed thin "
        "(same acquisition and FrameOfReferenceUID, another series)",
    )
    seg_share: Share = Field(
        default=_SYNTH.seg_share,
        description="share of patients whose lesion also comes as a DICOM SEG in the archive "
        "(lesions.csv always holds every lesion)",
    )
    workers: int | None = Field(
        default=None, ge=1, description="processes writing files (default: one per core)"
    )

    @model_validator(mode="after")
    def _check_study_slices(self) -> SynthParams:
        if self.min_study_slices > self.max_study_slices:
            raise ValueError(
                f"--min-study-slices {self.min_study_slices} is above --max-study-slices "
                f"{self.max_study_slices}"
            )
        if self.lesion_only and self.matrix != _SYNTH.matrix:
            raise ValueError(
                f"--matrix shapes whole studies; --lesion-only archives are {_SYNTH.matrix} x "
                f"{_SYNTH.matrix} (leave --matrix out)"
            )
        return self

    def synth_config(self) -> SynthConfig:
        from renalflow.tasks.synth import SynthConfig

        return config_from(
            self,
            SynthConfig,
            study_slices=(self.min_study_slices, self.max_study_slices),
            defaults=("syntaxes", "first_study_year", "last_study_year", "patient_prefix"),
        )


class PreprocessParams(JobParams):
    """How DICOM slices become images; every default is PreprocessConfig's."""

    window_center: float = Field(
        default=_PREPROCESS.window_center,
        description="window level in HU (our choice: abdominal soft tissue; the paper does "
        "not state its window)",
    )
    window_width: float = Field(
        default=_PREPROCESS.window_width, gt=0, description="window width in HU (our choice)"
    )
    window_source: WindowSource = Field(
        default=_PREPROCESS.window_source,
        description="'fixed' applies the level/width above to every slice; 'file' uses each "
        "file's WindowCenter/WindowWidth",
    )
    size: int = Field(
        default=_PREPROCESS.output_size,
        ge=8,
        le=4096,
        description="output image side in pixels (paper: ResNet50V2's 224)",
    )
    interpolation: Interpolation = Field(
        default=_PREPROCESS.interpolation,
        description="resize filter (paper: nearest, as the paper's Keras load_img)",
    )
    max_axial_angle: float = Field(
        default=_PREPROCESS.max_axial_angle_deg,
        ge=0,
        lt=90,
        description="largest tilt in degrees from the feet-head axis still counted as axial "
        "(our choice)",
    )
    keep_derived: bool = Field(
        default=_PREPROCESS.keep_derived,
        description="also keep DERIVED images (reformats, secondary captures)",
    )

    def preprocess_config(self) -> PreprocessConfig:
        return config_from(
            self,
            PreprocessConfig,
            output_size=self.size,
            max_axial_angle_deg=self.max_axial_angle,
        )


class IngestParams(PreprocessParams, PacsParams, ClusterParams, SummaryParams):
    command: ClassVar[str] = "ingest"
    summary: ClassVar[str] = (
        "convert a DICOM archive into the Parquet slice store (Prefect flow on Dask)"
    )

    archive: str = Field(description=ARCHIVE_HELP, json_schema_extra=positional())
    store: str = Field(description="slice store folder or URI")
    labels: str | None = Field(
        default=None,
        description="CSV with patient_id,label (benign|malignant)",
        json_schema_extra=cli(metavar="CSV"),
    )
    lesions: str | None = Field(
        default=None,
        description="CSV of lesion ranges: StudyInstanceUID,SeriesInstanceUID and "
        "first_SOPInstanceUID,last_SOPInstanceUID or z_min,z_max (DICOM SEG objects in the "
        "archive are read without it)",
        json_schema_extra=cli(metavar="CSV"),
    )
    cohort: str = Field(
        default=DEVELOPMENT,
        description=f"cohort name; '{DEVELOPMENT}' is split for training, any other name is "
        "an external test cohort",
    )
    slices_per_task: int = Field(
        default=512,
        ge=1,
        description="most slices per conversion task (our choice: about 25 MB of output)",
    )
    memory_limit: str | None = Field(
        default=None,
        description="per-worker memory limit of the local cluster, e.g. 2GiB",
        json_schema_extra=cli(metavar="SIZE"),
    )


class TrainingOptions(JobParams):
    """How a model is trained (train, pipeline). Unset options take the profile's value
    (`renalflow.tasks.model.profile_config`)."""

    device: Device = Field(
        default=Device.AUTO,
        description="'auto': a Dask worker started with --resources GPU=1 when the cluster "
        "has one, else this process (said in the log); 'gpu': a GPU worker or a GPU this "
        "process sees, else refused at once; 'cpu': this process",
    )

    profile: Profile = Field(
        default=Profile.PAPER,
        description="'paper': ResNet50V2, ImageNet weights, RMSprop 2e-5, 10 epochs; "
        "'cpu-demo' (ours): a small CNN on the kidney region that trains in minutes on a CPU",
    )
    epochs: int | None = Field(default=None, ge=1, description="epochs (paper: 10)")
    batch_size: int | None = Field(
        default=None, ge=1, description="images per training step (our choice: 32)"
    )
    learning_rate: float | None = Field(
        default=None, gt=0, description="RMSprop learning rate (paper: 2e-5)"
    )
    weights: str | None = Field(
        default=None,
        description="'imagenet' (paper; fetched by Keras, needs the internet), 'none', or a "
        "local weights file",
    )
    select_epoch: int | None = Field(
        default=None,
        description="keep this epoch's model, or 'best': the epoch with the lowest "
        "validation loss (paper: 5, the epoch the authors kept; cpu-demo: best)",
        json_schema_extra=cli(metavar="N|best"),
    )
    decay_after: int | None = Field(
        default=None,
        ge=1,
        description="divide the learning rate by 10 after this epoch (the authors suggest 4)",
    )
    schedule: Schedule | None = Field(
        default=None,
        description="learning-rate schedule (paper: constant; cpu-demo: cosine, falling to 0)",
    )
    ema: float | None = Field(
        default=None,
        description="keep an exponential moving average of the weights with this per-step "
        "momentum, or 'none' (paper: none; cpu-demo: 0.99)",
        json_schema_extra=cli(metavar="MOMENTUM"),
    )
    region: tuple[float, float, float, float] | tuple[()] | None = Field(
        default=None,
        description="the part of the slice the network sees as TOP,BOTTOM,LEFT,RIGHT "
        "fractions, or 'full' (paper: full; cpu-demo: the kidney region 0.28,0.9,0.14,0.86)",
        json_schema_extra=cli(metavar="TOP,BOTTOM,LEFT,RIGHT"),
    )
    mixed_precision: MixedPrecision | None = Field(
        default=None, description="mixed precision on accelerators (default: off)"
    )
    seed: int = Field(default=SEED, description="seed for the split, weights and shuffling")
    oversample: bool | None = Field(
        default=None,
        description="resample the rarer class's training data (benign; for a selector, "
        "lesion slices) to 50:50 (paper: on)",
    )
    oversample_unit: OversampleUnit | None = Field(
        default=None,
        description="what oversampling draws: 'patient' (paper: benign patients, each with "
        "all their images, until patients are 50:50) or 'image' (a selector always draws "
        "slices)",
    )
    augment: bool | None = Field(
        default=None,
        description="random flips, zoom, shifts and noise while training (paper: off, the "
        "paper found augmentation harmful; cpu-demo: on)",
    )
    full_resolution: bool | None = Field(
        default=None,
        description="cpu-demo only (ours): the small network sees slices at full rather than "
        "half resolution, about 4x the computation (default: on for the slice selector, "
        "off for the classifier)",
    )

    @field_validator("ema", mode="before")
    @classmethod
    def _ema(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.lower() in ("none", "off"):
                return 0.0  # explicitly no averaging (None means: the profile's)
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"a momentum between 0 and 1, or none; got {value!r}") from None
        if value is not None and value != 0 and not 0 < value < 1:
            raise ValueError(f"a momentum between 0 and 1, or none; got {value}")
        return value

    @field_validator("select_epoch", mode="before")
    @classmethod
    def _select_epoch(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("best", "lowest-val-loss"):
            return LOWEST_VAL_LOSS  # explicitly the lowest validation loss (None: the profile's)
        if value is not None:
            try:
                number = int(value)
            except (TypeError, ValueError):
                raise ValueError(f"an epoch number or 'best'; got {value!r}") from None
            if number < 1:
                raise ValueError(f"an epoch number (1 or more) or 'best'; got {value!r}")
            return number
        return value

    @field_validator("region", mode="before")
    @classmethod
    def _region(cls, value: Any) -> Any:
        original = value
        if isinstance(value, str):
            if value.lower() in ("full", "none", "whole"):
                return ()
            value = value.split(",")
        if value is None or len(value) == 0:
            return value if value is None else ()
        try:
            return check_region(value)
        except ValueError:
            raise ValueError(
                "TOP,BOTTOM,LEFT,RIGHT as fractions of the slice, top < bottom and left < "
                f"right (e.g. 0.28,0.9,0.14,0.86), or 'full'; got {original!r}"
            ) from None


class TrainParams(TrainingOptions):
    """Unset options take the profile's value (`renalflow.tasks.model.profile_config`)."""

    command: ClassVar[str] = "train"
    summary: ClassVar[str] = (
        "train the classifier (or the slice selector) on the development cohort (paper "
        "profile by default)"
    )

    store: str = Field(description="slice store written by `renalflow ingest`")
    model_dir: str = Field(description="where the model and its records go")
    task: Task = Field(
        default=Task.CLASSIFIER,
        description="'classifier': benign vs malignant on labelled slices (the paper's); "
        "'selector' (ours): does a slice show the renal mass, learnt from the slices whose "
        "lesion annotation is known (ingest with DICOM SEG or --lesions)",
    )
    target_sensitivity: float = Field(
        default=SELECTOR_SENSITIVITY,
        gt=0,
        le=1,
        description="selector only: its threshold is the highest that finds at least this "
        "share of the validation split's lesion slices (our choice)",
    )
    hard_negative_mm: float = Field(
        default=SELECTOR_HARD_NEGATIVE_MM,
        ge=0,
        description="selector only: a slice without the mass this close (mm along z) to a "
        "lesion slice of its series is a hard negative: the same kidneys, no mass (our "
        "choice)",
        json_schema_extra=cli(metavar="MM"),
    )
    hard_negative_share: float = Field(
        default=SELECTOR_HARD_NEGATIVE_SHARE,
        ge=0,
        lt=1,
        description="selector only: the share of each epoch's negatives drawn from the hard "
        "negatives; 0 draws negatives as they come (our choice)",
        json_schema_extra=cli(metavar="X"),
    )
    dask_address: str | None = Field(
        default=None,
        description="Dask scheduler with GPU workers (`dask worker ... --resources GPU=1`); "
        "training runs there when it has one, in this process otherwise",
        json_schema_extra=cli(metavar="ADDRESS"),
    )

    def selector_training(self) -> SelectorTraining:
        from renalflow.tasks.selector import SelectorTraining

        return config_from(self, SelectorTraining)


class VoteParams(JobParams):
    """The decision rule's two thresholds, as evaluation and scoring take them."""

    vote_threshold: float = Field(
        default=VOTE_THRESHOLD,
        gt=0,
        le=1,
        description="a patient's study is malignant when at least this share of its images "
        f"are (paper: {VOTE_THRESHOLD})",
    )
    image_threshold: float = Field(
        default=IMAGE_THRESHOLD,
        gt=0,
        le=1,
        description=f"an image is malignant when P(malignant) is at least this (paper: "
        f"{IMAGE_THRESHOLD})",
    )


class EvaluateParams(VoteParams):
    command: ClassVar[str] = "evaluate"
    summary: ClassVar[str] = (
        "image metrics, the patient majority vote and a report for a split or a cohort"
    )

    store: str = Field(description="slice store written by `renalflow ingest`")
    model_dir: str = Field(description="trained model (renalflow train)")
    out: str = Field(description="folder for the report (report.html, metrics.json, ...)")
    split: Split | None = Field(
        default=None,
        description="split of the development cohort to evaluate (default: test)",
        json_schema_extra=cli(group="which"),
    )
    cohort: str | None = Field(
        default=None,
        description="an external cohort ingested with --cohort NAME",
        json_schema_extra=cli(group="which"),
    )
    bootstrap: int = Field(
        default=1000, ge=1, description="bootstrap resamples for the AUC's 95% CI (our choice)"
    )
    seed: int = Field(default=SEED, description="seed of the bootstrap")

    @model_validator(mode="after")
    def _one_target(self) -> EvaluateParams:
        if self.split is not None and self.cohort:
            raise ValueError("give split or cohort, not both")
        return self


class ScoreParams(ScreeningParams, VoteParams, ClusterParams, SummaryParams):
    command: ClassVar[str] = "score"
    summary: ClassVar[str] = (
        "screen an archive with a trained model into the results table (incremental)"
    )

    cohort: str = Field(default=SCREENING, description="cohort name for newly ingested files")
    min_images: int = Field(
        default=MIN_IMAGES,
        ge=1,
        description="studies with fewer images are flagged too_few_images (our choice; the "
        "paper had 20-100 images per patient)",
    )
    explain: bool = Field(
        default=False,
        description="also write heat maps (Grad-CAM) of the 3+3 slices that decided each vote",
    )
    explain_dir: str | None = Field(
        default=None,
        description="where the heat maps go (default: RESULTS.heatmaps beside the results)",
    )

    def score_config(self) -> ScoreConfig:
        from renalflow.tasks.score import ScoreConfig

        # Not options: the inference batch, the heat maps per side, the series rule.
        return config_from(
            self, ScoreConfig, defaults=("batch_size", "explain_per_side", "series_rule")
        )


class PipelineParams(TrainingOptions, PreprocessParams, ClusterParams, SummaryParams):
    command: ClassVar[str] = "pipeline"
    summary: ClassVar[str] = (
        "ingest new files, train, evaluate against production on the same held-out "
        "patients, register, and promote through the gate"
    )

    archive: str = Field(description=ARCHIVE_HELP, json_schema_extra=positional())
    store: str = Field(description="slice store of the development cohort (made if absent)")
    labels: str = Field(
        description="CSV with patient_id,label (benign|malignant)",
        json_schema_extra=cli(metavar="CSV"),
    )
    results: str = Field(
        description="results table folder or URI; the registry is its models and "
        "model_aliases tables"
    )
    models_dir: str = Field(
        description="folder for the trained model directories (one per run, named by the "
        "time it started)",
        json_schema_extra=cli(metavar="FOLDER"),
    )
    lesions: str | None = Field(
        default=None,
        description="CSV of lesion ranges for whole studies (as for renalflow ingest)",
        json_schema_extra=cli(metavar="CSV"),
    )
    gate: Gate = Field(
        default=Gate.AUTO,
        description="'auto': promote the new model to production when it passes the gate; "
        "'manual': register it only, for `renalflow models promote VERSION`",
    )
    gate_metric: GateMetric = Field(
        default=GateMetric.AUC,
        description="held-out test figure the gate compares (our choice: the image AUC, the "
        "paper's headline figure)",
    )
    gate_margin: float = Field(
        default=GATE_MARGIN,
        ge=0,
        le=1,
        description="promote only when the new model's figure exceeds production's on the "
        "same held-out patients by more than this (our choice: 0, strictly better; a tie "
        "keeps production)",
    )
    bootstrap: int = Field(
        default=1000, ge=1, description="bootstrap resamples for the AUC's 95% CI (our choice)"
    )


class ModelsParams(JobParams):
    command: ClassVar[str] = "models"
    summary: ClassVar[str] = (
        "the model registry beside the results: list, register, promote VERSION, rollback"
    )

    action: ModelsAction = Field(
        default=ModelsAction.LIST,
        description="list: registered versions and what production names; register: add "
        "--model-dir with its held-out test figures (needs --store); promote: make VERSION "
        "production; rollback: production back to the version it named before",
        json_schema_extra=positional(),
    )
    version: str | None = Field(
        default=None,
        description="model version to promote (or a unique start of it)",
        json_schema_extra=positional(),
    )
    results: str = Field(description="results table folder or URI")
    model_dir: str | None = Field(default=None, description="register: the trained model")
    store: str | None = Field(
        default=None, description="register: the slice store its test patients are in"
    )
    reason: str | None = Field(
        default=None,
        description="promote, rollback: why, recorded in model_aliases (default: by hand)",
    )

    @model_validator(mode="after")
    def _action_needs(self) -> ModelsParams:
        if self.action is ModelsAction.PROMOTE and not self.version:
            raise ValueError("promote needs the VERSION to promote (renalflow models list)")
        if self.action is not ModelsAction.PROMOTE and self.version:
            raise ValueError(f"{self.action.value} takes no VERSION")
        if self.action is ModelsAction.REGISTER and not (self.model_dir and self.store):
            raise ValueError("register needs --model-dir and --store")
        return self


class DoctorParams(JobParams):
    command: ClassVar[str] = "doctor"
    summary: ClassVar[str] = (
        "print the Keras backend, the devices it sees (GPUs) and the versions in use"
    )


class QueryParams(JobParams):
    command: ClassVar[str] = "query"
    summary: ClassVar[str] = (
        "DuckDB SQL over the results table (study_votes, patient_votes, slice_scores, "
        "reference_outcomes, models, model_aliases)"
    )

    sql: str | None = Field(
        default=None,
        description=f"one SELECT (or WITH ... SELECT) over {TABLES_HELP}",
        json_schema_extra=positional(),
    )
    results: str | None = Field(default=None, description="results table folder or URI")
    describe: bool = Field(
        default=False,
        description="print the data dictionary (every column of the results and what it "
        "means) instead of running SQL",
    )
    as_of: str | None = Field(
        default=None,
        description="a study_votes version (e.g. 3) or a time (e.g. 2026-11-27T02:00)",
    )
    format: str = Field(
        default="table",
        description="output format",
        json_schema_extra=cli(choices=["table", "csv", "json", "parquet"]),
    )
    output: str | None = Field(
        default=None, description="write to this file instead of the terminal (parquet needs it)"
    )

    @model_validator(mode="after")
    def _sql_or_describe(self) -> QueryParams:
        if self.describe and self.sql:
            raise ValueError("give SQL or --describe, not both")
        if not self.describe and not (self.sql and self.results):
            raise ValueError("give the SQL and --results (or --describe for the columns)")
        return self


class HistoryParams(JobParams):
    command: ClassVar[str] = "history"
    summary: ClassVar[str] = "versions of the results table (for --as-of), newest first"

    results: str = Field(description="results table folder or URI")


class MigrateResultsParams(JobParams):
    command: ClassVar[str] = "migrate-results"
    summary: ClassVar[str] = (
        "upgrade a results table written by an earlier renalflow (once, in place)"
    )

    results: str = Field(description="results table folder or URI")
    model_dir: str | None = Field(
        default=None,
        description="a model whose votes are in the table: its split fills their "
        "in_training (needs the results' key); other models' old votes get 'unknown'",
    )
    key_secret: str | None = Field(default=None, description=KEY_SECRET_HELP)


class CohortReportParams(JobParams):
    command: ClassVar[str] = "cohort-report"
    summary: ClassVar[str] = (
        "an HTML summary of the results table: votes by year, vendor and phase mix, and "
        "agreement with reference outcomes"
    )

    results: str = Field(description="results table folder or URI")
    out: str = Field(description="folder for cohort.html and agreement.csv")
    as_of: str | None = Field(default=None, description="a study_votes version or a time")
    include_training: bool = Field(
        default=False,
        description="keep the votes of patients their model trained or validated on (left "
        "out by default: they overstate accuracy)",
    )


class PseudonymiseParams(JobParams):
    command: ClassVar[str] = "pseudonymise"
    summary: ClassVar[str] = (
        "replace the patient IDs of an outside table (CSV or Parquet) by the results' "
        "pseudonyms, to join it with the votes"
    )

    table: str = Field(
        description="CSV or Parquet file with a patient ID column (never modified)",
        json_schema_extra=positional(),
    )
    results: str = Field(
        description="results table whose key the pseudonyms must match (a table scored "
        "under another key is refused)"
    )
    out: str = Field(description="new CSV or Parquet file to write (never the input)")
    id_column: str = Field(
        default=ID_COLUMN,
        description="the column holding hospital patient IDs; it becomes patient_key, and "
        "key_id is added beside it",
        json_schema_extra=cli(metavar="NAME"),
    )
    key_secret: str | None = Field(default=None, description=KEY_SECRET_HELP)


class LoadReferencesParams(JobParams):
    command: ClassVar[str] = "load-references"
    summary: ClassVar[str] = (
        "load reference outcomes (histology, follow-up) from a pseudonymised table into "
        "the results' reference_outcomes"
    )

    table: str = Field(
        description="CSV or Parquet written by `renalflow pseudonymise`",
        json_schema_extra=positional(),
    )
    results: str = Field(description="results table folder or URI")
    source: str = Field(
        description="where the outcomes come from, e.g. histology or 'follow-up 2024'"
    )
    outcome_column: str = Field(
        default=OUTCOME_COLUMN,
        description="the column holding benign or malignant",
        json_schema_extra=cli(metavar="NAME"),
    )
    date_column: str | None = Field(
        default=None,
        description="a column with the outcome's date (kept as year and month only)",
        json_schema_extra=cli(metavar="NAME"),
    )


class ExtractParams(JobParams):
    command: ClassVar[str] = "extract"
    summary: ClassVar[str] = (
        "freeze the rows of a query at a version of the results: Parquet, CSV and a "
        "manifest to reproduce them byte for byte"
    )

    sql: str | None = Field(
        default=None,
        description=f"one SELECT over {TABLES_HELP}; the rows are sorted by all columns, "
        "left to right",
        json_schema_extra=positional(),
    )
    out: str = Field(description="new folder for rows.parquet, rows.csv and manifest.json")
    results: str | None = Field(
        default=None,
        description="results table folder or URI (with --manifest: where it is now, if it moved)",
    )
    as_of: str | None = Field(
        default=None,
        description="a study_votes version or a time (default: the latest version; the "
        "manifest records the version read)",
    )
    manifest: str | None = Field(
        default=None,
        description="rerun the extract of this manifest.json (its query and version) and "
        "check the files come out byte-identical",
        json_schema_extra=cli(metavar="FILE"),
    )

    @model_validator(mode="after")
    def _query_or_manifest(self) -> ExtractParams:
        if self.manifest and (self.sql or self.as_of):
            raise ValueError("--manifest holds the query and its version: give neither")
        if not self.manifest and not (self.sql and self.results):
            raise ValueError("give the SQL and --results, or --manifest FILE to rerun one")
        return self


class ServerParams(JobParams):
    command: ClassVar[str] = "server"
    summary: ClassVar[str] = "status or stop of the local Prefect server kept warm between commands"

    action: ServerAction = Field(
        default=ServerAction.STATUS,
        description="status: where it runs and when it stops; stop: stop it now",
        json_schema_extra=positional(),
    )


NIGHTLY_CRON = "0 2 * * *"
"""Our choice: scheduled scoring at 02:00 local time, when the PACS is quiet."""


class ServeParams(ScreeningParams, ClusterParams):
    command: ClassVar[str] = "serve"
    summary: ClassVar[str] = (
        "register and serve Prefect deployments: nightly scoring, ingest and train"
    )

    cron: str = Field(default=NIGHTLY_CRON, description="nightly schedule, cron syntax")
    timezone: str | None = Field(
        default=None, description="IANA time zone of the schedule (default: this machine's)"
    )


class WebParams(SelectionParams):
    command: ClassVar[str] = "web"
    summary: ClassVar[str] = (
        "a page for urologists: upload one patient's CT study, see which slices were "
        "selected and the vote"
    )

    model_dir: str = Field(description="trained model (renalflow train)")
    out: str = Field(default="renalflow-web", description="folder for uploads")
    host: str = Field(default="127.0.0.1", description="address to listen on (loopback by default)")
    port: int = Field(default=8000, ge=1, le=65535, description="port")
    max_upload_mb: int = Field(default=500, ge=1, description="largest upload in MB")
    keep_uploads: bool = Field(default=False, description="keep uploads after scoring")
    token_file: str | None = Field(
        default=None,
        description="file holding the page's token (or RENALFLOW_WEB_TOKEN); required when "
        "--host is not loopback, and then on every request",
        json_schema_extra=cli(metavar="FILE"),
    )
    allowed_hosts: str | None = Field(
        default=None,
        description="comma-separated host names the page answers to besides --host (the "
        "name users type, behind a proxy or DNS)",
        json_schema_extra=cli(metavar="NAMES"),
    )
    max_concurrent: int = Field(
        default=2,
        ge=1,
        description="uploads scored at once; more are told to retry (503) (our choice: 2)",
    )


class DemoParams(JobParams):
    command: ClassVar[str] = "demo"
    summary: ClassVar[str] = (
        "run the pipeline end to end on a synthetic archive (what `make demo` runs)"
    )

    out: str = Field(default="renalflow-demo", description="working folder")
    patients: int = Field(default=100, ge=1, description="synthetic development patients")
    benign_fraction: Share = Field(
        default=0.5,
        description="benign share of the development patients (our choice: 0.5, so that the "
        "20 test patients hold about 10 benign ones and the AUC means something; the "
        "paper's cohort had 0.19)",
    )
    selector_patients: int = Field(
        default=12,
        ge=6,
        description="patients with annotated whole studies the slice selector learns from "
        "(our choice: 12, about 4,000 slices with their lesion SEGs)",
    )
    selector_epochs: int = Field(
        default=8,
        ge=1,
        description="epochs of the slice selector's cpu-demo training (our choice: 8; "
        "whole studies hold ten times the classifier's slices)",
    )
    screening: int = Field(
        default=12,
        ge=1,
        description="patients in the screening archive that gets scored: whole studies "
        "(chest and head CT, scouts, twin reconstructions) without annotations, so the "
        "selector decides which slices vote",
    )
    seed: int = Field(default=SEED, description="random seed")
    interpolation: Interpolation = Field(
        default=Interpolation.BOX,
        description="resize filter when ingesting (our choice: box, each 224-px pixel "
        "averages the 512-px pixels it covers, so the slice keeps its mean density and pixel "
        "noise falls to under half; `renalflow ingest` keeps the paper's nearest)",
    )
    workers: int | None = Field(
        default=None, ge=1, description="local Dask workers (default: one per core)"
    )
    pacs: bool = Field(
        default=False,
        description="screen from a PACS: start Orthanc on loopback (`make pacs` installs "
        "it), load the screening archive into it, score it over DICOMweb and send the "
        "results back as DICOM SR (our choice: off, the folder is screened)",
    )


JOB_PARAMS: tuple[type[JobParams], ...] = (
    SynthParams,
    IngestParams,
    TrainParams,
    EvaluateParams,
    ScoreParams,
    PipelineParams,
    ModelsParams,
    QueryParams,
    HistoryParams,
    MigrateResultsParams,
    CohortReportParams,
    PseudonymiseParams,
    LoadReferencesParams,
    ExtractParams,
    ServeParams,
    WebParams,
    DemoParams,
    ServerParams,
    DoctorParams,
)
"""Every command, in the order `renalflow --help` lists them."""
