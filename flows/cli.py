"""`renalflow`: one command with a subcommand per job.

Every subcommand's options are generated from its parameter model in
`renalflow.tasks.params` (names, types, choices, defaults and help), so an option added
there appears here, in the deployments and in the Prefect UI with no other edit.

Exit codes: 0 done; 2 a usage or input mistake (one line on stderr says what to do);
1 a failure that is not the user's (the traceback names the file; please report it);
130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import types
import typing
from collections.abc import Callable, Sequence
from datetime import datetime
from enum import Enum
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from renalflow.tasks.config import VOTE_THRESHOLD, ServerAction, Task
from renalflow.tasks.errors import RenalflowError
from renalflow.tasks.params import (
    JOB_PARAMS,
    ClusterParams,
    CohortReportParams,
    DemoParams,
    DoctorParams,
    EvaluateParams,
    ExtractParams,
    HistoryParams,
    IngestParams,
    JobParams,
    LoadReferencesParams,
    MigrateResultsParams,
    ModelsParams,
    PipelineParams,
    PreprocessParams,
    PseudonymiseParams,
    QueryParams,
    ScoreParams,
    ScreeningParams,
    ServeParams,
    ServerParams,
    SummaryParams,
    SynthParams,
    TrainParams,
    WebParams,
)

if typing.TYPE_CHECKING:  # the runtime (Prefect, Dask) is imported when a command runs
    from renalflow.flows.runtime import StopSignals

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143

DESCRIPTION = f"""\
renalflow screens CT archives for benign renal masses (oncocytoma vs renal cell
carcinoma) following Pedersen et al., Eur J Radiol 2020: 2D axial slices, a
ResNet50V2 classifier and a {VOTE_THRESHOLD:.0%} majority vote per patient.

Typical first run (or simply `renalflow demo`):
  renalflow synth --out demo --patients 100 --lesion-only
  renalflow ingest demo/archive --store store --labels demo/labels.csv
  renalflow train --store store --model-dir model --profile cpu-demo
  renalflow evaluate --store store --model-dir model --out report
  export RENALFLOW_PSEUDONYM_KEY=...   # a long random secret; keep it
  renalflow score demo/archive --model-dir model --results results --store store --all-slices
  renalflow query "select status, vote, count(*) from study_votes group by all" --results results
"""

EPILOG = """\
every command takes -v (show Prefect, Dask and TensorFlow logs) and --debug
(tracebacks for errors).
exit codes: 0 done, 2 a usage or input mistake (the message says what to do),
1 an unexpected failure (a traceback naming the file), 130 interrupted (Ctrl-C),
143 stopped by SIGTERM; either way the flow, its Dask cluster and a Prefect server
started for the command are stopped first.
"""

# Longer descriptions of the commands (the one-line summary is the model's).
DETAILS: dict[str, str] = {
    "synth": (
        "Write OUT/archive/ (DICOM files in nested folders, mixed transfer syntaxes) and "
        "OUT/labels.csv (patient_id,label,histology). By default whole studies, as a "
        "hospital archive holds them: per phase an axial series from the liver dome to the "
        "iliac crest with the mass on some of its slices, a DICOM SEG of the mass per "
        "series, and for some patients a scout, a thin+thick reconstruction pair, a chest "
        "and a head CT; OUT/lesions.csv holds every lesion's slice range (for ingest "
        "--lesions) and OUT/series.csv what each series is. --lesion-only writes the "
        "paper's curated format instead: only slices through the mass. Lesions follow the "
        "literature: oncocytoma homogeneous and well circumscribed, sometimes with a central "
        "scar; RCC heterogeneous with necrosis and irregular margins. Same seed, same bytes."
    ),
    "ingest": (
        "Find every file under ARCHIVE (a folder or an fsspec URI such as s3://bucket/path), "
        "keep original axial CT slices, convert to HU, window, resize and write "
        "STORE/slices; every other file goes to STORE/rejects with a reason. Reruns skip "
        "files already stored, so rerunning after a crash or after the archive grew only "
        "does the missing work."
    ),
    "train": (
        "Split the development cohort's patients 70/10/20 (stratified, seeded, saved in the "
        "model directory and reused), oversample benign training images to 50:50 and train. "
        "With --task selector: learn which slices show the renal mass from the slices whose "
        "lesion annotation is known, lesion slices oversampled to 50:50, and store the "
        "threshold that finds --target-sensitivity of the validation split's lesion slices. "
        "Options left unset take the profile's value."
    ),
    "evaluate": (
        "Per image: ROC AUC with a 95% bootstrap CI over patients, accuracy, sensitivity, "
        "specificity, confusion matrix. Per patient: the majority vote. Writes "
        "metrics.json, patients.csv, roc.png, report.md and report.html (beside the paper's "
        "results) under OUT. A slice selector: sensitivity and specificity per slice at its "
        "stored threshold (Wilson 95% CIs), and per study the share of its lesion slices "
        "found (metrics.json, studies.csv, report.md, report.html)."
    ),
    "score": (
        "Score every study under ARCHIVE that this model version has not scored yet: new "
        "files are converted into the slice store (with the model's preprocessing), images "
        "are scored in batches on Dask workers, and RESULTS gets one row per image "
        "(slice_scores), one vote per study (study_votes) and one per patient over all "
        "their studies (patient_votes), Delta tables with atomic commits. Only abdominal "
        "axial series are screened, one reconstruction per acquisition, and only the "
        "slices that show the renal mass vote: lesion annotations where the archive has "
        "them (DICOM SEG, or --lesions at ingest), else the slice selector (--selector); "
        "--all-slices votes over every slice (curated archives, as in the paper). A study "
        "where no slice is selected gets the status no_mass_found, never a vote. "
        "Rerunning adds nothing; a new model version adds its own rows. "
        "Identifiers never reach RESULTS: patients and studies appear as keyed pseudonyms "
        "(HMAC-SHA256) under the key in RENALFLOW_PSEUDONYM_KEY or a Prefect Secret block "
        "(--key-secret); without a key, nothing is scored."
    ),
    "pipeline": (
        "One pass from new files to the model scheduled scoring uses: ingest ARCHIVE's new "
        "files into STORE, train a model into MODELS_DIR/<time> (on a Dask worker with "
        "--resources GPU=1 when --dask-address has one; --device gpu refuses to run "
        "without a GPU), evaluate it on the held-out test patients, evaluate the "
        "production model on the same patients (production's split is carried over, new "
        "patients split by a seeded hash), register the new version in RESULTS/models and "
        "promote it when its --gate-metric exceeds production's by more than "
        "--gate-margin (a tie keeps production; with no production model it is promoted "
        "when its figure is defined). --gate manual registers only. Every promotion is a "
        "row of RESULTS/model_aliases with the gate's figures."
    ),
    "models": (
        "The registry is two Delta tables of RESULTS, queryable with `renalflow query`: "
        "models (one row per registered version: task, profile, model_dir, "
        "preprocess_version, held-out test figures) and model_aliases (every promotion "
        "and rollback, appended). `list` marks production; `register` evaluates "
        "--model-dir on its test split of --store and adds it; `promote VERSION` makes it "
        "production; `rollback` returns production to the version it named before the "
        "last promotion. `renalflow score --model-alias production` uses what production "
        "names when the run starts and records its version in every vote."
    ),
    "doctor": (
        "Print what this machine computes on: the Keras backend (KERAS_BACKEND), the "
        "devices it sees and whether any is a GPU, whether TensorFlow was built with "
        "CUDA, and the versions of renalflow, Keras, TensorFlow (or tensorflow-cpu), "
        "JAX, NumPy, Prefect and Dask. Run it on a GPU node (or in the GPU image) before "
        "training there."
    ),
    "query": (
        "Run SQL against the results table, whose tables appear as the views study_votes, "
        "patient_votes, slice_scores and reference_outcomes (--describe says what every "
        "column means). With --as-of, read it as it was at a version of "
        "study_votes (see `renalflow history`) or at a time, so a study can cite the exact "
        "state it analysed. Only one SELECT (or WITH ... SELECT) runs, in a session that "
        "reads these tables and nothing else: no files, no extensions, no settings changed."
    ),
    "history": "List the commits of study_votes: version, time, operation, flow run.",
    "migrate-results": (
        "Results tables written before renalflow kept study and patient votes apart held "
        "one vote per study in patient_votes. This moves that table, with its history, to "
        "study_votes, adds the selection columns (filled for the old rows: every slice "
        "voted, selection_source all), marks the old image scores as voted, and builds "
        "patient_votes anew: one vote per patient over all their studies. Tables written "
        "before votes said whether their model trained on the patient get the column "
        "in_training: from the split of --model-dir for that model's votes (under the "
        "results' key), 'unknown' for the others. Run it once, with no scoring running; "
        "commands refuse an unmigrated table until then."
    ),
    "server": (
        "Commands that start a flow need a Prefect API. Without PREFECT_API_URL, renalflow "
        "starts a local Prefect server (API and UI on 127.0.0.1, database under "
        "RENALFLOW_HOME, default ~/.cache/renalflow) and keeps it warm for the next "
        "command: it stops after RENALFLOW_SERVER_IDLE seconds without one (default 600; "
        "0 gives every command a server of its own, stopped when it ends). `status` says "
        "whether it runs, where, and when it stops; `stop` stops it now (between commands)."
    ),
    "cohort-report": (
        "Write OUT/cohort.html from the results table: studies per model version, benign "
        "and malignant votes by study year, scanner vendor and phase mix (plots and "
        "tables), QC flags, and, once reference outcomes are loaded, the agreement of "
        "patient and study votes with them (sensitivity, specificity, PPV, NPV with Wilson "
        "95% CIs and small-sample notes) overall and by model version, vendor, phase mix, "
        "year and cohort, drawn as forest plots and written to OUT/agreement.csv. Votes of "
        "patients their model trained or validated on are left out (and counted) unless "
        "--include-training. --as-of pins the state of the table, as in `renalflow query`."
    ),
    "pseudonymise": (
        "Read a CSV (every column as text, as written) or Parquet file with a column of "
        "hospital patient IDs and write a new file, the same table with that column "
        "replaced by patient_key (the results' pseudonym: HMAC-SHA256 under the same key, "
        "the ID without surrounding spaces) and key_id beside it. The key comes from "
        "RENALFLOW_PSEUDONYM_KEY or --key-secret, as for scoring; a key whose fingerprint "
        "differs from the results' key_id is refused. The input is never modified, an "
        "existing output is never overwritten, and columns that identify patients (names, "
        "birth dates, accession numbers...) are refused rather than copied."
    ),
    "load-references": (
        "Merge the outcomes of a table written by `renalflow pseudonymise` into the Delta "
        "table reference_outcomes of RESULTS: one row per patient and --source, outcome "
        "benign or malignant, and the year and month of --date-column. Pseudonyms of "
        "another key are refused. Loading the same file again adds nothing; a changed "
        "outcome replaces the row in a new version (the old one stays readable with "
        "--as-of)."
    ),
    "extract": (
        "Run one SELECT on RESULTS as it was at a version of study_votes (--as-of; default "
        "the latest, recorded) and write OUT/rows.parquet, OUT/rows.csv and "
        "OUT/manifest.json: the query, every table's version, the model versions in the "
        "rows with what the results record about them (profile, preprocessing, thresholds, "
        "selectors), the versions of renalflow, pyarrow and DuckDB, and a SHA-256 of each "
        "file. Rows are sorted by all their columns, left to right. --manifest FILE runs "
        "an extract again into a new OUT and fails unless every file is byte-identical."
    ),
    "serve": (
        "Register four deployments with the Prefect server at PREFECT_API_URL and run "
        "them from this process: renalflow-score/nightly (scores new studies of ARCHIVE on "
        "the schedule), renalflow-ingest/on-demand, renalflow-train/on-demand and "
        "renalflow-pipeline/on-demand (ingest, train, gate, promote; its run form asks for "
        "the labels and the models folder). Trigger "
        "runs from the Prefect UI or with `prefect deployment run renalflow-score/nightly`. "
        "Stop with Ctrl-C."
    ),
    "web": (
        "Serve a small web page (on loopback by default) where one patient's CT study "
        "(DICOM files or a zip) is uploaded and classified with the model. Slices are "
        "selected as `renalflow score` does: abdominal series only, then the lesion "
        "slices of a DICOM SEG uploaded with the study, else --selector's, else (with "
        "--all-slices) every slice. The page shows each series with its decision and "
        "why, the vote, the share of malignant slices against the vote line, the "
        "probability of every slice that voted along z and heat maps of the slices that "
        "decided the vote. Unusable files are listed with the ingest's reasons. Uploads "
        "are removed after scoring unless --keep-uploads."
    ),
    "demo": (
        "The whole pipeline on this machine, as one Prefect flow: synthesise a curated "
        "development archive, ingest it on a local Dask cluster, train and evaluate the "
        "cpu-demo classifier on it; synthesise annotated whole studies, train and evaluate "
        "a slice selector on them; screen an archive of whole studies without annotations "
        "with both into the Delta results tables, and query them with DuckDB. Everything "
        "goes under OUT; steps whose output exists are reused. About 11 minutes on 2 CPU "
        "cores."
    ),
}

EXAMPLES: dict[str, str] = {
    "extract": (
        "examples:\n"
        '  renalflow extract "select patient_key, vote, in_training from patient_votes" '
        "--results R --as-of 3 --out table2\n"
        "  renalflow extract --manifest table2/manifest.json --out table2-again"
    ),
    "query": (
        "examples:\n"
        '  renalflow query "select status, vote, count(*) from study_votes group by all" '
        "--results R\n"
        '  renalflow query "select * from patient_votes" --results R --as-of 3 '
        "--format csv > votes_v3.csv"
    ),
}


def option_name(field: str) -> str:
    """The command-line spelling of a parameter: `model_dir` -> `--model-dir`."""
    return "--" + field.replace("_", "-")


def _unwrap(annotation: Any) -> Any:
    """`X | None` -> X (the command line has no None; leaving an option out is None)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return inner[0] if len(inner) == 1 else str
    return annotation


def _help(field: Any, extra: dict[str, Any]) -> str:
    text = field.description or ""
    default = field.default
    if isinstance(default, Enum):
        default = default.value
    if not field.is_required() and default not in (None, False) and "default" not in text:
        text += f" (default {default})"
    return text.replace("%", "%%")


def add_params(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """One argument per field of `model`. Options left out are absent from the parsed
    namespace, so the model's own default applies (never a second copy of it here)."""
    groups: dict[str, Any] = {}
    for name, field in _in_help_order(model):
        extra = dict(field.json_schema_extra or {})  # type: ignore[arg-type]
        kind = _unwrap(field.annotation)
        kwargs: dict[str, Any] = {"help": _help(field, extra)}
        if isinstance(kind, type) and issubclass(kind, Enum):
            kwargs["choices"] = [member.value for member in kind]
        elif "choices" in extra:
            kwargs["choices"] = extra["choices"]
        if extra.get("positional"):
            if not field.is_required():  # may be left out: the model's default applies
                default = field.default
                kwargs.update(nargs="?", default=getattr(default, "value", default))
            parser.add_argument(name, metavar=name.upper(), **kwargs)
            continue
        kwargs["default"] = argparse.SUPPRESS
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif "metavar" in extra:
            kwargs["metavar"] = extra["metavar"]
        elif "choices" not in kwargs:
            kwargs["metavar"] = name.upper() if field.is_required() else _metavar(kind)
        if field.is_required():
            kwargs["required"] = True
        target: Any = parser
        if "group" in extra:
            if extra["group"] not in groups:
                groups[extra["group"]] = parser.add_mutually_exclusive_group()
            target = groups[extra["group"]]
        target.add_argument(option_name(name), **kwargs)


def _in_help_order(model: type[BaseModel]) -> list[tuple[str, Any]]:
    """What the command works on first (required), then its own options, then the
    options it shares with other commands (preprocessing, cluster)."""
    shared = {
        *PreprocessParams.model_fields,
        *ClusterParams.model_fields,
        *SummaryParams.model_fields,
    }
    fields = list(model.model_fields.items())
    return sorted(fields, key=lambda item: (not item[1].is_required(), item[0] in shared))


def _metavar(kind: Any) -> str:
    return {int: "N", float: "X"}.get(kind, "TEXT")


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show Prefect, Dask and TensorFlow logs (quiet by default)",
    )
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the full traceback of an error",
    )
    return common


def renalflow_version() -> str:
    try:
        return version("renalflow")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="renalflow",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_common_options()],
    )
    parser.add_argument("--version", action="version", version=f"renalflow {renalflow_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for model in JOB_PARAMS:
        command = sub.add_parser(
            model.command,
            help=model.summary.replace("%", "%%"),
            description=DETAILS.get(model.command, model.summary),
            epilog=EXAMPLES.get(model.command),
            formatter_class=argparse.RawDescriptionHelpFormatter
            if model.command in EXAMPLES
            else argparse.HelpFormatter,
            parents=[_common_options()],
        )
        add_params(command, model)
    return parser


_BY_COMMAND: dict[str, type[JobParams]] = {model.command: model for model in JOB_PARAMS}


class UsageError(RenalflowError):
    """Options that parse but do not make a valid set of parameters."""


def params_from_args(args: argparse.Namespace) -> JobParams:
    """The command's parameter model from the parsed command line; a value the model
    refuses becomes one line naming the option."""
    values = {k: v for k, v in vars(args).items() if k not in ("command", "verbose", "debug")}
    model = _BY_COMMAND[args.command]
    try:
        return model.model_validate(values)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        name = option_name(where) if where in model.model_fields else args.command
        message = str(first["msg"]).removeprefix("Value error, ")
        raise UsageError(f"{name}: {message}; see renalflow {args.command} --help") from err


def parse_params(argv: Sequence[str]) -> JobParams:
    """The parameter model a command line stands for (raises UsageError)."""
    return params_from_args(build_parser().parse_args(argv))


def command_reference() -> str:
    """Every command's usage as `--help` prints it: the README's command reference."""
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "90"  # argparse wraps at the terminal's width; the README's is fixed
    try:
        parser = build_parser()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        usages = [parser.format_usage(), *(p.format_usage() for p in sub.choices.values())]
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    indent = "\n" + " " * len("usage: ")
    return "".join(u.removeprefix("usage: ").replace(indent, "\n") for u in usages)


# --- the commands ------------------------------------------------------------------


def _progress_printer() -> Callable[[int, int, int], None]:
    tty = sys.stderr.isatty()

    def progress(done: int, total: int, slices: int) -> None:
        # A live counter on a terminal; every tenth of the work in a log file.
        if tty:
            end = "\n" if done == total else ""
            print(f"\r  {done}/{total} patients, {slices} slices", end=end, file=sys.stderr)
        elif done == total or done % max(1, total // 10) == 0:
            print(f"  {done}/{total} patients, {slices} slices", file=sys.stderr)

    return progress


def cmd_synth(params: SynthParams) -> int:
    from renalflow.flows.jobs import run_synth

    print(
        f"writing {params.patients} synthetic patients to {params.out} (seed {params.seed})",
        file=sys.stderr,
    )
    report = run_synth(params, progress=_progress_printer())
    rate = report.slices / report.seconds if report.seconds else 0.0
    print(
        f"{report.patients} patients ({report.benign} benign), {report.series} series, "
        f"{report.slices} slices in {report.seconds:.1f} s ({rate:.0f} slices/s)\n"
        f"  archive  {Path(params.out, 'archive')}\n  labels   {Path(params.out, 'labels.csv')}"
    )
    if not params.lesion_only:
        studies = ", ".join(f"{n} {kind}" for kind, n in sorted(report.studies.items()))
        print(
            f"  studies  {studies}; {report.seg_objects} lesion SEG objects\n"
            f"  lesions  {Path(params.out, 'lesions.csv')} ({report.lesion_series} series)\n"
            f"  series   {Path(params.out, 'series.csv')}"
        )
    for name, count in sorted(report.by_syntax.items()):
        print(f"  {name:<48} {count:>6} files")
    return EXIT_OK


def cmd_ingest(params: IngestParams) -> int:
    from renalflow.flows.ingest import format_summary
    from renalflow.flows.jobs import ingest_job, launch, preflight_ingest

    # Fail fast, before a server and a cluster are started, on inputs that cannot work.
    params.preprocess_config()
    preflight_ingest(params, remote=False)
    print(format_summary(launch(ingest_job, params)))
    return EXIT_OK


def cmd_train(params: TrainParams) -> int:
    from renalflow.flows.jobs import launch, preflight_train, train_config, train_job

    train_config(params, params.task)  # contradicting settings end here, before anything starts
    preflight_train(params.device, params.dask_address)
    result = launch(train_job, params)
    print(
        f"model {result.model_dir} (version {result.model_version}, "
        f"epoch {result.selected_epoch}) in {result.seconds:.0f} s, "
        f"{result.images_per_second:.0f} training images/s"
    )
    if result.selector_threshold is not None:
        print(
            f"slice selector threshold {result.selector_threshold:.4g} (chosen on the "
            f"validation split for {params.target_sensitivity:g} sensitivity)"
        )
    return EXIT_OK


def cmd_evaluate(params: EvaluateParams) -> int:
    from renalflow.flows.jobs import evaluate_job, launch
    from renalflow.tasks.report.render import decimal

    metrics = launch(evaluate_job, params)
    if metrics.get("task") == Task.SELECTOR.value:
        from renalflow.tasks.selector import format_summary

        print(f"{format_summary(metrics)}\nreport: {Path(params.out) / 'report.html'}")
        for warning in metrics.get("warnings", []):
            print(f"caution: {warning}", file=sys.stderr)
        return EXIT_OK
    image, patient = metrics["image"], metrics["patient"]
    print(
        f"{metrics['evaluated']}: image AUC {decimal(image['auc'])} "
        f"(95% CI {decimal(image['auc_ci95'][0])}-{decimal(image['auc_ci95'][1])}), "
        f"accuracy {decimal(image['accuracy'])}, sensitivity {decimal(image['sensitivity'])}, "
        f"specificity {decimal(image['specificity'])}\n"
        f"patients: {patient['n']}, vote accuracy {decimal(patient['accuracy'])}, "
        f"false negatives {patient['false_negatives']}\n"
        f"report: {Path(params.out) / 'report.html'} (and report.md)"
    )
    for warning in metrics.get("warnings", []):
        print(f"caution: {warning}", file=sys.stderr)
    return EXIT_OK


def cmd_score(params: ScoreParams) -> int:
    from renalflow.flows.jobs import launch, preflight_score, score_job
    from renalflow.flows.score import format_summary

    preflight_score(params, remote=False)
    print(format_summary(launch(score_job, params)))
    return EXIT_OK


def cmd_pipeline(params: PipelineParams) -> int:
    from renalflow.flows.jobs import (
        launch,
        pipeline_job,
        preflight_pipeline,
        preflight_train,
        train_config,
    )
    from renalflow.flows.pipeline import format_summary

    train_config(params)  # contradicting settings end here, before anything starts
    params.preprocess_config()
    preflight_pipeline(params, remote=False)
    preflight_train(params.device, params.dask_address)
    print(format_summary(launch(pipeline_job, params)))
    return EXIT_OK


def cmd_models(params: ModelsParams) -> int:
    from renalflow.tasks import registry
    from renalflow.tasks.config import ModelsAction

    _s3_credentials_for_reading_or_new(params.results)
    results = _as_uri(params.results)
    reason = params.reason or "by hand"
    if params.action is ModelsAction.REGISTER:
        from renalflow.tasks.evaluate import evaluate

        assert params.model_dir and params.store  # the model's validator says so
        model_dir = os.path.abspath(params.model_dir)
        metrics = evaluate(_as_uri(params.store), model_dir, str(Path(model_dir) / "evaluation"))
        model = registry.register_model(results, model_dir, metrics, "models-register")
        print(f"registered {model.model_version} ({model.model_dir}); test AUC {model.test_auc}")
    elif params.action is ModelsAction.PROMOTE:
        assert params.version  # the model's validator says so
        model = registry.promote(results, params.version, reason, run_id="models-promote")
        print(f"production is {model.model_version} ({model.model_dir})")
    elif params.action is ModelsAction.ROLLBACK:
        left, now = registry.rollback(results, reason, run_id="models-rollback")
        print(f"production rolled back from {left} to {now}")
    else:
        production = registry.alias_version(results)
        print(
            f"{'version':<16}  {'task':<10}  {'profile':<8}  {'test AUC':>8}  "
            f"{'patients':>8}  model_dir"
        )
        for model in registry.list_models(results):
            auc = "" if model.test_auc is None else f"{model.test_auc:.3f}"
            mark = "  <- production" if model.model_version == production else ""
            print(
                f"{model.model_version:<16}  {model.model_task:<10}  {model.model_profile:<8}  "
                f"{auc:>8}  {model.test_patients or '':>8}  {model.model_dir}{mark}"
            )
        print(f"production: {production or 'none'}")
    return EXIT_OK


def cmd_doctor(params: DoctorParams) -> int:
    from renalflow.tasks.devices import environment, format_environment

    print(format_environment(environment()))
    return EXIT_OK


def cmd_query(params: QueryParams) -> int:
    from renalflow.tasks.query import describe, format_result, run_query
    from renalflow.tasks.results import parse_as_of

    if params.format == "parquet" and not params.output:
        raise UsageError("--format parquet writes binary data: give --output FILE.parquet")
    if params.describe:
        table = describe()
        out = format_result(table, params.format, max_rows=table.num_rows)
    else:
        assert params.sql and params.results  # the model's validator says so
        as_of = parse_as_of(params.as_of) if params.as_of else None
        _s3_credentials_for_reading(params.results)
        table = run_query(_as_uri(params.results), params.sql, as_of)
        out = format_result(table, params.format)
    if params.output:
        mode = "wb" if isinstance(out, bytes) else "w"
        with open(params.output, mode) as handle:
            handle.write(out)
        print(f"{table.num_rows} rows -> {params.output}", file=sys.stderr)
    else:
        assert isinstance(out, str)
        sys.stdout.write(out)
    return EXIT_OK


def cmd_history(params: HistoryParams) -> int:
    from renalflow.tasks.results import history

    _s3_credentials_for_reading(params.results)
    print(f"{'version':>7}  {'time':<25}  {'operation':<12}  {'rows added':>10}  flow run")
    for entry in history(_as_uri(params.results)):
        added = entry["rows_inserted"]
        print(
            f"{entry['version']:>7}  {entry['timestamp'].isoformat(timespec='seconds'):<25}  "
            f"{entry['operation']:<12}  {'' if added is None else added:>10}  "
            f"{entry['flow_run_id']}"
        )
    return EXIT_OK


def cmd_migrate_results(params: MigrateResultsParams) -> int:
    from renalflow.tasks.model_dir import read_model_info, training_membership
    from renalflow.tasks.results import check_key_id, migrate_results

    _s3_credentials_for_reading(params.results)
    results = _as_uri(params.results)
    membership = None
    if params.model_dir:
        key = _pseudonym_key(params.key_secret)
        check_key_id(results, key)
        info = read_model_info(params.model_dir)
        membership = {info.model_version: training_membership(params.model_dir, key)}
    migrated = migrate_results(results, membership)
    counts = ", ".join(f"{n:,} rows of {name}" for name, n in migrated.items())
    print(f"migrated {params.results}: {counts}")
    return EXIT_OK


def cmd_cohort_report(params: CohortReportParams) -> int:
    from renalflow.tasks.report import cohort_report
    from renalflow.tasks.report.cohort import AGREEMENT_CSV
    from renalflow.tasks.results import parse_as_of

    as_of = parse_as_of(params.as_of) if params.as_of else None
    _s3_credentials_for_reading(params.results)
    report = cohort_report(
        _as_uri(params.results), Path(params.out), as_of, include_training=params.include_training
    )
    print(f"cohort summary: {report.path}")
    print(f"agreement: {report.path.parent / AGREEMENT_CSV} ({report.compared_patients} patient "
          "votes compared with a reference outcome)")  # fmt: skip
    if params.include_training:
        print("caution: training and validation patients included", file=sys.stderr)
    else:
        print(
            f"left out: {report.excluded_patients} patient and {report.excluded_studies} study "
            "votes of patients their model trained or validated on (--include-training keeps "
            "them)"
        )
    if report.unknown_patients:
        print(
            f"caution: {report.unknown_patients} patient votes cannot tell whether their "
            "model trained on the patient (in_training unknown)",
            file=sys.stderr,
        )
    return EXIT_OK


def _pseudonym_key(key_secret: str | None) -> bytes:
    """The results' key, as scoring finds it: the environment, else a Secret block."""
    from renalflow.tasks.errors import InputError
    from renalflow.tasks.pseudonym import NO_KEY_HELP, key_from_env

    key = key_from_env()
    if key is not None:
        return key
    if not key_secret:
        raise InputError(NO_KEY_HELP)
    from renalflow.flows.runtime import prefect_api
    from renalflow.flows.score import resolve_key

    with prefect_api():
        return resolve_key(key_secret)


def cmd_pseudonymise(params: PseudonymiseParams) -> int:
    from renalflow.tasks.linkage import pseudonymise_file
    from renalflow.tasks.pseudonym import key_id

    key = _pseudonym_key(params.key_secret)
    _s3_credentials_for_reading(params.results)
    rows = pseudonymise_file(
        Path(params.table), Path(params.out), key, _as_uri(params.results), params.id_column
    )
    print(f"{rows} rows -> {params.out} (patient_key under key id {key_id(key)})")
    return EXIT_OK


def cmd_load_references(params: LoadReferencesParams) -> int:
    from renalflow.tasks.references import load_references

    _s3_credentials_for_reading(params.results)
    loaded = load_references(
        Path(params.table),
        _as_uri(params.results),
        params.source,
        params.outcome_column,
        params.date_column,
        run_id="load-references",
    )
    print(
        f"reference_outcomes ({params.source}): {loaded['inserted']} added, "
        f"{loaded['updated']} changed"
    )
    return EXIT_OK


def cmd_extract(params: ExtractParams) -> int:
    from renalflow.tasks.extract import MANIFEST, rerun_extract, write_extract
    from renalflow.tasks.results import parse_as_of

    out = Path(params.out)
    results = _as_uri(params.results) if params.results else None
    if params.manifest:
        if results:
            _s3_credentials_for_reading(results)
        manifest = rerun_extract(Path(params.manifest), out, renalflow_version(), results)
        verdict = "byte-identical to the manifest's files"
    else:
        assert params.sql and results  # the model's validator says so
        _s3_credentials_for_reading(results)
        as_of = parse_as_of(params.as_of) if params.as_of else None
        manifest = write_extract(results, params.sql, out, renalflow_version(), as_of)
        verdict = f"study_votes version {manifest['as_of']}"
    print(f"{manifest['rows']} rows -> {out} ({verdict}); manifest {out / MANIFEST}")
    return EXIT_OK


def cmd_serve(params: ServeParams) -> int:
    from prefect import serve

    from renalflow.flows.deployments import build_deployments
    from renalflow.flows.jobs import preflight_score
    from renalflow.tasks.errors import InputError

    if not os.environ.get("PREFECT_API_URL"):
        raise InputError(
            "serving needs a Prefect server that outlives this command: start one with "
            "`prefect server start` (SQLite by default) in another terminal, then "
            "`export PREFECT_API_URL=http://127.0.0.1:4200/api` and run this again"
        )
    preflight_score(
        ScoreParams(**params.model_dump(include=set(ScreeningParams.model_fields))), remote=True
    )
    serve(*build_deployments(params))
    return EXIT_OK


def cmd_web(params: WebParams) -> int:
    import uvicorn

    from renalflow.flows.web import create_app
    from renalflow.tasks.score import ScoreConfig
    from renalflow.tasks.web import WebConfig, check_exposure, read_token

    hosts = tuple(h.strip().lower() for h in (params.allowed_hosts or "").split(",") if h.strip())
    config = WebConfig(
        model_dir=os.path.abspath(params.model_dir),
        workdir=os.path.abspath(params.out),
        max_upload_mb=params.max_upload_mb,
        keep_uploads=params.keep_uploads,
        host=params.host,
        port=params.port,
        token=read_token(params.token_file),
        allowed_hosts=hosts,
        max_concurrent=params.max_concurrent,
        selector=os.path.abspath(params.selector) if params.selector else None,
        score=ScoreConfig(all_slices=params.all_slices),
    )
    check_exposure(config)  # before the model is loaded
    app = create_app(config)
    where = f"http://{params.host}:{params.port}/"
    print(
        f"renalflow web: {where}  (uploads in {config.workdir}"
        + ("; open it once as /?token=TOKEN" if config.token else "")
        + ")"
    )
    uvicorn.run(app, host=params.host, port=params.port, log_level="warning")
    return EXIT_OK


def cmd_demo(params: DemoParams) -> int:
    from renalflow.flows.demo import check_demo_folder, demo_flow
    from renalflow.flows.jobs import launch

    check_demo_folder(params)
    launch(demo_flow, params)
    return EXIT_OK


def cmd_server(params: ServerParams) -> int:
    from renalflow.flows.runtime import (
        HOME_ENV,
        SERVER_IDLE_ENV,
        api_server_status,
        renalflow_home,
        stop_api_server,
    )

    if params.action is ServerAction.STOP:
        stopped = stop_api_server()
        print("stopped the local Prefect server" if stopped else "no local Prefect server runs")
        return EXIT_OK
    state = api_server_status()
    if os.environ.get("PREFECT_API_URL"):
        print(f"commands use the Prefect server at PREFECT_API_URL={os.environ['PREFECT_API_URL']}")
    if state is None:
        print(
            f"no local Prefect server runs; the next command starts one (state in "
            f"{renalflow_home()}, set by {HOME_ENV})"
        )
        return EXIT_OK
    started = datetime.fromtimestamp(state["started"]).isoformat(timespec="seconds")
    idle = float(state["idle_s"])
    print(f"local Prefect server: {state['url']} (UI {state['url'].removesuffix('/api')})")
    print(f"  process {state['pid']}, started {started}, state in {renalflow_home()}")
    print(
        f"  stops after {idle:.0f} s without a command ({SERVER_IDLE_ENV}); "
        "`renalflow server stop` stops it now"
    )
    return EXIT_OK


def _s3_credentials_for_reading(results: str) -> None:
    """For commands that start no flow (query, history, cohort-report, migrate-results):
    load the credentials block through the Prefect API only when one is named, then
    reach the results table once."""
    from renalflow.flows.runtime import load_s3_credentials, prefect_api, require_extras_for
    from renalflow.tasks.storage import S3_CREDENTIALS_BLOCK_ENV, check_location

    require_extras_for(results)
    if os.environ.get(S3_CREDENTIALS_BLOCK_ENV):
        with prefect_api():
            load_s3_credentials()
    check_location(_as_uri(results), "results table", must_exist=True)


def _s3_credentials_for_reading_or_new(results: str) -> None:
    """As `_s3_credentials_for_reading`, for commands that may create R's registry."""
    from renalflow.flows.runtime import load_s3_credentials, prefect_api, require_extras_for
    from renalflow.tasks.storage import S3_CREDENTIALS_BLOCK_ENV

    require_extras_for(results)
    if os.environ.get(S3_CREDENTIALS_BLOCK_ENV):
        with prefect_api():
            load_s3_credentials()


def _as_uri(location: str) -> str:
    from renalflow.flows.jobs import as_uri

    return as_uri(location)


COMMANDS: dict[str, Callable[[Any], int]] = {
    "synth": cmd_synth,
    "ingest": cmd_ingest,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "score": cmd_score,
    "pipeline": cmd_pipeline,
    "models": cmd_models,
    "query": cmd_query,
    "history": cmd_history,
    "migrate-results": cmd_migrate_results,
    "cohort-report": cmd_cohort_report,
    "pseudonymise": cmd_pseudonymise,
    "load-references": cmd_load_references,
    "extract": cmd_extract,
    "serve": cmd_serve,
    "web": cmd_web,
    "demo": cmd_demo,
    "server": cmd_server,
    "doctor": cmd_doctor,
}


def run_command(params: JobParams) -> int:
    """Run one command's parameters (what `main` does after parsing)."""
    return COMMANDS[params.command](params)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that the flow, its Dask cluster and a
    Prefect server of its own are stopped by the same cleanup as Ctrl-C."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated


def _stopped(err: BaseException, signals: StopSignals | None) -> int | None:
    """The exit code of a command stopped by a signal (whatever exception that left
    behind), or None for an ordinary failure."""
    seen = signals.received() if signals else set()
    if isinstance(err, Terminated) or signal.SIGTERM in seen:
        return EXIT_TERMINATED
    if isinstance(err, KeyboardInterrupt) or signal.SIGINT in seen:
        return EXIT_INTERRUPTED
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from renalflow.flows.runtime import (
        StopRedelivery,
        StopSignals,
        configure_logging,
        quiet_when_stopping,
    )

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    signals = StopSignals() if in_main_thread else None
    redelivery = StopRedelivery() if in_main_thread else None
    unraisable = sys.unraisablehook
    sys.unraisablehook = quiet_when_stopping(unraisable, redelivery)
    debug = bool(getattr(args, "debug", False))

    configure_logging(verbose=bool(getattr(args, "verbose", False)))
    started = time.perf_counter()
    try:
        return run_command(params_from_args(args))
    except BaseException as err:
        stopped = _stopped(err, signals)
        if stopped == EXIT_TERMINATED:
            print(f"renalflow {args.command}: stopped (SIGTERM)", file=sys.stderr)
            return stopped
        if stopped == EXIT_INTERRUPTED:
            print(f"renalflow {args.command}: interrupted", file=sys.stderr)
            return stopped
        if isinstance(err, RenalflowError) and not debug:
            print(f"renalflow {args.command}: error: {err}", file=sys.stderr)
            return EXIT_USAGE
        raise
    finally:
        sys.unraisablehook = unraisable
        if redelivery is not None:
            redelivery.close()
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
        if signals is not None:
            signals.close()
        if os.environ.get("RENALFLOW_TIMING"):
            print(f"[{args.command}: {time.perf_counter() - started:.1f} s]", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
