"""One training run: split, oversample, fit, select an epoch, and leave every artifact.

What a run leaves in the model directory is listed in `renalflow.tasks.model_dir`,
the module that names its files.
"""

from __future__ import annotations

import csv
import hashlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from renalflow.tasks.config import (
    DEVELOPMENT,
    OversampleUnit,
    Profile,
    Split,
    Task,
)
from renalflow.tasks.dataset import SliceSet, iterate_batches, load_mass_slices, load_slices
from renalflow.tasks.errors import InputError, ModelError, StoreError
from renalflow.tasks.model import (
    NOT_PAPER_NOTE,
    UNSTATED_BY_THE_PAPER,
    TrainConfig,
    build_model,
    predict_probabilities,
    resolve_weights,
)
from renalflow.tasks.model_dir import PAPER_NOTE, ModelDir, load_model, staged
from renalflow.tasks.selector import (
    CLASS_NAMES,
    SelectorTraining,
    choose_threshold,
    hard_negatives,
    no_annotations_error,
    patient_strata,
    row_classes,
    selector_draw,
    selector_slices,
    write_threshold,
)
from renalflow.tasks.split import (
    SplitConfig,
    load_split,
    oversample_indices,
    oversample_patient_indices,
    save_split,
    split_patients,
)
from renalflow.tasks.store import read_manifest


@dataclass
class TrainResult:
    model_dir: str
    model_version: str
    selected_epoch: int
    history: dict[str, list[float]]
    seconds: float
    images_per_second: float
    selector_threshold: float | None = None
    """A slice selector's decision threshold, chosen on the validation split."""


def patient_labels(slices: SliceSet) -> dict[str, str]:
    meta = slices.meta[["patient_id", "label"]].drop_duplicates()
    conflicting = meta["patient_id"][meta["patient_id"].duplicated()]
    if len(conflicting):
        raise InputError(f"patients with two labels in the store: {sorted(set(conflicting))[:5]}")
    return dict(zip(meta["patient_id"], meta["label"], strict=True))


def resolve_split(model_dir: Path, labels: dict[str, str], config: SplitConfig) -> dict[str, str]:
    """Reuse the split saved in `model_dir`, or make and save one. New patients go unsplit."""
    path = ModelDir(model_dir).split
    if path.exists():
        return load_split(path)
    assignment = split_patients(labels, config)
    save_split(assignment, labels, config, path)
    return assignment


def _environment() -> dict[str, Any]:
    from renalflow.tasks.devices import environment

    return environment()


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _plot_curves(history: dict[str, list[float]], path: Path, title: str) -> None:
    # matplotlib (0.5 s) is loaded only when a plot is drawn, after choosing its backend.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = np.arange(1, len(history["loss"]) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, name in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "accuracy")):
        ax.plot(epochs, history[key], "o-", label=f"training {name}")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], "s-", label=f"validation {name}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def make_sequence(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    seed: int,
    oversample: bool,
    shuffle: bool,
    patients: np.ndarray | None = None,
    draw: Callable[[np.random.Generator], np.ndarray] | None = None,
) -> Any:
    """A Keras PyDataset that reshuffles (and re-draws the oversampling) every epoch.
    With `patients` (each image's patient), oversampling draws whole patients (the
    paper's rule); without, images. `draw`, when given, makes each epoch's indices
    instead (the selector's, with its hard negatives)."""
    import keras  # heavy (seconds): loaded by the training process only

    class SliceBatches(keras.utils.PyDataset):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.order = self._draw()

        def _draw(self) -> np.ndarray:
            if draw is not None:
                return draw(self.rng)
            if oversample and patients is not None:
                return oversample_patient_indices(labels, patients, self.rng)
            if oversample:
                return oversample_indices(labels, self.rng)
            return self.rng.permutation(len(labels)) if shuffle else np.arange(len(labels))

        def __len__(self) -> int:
            return int(np.ceil(len(self.order) / batch_size))

        def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
            chosen = self.order[index * batch_size : (index + 1) * batch_size]
            return next(iterate_batches(images, labels, chosen, batch_size))

        def on_epoch_end(self) -> None:
            self.order = self._draw()

    return SliceBatches()


def train_model(
    store_uri: str,
    model_dir: str | Path,
    config: TrainConfig,
    split_config: SplitConfig | None = None,
    log: Callable[[str], None] = print,
    task: Task = Task.CLASSIFIER,
    selector: SelectorTraining | None = None,
) -> TrainResult:
    """Train on the development cohort's train split, validate on its validation split.

    A `classifier` learns benign vs malignant from labelled slices; a `selector` learns
    "shows the renal mass" from the slices whose lesion annotation is known, and its
    threshold is then chosen on the validation split for `selector`'s target
    sensitivity (tasks/selector.py; None: SelectorTraining's defaults). The model
    directory appears whole when training ends (it is written beside it and renamed): a
    failed or interrupted run leaves nothing half-written. The backbone's weights are
    checked (or downloaded) first: weights that cannot be had are refused before
    anything is written."""
    task = Task(task)
    resolve_weights(config)
    split_config = split_config or SplitConfig(seed=config.seed)
    with staged(model_dir) as work:
        result = _train_into(
            store_uri, work, config, split_config, log, task, selector or SelectorTraining()
        )
    result.model_dir = str(Path(model_dir))
    return result


def _selector_draw(
    train: SliceSet, options: SelectorTraining
) -> Callable[[np.random.Generator], np.ndarray]:
    hard = hard_negatives(train.meta, train.labels, options.hard_negative_mm)
    return lambda rng: selector_draw(train.labels, hard, options.hard_negative_share, rng)


def _train_into(
    store_uri: str,
    out: Path,
    config: TrainConfig,
    split_config: SplitConfig,
    log: Callable[[str], None],
    task: Task,
    selector: SelectorTraining,
) -> TrainResult:
    """train_model's work, into the staging folder `out` (every option resolved)."""
    import keras  # heavy (seconds): loaded by the training process only

    started = time.perf_counter()
    ModelDir(out).checkpoints.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.seed)

    left_out = 0  # labelled slices that do not show the mass (classifier only)
    if task is Task.SELECTOR:
        slices = selector_slices(load_slices(store_uri, cohorts=[DEVELOPMENT]))
        if len(slices) == 0:
            raise no_annotations_error(store_uri, DEVELOPMENT)
        labels = patient_strata(slices)
    else:
        slices, left_out = load_mass_slices(store_uri, cohorts=[DEVELOPMENT])
        if len(slices) == 0:
            raise InputError(
                f"no labelled slices through a renal mass in the development cohort of "
                f"{store_uri}: ingest with --labels (and without --cohort, or --cohort "
                "development), and with the lesions of whole studies (--lesions CSV or SEG)"
            )
        if left_out:
            log(
                f"{left_out} labelled slices that do not show the mass left out (other "
                "levels of annotated studies, series not screened, second reconstructions)"
            )
        labels = patient_labels(slices)
    assignment = resolve_split(out, labels, split_config)
    split_of = slices.meta["patient_id"].map(assignment).fillna("unsplit").to_numpy()
    train = slices.subset(split_of == Split.TRAIN.value)
    validation = slices.subset(split_of == Split.VALIDATION.value)
    if len(train) == 0 or len(validation) == 0:
        raise InputError("the split left no training or no validation images")
    if config.input_size != slices.images.shape[1]:
        raise ModelError(
            f"the store holds {slices.images.shape[1]}px slices but the model expects "
            f"{config.input_size}px; ingest with --size {config.input_size}"
        )

    classes = row_classes(slices.labels) if task is Task.SELECTOR else None
    lineage = _lineage(store_uri, slices, split_of, classes)
    if task is Task.CLASSIFIER:
        lineage["labelled_slices_not_through_the_mass"] = left_out
    where = ModelDir(out)
    where.write_json(where.lineage, lineage)
    where.write_json(
        where.config,
        {
            "task": task.value,
            **(selector.to_dict() if task is Task.SELECTOR else {}),
            "train": config.to_dict(),
            "split": split_config.__dict__,
            "note": NOT_PAPER_NOTE if config.profile is Profile.CPU_DEMO else PAPER_NOTE,
            "not_stated_by_the_paper": UNSTATED_BY_THE_PAPER,
        },
    )
    if config.profile is Profile.CPU_DEMO:
        log(NOT_PAPER_NOTE)
    train_patients = lineage["patients"][Split.TRAIN.value]["total"]
    log(
        f"training the {task.value} on {len(train)} images of {train_patients} patients, "
        f"validating on {len(validation)} images; profile {config.profile.value}, "
        f"{config.epochs} epochs, batch {config.batch_size}, seed {config.seed}"
    )

    # The paper resampled benign patients; a selector's classes are slices, not patients.
    by_patient = task is Task.CLASSIFIER and config.oversample_unit is OversampleUnit.PATIENT
    train_seq = make_sequence(
        train.images,
        train.labels,
        config.batch_size,
        config.seed,
        config.oversample,
        True,
        patients=train.meta["patient_id"].to_numpy() if by_patient else None,
        draw=_selector_draw(train, selector) if task is Task.SELECTOR else None,
    )
    model = build_model(config, steps=config.epochs * len(train_seq))
    val_seq = make_sequence(
        validation.images, validation.labels, config.batch_size, config.seed, False, False
    )
    callbacks: list[Any] = []
    if config.ema is not None:
        # Before the checkpoint: validation, checkpoints and the kept model all use the
        # averaged weights.
        callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    callbacks.append(keras.callbacks.ModelCheckpoint(str(where.checkpoint("{epoch:02d}"))))
    if config.decay_after is not None:
        decay_after, factor = config.decay_after, config.decay_factor

        def schedule(epoch: int, lr: float) -> float:
            # `epoch` counts from 0: epochs after `decay_after` run at the reduced rate.
            return config.learning_rate * (factor if epoch >= decay_after else 1.0)

        callbacks.append(keras.callbacks.LearningRateScheduler(schedule))
    fit = model.fit(
        train_seq, validation_data=val_seq, epochs=config.epochs, callbacks=callbacks, verbose=2
    )
    history = {k: [float(v) for v in values] for k, values in fit.history.items()}

    if config.select_epoch is not None:
        selected = config.select_epoch
    else:
        selected = int(np.argmin(history["val_loss"])) + 1
    names = CLASS_NAMES if task is Task.SELECTOR else ("benign", "malignant")
    for warning in validation_warnings(validation.labels, history, selected, names):
        log(f"caution: {warning}")
    shutil.copyfile(where.checkpoint(selected), where.model)
    threshold = None
    if task is Task.SELECTOR:
        # On the kept model's validation predictions, never a constant (tasks/selector.py).
        found = predict_probabilities(load_model(out), validation.images)
        target_sensitivity = selector.target_sensitivity
        chosen = choose_threshold(validation.labels, found, target_sensitivity)
        write_threshold(out, chosen)
        threshold = chosen.threshold
        log(
            f"selector threshold {chosen.threshold:.4g}: validation sensitivity "
            f"{chosen.sensitivity:.3f} (target {target_sensitivity:g}), specificity "
            f"{chosen.specificity:.3f} on {chosen.lesion_slices} lesion and "
            f"{chosen.other_slices} other slices"
        )
    version = file_digest(where.model)
    where.version.write_text(version + "\n")
    where.write_json(where.history_json, {"selected_epoch": selected, **history})
    with where.history_csv.open("w", newline="") as handle:
        writer = csv.writer(handle)
        keys = list(history)
        writer.writerow(["epoch", *keys])
        for i in range(len(history["loss"])):
            writer.writerow([i + 1, *(history[k][i] for k in keys)])
    title = f"renalflow {config.profile.value}: selected epoch {selected}"
    if config.profile is Profile.CPU_DEMO:
        title += " (cpu-demo, not the paper's model)"
    _plot_curves(history, where.curves, title)
    where.write_json(where.environment, _environment())
    seconds = time.perf_counter() - started
    seen = config.epochs * len(train_seq) * config.batch_size
    log(f"selected epoch {selected}; model version {version}; {seconds:.0f} s")
    return TrainResult(str(out), version, selected, history, seconds, seen / seconds, threshold)


def validation_warnings(
    labels: np.ndarray,
    history: dict[str, list[float]],
    selected: int,
    names: tuple[str, str] = ("benign", "malignant"),
) -> list[str]:
    """What makes the validation figures of a run meaningless: a split with one class
    (Keras then reports an AUC of 0), or an undefined AUC at the kept epoch. `names`
    are the classes 0 and 1 as a reader knows them."""
    notes = []
    known = labels[labels >= 0]
    if len(known) and (known.all() or not known.any()):
        which = names[1] if known.any() else names[0]
        notes.append(
            f"every validation image is {which}: val_auc is meaningless (Keras reports 0) "
            "and the kept epoch rests on val_loss alone; a larger cohort, or another "
            "--seed, gives the split both classes"
        )
    auc = history.get("val_auc", [])
    if auc and 0 < selected <= len(auc) and not notes:
        value = auc[selected - 1]
        if value != value or value == 0:
            notes.append(f"validation AUC at the kept epoch {selected} is {value}: undefined")
    return notes


def _counts(values: Any) -> dict[str, int]:
    return {str(k): int(v) for k, v in values.value_counts().items()}


def _lineage(
    store_uri: str, slices: SliceSet, split_of: np.ndarray, classes: pd.Series | None = None
) -> dict[str, Any]:
    """Rows per split and class (`classes` per row, default the histology label) and
    patients per split and histology label."""
    meta = slices.meta.assign(split=split_of)
    meta["row_class"] = meta["label"] if classes is None else classes.to_numpy()
    patients: dict[str, dict[str, int]] = {}
    rows: dict[str, dict[str, int]] = {}
    for name in (split.value for split in Split):
        part = meta[meta["split"] == name]
        per_patient = part.drop_duplicates("patient_id")
        rows[name] = {"total": len(part), **_counts(part["row_class"])}
        patients[name] = {"total": len(per_patient), **_counts(per_patient["label"])}
    try:  # how the store made its pixels: scoring must make new slices the same way
        preprocess = read_manifest(store_uri).get("preprocess")
    except StoreError:
        preprocess = None
    return {
        "store": store_uri,
        "preprocess_version": sorted(set(meta["preprocess_version"])),
        "preprocess": preprocess,
        "rows": rows,
        "patients": patients,
    }
