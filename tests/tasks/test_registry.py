"""The gate's rule and the registry's refusals, on real Delta tables."""

import pytest

from renalflow.tasks.config import GateMetric
from renalflow.tasks.errors import InputError
from renalflow.tasks.registry import alias_version, gate_decision, promote, resolve_alias


def test_the_gate_promotes_only_a_strictly_better_defined_figure():
    auc = GateMetric.AUC
    assert gate_decision(0.7, None, auc).promote  # no production model yet
    assert not gate_decision(None, None, auc).promote  # undefined: never
    assert gate_decision(0.8, 0.7, auc, 0.05, "abc").promote
    tie = gate_decision(0.7, 0.7, auc, 0.0, "abc")
    assert not tie.promote and "does not exceed production abc's 0.7000" in tie.reason
    assert not gate_decision(0.74, 0.7, auc, 0.05, "abc").promote


def test_an_empty_registry_names_no_production_and_says_how_to_get_one(tmp_path):
    results = str(tmp_path / "results")
    assert alias_version(results) is None
    with pytest.raises(InputError, match=r"no model is production .* `renalflow pipeline`"):
        resolve_alias(results)
    with pytest.raises(InputError, match=r"'abc' is not registered .* `renalflow models list"):
        promote(results, "abc", "by hand")
