"""Selection benchmark: screening whole studies three ways on the same fresh archive.

Takes the classifier and the slice selector a finished `renalflow demo` left in DEMO
(DEMO/model, DEMO/selector), writes a new synthetic archive of whole studies (seeds the
tests and the demo never use) with each lesion as a DICOM SEG, and scores it with
`renalflow score` (the same job, Prefect flow and local Dask cluster) three ways:

- `annotation`: the archive with its SEGs: the lesion slices vote (the paper's unit);
- `selector`: the same files without the SEGs, `--selector DEMO/selector`;
- `all`: the same files without the SEGs, `--all-slices` (every slice of the screened
  series votes: what scoring did before selection existed).

For each: study-vote accuracy over the abdominal studies (each holds a mass; a study
the selector finds no mass in counts as wrong), the chest and head studies left
unvoted, slices voted, and the whole command's wall time (ingest, selection, inference,
results). Then the selector's own cost per slice, timed on the stored slices in one
process. Prints a table and writes OUT/selection.json and OUT/selection.png.

Usage: python bench/bench_selection.py --demo renalflow-demo [--patients 16]
       [--seed 9101] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import time
from pathlib import Path

from common import machine

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RENALFLOW_PSEUDONYM_KEY", "benchmark-key-not-secret-0123456789")

MODES = ("annotation", "selector", "all")


def make_archives(out: Path, patients: int, seed: int) -> tuple[Path, Path]:
    """OUT/synth (whole studies, every lesion as a SEG) and OUT/bare: the same files
    (hard links) without the SEGs."""
    import pydicom

    from renalflow.flows.jobs import SYNTH_RECORD, run_synth
    from renalflow.tasks.params import SynthParams

    synth = out / "synth"
    if not (synth / SYNTH_RECORD).exists():
        run_synth(SynthParams(out=str(synth), patients=patients, seed=seed, seg_share=1.0))
    bare = out / "bare"
    if not bare.exists():
        for path in sorted((synth / "archive").rglob("*")):
            if not path.is_file():
                continue
            if pydicom.dcmread(path, stop_before_pixels=True).Modality == "SEG":
                continue
            target = bare / path.relative_to(synth / "archive")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)
    return synth, bare


def train_selector(out: Path, patients: int, epochs: int, seed: int) -> Path:
    """A slice selector of the bench's own: `renalflow synth` (whole studies with their
    SEGs), `renalflow ingest` and `renalflow train --task selector --profile cpu-demo`,
    as the demo makes its own, on more patients and epochs."""
    from renalflow.flows.jobs import SYNTH_RECORD, ingest_job, run_synth, train_job
    from renalflow.tasks.config import Profile, Task
    from renalflow.tasks.model_dir import has_model
    from renalflow.tasks.params import IngestParams, SynthParams, TrainParams

    folder, store, model = out / "annotated", out / "selector-store", out / "selector"
    if has_model(model):
        return model
    if not (folder / SYNTH_RECORD).exists():
        run_synth(SynthParams(out=str(folder), patients=patients, seed=seed, seg_share=1.0,
                              benign_fraction=0.5))  # fmt: skip
    ingest_job(
        IngestParams(
            archive=str(folder / "archive"),
            store=str(store),
            labels=str(folder / "labels.csv"),
            interpolation="box",
        )
    )
    train_job(
        TrainParams(
            store=str(store),
            model_dir=str(model),
            task=Task.SELECTOR,
            profile=Profile.CPU_DEMO,
            epochs=epochs,
        )
    )
    return model


def score(mode: str, archive: Path, demo: Path, out: Path, selector: Path) -> float:
    """One `renalflow score` run; its wall time."""
    from renalflow.flows.jobs import score_job
    from renalflow.tasks.params import ScoreParams

    results = out / f"results-{mode}"
    shutil.rmtree(results, ignore_errors=True)
    shutil.rmtree(f"{results}.slices", ignore_errors=True)
    started = time.perf_counter()
    score_job(
        ScoreParams(
            archive=str(archive),
            model_dir=str(demo / "model"),
            results=str(results),
            selector=str(selector) if mode == "selector" else None,
            all_slices=mode == "all",
        )
    )
    return time.perf_counter() - started


def accuracy(mode: str, synth: Path, out: Path) -> dict[str, float | int]:
    """Study votes against the synthetic truth (labels.csv by patient, series.csv for
    which studies are abdominal)."""
    from renalflow.tasks.pseudonym import check_key, pseudonym
    from renalflow.tasks.query import run_query

    key = check_key(os.environ["RENALFLOW_PSEUDONYM_KEY"])
    with (synth / "labels.csv").open() as handle:
        label_of = {row["patient_id"]: row["label"] for row in csv.DictReader(handle)}
    truth: dict[str, tuple[str, bool]] = {}  # study_key -> (label, abdominal)
    with (synth / "series.csv").open() as handle:
        for row in csv.DictReader(handle):
            study = pseudonym(key, row["study_instance_uid"])
            abdominal = truth.get(study, ("", False))[1] or row["study"] == "abdomen"
            truth[study] = (label_of[row["patient_id"]], abdominal)
    rows = run_query(
        str(out / f"results-{mode}"),
        "select study_key, status, vote, n_images, slices_in_study from study_votes",
    ).to_pylist()
    abdominal = [r for r in rows if truth[r["study_key"]][1]]
    other = [r for r in rows if not truth[r["study_key"]][1]]
    correct = sum(
        r["status"] == "voted" and r["vote"] == truth[r["study_key"]][0] for r in abdominal
    )
    return {
        "abdominal_studies": len(abdominal),
        "correct": int(correct),
        "accuracy": correct / len(abdominal) if abdominal else float("nan"),
        "no_mass_found_abdominal": sum(r["status"] == "no_mass_found" for r in abdominal),
        "other_studies": len(other),
        "other_unvoted": sum(r["status"] == "no_mass_found" for r in other),
        "slices_voted": sum(r["n_images"] for r in rows),
        "slices_in_studies": sum(r["slices_in_study"] for r in rows),
    }


def selector_cost(selector: Path, out: Path, n: int = 2048) -> float:
    """Milliseconds per slice for the selector's inference, warm, in one process, on
    slices of the annotated run's store."""
    import numpy as np

    from renalflow.tasks.inference import cached_model
    from renalflow.tasks.model import predict_probabilities
    from renalflow.tasks.model_dir import read_model_info
    from renalflow.tasks.store import read_slices

    _, images = read_slices(str(out / "results-annotation.slices"))
    images = images[:n]
    info = read_model_info(str(selector))
    model = cached_model(info.model_dir, info.model_version)
    predict_probabilities(model, images[:64])  # warm-up
    started = time.perf_counter()
    predict_probabilities(model, np.ascontiguousarray(images))
    return 1000 * (time.perf_counter() - started) / len(images)


def plot(figures: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    names = list(figures)
    left.bar(names, [100 * figures[m]["accuracy"] for m in names], color=["#4a7", "#47a", "#a55"])
    left.set_ylim(0, 100)
    left.set_ylabel("study-vote accuracy, %")
    left.set_title("abdominal studies")
    right.bar(names, [figures[m]["seconds"] for m in names], color=["#4a7", "#47a", "#a55"])
    right.set_ylabel("renalflow score, s")
    right.set_title("whole run on the same archive")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("renalflow-demo"))
    parser.add_argument("--patients", type=int, default=16)
    parser.add_argument("--seed", type=int, default=9101)
    parser.add_argument("--out", type=Path, default=Path("/tmp/renalflow-bench-selection"))
    parser.add_argument(
        "--selector-patients",
        type=int,
        default=0,
        help="train a selector of its own on this many annotated patients (0: the demo's)",
    )
    parser.add_argument("--selector-epochs", type=int, default=16)
    args = parser.parse_args()
    for needed in (args.demo / "model", args.demo / "selector"):
        if not needed.exists():
            raise SystemExit(f"{needed} is missing: run `renalflow demo --out {args.demo}` first")
    args.out.mkdir(parents=True, exist_ok=True)
    synth, bare = make_archives(args.out, args.patients, args.seed)
    selector = args.demo / "selector"
    if args.selector_patients:
        selector = train_selector(
            args.out, args.selector_patients, args.selector_epochs, args.seed + 1
        )
    figures: dict[str, dict] = {}
    for mode in MODES:
        archive = synth / "archive" if mode == "annotation" else bare
        seconds = score(mode, archive, args.demo, args.out, selector)
        figures[mode] = {"seconds": seconds, **accuracy(mode, synth, args.out)}
    cost = selector_cost(selector, args.out)
    print(
        f"\n{args.patients} patients' whole studies (seed {args.seed}); classifier "
        f"{args.demo / 'model'}, selector {selector}"
    )
    print(machine())
    print(
        "mode        accuracy (abdominal)  unvoted chest/head  slices voted / in studies  score run"
    )
    for mode, f in figures.items():
        print(
            f"{mode:<11} {f['accuracy']:6.1%} ({f['correct']}/{f['abdominal_studies']}, "
            f"{f['no_mass_found_abdominal']} no mass)  "
            f"{f['other_unvoted']}/{f['other_studies']:<16}"
            f"  {f['slices_voted']:>6,} / {f['slices_in_studies']:<9,}      {f['seconds']:6.1f} s"
        )
    ratio = figures["selector"]["seconds"] / figures["all"]["seconds"]
    print(f"selector inference: {cost:.2f} ms per slice (warm, one process)")
    print(f"whole run with the selector / with --all-slices: {ratio:.2f}")
    record = {"patients": args.patients, "seed": args.seed, "selector": str(selector),
              "modes": figures,
              "selector_ms_per_slice": cost, "run_ratio_selector_to_all": ratio}  # fmt: skip
    (args.out / "selection.json").write_text(json.dumps(record, indent=2))
    plot(figures, args.out / "selection.png")
    print(f"wrote {args.out / 'selection.json'} and {args.out / 'selection.png'}")


if __name__ == "__main__":
    main()
