"""The model registry: which model versions exist, their held-out test figures, and which
one each alias (production) names, as two Delta tables of the results R.

`R/models` holds one row per registered model version; `R/model_aliases` every change
of an alias, appended and never rewritten, so the history of production is a query
(`renalflow query "select * from model_aliases" --results R`). The alias's current
version is found by replaying that history: a promotion moves the alias to a version, a
rollback moves it back to the version it named before the last promotion still in
force. The schemas and the data dictionary are tasks/results.py's; the gate's rule is
`gate_decision` here.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from renalflow.tasks.config import GATE_MARGIN, GateMetric, ModelAlias
from renalflow.tasks.errors import InputError
from renalflow.tasks.model_dir import read_model_info
from renalflow.tasks.results import (
    MODEL_ALIASES,
    MODELS,
    ensure_table,
    is_table,
    merge_rows,
    open_table,
    table_uri,
)
from renalflow.tasks.store import now_utc

PROMOTE = "promote"
ROLLBACK = "rollback"


@dataclass(frozen=True)
class RegisteredModel:
    """One row of R/models."""

    model_version: str
    model_task: str
    model_profile: str
    model_dir: str
    preprocess_version: str
    test_patients: int | None
    test_images: int | None
    test_auc: float | None
    test_accuracy: float | None
    test_patient_accuracy: float | None

    def metric(self, metric: GateMetric) -> float | None:
        value = self.test_auc if metric is GateMetric.AUC else self.test_patient_accuracy
        return None if value is None or math.isnan(value) else value


def _figure(value: Any) -> float | None:
    return None if value is None else float(value)


def register_model(
    results: str, model_dir: str, metrics: dict[str, Any], run_id: str | None = None
) -> RegisteredModel:
    """Add the model in `model_dir` to the registry with its held-out test figures
    (`metrics`: what tasks.evaluate.evaluate returned for its test split). Registering a
    version again changes nothing (the first registration's row stays)."""
    info = read_model_info(model_dir)
    image, patient = metrics.get("image", {}), metrics.get("patient", {})
    row = RegisteredModel(
        model_version=info.model_version,
        model_task=info.task.value,
        model_profile=info.profile,
        model_dir=str(model_dir),
        preprocess_version=info.preprocess.version,
        test_patients=patient.get("n"),
        test_images=image.get("n"),
        test_auc=_figure(image.get("auc")),
        test_accuracy=_figure(image.get("accuracy")),
        test_patient_accuracy=_figure(patient.get("accuracy")),
    )
    ensure_table(results, MODELS)
    record = {**row.__dict__, "registered_at": now_utc(), "flow_run_id": run_id}
    merge_rows(results, MODELS, pa.Table.from_pylist([record]), run_id=run_id)
    return registered(results, info.model_version)


def list_models(results: str) -> list[RegisteredModel]:
    """Every registered model version, oldest first."""
    if not is_table(table_uri(results, MODELS)):
        return []
    rows = open_table(results, MODELS).to_pyarrow_dataset().to_table()
    fields = set(RegisteredModel.__dataclass_fields__)
    ordered = sorted(rows.to_pylist(), key=lambda r: r["registered_at"])
    return [RegisteredModel(**{k: v for k, v in r.items() if k in fields}) for r in ordered]


def registered(results: str, version: str) -> RegisteredModel:
    """The registered model whose version is `version` (or starts with it, when only one
    does); an InputError listing what to give otherwise."""
    models = list_models(results)
    found = [m for m in models if m.model_version.startswith(version)] if version else []
    exact = [m for m in found if m.model_version == version]
    if exact:
        return exact[0]
    if len(found) == 1:
        return found[0]
    known = ", ".join(m.model_version for m in models) or "none yet"
    what = "matches several" if found else "is not registered"
    raise InputError(
        f"model version {version!r} {what} in {table_uri(results, MODELS)} (registered: "
        f"{known}); see `renalflow models list --results {results}`"
    )


def _events(results: str, alias: ModelAlias) -> list[dict[str, Any]]:
    if not is_table(table_uri(results, MODEL_ALIASES)):
        return []
    rows = open_table(results, MODEL_ALIASES).to_pyarrow_dataset().to_table().to_pylist()
    return sorted((r for r in rows if r["alias"] == alias.value), key=lambda r: r["changed_at"])


def alias_stack(results: str, alias: ModelAlias = ModelAlias.PRODUCTION) -> list[str]:
    """The versions the alias has named, the current one last: promotions in force, in
    order (a rollback undoes the last one)."""
    stack: list[str] = []
    for event in _events(results, alias):
        if event["action"] == PROMOTE:
            stack.append(event["model_version"])
        elif stack:
            stack.pop()
    return stack


def alias_version(results: str, alias: ModelAlias = ModelAlias.PRODUCTION) -> str | None:
    """The version the alias names now; None when it names none."""
    stack = alias_stack(results, alias)
    return stack[-1] if stack else None


def resolve_alias(results: str, alias: ModelAlias = ModelAlias.PRODUCTION) -> RegisteredModel:
    """The registered model the alias names now, or an InputError saying how to get one."""
    version = alias_version(results, alias)
    if version is None:
        raise InputError(
            f"no model is {alias.value} in the registry of {results}: run `renalflow "
            f"pipeline` or `renalflow models register` and `renalflow models promote "
            f"VERSION --results {results}`"
        )
    return registered(results, version)


def _append_event(
    results: str, alias: ModelAlias, version: str, action: str, reason: str, run_id: str | None
) -> None:
    ensure_table(results, MODEL_ALIASES)
    event = {
        "event_id": uuid.uuid4().hex,
        "alias": alias.value,
        "model_version": version,
        "action": action,
        "reason": reason,
        "changed_at": now_utc(),
        "flow_run_id": run_id,
    }
    merge_rows(results, MODEL_ALIASES, pa.Table.from_pylist([event]), run_id=run_id)


def promote(
    results: str,
    version: str,
    reason: str,
    alias: ModelAlias = ModelAlias.PRODUCTION,
    run_id: str | None = None,
) -> RegisteredModel:
    """Point the alias at a registered version (nothing changes when it already does)."""
    model = registered(results, version)
    if alias_version(results, alias) != model.model_version:
        _append_event(results, alias, model.model_version, PROMOTE, reason, run_id)
    return model


def rollback(
    results: str, reason: str, alias: ModelAlias = ModelAlias.PRODUCTION, run_id: str | None = None
) -> tuple[str, str]:
    """Move the alias back to the version it named before its last promotion; the
    (from, to) versions. Refused when there is nothing to go back to."""
    stack = alias_stack(results, alias)
    if len(stack) < 2:
        raise InputError(
            f"{alias.value} has no earlier version to roll back to in {results} "
            f"({'it names ' + stack[0] if stack else 'it names none'}); promote one with "
            "`renalflow models promote VERSION`"
        )
    _append_event(results, alias, stack[-1], ROLLBACK, reason, run_id)
    return stack[-1], stack[-2]


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str


def gate_decision(
    candidate: float | None,
    production: float | None,
    metric: GateMetric,
    margin: float = GATE_MARGIN,
    production_version: str | None = None,
) -> GateDecision:
    """The gate's rule, once: a candidate with an undefined figure is never promoted; with
    no production model it is; otherwise only when its figure exceeds production's, on
    the same held-out test patients, by more than `margin`."""
    name = metric.value
    if candidate is None:
        return GateDecision(False, f"test {name} undefined (one class among the test patients)")
    if production_version is None:
        return GateDecision(True, f"no production model; test {name} {candidate:.4f}")
    if production is None:
        return GateDecision(
            True, f"test {name} {candidate:.4f}; production {production_version}'s is undefined"
        )
    better = candidate - production > margin
    verdict = "exceeds" if better else "does not exceed"
    return GateDecision(
        better,
        f"test {name} {candidate:.4f} {verdict} production {production_version}'s "
        f"{production:.4f} by more than {margin:g} (same held-out patients)",
    )
