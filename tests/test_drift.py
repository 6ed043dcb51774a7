"""Cumulative drift: advance() against an oracle that recomputes from the batch history, budget checks,
registry-tag round trips and reading a batch's gaps from an evaluation report."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from hamu.governance.drift import DriftBudget, DriftState, advance, batch_gaps, breaches

Step = tuple[bool, float, float]  # (exact retrain?, utility deficit, AUC gap)


def drift_oracle(steps: list[Step]) -> DriftState:
    """Recompute the state from the steps since the last exact retrain (none: since the original)."""
    last_exact = max((i for i, (exact, _, _) in enumerate(steps) if exact), default=-1)
    since = steps[last_exact + 1 :]
    if not since:
        return DriftState()
    return DriftState(
        batches=len(since),
        utility=max(0.0, since[-1][1]),
        mia=math.fsum(abs(gap) for _, _, gap in since),
    )


def _random_steps(rng: np.random.Generator, n: int) -> list[Step]:
    return [
        (bool(rng.random() < 0.2), float(rng.normal(0.0, 0.03)), float(rng.normal(0.0, 0.05)))
        for _ in range(n)
    ]


@pytest.mark.parametrize("seed", range(30))
def test_advance_matches_recomputation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    steps = _random_steps(rng, int(rng.integers(1, 40)))
    state = DriftState()
    for i, (exact, deficit, gap) in enumerate(steps):
        state = advance(state, exact=exact, utility_deficit=deficit, auc_gap=gap)
        expected = drift_oracle(steps[: i + 1])
        assert state.batches == expected.batches, (i, steps[: i + 1])
        assert state.utility == pytest.approx(expected.utility, abs=1e-12)
        assert state.mia == pytest.approx(expected.mia, abs=1e-12)
        assert state.utility >= 0.0 and state.mia >= 0.0


def test_exact_retrain_resets_and_negative_deficit_clips() -> None:
    state = advance(DriftState(3, 0.02, 0.1), exact=False, utility_deficit=-0.01, auc_gap=-0.04)
    assert state == DriftState(4, 0.0, pytest.approx(0.14))
    assert advance(state, exact=True, utility_deficit=0.5, auc_gap=0.5) == DriftState()


@pytest.mark.parametrize("seed", range(30))
def test_breaches_appear_exactly_when_a_limit_is_exceeded(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    budget = DriftBudget(
        utility=float(rng.uniform(0, 0.05)),
        mia=float(rng.uniform(0, 0.3)),
        max_batches=int(rng.integers(1, 6)),
    )
    for _ in range(20):
        # pick each quantity below, at, or above its limit
        state = DriftState(
            batches=budget.max_batches + int(rng.integers(-1, 2)),
            utility=float(rng.choice([budget.utility * 0.5, budget.utility, budget.utility + 1e-4])),
            mia=float(rng.choice([budget.mia * 0.5, budget.mia, budget.mia + 1e-4])),
        )
        found = breaches(state, budget)
        assert any("utility drift" in m for m in found) == (state.utility > budget.utility)
        assert any("MIA drift" in m for m in found) == (state.mia > budget.mia)
        assert any("unlearning batches" in m for m in found) == (state.batches > budget.max_batches)
        assert len(found) == (
            (state.utility > budget.utility) + (state.mia > budget.mia) + (state.batches > budget.max_batches)
        )


def test_breach_messages_name_the_numbers() -> None:
    budget = DriftBudget(utility=0.03, mia=0.15, max_batches=2)
    assert breaches(DriftState(2, 0.03, 0.15), budget) == []
    found = breaches(DriftState(3, 0.05, 0.2), budget)
    assert found[0].startswith("cumulative utility drift 0.0500 > budget 0.0300")
    assert found[1].startswith("cumulative MIA drift 0.2000 > budget 0.1500")
    assert found[2] == "3 unlearning batches since the last exact retrain > 2"
    assert breaches(DriftState(), DriftBudget(0.0, 0.0, 1)) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"utility": -0.01},
        {"utility": float("nan")},
        {"utility": float("inf")},
        {"mia": -1e-9},
        {"mia": float("nan")},
        {"mia": float("inf")},
        {"mia": "0.1"},
        {"max_batches": 0},
        {"max_batches": -3},
        {"max_batches": 1.5},
    ],
)
def test_budget_rejects_bad_limits(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="drift budget"):
        DriftBudget(**kwargs)


def test_budget_accepts_boundaries() -> None:
    assert DriftBudget(utility=0, mia=0.0, max_batches=1).max_batches == 1


@pytest.mark.parametrize("seed", range(10))
def test_tags_round_trip(seed: int) -> None:
    rng = np.random.default_rng(seed)
    state = DriftState(int(rng.integers(0, 100)), float(rng.uniform(0, 0.2)), float(rng.uniform(0, 3)))
    tags = state.to_tags()
    assert all(isinstance(v, str) for v in tags.values())
    back = DriftState.from_tags(tags)
    assert back.batches == state.batches
    assert back.utility == pytest.approx(state.utility, abs=1e-6)
    assert back.mia == pytest.approx(state.mia, abs=1e-6)
    assert DriftState.from_tags({**tags, "role": "candidate"}) == back  # other tags are ignored
    assert state.to_dict() == {"batches": state.batches, "utility": state.utility, "mia": state.mia}


def test_missing_tags_mean_no_drift() -> None:
    assert DriftState.from_tags({}) == DriftState()
    assert DriftState.from_tags({"drift_batches": "2"}) == DriftState(2, 0.0, 0.0)


@pytest.mark.parametrize(
    "tags", [{"drift_batches": "x"}, {"drift_batches": "1.5"}, {"drift_utility": "high"}, {"drift_mia": ""}]
)
def test_unreadable_tags_raise(tags: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="unreadable drift tags"):
        DriftState.from_tags(tags)


# -- batch_gaps ------------------------------------------------------------------------------------------


def _acc(estimate: float) -> dict[str, Any]:
    return {
        "test": {"accuracy": {"estimate": estimate, "ci_low": estimate - 0.01, "ci_high": estimate + 0.01}}
    }


def _report(rows: list[tuple[str, float]], ref_acc: float = 0.9, model_acc: float = 0.85) -> dict[str, Any]:
    return {
        "utility": {"retrained": _acc(ref_acc), "unlearned": _acc(model_acc), "cand": _acc(0.5)},
        "gaps": {
            "unlearned": [{"metric": m, "gap": g} for m, g in rows],
            "cand": [{"metric": "attacks.forget_vs_test.loss.auc", "gap": 0.4}],
        },
    }


def test_batch_gaps_reads_the_largest_forget_vs_test_auc_gap() -> None:
    report = _report(
        [
            ("attacks.forget_vs_test.loss.auc", 0.02),
            ("attacks.forget_vs_test.entropy.auc", -0.07),
            ("shadow.forget_vs_test.lira.auc", 0.05),
            ("attacks.forget_vs_test.loss.tpr_at_1pct_fpr", 0.9),  # not an AUC
            ("attacks.retain_vs_test.loss.auc", 0.8),  # not forget vs test
            ("shadow.forget_vs_retain.lira.auc", -0.6),
            ("utility.test.accuracy", -0.3),
            ("forget_quality.ks_d", 0.99),
        ]
    )
    deficit, gap = batch_gaps(report)
    assert deficit == pytest.approx(0.9 - 0.85)
    assert gap == pytest.approx(0.07)
    deficit_c, gap_c = batch_gaps(report, model="cand")
    assert deficit_c == pytest.approx(0.4) and gap_c == pytest.approx(0.4)


def test_batch_gaps_shadow_only_and_negative_deficit() -> None:
    deficit, gap = batch_gaps(_report([("shadow.forget_vs_test.lira.auc", -0.11)], 0.8, 0.82))
    assert deficit == pytest.approx(-0.02) and gap == pytest.approx(0.11)


@pytest.mark.parametrize(
    "rows", [[], [("utility.test.accuracy", 0.1)], [("attacks.retain_vs_test.loss.auc", 0.2)]]
)
def test_batch_gaps_without_auc_raises(rows: list[tuple[str, float]]) -> None:
    with pytest.raises(ValueError, match="no forget-vs-test AUC gap"):
        batch_gaps(_report(rows))
