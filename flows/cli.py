"""`renalflow`: one command with subcommands for each stage of the pipeline."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from tasks.config import Interpolation, PreprocessConfig, WindowSource
from tasks.errors import RenalflowError

DESCRIPTION = """\
renalflow screens CT archives for benign renal masses (oncocytoma vs renal cell
carcinoma) following Pedersen et al., Eur J Radiol 2020: 2D axial slices, a
ResNet50V2 classifier and a 51% majority vote per patient.

Typical first run:
  renalflow synth demo --patients 20
  renalflow ingest demo/archive --store store --labels demo/labels.csv
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


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
    synth.add_argument("--patients", type=_positive_int, default=20, help="number of patients (default 20)")
    synth.add_argument("--seed", type=int, default=0, help="random seed; recorded in OUT/synth.json (default 0)")
    synth.add_argument(
        "--benign-fraction", type=float, default=0.19,
        help="share of benign (oncocytoma) patients; the paper's cohort had 0.19 (default)",
    )
    synth.add_argument(
        "--max-slices-per-series", type=_positive_int, default=30,
        help="cap on slices per series through the lesion (default 30)",
    )
    synth.add_argument("--jobs", type=_positive_int, default=None, help="processes (default: one per core)")

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
        "--cohort", default="development",
        help="cohort name; 'development' (default) is split for training, any other name "
        "is an external test cohort",
    )
    where = ingest.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_positive_int, help="local Dask workers (default: one per core)")
    where.add_argument("--dask-address", help="address of an existing Dask scheduler (tcp://host:8786)")
    ingest.add_argument("--window-center", type=float, default=40.0, help="window level in HU (default 40)")
    ingest.add_argument("--window-width", type=float, default=400.0, help="window width in HU (default 400)")
    ingest.add_argument(
        "--window-source", choices=[w.value for w in WindowSource], default="fixed",
        help="'fixed' applies the level/width above to every slice (default); 'file' uses "
        "each file's WindowCenter/WindowWidth",
    )
    ingest.add_argument("--size", type=int, default=224, help="output image side in pixels (default 224)")
    ingest.add_argument(
        "--interpolation", choices=[i.value for i in Interpolation], default="nearest",
        help="resize filter (default nearest, as the paper's Keras load_img)",
    )
    ingest.add_argument(
        "--max-axial-angle", type=float, default=20.0,
        help="largest tilt from the feet-head axis still counted as axial (default 20 degrees)",
    )
    ingest.add_argument("--keep-derived", action="store_true", help="also keep DERIVED images")
    ingest.add_argument("--batch-size", type=_positive_int, default=256, help="slices per conversion task (default 256)")
    ingest.add_argument("--memory-limit", help="per-worker memory limit for the local cluster, e.g. 2GiB")
    return parser


def _cmd_synth(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from tasks.synth import SynthConfig, synthesize_archive

    config = SynthConfig(
        patients=args.patients,
        seed=args.seed,
        benign_fraction=args.benign_fraction,
        max_slices_per_series=args.max_slices_per_series,
    )

    def progress(done: int, total: int, slices: int) -> None:
        print(f"\r  {done}/{total} patients, {slices} slices", end="", file=sys.stderr, flush=True)

    print(f"writing {config.patients} synthetic patients to {args.out} (seed {config.seed})", file=sys.stderr)
    report = synthesize_archive(args.out, config, jobs=args.jobs, progress=progress)
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
    from flows.ingest import format_summary, ingest_flow
    from flows.runtime import dask_task_runner, prefect_api

    config = PreprocessConfig(
        window_center=args.window_center,
        window_width=args.window_width,
        window_source=WindowSource(args.window_source),
        output_size=args.size,
        interpolation=Interpolation(args.interpolation),
        max_axial_angle_deg=args.max_axial_angle,
        keep_derived=args.keep_derived,
    )
    runner = dask_task_runner(args.workers, args.dask_address, args.memory_limit)
    with prefect_api():
        summary = ingest_flow.with_options(task_runner=runner)(
            archive=_as_uri(args.archive),
            store=_as_uri(args.store),
            labels=args.labels,
            cohort=args.cohort,
            preprocess=config,
            batch_size=args.batch_size,
        )
    print(format_summary(summary))
    return 0


def _as_uri(location: str) -> str:
    """Local paths become absolute so workers in other folders find the same files."""
    if "://" in location:
        return location
    return os.path.abspath(location)


COMMANDS = {"synth": _cmd_synth, "ingest": _cmd_ingest}


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
