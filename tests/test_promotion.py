"""Promotion gates on evaluation reports: each gate fails on exactly the condition it names."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from hamu.promotion import promotion_gates


def _report(
    *, under: list[str] | None = None, acc_orig: float = 0.9, acc_new: float = 0.89, d: float = 0.05
) -> dict:
    return {
        "verdicts": {"unlearned": {"under_unlearning": under or [], "over_unlearning": [], "deviates": []}},
        "utility": {
            "original": {"test": {"accuracy": {"estimate": acc_orig}}},
            "unlearned": {"test": {"accuracy": {"estimate": acc_new}}},
        },
        "forget_quality": {"unlearned": {"d": d, "p_value": 0.5, "n_model": 300}},
        "config": {"bands": {"ks_d": 0.2}},
    }


def _by_name(report: dict[str, Any], **kw: Any) -> dict[str, bool]:
    return {g.name: g.passed for g in promotion_gates(report, **kw)}


def test_all_pass_on_a_clean_report() -> None:
    assert _by_name(_report()) == {"mia-band": True, "utility-budget": True, "ks": True}


def test_each_gate_fails_alone() -> None:
    assert _by_name(_report(under=["attacks.forget_vs_test.loss.auc"]))["mia-band"] is False
    # a utility metric outside its band is not a membership-attack failure
    assert _by_name(_report(under=["utility.forget.loss"]))["mia-band"] is True
    assert _by_name(_report(acc_new=0.85), utility_budget=0.02) == {
        "mia-band": True,
        "utility-budget": False,
        "ks": True,
    }
    assert _by_name(_report(d=0.3)) == {"mia-band": True, "utility-budget": True, "ks": False}
    assert _by_name(_report(d=0.3), ks_max=0.5)["ks"] is True


def test_budget_boundary_and_bad_input() -> None:
    report = _report(acc_orig=0.9, acc_new=0.875)
    assert _by_name(report, utility_budget=0.03)["utility-budget"] is True
    assert _by_name(report, utility_budget=0.02)["utility-budget"] is False
    with pytest.raises(ValueError, match="no verdict"):
        promotion_gates(report, model="other")
    with pytest.raises(ValueError, match="utility_budget"):
        promotion_gates(copy.deepcopy(report), utility_budget=-1)


def test_lineage_gates_block_incomplete_batches_and_uncovered_erasures() -> None:
    from hamu.promotion import lineage_gates

    ok = lineage_gates(batch_status="completed", still_carried=0, erased_total=90)
    assert [g.name for g in ok] == ["batch-completed", "erasure-coverage"] and all(g.passed for g in ok)
    dead = lineage_gates(batch_status="abandoned", still_carried=0, erased_total=90)
    assert not dead[0].passed and "abandoned" in dead[0].detail and dead[1].passed
    stale = lineage_gates(batch_status="completed", still_carried=30, erased_total=90)
    assert not stale[1].passed and stale[1].value == 30.0 and "30 of 90" in stale[1].detail
    with pytest.raises(ValueError):
        lineage_gates(batch_status="completed", still_carried=5, erased_total=4)
