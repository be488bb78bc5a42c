"""The jobs: one Prefect flow per command that runs a pipeline step, each taking its
parameter model from `renalflow.tasks.params`.

The CLI, the deployments (`renalflow serve`, infra/prefect.yaml) and the demo all call
these same flows, so a run looks the same in the Prefect UI whichever door started it.
Each job loads the object-storage credentials, checks its inputs, builds its Dask task
runner and starts the step's flow on it as a subflow; it returns the step's summary.
`preflight_*` are the checks a command makes before anything starts (no server, no
cluster): the jobs repeat them, because a deployment run has no CLI in front of it.
"""

# No `from __future__ import annotations`: Prefect reads the parameter models from the
# jobs' signatures to build their schemas (the run forms), so they must be real classes.
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger

from renalflow.flows.runtime import dask_task_runner, load_s3_credentials
from renalflow.tasks.config import Split, Task
from renalflow.tasks.errors import InputError
from renalflow.tasks.params import (
    EvaluateParams,
    IngestParams,
    PipelineParams,
    ScoreParams,
    SynthParams,
    TrainingOptions,
    TrainParams,
)

if TYPE_CHECKING:
    from renalflow.flows.ingest import IngestSummary
    from renalflow.flows.pipeline import PipelineSummary
    from renalflow.flows.score import ScoreSummary
    from renalflow.tasks.model import TrainConfig
    from renalflow.tasks.synth import SynthReport
    from renalflow.tasks.train import TrainResult


def as_uri(location: str) -> str:
    """Local paths become absolute, so workers in other folders find the same files."""
    if "://" in location:
        return location
    return os.path.abspath(location)


def _is_local(location: str | None) -> bool:
    return bool(location) and "://" not in str(location)


def _reach(*locations: tuple[str | None, str, bool]) -> None:
    """Each (location, what it is, must it exist) given, reached once (tasks.storage)."""
    from renalflow.tasks.storage import check_location

    for location, what, must_exist in locations:
        if location:
            check_location(as_uri(location), what, must_exist=must_exist)


def preflight_pacs(params: IngestParams | ScoreParams, *, remote: bool) -> bool:
    """For a PACS archive: the extra installed, the URI and settings valid, and (`remote`)
    the PACS answering with these credentials and AE titles. False for other archives."""
    from renalflow.flows.runtime import require_extra
    from renalflow.tasks.sources import check_pacs_store, is_pacs, parse_source

    if not is_pacs(params.archive):
        return False
    require_extra("pacs", "a PACS archive")
    source = parse_source(params.archive)
    if isinstance(params, IngestParams):
        check_pacs_store(params.store)
    else:
        from renalflow.tasks.score import default_store

        check_pacs_store(params.store or default_store(params.results))
    settings = params.pacs_settings()
    if remote:
        from renalflow.tasks.sources.fetch import open_client

        client = open_client(source, settings)
        try:
            client.check()
        finally:
            client.close()
    return True


def _preflight_archive(
    params: IngestParams | ScoreParams,
    *others: tuple[str | None, str, bool],
    remote: bool,
) -> None:
    """The archive checked (a PACS, or a folder or bucket of DICOM files); with `remote`,
    the archive and the `others` (as `_reach` takes them) reached first."""
    from renalflow.tasks.ingest import check_archive

    pacs = preflight_pacs(params, remote=remote)
    if remote:  # object storage reached once, each problem in one line
        _reach((None if pacs else params.archive, "archive", True), *others)
    if not pacs and (remote or _is_local(params.archive)):
        check_archive(as_uri(params.archive))


def preflight_ingest(params: IngestParams, *, remote: bool) -> None:
    """Refuse a missing archive or a bad labels file with a clear message. Local inputs
    are checked at once; remote ones (`remote=True`) once credentials are loaded."""
    from renalflow.tasks.annotations import read_lesions_csv
    from renalflow.tasks.ingest import read_labels

    _preflight_archive(
        params,
        (params.store, "slice store", False),
        (params.labels, "labels file", True),
        (params.lesions, "lesions file", True),
        remote=remote,
    )
    if params.labels and (remote or _is_local(params.labels)):
        read_labels(params.labels)
    if params.lesions and (remote or _is_local(params.lesions)):
        read_lesions_csv(as_uri(params.lesions))


def preflight_pipeline(params: PipelineParams, *, remote: bool) -> None:
    """The pipeline's archive, store, labels and lesions, checked as ingest checks them."""
    preflight_ingest(
        IngestParams(
            archive=params.archive, store=params.store, labels=params.labels,
            lesions=params.lesions,
        ),
        remote=remote,
    )  # fmt: skip


def scoring_model_dir(params: ScoreParams) -> str:
    """The model a scoring run uses: --model-dir, or the one the registry of its results
    names by --model-alias now (resolved when the run starts)."""
    if params.model_dir:
        return os.path.abspath(params.model_dir)
    from renalflow.tasks.registry import resolve_alias

    assert params.model_alias is not None  # the model's validator says so
    return resolve_alias(as_uri(params.results), params.model_alias).model_dir


def preflight_train(device: Any, dask_address: str | None) -> None:
    """`--device gpu` with no GPU worker and no GPU here: refused at once, in one line."""
    from renalflow.flows.train import place_training
    from renalflow.tasks.config import Device

    if Device(device) is Device.GPU:
        place_training(device, dask_address, log=lambda _: None)


def preflight_score(params: ScoreParams, *, remote: bool) -> None:
    """No key, no model or no archive: refused before any work."""
    from renalflow.tasks.model_dir import read_model_info
    from renalflow.tasks.pseudonym import NO_KEY_HELP, key_from_env

    if key_from_env() is None and not params.key_secret:
        raise InputError(NO_KEY_HELP)
    read_model_info(scoring_model_dir(params))
    if params.selector:
        read_model_info(params.selector)
    _preflight_archive(
        params,
        (params.results, "results table", False),
        (params.store, "slice store", False),
        remote=remote,
    )


_PROFILE_OVERRIDES = (
    *("epochs", "batch_size", "learning_rate", "weights", "select_epoch", "decay_after"),
    *("mixed_precision", "seed", "oversample", "oversample_unit", "augment", "schedule"),
    "full_resolution",
)


def train_config(params: TrainingOptions, task: Task = Task.CLASSIFIER) -> "TrainConfig":
    """The profile's defaults for the model's task with what the parameters set."""
    from renalflow.tasks.model import profile_config

    try:
        # The options named like TrainConfig's fields override the profile (None: unset).
        overrides = params.model_dump(include=set(_PROFILE_OVERRIDES))
        config = profile_config(params.profile, task, **overrides)
        if params.ema is not None:
            config = replace(config, ema=params.ema or None)  # 0 stands for "none"
        if params.region is not None:
            config = replace(config, region=params.region or None)  # () stands for "full"
    except ValueError as err:  # settings that contradict each other
        raise InputError(f"{err}; see renalflow train --help") from err
    return config


SYNTH_RECORD = "synth.json"
"""Written last by `run_synth`: a synthetic archive is complete once it exists."""


def run_synth(params: SynthParams, progress: Any = None) -> "SynthReport":
    """Write a synthetic archive and record its seed and contents in OUT/synth.json."""
    from renalflow.tasks.synth import synthesize_archive

    config = params.synth_config()
    report = synthesize_archive(params.out, config, jobs=params.workers, progress=progress)
    record: dict[str, Any] = {
        "seed": config.seed,
        "patients": report.patients,
        "benign": report.benign,
        "series": report.series,
        "slices": report.slices,
        "benign_fraction": config.benign_fraction,
        "lesion_only": config.lesion_only,
        "transfer_syntaxes": report.by_syntax,
    }
    if config.lesion_only:
        record["max_slices_per_series"] = config.max_slices_per_series
    else:
        record |= {
            "studies": report.studies,
            "seg_objects": report.seg_objects,
            "lesion_series": report.lesion_series,
            "study_slices": list(config.study_slices),
            "matrix": config.matrix,
            "shares": {
                "chest": config.chest_share,
                "head": config.head_share,
                "scout": config.scout_share,
                "twin": config.twin_share,
                "seg": config.seg_share,
            },
        }
    Path(params.out, SYNTH_RECORD).write_text(json.dumps(record, indent=2))
    return report


def _write_json(path: str | None, record: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(record, indent=2))


@flow(name="renalflow-ingest")
def ingest_job(params: IngestParams) -> "IngestSummary":
    """Convert the new DICOM files of an archive into the slice store."""
    from renalflow.flows.ingest import format_summary, ingest_flow, summary_dict

    load_s3_credentials()
    preflight_ingest(params, remote=True)
    runner = dask_task_runner(params.workers, params.dask_address, params.memory_limit)
    summary = ingest_flow.with_options(task_runner=runner)(  # type: ignore[arg-type]
        archive=as_uri(params.archive),
        store=as_uri(params.store),
        labels=params.labels,
        lesions=params.lesions,
        cohort=params.cohort,
        preprocess=params.preprocess_config(),
        batch_size=params.slices_per_task,
        pacs=params.pacs_settings(),
    )
    get_run_logger().info(format_summary(summary))
    _write_json(params.summary_json, summary_dict(summary))
    return summary


@flow(name="renalflow-train")
def train_job(params: TrainParams) -> "TrainResult":
    """Train the classifier or the slice selector (on a GPU worker of `dask_address` when
    it has one)."""
    from renalflow.flows.train import place_training, train_flow

    config = train_config(params, params.task)
    load_s3_credentials()
    logger = get_run_logger()
    address, gpu = place_training(params.device, params.dask_address, logger.info)
    flow_ = train_flow
    if address:
        runner = dask_task_runner(address=address)
        flow_ = train_flow.with_options(task_runner=runner)  # type: ignore[arg-type]
    return flow_(
        store=as_uri(params.store),
        model_dir=params.model_dir,
        config=config,
        gpu=gpu,
        task=params.task,
        selector=params.selector_training(),
        device=params.device,
    )


@flow(name="renalflow-pipeline")
def pipeline_job(params: PipelineParams) -> "PipelineSummary":
    """Ingest, train, evaluate, compare with production, register and gate."""
    from renalflow.flows.pipeline import format_summary, pipeline_flow, summary_dict

    # The model takes the slices the pipeline makes: its input is the ingest's --size.
    config = replace(train_config(params), input_size=params.size)
    load_s3_credentials()
    preflight_pipeline(params, remote=True)
    summary = pipeline_flow(
        archive=as_uri(params.archive),
        store=as_uri(params.store),
        labels=params.labels,
        results=as_uri(params.results),
        models_dir=os.path.abspath(params.models_dir),
        config=config,
        ingest={"lesions": params.lesions, "preprocess": params.preprocess_config()},
        device=params.device,
        dask_address=params.dask_address,
        workers=params.workers,
        gate=params.gate,
        gate_metric=params.gate_metric,
        gate_margin=params.gate_margin,
        n_bootstrap=params.bootstrap,
    )
    get_run_logger().info(format_summary(summary))
    _write_json(params.summary_json, summary_dict(summary))
    return summary


@flow(name="renalflow-evaluate")
def evaluate_job(params: EvaluateParams) -> dict[str, Any]:
    """Image metrics, the patient vote and a report for a split or an external cohort."""
    from renalflow.flows.train import evaluate_flow

    load_s3_credentials()
    options = {
        "split": (params.split or Split.TEST).value if not params.cohort else None,
        "cohort": params.cohort,
        "image_threshold": params.image_threshold,
        "vote_threshold": params.vote_threshold,
        "n_bootstrap": params.bootstrap,
        "seed": params.seed,
    }
    return evaluate_flow(
        store=as_uri(params.store), model_dir=params.model_dir, report=params.out, options=options
    )


@flow(name="renalflow-score")
def score_job(params: ScoreParams) -> "ScoreSummary":
    """Score the archive's studies this model has not scored yet into the results table.

    The pseudonymisation key comes from RENALFLOW_PSEUDONYM_KEY in the environment or
    from the Prefect Secret block named by `key_secret`, never from a parameter
    (parameters are stored in Prefect's database).
    """
    from renalflow.flows.score import format_summary, score_flow, summary_dict
    from renalflow.flows.train import gpu_workers

    load_s3_credentials()
    preflight_score(params, remote=True)
    logger = get_run_logger()
    config = params.score_config()
    gpu = False
    if params.dask_address:
        found = gpu_workers(params.dask_address)
        gpu = bool(found)
        if found:
            logger.info(f"scoring on GPU worker(s) {', '.join(found)}")
    runner = dask_task_runner(params.workers, params.dask_address)
    model_dir = scoring_model_dir(params)
    if params.model_alias:
        logger.info(f"{params.model_alias.value} model: {model_dir}")
    summary = score_flow.with_options(task_runner=runner)(  # type: ignore[arg-type]
        archive=as_uri(params.archive),
        model_dir=model_dir,
        results=as_uri(params.results),
        store=as_uri(params.store) if params.store else None,
        cohort=params.cohort,
        config=config,
        key_secret=params.key_secret,
        gpu=gpu,
        explain_dir=as_uri(params.explain_dir) if params.explain_dir else None,
        selector_dir=os.path.abspath(params.selector) if params.selector else None,
        pacs=params.pacs_settings(),
        report_to_pacs=params.report_to_pacs,
    )
    logger.info(format_summary(summary))
    _write_json(params.summary_json, summary_dict(summary))
    return summary


def launch(job: Any, params: Any) -> Any:
    """Run a job from a command line: with the Prefect API the flow and its workers share
    (the one at PREFECT_API_URL, or a temporary one for this command)."""
    from renalflow.flows.runtime import prefect_api

    with prefect_api():
        return job(params)


JOBS = {
    IngestParams: ingest_job,
    TrainParams: train_job,
    EvaluateParams: evaluate_job,
    ScoreParams: score_job,
    PipelineParams: pipeline_job,
}
"""The job flow of each parameter model that has one."""
