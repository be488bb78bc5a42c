"""The demo: the whole pipeline on synthetic data, as one Prefect flow whose steps are
the same jobs the CLI and the deployments run (they show as its subflows in the UI)."""

# No `from __future__ import annotations`: Prefect reads DemoParams from the signature.
import os
import secrets
import time
from pathlib import Path
from textwrap import indent
from typing import TYPE_CHECKING, Any

from prefect import flow

from renalflow.flows.jobs import (
    SYNTH_RECORD,
    evaluate_job,
    ingest_job,
    run_synth,
    score_job,
    train_job,
)
from renalflow.tasks.config import Profile, Task
from renalflow.tasks.errors import InputError
from renalflow.tasks.model_dir import has_model
from renalflow.tasks.params import (
    DemoParams,
    EvaluateParams,
    IngestParams,
    ScoreParams,
    SynthParams,
    TrainParams,
)
from renalflow.tasks.pseudonym import KEY_ENV

if TYPE_CHECKING:
    from renalflow.flows.score import ScoreSummary
    from renalflow.tasks.train import TrainResult

DEMO_QUERY = """\
select status, selection_source, vote, count(*) as studies,
       sum(slices_in_study) as slices_in_studies, sum(n_images) as slices_voted
from study_votes group by all order by all"""

DEMO_BOOTSTRAP = 200
"""Our choice: fewer bootstrap resamples than `evaluate`'s default, to keep the demo short."""


class DemoLayout:
    """Where each step of the demo writes, under OUT."""

    def __init__(self, out: str | Path, pacs: bool = False) -> None:
        self.out = Path(out)
        self.data = self.out / "synthetic"
        self.store = self.out / "store"
        self.model = self.out / "model"
        self.report = self.out / "report"
        self.screening = self.out / "screening"
        # Scored from the PACS: results of their own (the folder's are already scored).
        self.results = self.out / ("results-pacs" if pacs else "results")
        self.orthanc = self.out / "orthanc"  # the local PACS of `--pacs` (its database)
        self.cohort = self.out / "cohort"
        self.key = self.out / "pseudonym.key"
        self.annotated = self.out / "annotated"  # whole studies with lesion SEGs
        self.selector_store = self.out / "selector-store"
        self.selector = self.out / "selector"
        self.selector_report = self.out / "selector-report"


def check_demo_folder(params: DemoParams) -> None:
    """A demo folder from an earlier run whose store was resized otherwise: say how to
    go on before any step runs (ingest would refuse to mix the two)."""
    from renalflow.tasks.store import MANIFEST, read_manifest

    if params.pacs:
        from renalflow.flows.runtime import require_extra
        from renalflow.tasks.sources.orthanc import check_orthanc

        require_extra("pacs", "demo --pacs")
        check_orthanc()
    store = DemoLayout(params.out).store
    if not (store / MANIFEST).exists():
        return
    made_with = read_manifest(str(store)).get("preprocess", {}).get("interpolation")
    if made_with is not None and made_with != params.interpolation:
        raise InputError(
            f"{store} was made with {made_with} resizing, this demo resizes with "
            f"{params.interpolation.value}: delete {store.parent} to start afresh, or rerun "
            f"with --interpolation {made_with}"
        )


def demo_key(out: Path) -> str:
    """The demo's pseudonymisation key: RENALFLOW_PSEUDONYM_KEY if set, else one generated
    once and kept in OUT/pseudonym.key (readable by the owner only)."""
    if os.environ.get(KEY_ENV):
        return f"{KEY_ENV} from the environment"
    path = DemoLayout(out).key
    if not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
        how = f"generated a new key in {path}"
    else:
        how = f"reusing the key in {path}"
    os.environ[KEY_ENV] = path.read_text().strip()
    return how


def score_from_pacs(where: DemoLayout, workers: int | None) -> "ScoreSummary":
    """Start Orthanc on loopback, send it the screening archive, score it over DICOMweb
    with the results sent back as SR, and show the SRs a viewer would list."""
    from renalflow.tasks.sources.credentials import PASSWORD_ENV, TOKEN_ENV, USER_ENV
    from renalflow.tasks.sources.orthanc import start_orthanc

    files = sorted(p for p in (where.screening / "archive").rglob("*") if p.is_file())
    with start_orthanc(where.orthanc) as pacs:
        print(f"   Orthanc at {pacs.rest} (DICOM port {pacs.dicom_port}), data in {where.orthanc}")
        print(f"   sent {pacs.upload(files)} instances to it, as a scanner would")
        # The Dask workers started for scoring read the PACS credentials from their
        # environment, as workers elsewhere would.
        saved = {name: os.environ.pop(name, None) for name in (TOKEN_ENV, USER_ENV, PASSWORD_ENV)}
        os.environ[USER_ENV], os.environ[PASSWORD_ENV] = pacs.user, pacs.password
        try:
            print(f"$ renalflow score {pacs.dicomweb} --report-to-pacs ...")
            scored = score_job(
                ScoreParams(
                    archive=pacs.dicomweb,
                    model_dir=str(where.model),
                    results=str(where.results),
                    workers=workers,
                    selector=str(where.selector),  # whole studies, as from the folder
                    report_to_pacs=True,
                )
            )
        finally:
            for name, value in saved.items():
                os.environ.pop(name, None)
                if value is not None:
                    os.environ[name] = value
        reports = pacs.qido("series", Modality="SR")
        print(f"   the PACS now lists {len(reports)} renalflow SR series (QIDO-RS, Modality=SR)")
    return scored


@flow(name="renalflow-demo")
def demo_flow(params: DemoParams) -> dict[str, str]:
    """The paper's classifier from curated lesion slices, a slice selector from
    annotated whole studies, then a screening of whole studies that the selector narrows
    to the slices through the mass; the results queried. Returns the artifacts by name."""
    from renalflow.flows.ingest import format_summary as ingest_summary
    from renalflow.flows.score import format_summary as score_summary
    from renalflow.tasks.query import format_result, run_query
    from renalflow.tasks.report import cohort_report
    from renalflow.tasks.selector import format_summary as format_selector_summary
    from renalflow.tasks.store import describe_store

    started = time.perf_counter()
    where = DemoLayout(params.out, pacs=params.pacs)

    def step(text: str) -> None:
        print(f"\n== {text}  [{time.perf_counter() - started:.0f} s]", flush=True)

    def synth_once(wanted: SynthParams) -> None:
        if (Path(wanted.out) / SYNTH_RECORD).exists():
            print("   (already there; reusing it)")
        else:
            run_synth(wanted)

    def train_once(wanted: TrainParams) -> "TrainResult | None":
        if has_model(Path(wanted.model_dir)):
            print(f"   (a {wanted.task.value} is already there; reusing it)")
            return None
        return train_job(wanted)

    def ingest(folder: Path, store: Path) -> None:
        summary = ingest_job(
            IngestParams(
                archive=str(folder / "archive"),
                store=str(store),
                labels=str(folder / "labels.csv"),
                interpolation=params.interpolation,
                workers=params.workers,
            )
        )
        print(ingest_summary(summary))

    def evaluate(store: Path, model: Path, out: Path) -> dict[str, Any]:
        options = EvaluateParams(
            store=str(store), model_dir=str(model), out=str(out), bootstrap=DEMO_BOOTSTRAP
        )
        return evaluate_job(options)

    step(f"1/9 synth: {params.patients} curated development patients -> {where.data}")
    synth_once(
        SynthParams(
            out=str(where.data),
            patients=params.patients,
            seed=params.seed,
            benign_fraction=params.benign_fraction,
            lesion_only=True,  # the classifier learns from curated lesion slices (paper)
        )
    )

    step(f"2/9 ingest: {where.data / 'archive'} -> {where.store} (Prefect flow on Dask)")
    ingest(where.data, where.store)
    print(describe_store(str(where.store.resolve())))

    step(f"3/9 train the classifier: profile cpu-demo -> {where.model}")
    result = train_once(
        TrainParams(store=str(where.store), model_dir=str(where.model), profile=Profile.CPU_DEMO)
    )
    if result is not None:
        print(f"   model version {result.model_version}, epoch {result.selected_epoch}")

    step(f"4/9 evaluate the classifier: the held-out test patients -> {where.report}")
    metrics = evaluate(where.store, where.model, where.report)
    image, patient = metrics["image"], metrics["patient"]
    print(
        f"   image AUC {image['auc']:.3f}, vote accuracy {patient['accuracy']:.3f} over "
        f"{patient['n']} patients"
    )

    step(
        f"5/9 synth + ingest: {params.selector_patients} patients' whole studies with their "
        f"lesions as DICOM SEG -> {where.selector_store}"
    )
    synth_once(
        SynthParams(
            out=str(where.annotated),
            patients=params.selector_patients,
            seed=params.seed + 2,
            benign_fraction=params.benign_fraction,
        )
    )
    ingest(where.annotated, where.selector_store)

    step(f"6/9 train + evaluate the slice selector: cpu-demo -> {where.selector}")
    selector = train_once(
        TrainParams(
            store=str(where.selector_store),
            model_dir=str(where.selector),
            task=Task.SELECTOR,
            profile=Profile.CPU_DEMO,
            epochs=params.selector_epochs,
        )
    )
    if selector is not None:
        threshold = selector.selector_threshold
        print(f"   selector version {selector.model_version}, threshold {threshold:.4g}")
    selector_metrics = evaluate(where.selector_store, where.selector, where.selector_report)
    print(indent(format_selector_summary(selector_metrics), "   "))

    step(
        f"7/9 synth: a screening archive of {params.screening} new patients' whole studies, "
        "no annotations"
    )
    synth_once(
        SynthParams(
            out=str(where.screening),
            patients=params.screening,
            seed=params.seed + 1,
            seg_share=0.0,  # as a hospital archive: the selector decides what votes
        )
    )

    if params.pacs:
        step(f"8/9 score from a PACS: Orthanc on loopback, over DICOMweb -> {where.results}")
        print(f"   pseudonymisation key: {demo_key(where.out)}")
        scored = score_from_pacs(where, params.workers)
    else:
        step(f"8/9 score: {where.screening / 'archive'} -> {where.results} (Delta tables)")
        print(f"   pseudonymisation key: {demo_key(where.out)}")
        scored = score_job(
            ScoreParams(
                archive=str(where.screening / "archive"),
                model_dir=str(where.model),
                results=str(where.results),
                workers=params.workers,
                selector=str(where.selector),
            )
        )
    print(score_summary(scored))

    step("9/9 query: what was screened, what voted, and how")
    print(f'$ renalflow query "{" ".join(DEMO_QUERY.split())}" --results {where.results}\n')
    print(format_result(run_query(str(where.results.resolve()), DEMO_QUERY), "table"), end="")
    cohort = cohort_report(str(where.results.resolve()), where.cohort).path
    artifacts = {
        "development archive": f"{where.data / 'archive'} (labels {where.data / 'labels.csv'})",
        "slice store": str(where.store),
        "model": str(where.model),
        "evaluation report": f"{where.report / 'report.html'} (also report.md, heat maps)",
        "selector": f"{where.selector} (evaluated in {where.selector_report / 'report.html'})",
        "screening archive": str(where.screening / "archive"),
        "results table": f"{where.results} (study_votes, patient_votes, slice_scores)",
        "cohort summary": str(cohort),
        "pseudonym key": str(where.key),
    }
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s. Artifacts:")
    for name, path in artifacts.items():
        print(f"  {name:<20} {path}")
    print(f'try: renalflow query "select * from study_votes limit 5" --results {where.results}')
    return artifacts
