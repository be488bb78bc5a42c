"""The model directory: the only module that names its files, writes their layout and
reads them back.

What a training run leaves there:
  model.keras            the selected model
  checkpoints/           one .keras file per epoch
  history.json/.csv      loss, accuracy and AUC per epoch, train and validation
  curves.png             loss and accuracy per epoch (the paper's figures 2-3)
  config.json            the task (classifier or selector), the full training
                         configuration (seed included) and its note
  selector.json          a slice selector's decision threshold, the target sensitivity
                         it was chosen for and its validation sensitivity/specificity
  split.json             the patient split (reused by later runs and evaluations; it
                         holds PatientIDs, so the model directory stays inside the
                         department, and scoring turns it into each vote's in_training)
  lineage.json           store, preprocessing, rows and patients per split and class
  model_version.txt      content hash of model.keras
  environment.json       Keras backend, versions and devices
"""

from __future__ import annotations

import contextlib
import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from renalflow.tasks.config import DEVELOPMENT, InTraining, PreprocessConfig, Split, Task
from renalflow.tasks.errors import InputError, ModelError, StoreError
from renalflow.tasks.pseudonym import patient_pseudonym
from renalflow.tasks.split import load_split
from renalflow.tasks.store import read_manifest

PAPER_NOTE = "paper profile"
"""config.json's note for a model trained with the paper's profile (no warning)."""


class ModelDir:
    """Paths of one model directory's files."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.model = self.root / "model.keras"
        self.version = self.root / "model_version.txt"
        self.config = self.root / "config.json"
        self.lineage = self.root / "lineage.json"
        self.split = self.root / "split.json"
        self.history_json = self.root / "history.json"
        self.history_csv = self.root / "history.csv"
        self.curves = self.root / "curves.png"
        self.environment = self.root / "environment.json"
        self.selector = self.root / "selector.json"
        self.checkpoints = self.root / "checkpoints"

    def checkpoint(self, epoch: int | str) -> Path:
        """The checkpoint of an epoch (`epoch` may be Keras' `{epoch:02d}` pattern)."""
        name = f"epoch-{epoch:02d}.keras" if isinstance(epoch, int) else f"epoch-{epoch}.keras"
        return self.checkpoints / name

    def write_json(self, path: Path, record: Any) -> None:
        path.write_text(json.dumps(record, indent=2))


@contextlib.contextmanager
def staged(model_dir: str | Path) -> Iterator[Path]:
    """A folder to write a new model directory in, beside `model_dir`, that becomes
    `model_dir` only when the block completes: a failed or interrupted run leaves no
    half-written model (and an existing one untouched). The split of an existing model
    directory is carried over, so a retrained model keeps its patients' split."""
    final = Path(model_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    work = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    try:
        if ModelDir(final).split.exists():
            shutil.copyfile(ModelDir(final).split, ModelDir(work).split)
        yield work
        previous = final.parent / f".{final.name}.replaced-{uuid.uuid4().hex[:8]}"
        if final.exists():
            final.rename(previous)
        work.rename(final)
        shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def has_model(model_dir: str | Path) -> bool:
    """A trained model is there (the selected model and its version)."""
    where = ModelDir(model_dir)
    return where.model.exists() and where.version.exists()


def model_version(model_dir: str | Path) -> str | None:
    """The model's content hash, or None when the directory holds no trained model."""
    where = ModelDir(model_dir)
    return where.version.read_text().strip() if where.version.exists() else None


def profile_note(model_dir: str | Path) -> str | None:
    """The model's warning for readers (the cpu-demo profile is not the paper's model)."""
    where = ModelDir(model_dir)
    if not where.config.exists():
        return None
    note = json.loads(where.config.read_text()).get("note")
    return str(note) if note and note != PAPER_NOTE else None


def model_task(model_dir: str | Path) -> Task:
    """What the model was trained for (config.json's task; models trained before
    selectors existed are classifiers)."""
    where = ModelDir(model_dir)
    if not where.config.exists():
        raise _no_model(model_dir)
    return Task(json.loads(where.config.read_text()).get("task", Task.CLASSIFIER.value))


def _no_model(model_dir: str | Path) -> ModelError:
    where = ModelDir(model_dir)
    return ModelError(
        f"{model_dir} holds no trained model ({where.model.name} and {where.version.name}); "
        f"train one with `renalflow train --store STORE --model-dir {model_dir}`"
    )


def load_model(model_dir: str | Path) -> Any:
    """The selected model, for inference (the optimizer state is not restored)."""
    import keras  # heavy: imported only by the processes that predict

    where = ModelDir(model_dir)
    if not where.model.exists():
        raise _no_model(model_dir)
    return keras.saving.load_model(where.model, compile=False)


@dataclass(frozen=True)
class ModelInfo:
    """What scoring needs to know about a trained model directory."""

    model_dir: str
    model_version: str
    profile: str
    preprocess: PreprocessConfig
    task: Task = Task.CLASSIFIER
    selector_threshold: float | None = None
    """A selector's stored decision threshold on P(renal mass); None for a classifier."""


def require_task(info: ModelInfo, task: Task) -> None:
    """Refuse a model trained for another task (a classifier given as a selector, ...)."""
    if info.task is not task:
        raise ModelError(
            f"{info.model_dir} holds a {info.task.value} model, not a {task.value}: give a "
            f"model trained with `renalflow train --task {task.value}`"
        )


def check_store_matches(model_dir: str | Path, store_uri: str) -> None:
    """Refuse a slice store made with other preprocessing than the model's training
    slices: the model would see images that look different for no clinical reason."""
    where = ModelDir(model_dir)
    if not where.lineage.exists():
        raise _no_model(model_dir)
    trained_on = set(json.loads(where.lineage.read_text()).get("preprocess_version") or [])
    try:
        manifest = read_manifest(store_uri)
    except StoreError:
        return  # no manifest: the store's own reads say what is missing
    stored = manifest.get("preprocess_version")
    if stored and trained_on and stored not in trained_on:
        raise ModelError(
            f"{store_uri} holds slices made with preprocess_version {stored} "
            f"({manifest.get('preprocess')}), but the model in {model_dir} was trained on "
            f"{', '.join(sorted(trained_on))}: ingest the archive again into a new store "
            "with the model's settings (renalflow score does that itself), or evaluate a "
            "model trained on this store"
        )


def check_same_preprocessing(classifier: ModelInfo, selector: ModelInfo) -> None:
    """A slice selector reads the same stored slices as its classifier."""
    if classifier.preprocess.version != selector.preprocess.version:
        raise ModelError(
            f"the slice selector {selector.model_dir} was trained on preprocess_version "
            f"{selector.preprocess.version}, the classifier {classifier.model_dir} on "
            f"{classifier.preprocess.version}: both read the same stored slices, so train "
            "them on stores made with the same settings"
        )


def read_model_info(model_dir: str | Path) -> ModelInfo:
    """Model version, profile and the preprocessing its training slices went through."""
    where = ModelDir(model_dir)
    if not has_model(model_dir):
        raise _no_model(model_dir)
    config = json.loads(where.config.read_text())
    lineage = json.loads(where.lineage.read_text())
    preprocess = lineage.get("preprocess")
    if preprocess is None:
        # Models trained before lineage recorded the settings: use the store's manifest.
        try:
            preprocess = read_manifest(lineage["store"])["preprocess"]
        except (StoreError, KeyError) as err:
            raise ModelError(
                f"{where.lineage} does not say how its slices were preprocessed and its "
                f"training store {lineage.get('store')} is not readable: {err}"
            ) from err
    task = model_task(model_dir)
    threshold = None
    if task is Task.SELECTOR:
        if not where.selector.exists():
            raise ModelError(
                f"{model_dir} holds a slice selector without its threshold "
                f"({where.selector.name}); train it again with `renalflow train --task "
                "selector`"
            )
        threshold = float(json.loads(where.selector.read_text())["threshold"])
    return ModelInfo(
        model_dir=str(where.root),
        model_version=where.version.read_text().strip(),
        profile=str(config.get("train", {}).get("profile", "")),
        preprocess=PreprocessConfig(**preprocess),
        task=task,
        selector_threshold=threshold,
    )


_MEMBERSHIP = {
    Split.TRAIN.value: InTraining.TRAINING,
    Split.VALIDATION.value: InTraining.VALIDATION,
    Split.TEST.value: InTraining.NONE,
}


def training_membership(model_dir: str | Path, key: bytes) -> dict[str, InTraining] | None:
    """Patient pseudonym (under `key`, as the results make them) -> whether the model in
    `model_dir` trained (`training`) or validated (`validation`) on that patient, or held
    them out (`none`, the test split); a patient not listed was never seen (`none`).

    The split stays in the model directory as PatientIDs (split.json) and is pseudonymised
    here, at scoring, with the results' key: a model trained before any key existed is
    covered, and no second copy of the split can drift from the one training used. None
    when the directory has no split.json (membership unknown).
    """
    where = ModelDir(model_dir)
    if not where.split.exists():
        return None
    return {
        patient_pseudonym(key, patient): _MEMBERSHIP.get(split, InTraining.NONE)
        for patient, split in load_split(where.split).items()
    }


@dataclass(frozen=True)
class EvaluatedSet:
    """The patients an evaluation takes: a split of the development cohort, or an
    external cohort."""

    name: str  # as reports name it: "test split", or the cohort's name
    cohort: str
    patients: set[str] | None  # None: every patient of the cohort


def evaluated_set(
    model_dir: str | Path,
    split: str | None,
    cohort: str | None,
    split_from: str | Path | None = None,
) -> EvaluatedSet:
    """An external `cohort`, or the `split` (default: test) of the development cohort as
    the model's split.json assigns it (`split_from`: another model directory's split, to
    compare two models on the same held-out patients)."""
    if cohort and cohort != DEVELOPMENT:
        return EvaluatedSet(cohort, cohort, None)
    wanted = split or Split.TEST.value
    source = split_from or model_dir
    patients = {p for p, s in load_split(ModelDir(source).split).items() if s == wanted}
    if not patients:
        raise InputError(f"the split in {source} has no {wanted!r} patients")
    return EvaluatedSet(f"{wanted} split", DEVELOPMENT, patients)
