"""`renalflow`: one command with subcommands for each stage of the pipeline."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from renalflow.tasks.config import Interpolation, PreprocessConfig, WindowSource
from renalflow.tasks.errors import InputError, RenalflowError

if TYPE_CHECKING:
    from renalflow.tasks.model import TrainConfig

DESCRIPTION = """\
renalflow screens CT archives for benign renal masses (oncocytoma vs renal cell
carcinoma) following Pedersen et al., Eur J Radiol 2020: 2D axial slices, a
ResNet50V2 classifier and a 51% majority vote per patient.

Typical first run (or simply `renalflow demo`):
  renalflow synth demo --patients 100
  renalflow ingest demo/archive --store store --labels demo/labels.csv
  renalflow train --store store --model-dir model --profile cpu-demo
  renalflow evaluate --store store --model-dir model --report report
  export RENALFLOW_PSEUDONYM_KEY=...   # a long random secret; keep it
  renalflow score demo/archive --model-dir model --results results --store store
  renalflow query "select vote, count(*) from patient_votes group by vote" --results results
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _ema(text: str) -> float:
    if text.lower() in ("none", "off"):
        return 0.0  # no averaging (profile_config ignores None, so 0 stands for off)
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value == 0:
        return 0.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"a momentum between 0 and 1, or none; got {text}")
    return value


def _region(text: str) -> tuple[float, ...]:
    from renalflow.tasks.model import check_region

    if text.lower() in ("full", "none", "whole"):
        return ()
    try:
        return check_region(text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"TOP,BOTTOM,LEFT,RIGHT as fractions of the slice, top < bottom and left < right "
            f"(e.g. 0.28,0.9,0.14,0.86), or 'full'; got {text!r}"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="renalflow",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    synth = sub.add_parser(
        "synth",
        help="write a synthetic renal-mass CT archive and its labels",
        description=(
            "Write OUT/archive/ (DICOM files in nested folders, mixed transfer syntaxes) and "
            "OUT/labels.csv (patient_id,label,histology). Lesions follow the literature: "
            "oncocytoma homogeneous and well circumscribed, sometimes with a central scar; "
            "RCC heterogeneous with necrosis and irregular margins. Same seed, same bytes."
        ),
    )
    synth.add_argument("out", help="output folder (created if missing)")
    synth.add_argument(
        "--patients", type=_positive_int, default=20, help="number of patients (default 20)"
    )
    synth.add_argument(
        "--seed", type=int, default=0, help="random seed; recorded in OUT/synth.json (default 0)"
    )
    synth.add_argument(
        "--benign-fraction",
        type=float,
        default=0.19,
        help="share of benign (oncocytoma) patients; the paper's cohort had 0.19 (default)",
    )
    synth.add_argument(
        "--max-slices-per-series",
        type=_positive_int,
        default=30,
        help="cap on slices per series through the lesion (default 30)",
    )
    synth.add_argument(
        "--jobs", type=_positive_int, default=None, help="processes (default: one per core)"
    )

    ingest = sub.add_parser(
        "ingest",
        help="convert a DICOM archive into the Parquet slice store (Prefect flow on Dask)",
        description=(
            "Find every file under ARCHIVE (a folder or an fsspec URI such as s3://bucket/path), "
            "keep original axial CT slices, convert to HU, window, resize and write "
            "STORE/slices; every other file goes to STORE/rejects with a reason. Reruns skip "
            "files already stored, so rerunning after a crash or after the archive grew only "
            "does the missing work."
        ),
    )
    ingest.add_argument("archive", help="archive folder or URI (file://, s3://)")
    ingest.add_argument("--store", required=True, help="slice store folder or URI")
    ingest.add_argument("--labels", help="CSV with patient_id,label (benign|malignant)")
    ingest.add_argument(
        "--cohort",
        default="development",
        help="cohort name; 'development' (default) is split for training, any other name "
        "is an external test cohort",
    )
    where = ingest.add_mutually_exclusive_group()
    where.add_argument(
        "--workers", type=_positive_int, help="local Dask workers (default: one per core)"
    )
    where.add_argument(
        "--dask-address", help="address of an existing Dask scheduler (tcp://host:8786)"
    )
    ingest.add_argument(
        "--window-center", type=float, default=40.0, help="window level in HU (default 40)"
    )
    ingest.add_argument(
        "--window-width", type=float, default=400.0, help="window width in HU (default 400)"
    )
    ingest.add_argument(
        "--window-source",
        choices=[w.value for w in WindowSource],
        default="fixed",
        help="'fixed' applies the level/width above to every slice (default); 'file' uses "
        "each file's WindowCenter/WindowWidth",
    )
    ingest.add_argument(
        "--size", type=int, default=224, help="output image side in pixels (default 224)"
    )
    ingest.add_argument(
        "--interpolation",
        choices=[i.value for i in Interpolation],
        default="nearest",
        help="resize filter (default nearest, as the paper's Keras load_img)",
    )
    ingest.add_argument(
        "--max-axial-angle",
        type=float,
        default=20.0,
        help="largest tilt from the feet-head axis still counted as axial (default 20 degrees)",
    )
    ingest.add_argument("--keep-derived", action="store_true", help="also keep DERIVED images")
    ingest.add_argument(
        "--batch-size",
        type=_positive_int,
        default=512,
        help="most slices per conversion task (default 512, about 25 MB of output)",
    )
    ingest.add_argument(
        "--memory-limit", help="per-worker memory limit for the local cluster, e.g. 2GiB"
    )
    ingest.add_argument("--summary-json", help="also write the run summary as JSON to this file")

    train = sub.add_parser(
        "train",
        help="train the classifier on the development cohort (paper profile by default)",
        description=(
            "Split the development cohort's patients 70/10/20 (stratified, seeded, saved in "
            "MODEL_DIR/split.json and reused), oversample benign training images to 50:50 and "
            "train. Profile 'paper': ResNet50V2, ImageNet weights, RMSprop 2e-5, 10 epochs, "
            "batch 32. Profile 'cpu-demo': a small CNN that looks at the kidney region and "
            "trains in minutes on a CPU (augmentation, cosine schedule, weight averaging); "
            "it is not the paper's model."
        ),
    )
    train.add_argument("--store", required=True, help="slice store written by `renalflow ingest`")
    train.add_argument("--model-dir", required=True, help="where the model and its records go")
    train.add_argument("--profile", choices=["paper", "cpu-demo"], default="paper")
    train.add_argument("--epochs", type=_positive_int, help="epochs (paper: 10)")
    train.add_argument("--batch-size", type=_positive_int, help="batch size (paper: 32)")
    train.add_argument("--learning-rate", type=float, help="RMSprop learning rate (paper: 2e-5)")
    train.add_argument(
        "--weights",
        help="'imagenet' (downloaded by Keras; paper), 'none', or a local weights file",
    )
    train.add_argument(
        "--select-epoch",
        type=_positive_int,
        help="keep this epoch's model (the paper kept 5); default: lowest validation loss",
    )
    train.add_argument(
        "--decay-after",
        type=_positive_int,
        help="divide the learning rate by 10 after this epoch (the authors suggest 4)",
    )
    train.add_argument(
        "--schedule",
        choices=["constant", "cosine"],
        help="learning-rate schedule (paper: constant; cpu-demo: cosine, falling to 0)",
    )
    train.add_argument(
        "--ema",
        type=_ema,
        metavar="MOMENTUM",
        help="validate and keep an exponential moving average of the weights with this "
        "per-step momentum, or 'none' (paper: none; cpu-demo: 0.99)",
    )
    train.add_argument(
        "--region",
        type=_region,
        metavar="TOP,BOTTOM,LEFT,RIGHT",
        help="the part of the slice the network sees, as fractions, or 'full' (paper: "
        "full; cpu-demo: the kidney region 0.28,0.9,0.14,0.86)",
    )
    train.add_argument("--mixed-precision", choices=["bf16", "fp16"], help="mixed precision")
    train.add_argument("--seed", type=int, default=2020, help="seed for split, weights, shuffling")
    train.add_argument("--no-oversample", action="store_true", help="do not balance classes")
    train.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        help="random flips, zoom, shifts and noise while training (default: off for "
        "paper, as the paper found augmentation harmful; on for cpu-demo)",
    )
    train.add_argument(
        "--dask-address",
        help="Dask scheduler with GPU workers (`dask worker ... --resources GPU=1`); "
        "training runs there when one is found, locally otherwise",
    )

    evaluate = sub.add_parser(
        "evaluate",
        help="image metrics, the 51%% patient vote and a report for a split or a cohort",
        description=(
            "Per image: ROC AUC with a 95%% bootstrap CI over patients, accuracy, "
            "sensitivity, specificity, confusion matrix. Per patient: malignant when at "
            "least 51%% of the images are. Writes metrics.json, patients.csv, roc.png and "
            "report.md (beside the paper's results)."
        ),
    )
    evaluate.add_argument("--store", required=True)
    evaluate.add_argument("--model-dir", required=True)
    which = evaluate.add_mutually_exclusive_group()
    which.add_argument("--split", choices=["train", "validation", "test"], help="default: test")
    which.add_argument("--cohort", help="an external cohort ingested with --cohort NAME")
    evaluate.add_argument("--report", required=True, help="folder for the report")
    evaluate.add_argument("--vote-threshold", type=float, default=0.51, help="default 0.51")
    evaluate.add_argument("--image-threshold", type=float, default=0.5, help="default 0.5")
    evaluate.add_argument("--bootstrap", type=_positive_int, default=1000, help="resamples (1000)")

    score = sub.add_parser(
        "score",
        help="screen an archive with a trained model into the results table (incremental)",
        description=(
            "Score every study under ARCHIVE that this model version has not scored yet: new "
            "files are converted into the slice store (with the model's preprocessing), "
            "images are scored in batches on Dask workers, and R gets one row per image "
            "(R/slice_scores) and one 51%% vote per study (R/patient_votes), both Delta "
            "tables with atomic commits. Rerunning adds nothing; a new model version adds its "
            "own rows. Identifiers never reach R: patients and studies appear as keyed "
            "pseudonyms (HMAC-SHA256) under the key in RENALFLOW_PSEUDONYM_KEY or a Prefect "
            "Secret block (--key-secret); without a key, nothing is scored."
        ),
    )
    score.add_argument("archive", help="archive folder or URI (file://, s3://)")
    score.add_argument("--model-dir", required=True, help="trained model (renalflow train)")
    score.add_argument("--results", required=True, help="results table folder or s3:// URI")
    score.add_argument(
        "--store",
        help="slice store for the archive's slices (default: RESULTS.slices beside R; it "
        "holds identifiers and pixels, so keep it inside the department)",
    )
    score.add_argument(
        "--cohort",
        default="screening",
        help="cohort name for newly ingested files (default 'screening')",
    )
    score.add_argument("--vote-threshold", type=float, default=0.51, help="default 0.51")
    score.add_argument("--image-threshold", type=float, default=0.5, help="default 0.5")
    score.add_argument(
        "--min-images",
        type=_positive_int,
        default=10,
        help="studies with fewer images are flagged too_few_images (default 10)",
    )
    score.add_argument("--key-secret", help="Prefect Secret block holding the pseudonymisation key")
    score.add_argument(
        "--explain",
        action="store_true",
        help="also write heat maps (Grad-CAM) of the 3+3 slices that decided each vote, "
        "linked from slice_scores.heatmap_uri",
    )
    score.add_argument(
        "--explain-dir",
        help="where the heat maps go (default: RESULTS.heatmaps beside R; they show the "
        "patient's images, so keep them inside the department)",
    )
    where = score.add_mutually_exclusive_group()
    where.add_argument(
        "--workers", type=_positive_int, help="local Dask workers (default: one per core)"
    )
    where.add_argument(
        "--dask-address",
        help="existing Dask scheduler; scoring goes to GPU workers (--resources GPU=1) when "
        "it has any",
    )
    score.add_argument("--summary-json", help="also write the run summary as JSON to this file")

    query = sub.add_parser(
        "query",
        help="DuckDB SQL over the results table (patient_votes, slice_scores)",
        description=(
            "Run SQL against the results table R, whose tables appear as the views "
            "patient_votes and slice_scores. With --as-of, read R as it was at a version of "
            "patient_votes (see `renalflow history`) or at a time, so a study can cite the "
            "exact state it analysed."
        ),
        epilog=(
            "examples:\n"
            '  renalflow query "select vote, count(*) from patient_votes group by vote" '
            "--results R\n"
            '  renalflow query "select * from patient_votes" --results R --as-of 3 '
            "--format csv > votes_v3.csv"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    query.add_argument("sql", help="a SELECT over patient_votes and slice_scores")
    query.add_argument("--results", required=True, help="results table folder or URI")
    query.add_argument(
        "--as-of", help="a patient_votes version (e.g. 3) or a time (e.g. 2026-11-27T02:00)"
    )
    query.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table")
    query.add_argument(
        "--output", help="write to this file instead of the terminal (required for parquet)"
    )

    hist = sub.add_parser(
        "history",
        help="versions of the results table (for --as-of), newest first",
        description="List the commits of R/patient_votes: version, time, operation, flow run.",
    )
    hist.add_argument("--results", required=True)

    serve = sub.add_parser(
        "serve",
        help="register and serve Prefect deployments: nightly scoring, ingest and train",
        description=(
            "Register three deployments with the Prefect server at PREFECT_API_URL and run "
            "them from this process: renalflow-score/nightly (scores new studies of ARCHIVE "
            "every night, 02:00 local time by default), renalflow-ingest/on-demand and "
            "renalflow-train/on-demand. Trigger runs from the Prefect UI or with "
            "`prefect deployment run renalflow-score/nightly`. Stop with Ctrl-C."
        ),
    )
    serve.add_argument("--archive", required=True, help="archive the nightly run screens")
    serve.add_argument("--model-dir", required=True, help="trained model used for scoring")
    serve.add_argument("--results", required=True, help="results table R")
    serve.add_argument("--store", help="slice store (default: RESULTS.slices)")
    serve.add_argument(
        "--cron", default="0 2 * * *", help="nightly schedule, cron syntax (default 0 2 * * *)"
    )
    serve.add_argument("--timezone", help="IANA time zone of the schedule (default: local)")
    serve.add_argument("--key-secret", help="Prefect Secret block with the pseudonymisation key")
    where = serve.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_positive_int, help="local Dask workers per run")
    where.add_argument("--dask-address", help="existing Dask scheduler for the runs")

    cohort = sub.add_parser(
        "cohort-report",
        help="an HTML summary of the results table: votes by year, vendor and phase mix",
        description=(
            "Write OUT/cohort.html from the results table R: studies per model version, "
            "benign and malignant votes by study year, scanner vendor and phase mix (plots "
            "and tables), and QC flags. --as-of pins the state of R, as in `renalflow query`."
        ),
    )
    cohort.add_argument("--results", required=True, help="results table folder or URI")
    cohort.add_argument("--out", required=True, help="folder for cohort.html")
    cohort.add_argument("--as-of", help="a patient_votes version or a time")

    web = sub.add_parser(
        "web",
        help="a page for urologists: upload one patient's CT series, see the vote",
        description=(
            "Serve a small web page (on loopback by default) where one patient's CT series "
            "(DICOM files or a zip) is uploaded and classified with the model: the vote, the "
            "share of malignant slices against the 51%% line, the probability of every slice "
            "along z and heat maps of the slices that decided the vote. Unusable files are "
            "listed with the ingest's reasons. Uploads are removed after scoring unless "
            "--keep-uploads."
        ),
    )
    web.add_argument("--model-dir", required=True, help="trained model (renalflow train)")
    web.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    web.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    web.add_argument(
        "--workdir", default="renalflow-web", help="folder for uploads (default ./renalflow-web)"
    )
    web.add_argument(
        "--max-upload-mb", type=_positive_int, default=500, help="largest upload (500 MB)"
    )
    web.add_argument("--keep-uploads", action="store_true", help="keep uploads after scoring")

    demo = sub.add_parser(
        "demo",
        help="run the pipeline end to end on a synthetic archive (what `make demo` runs)",
        description=(
            "The whole pipeline on this machine: synthesise a development archive, ingest it "
            "into a slice store on a local Dask cluster, train the cpu-demo model, evaluate it "
            "on the held-out test patients, score a second (screening) archive into the Delta "
            "results table, and query it with DuckDB. Everything goes under OUT; steps whose "
            "output exists are reused. About 10 minutes on 2 CPU cores."
        ),
    )
    demo.add_argument(
        "--out", default="renalflow-demo", help="working folder (default ./renalflow-demo)"
    )
    demo.add_argument(
        "--patients",
        type=_positive_int,
        default=100,
        help="synthetic development patients (default 100)",
    )
    demo.add_argument(
        "--benign-fraction",
        type=float,
        default=0.5,
        help="benign share of the development patients (default 0.5, so that the 20 "
        "test patients hold about 10 benign ones and the AUC means something; the "
        "paper's cohort had 0.19)",
    )
    demo.add_argument(
        "--screening",
        type=_positive_int,
        default=12,
        help="patients in the screening archive that gets scored (default 12)",
    )
    demo.add_argument("--seed", type=int, default=2020, help="random seed (default 2020)")
    demo.add_argument(
        "--interpolation",
        choices=[i.value for i in Interpolation],
        default=Interpolation.BOX.value,
        help="resize filter when ingesting (default box: each 224-px pixel averages the "
        "512-px pixels it covers, so the slice keeps its mean density and pixel noise "
        "falls to under half; `renalflow ingest` keeps the paper's nearest, which picks one "
        "pixel in five and all its noise)",
    )
    demo.add_argument(
        "--workers", type=_positive_int, help="local Dask workers (default: one per core)"
    )
    return parser


def _cmd_synth(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from renalflow.tasks.synth import SynthConfig, synthesize_archive

    config = SynthConfig(
        patients=args.patients,
        seed=args.seed,
        benign_fraction=args.benign_fraction,
        max_slices_per_series=args.max_slices_per_series,
    )

    tty = sys.stderr.isatty()

    def progress(done: int, total: int, slices: int) -> None:
        # A live counter on a terminal; every tenth of the work in a log file.
        if tty:
            print(f"\r  {done}/{total} patients, {slices} slices", end="", file=sys.stderr)
        elif done == total or done % max(1, total // 10) == 0:
            print(f"  {done}/{total} patients, {slices} slices", file=sys.stderr)

    print(
        f"writing {config.patients} synthetic patients to {args.out} (seed {config.seed})",
        file=sys.stderr,
    )
    report = synthesize_archive(args.out, config, jobs=args.jobs, progress=progress)
    if tty:
        print(file=sys.stderr)
    record = {
        "seed": config.seed,
        "patients": report.patients,
        "benign": report.benign,
        "series": report.series,
        "slices": report.slices,
        "benign_fraction": config.benign_fraction,
        "max_slices_per_series": config.max_slices_per_series,
        "transfer_syntaxes": report.by_syntax,
    }
    Path(args.out, "synth.json").write_text(json.dumps(record, indent=2))
    rate = report.slices / report.seconds if report.seconds else 0.0
    print(
        f"{report.patients} patients ({report.benign} benign), {report.series} series, "
        f"{report.slices} slices in {report.seconds:.1f} s ({rate:.0f} slices/s)\n"
        f"  archive  {Path(args.out, 'archive')}\n  labels   {Path(args.out, 'labels.csv')}"
    )
    for name, count in sorted(report.by_syntax.items()):
        print(f"  {name:<48} {count:>6} files")
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    from renalflow.flows.ingest import format_summary, ingest_flow
    from renalflow.flows.runtime import dask_task_runner, prefect_api

    config = PreprocessConfig(
        window_center=args.window_center,
        window_width=args.window_width,
        window_source=WindowSource(args.window_source),
        output_size=args.size,
        interpolation=Interpolation(args.interpolation),
        max_axial_angle_deg=args.max_axial_angle,
        keep_derived=args.keep_derived,
    )
    # Fail fast, before a server and a cluster are started, on inputs that cannot work.
    archive, store = _as_uri(args.archive), _as_uri(args.store)
    _check_inputs_early(archive, args.labels)
    runner = dask_task_runner(args.workers, args.dask_address, args.memory_limit)
    with prefect_api():
        load_s3_credentials()
        _check_inputs(archive, args.labels)
        summary = ingest_flow.with_options(task_runner=runner)(  # type: ignore[arg-type]
            archive=archive,
            store=store,
            labels=args.labels,
            cohort=args.cohort,
            preprocess=config,
            batch_size=args.batch_size,
        )
    print(format_summary(summary))
    if args.summary_json:
        import json
        from pathlib import Path

        from renalflow.flows.ingest import summary_dict

        Path(args.summary_json).write_text(json.dumps(summary_dict(summary), indent=2))
    return 0


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """The profile's defaults with what the command line set."""
    from dataclasses import replace

    from renalflow.tasks.model import profile_config

    config = profile_config(
        args.profile,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        weights=args.weights,
        select_epoch=args.select_epoch,
        decay_after=args.decay_after,
        mixed_precision=args.mixed_precision,
        seed=args.seed,
        oversample=False if args.no_oversample else None,
        augment=args.augment,
        schedule=args.schedule,
    )
    if args.ema is not None:
        config = replace(config, ema=args.ema or None)
    if args.region is not None:
        config = replace(config, region=args.region or None)
    return config


def _cmd_train(args: argparse.Namespace) -> int:
    from renalflow.flows.runtime import prefect_api
    from renalflow.flows.train import gpu_workers, train_flow

    try:
        config = _train_config(args)
    except ValueError as err:  # settings that contradict each other
        raise InputError(f"{err}; see renalflow train --help") from err
    flow = train_flow
    gpu = False
    if args.dask_address:
        from prefect_dask import DaskTaskRunner

        found = gpu_workers(args.dask_address)
        if found:
            print(f"training on GPU worker(s) {', '.join(found)}")
            flow = train_flow.with_options(task_runner=DaskTaskRunner(address=args.dask_address))  # type: ignore[arg-type]
            gpu = True
        else:
            print("no Dask worker with a GPU resource: training locally")
    with prefect_api():
        load_s3_credentials()
        result = flow(store=_as_uri(args.store), model_dir=args.model_dir, config=config, gpu=gpu)
    print(
        f"model {Path(result.model_dir) / 'model.keras'} (version {result.model_version}, "
        f"epoch {result.selected_epoch}) in {result.seconds:.0f} s, "
        f"{result.images_per_second:.0f} training images/s"
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from renalflow.flows.runtime import prefect_api
    from renalflow.flows.train import evaluate_flow

    options = {
        "split": args.split or ("test" if not args.cohort else None),
        "cohort": args.cohort,
        "image_threshold": args.image_threshold,
        "vote_threshold": args.vote_threshold,
        "n_bootstrap": args.bootstrap,
    }
    with prefect_api():
        load_s3_credentials()
        metrics = evaluate_flow(
            store=_as_uri(args.store), model_dir=args.model_dir, report=args.report, options=options
        )
    image, patient = metrics["image"], metrics["patient"]
    print(
        f"{metrics['evaluated']}: image AUC {image['auc']:.3f} "
        f"(95% CI {image['auc_ci95'][0]:.3f}-{image['auc_ci95'][1]:.3f}), "
        f"accuracy {image['accuracy']:.3f}, sensitivity {image['sensitivity']:.3f}, "
        f"specificity {image['specificity']:.3f}\n"
        f"patients: {patient['n']}, vote accuracy {patient['accuracy']:.3f}, "
        f"false negatives {patient['false_negatives']}\n"
        f"report: {Path(args.report) / 'report.html'} (and report.md)"
    )
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from renalflow.flows.runtime import dask_task_runner, prefect_api
    from renalflow.flows.score import format_summary, score_flow
    from renalflow.tasks.pseudonym import NO_KEY_HELP, key_from_env
    from renalflow.tasks.score import ScoreConfig, read_model_info

    config = ScoreConfig(
        image_threshold=args.image_threshold,
        vote_threshold=args.vote_threshold,
        min_images=args.min_images,
        explain=args.explain,
    )
    # Fail fast, before a server and a cluster start: no key, no model, no archive.
    if key_from_env() is None and not args.key_secret:
        raise InputError(NO_KEY_HELP)
    read_model_info(args.model_dir)
    archive = _as_uri(args.archive)
    _check_inputs_early(archive, None)
    gpu = False
    if args.dask_address:
        from renalflow.flows.train import gpu_workers

        found = gpu_workers(args.dask_address)
        gpu = bool(found)
        if found:
            print(f"scoring on GPU worker(s) {', '.join(found)}")
    runner = dask_task_runner(args.workers, args.dask_address)
    with prefect_api():
        load_s3_credentials()
        _check_inputs(archive, None)
        summary = score_flow.with_options(task_runner=runner)(  # type: ignore[arg-type]
            archive=archive,
            model_dir=os.path.abspath(args.model_dir),
            results=_as_uri(args.results),
            store=_as_uri(args.store) if args.store else None,
            cohort=args.cohort,
            config=config,
            key_secret=args.key_secret,
            gpu=gpu,
            explain_dir=_as_uri(args.explain_dir) if args.explain_dir else None,
        )
    print(format_summary(summary))
    if args.summary_json:
        import json

        from renalflow.flows.score import summary_dict

        Path(args.summary_json).write_text(json.dumps(summary_dict(summary), indent=2))
    return 0


def _cmd_query(args: argparse.Namespace) -> int:
    from renalflow.tasks.query import format_result, run_query
    from renalflow.tasks.results import parse_as_of

    if args.format == "parquet" and not args.output:
        raise InputError("--format parquet writes binary data: give --output FILE.parquet")
    as_of = parse_as_of(args.as_of) if args.as_of else None
    _s3_credentials_for_reading()
    table = run_query(_as_uri(args.results), args.sql, as_of)
    out = format_result(table, args.format)
    if args.output:
        mode = "wb" if isinstance(out, bytes) else "w"
        with open(args.output, mode) as handle:
            handle.write(out)
        print(f"{table.num_rows} rows -> {args.output}", file=sys.stderr)
    else:
        assert isinstance(out, str)
        sys.stdout.write(out)
    return 0


def _cmd_history(args: argparse.Namespace) -> int:
    from renalflow.tasks.results import history

    _s3_credentials_for_reading()
    print(f"{'version':>7}  {'time':<25}  {'operation':<12}  {'rows added':>10}  flow run")
    for entry in history(_as_uri(args.results)):
        added = entry["rows_inserted"]
        print(
            f"{entry['version']:>7}  {entry['timestamp'].isoformat(timespec='seconds'):<25}  "
            f"{entry['operation']:<12}  {'' if added is None else added:>10}  "
            f"{entry['flow_run_id']}"
        )
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from renalflow.flows.deployments import build_deployments
    from renalflow.tasks.ingest import check_archive
    from renalflow.tasks.pseudonym import NO_KEY_HELP, key_from_env
    from renalflow.tasks.score import read_model_info

    if not os.environ.get("PREFECT_API_URL"):
        raise InputError(
            "serving needs a Prefect server that outlives this command: start one with "
            "`prefect server start` (SQLite by default) in another terminal, then "
            "`export PREFECT_API_URL=http://127.0.0.1:4200/api` and run this again"
        )
    if key_from_env() is None and not args.key_secret:
        raise InputError(NO_KEY_HELP)
    read_model_info(args.model_dir)
    archive = _as_uri(args.archive)
    check_archive(archive)
    deployments = build_deployments(
        archive=archive,
        model_dir=os.path.abspath(args.model_dir),
        results=_as_uri(args.results),
        store=_as_uri(args.store) if args.store else None,
        cron=args.cron,
        timezone=args.timezone,
        workers=args.workers,
        dask_address=args.dask_address,
        key_secret=args.key_secret,
    )
    from prefect import serve

    serve(*deployments)
    return 0


DEMO_QUERY = """\
select study_year_month[1:4] as year, manufacturer,
       count(*) as studies,
       round(avg((vote = 'benign')::int), 2) as benign_share
from patient_votes group by all order by year, manufacturer"""


def demo_key(out: Path) -> str:
    """The demo's pseudonymisation key: RENALFLOW_PSEUDONYM_KEY if set, else one generated
    once and kept in OUT/pseudonym.key (readable by the owner only)."""
    import secrets

    if os.environ.get("RENALFLOW_PSEUDONYM_KEY"):
        return "RENALFLOW_PSEUDONYM_KEY from the environment"
    path = out / "pseudonym.key"
    if not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
        how = f"generated a new key in {path}"
    else:
        how = f"reusing the key in {path}"
    os.environ["RENALFLOW_PSEUDONYM_KEY"] = path.read_text().strip()
    return how


def _cmd_cohort_report(args: argparse.Namespace) -> int:
    from renalflow.tasks.report import cohort_report
    from renalflow.tasks.results import parse_as_of

    as_of = parse_as_of(args.as_of) if args.as_of else None
    _s3_credentials_for_reading()
    path = cohort_report(_as_uri(args.results), Path(args.out), as_of)
    print(f"cohort summary: {path}")
    return 0


def _cmd_web(args: argparse.Namespace) -> int:
    import uvicorn

    from renalflow.flows.web import WebConfig, create_app

    config = WebConfig(
        model_dir=os.path.abspath(args.model_dir),
        workdir=os.path.abspath(args.workdir),
        max_upload_mb=args.max_upload_mb,
        keep_uploads=args.keep_uploads,
    )
    app = create_app(config)
    print(f"renalflow web: http://{args.host}:{args.port}/  (uploads in {config.workdir})")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def _check_demo_store(store: Path, interpolation: str) -> None:
    """A demo folder from an earlier run whose store was resized otherwise: say how to
    go on before any step runs (ingest would refuse to mix the two)."""
    from renalflow.tasks.store import MANIFEST, read_manifest

    if not (store / MANIFEST).exists():
        return
    made_with = read_manifest(str(store)).get("preprocess", {}).get("interpolation")
    if made_with is not None and made_with != interpolation:
        raise InputError(
            f"{store} was made with {made_with} resizing, this demo resizes with "
            f"{interpolation}: delete {store.parent} to start afresh, or rerun with "
            f"--interpolation {made_with}"
        )


def _cmd_demo(args: argparse.Namespace) -> int:
    from renalflow.flows.runtime import prefect_api

    started = time.perf_counter()
    out = Path(args.out)
    data, store, model = out / "synthetic", out / "store", out / "model"
    screening, results, report = out / "screening", out / "results", out / "report"
    workers = ["--workers", str(args.workers)] if args.workers else []

    def run(*argv: str) -> None:
        COMMANDS[argv[0]](build_parser().parse_args(argv))

    def step(text: str) -> None:
        print(f"\n== {text}  [{time.perf_counter() - started:.0f} s]", flush=True)

    _check_demo_store(store, args.interpolation)
    step(f"1/7 synth: {args.patients} synthetic patients for development -> {data}")
    if (data / "labels.csv").exists():
        print("   (already there; reusing it)")
    else:
        run(
            *("synth", str(data), "--patients", str(args.patients), "--seed", str(args.seed)),
            *("--benign-fraction", str(args.benign_fraction)),
        )
    # One Prefect server for every step (a temporary one unless PREFECT_API_URL is set).
    with prefect_api():
        load_s3_credentials()
        step(f"2/7 ingest: {data / 'archive'} -> {store} (Prefect flow on a local Dask cluster)")
        run(
            *("ingest", str(data / "archive"), "--store", str(store)),
            *("--labels", str(data / "labels.csv"), "--interpolation", args.interpolation),
            *workers,
        )
        print(describe_store(str(store.resolve())))

        step(f"3/7 train: profile cpu-demo on the development patients -> {model}")
        if (model / "model.keras").exists():
            print("   (a model is already there; reusing it)")
        else:
            run("train", "--store", str(store), "--model-dir", str(model), "--profile", "cpu-demo")

        step(f"4/7 evaluate: the held-out test patients -> {report}")
        run(
            *("evaluate", "--store", str(store), "--model-dir", str(model)),
            *("--report", str(report), "--bootstrap", "200"),
        )

        step(f"5/7 synth: a screening archive of {args.screening} new patients -> {screening}")
        if not (screening / "archive").exists():
            run(
                *("synth", str(screening), "--patients", str(args.screening)),
                *("--seed", str(args.seed + 1)),
            )
        step(f"6/7 score: {screening / 'archive'} -> {results} (Delta tables)")
        print(f"   pseudonymisation key: {demo_key(out)}")
        run(
            *("score", str(screening / "archive"), "--model-dir", str(model)),
            *("--results", str(results), *workers),
        )

    step("7/7 query: benign vote share by study year and scanner vendor")
    print(f'$ renalflow query "{" ".join(DEMO_QUERY.split())}" --results {results}\n')
    run("query", DEMO_QUERY, "--results", str(results))
    run("cohort-report", "--results", str(results), "--out", str(out / "cohort"))
    print(
        f"\ndemo finished in {time.perf_counter() - started:.0f} s. Artifacts:\n"
        f"  development archive  {data / 'archive'} (labels {data / 'labels.csv'})\n"
        f"  slice store          {store}\n"
        f"  model                {model / 'model.keras'} (curves {model / 'curves.png'})\n"
        f"  evaluation report    {report / 'report.html'} (also report.md, heat maps)\n"
        f"  screening archive    {screening / 'archive'}\n"
        f"  results table        {results} (patient_votes, slice_scores)\n"
        f"  cohort summary       {out / 'cohort' / 'cohort.html'}\n"
        f"  pseudonym key        {out / 'pseudonym.key'}\n"
        f'try: renalflow query "select * from patient_votes limit 5" --results {results}'
    )
    return 0


def describe_store(store: str) -> str:
    """A short DuckDB summary of a slice store: patients, series and slices per label and phase."""
    import duckdb

    glob = f"{store.rstrip('/')}/slices/*.parquet"
    con = duckdb.connect()
    rows = con.execute(
        f"""
        select coalesce(label, '(unlabelled)') as label, phase,
               count(distinct patient_id) as patients,
               count(distinct series_instance_uid) as series,
               count(*) as slices
        from read_parquet('{glob}')
        group by all order by label, phase
        """
    ).fetchall()
    lines = [f"  {'label':<13} {'phase':<12} {'patients':>8} {'series':>7} {'slices':>7}"]
    for label, phase, patients, series, slices in rows:
        lines.append(f"  {label:<13} {phase:<12} {patients:>8} {series:>7} {slices:>7}")
    return "\n".join(lines)


def _check_inputs(archive: str, labels: str | None) -> None:
    """Refuse a missing archive or a bad labels file with a clear message."""
    from renalflow.tasks.ingest import check_archive, read_labels

    check_archive(archive)
    if labels:
        read_labels(labels)


def _check_inputs_early(archive: str, labels: str | None) -> None:
    """Check local inputs before a server and a cluster are started; remote ones are
    checked once the object-storage credentials are loaded."""
    local = [u for u in (archive, labels) if u and "://" not in u]
    if archive in local:
        _check_inputs(archive, labels if labels in local else None)
    elif labels in local:
        from renalflow.tasks.ingest import read_labels

        read_labels(labels)


def load_s3_credentials() -> None:
    """Object-storage credentials from the Prefect Secret block named by
    RENALFLOW_S3_CREDENTIALS_BLOCK, if any (see flows.runtime)."""
    from renalflow.flows.runtime import load_s3_credentials as load

    load()


def _s3_credentials_for_reading() -> None:
    """For commands that start no flow (query, history): load the credentials block
    through the Prefect API only when one is named."""
    from renalflow.flows.runtime import S3_CREDENTIALS_BLOCK_ENV, prefect_api

    if os.environ.get(S3_CREDENTIALS_BLOCK_ENV):
        with prefect_api():
            load_s3_credentials()


def _as_uri(location: str) -> str:
    """Local paths become absolute so workers in other folders find the same files."""
    if "://" in location:
        return location
    return os.path.abspath(location)


COMMANDS = {
    "synth": _cmd_synth,
    "ingest": _cmd_ingest,
    "train": _cmd_train,
    "evaluate": _cmd_evaluate,
    "score": _cmd_score,
    "query": _cmd_query,
    "history": _cmd_history,
    "serve": _cmd_serve,
    "web": _cmd_web,
    "cohort-report": _cmd_cohort_report,
    "demo": _cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    try:
        return COMMANDS[args.command](args)
    except RenalflowError as err:
        print(f"renalflow {args.command}: error: {err}", file=sys.stderr)
        return 2
    finally:
        if os.environ.get("RENALFLOW_TIMING"):
            print(f"[{args.command}: {time.perf_counter() - started:.1f} s]", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
