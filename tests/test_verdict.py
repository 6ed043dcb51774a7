"""The one verdict (:mod:`hamu.governance.verdict`) and promotion (:mod:`hamu.governance.promotion`).

A. rules on small hand-built reports: band edges, directions, the band formula, evidence, the override,
   integrity gates, bad input, policy validation;
B. ``ks_critical_d`` against an independent oracle (scipy's Kolmogorov distribution, and the null rate of
   ``scipy.stats.ks_2samp``);
C. the "Show" table on real digits models: a copy of the original, the reference itself, one GA step, GA far
   past the reference, and a tiny forget set; then the promotion decision for each.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from scipy import stats as sps
from torch import nn

from hamu import UnlearnConfig, unlearn
from hamu.evaluation import EvaluationConfig, MLPTrainer, evaluate_models
from hamu.governance.promotion import PromotionInputError, check_override, decide_promotion, lineage_gates
from hamu.governance.verdict import KS_METRIC, Gate, GatePolicy, RunFacts, Verdict, decide, ks_critical_d

ACC = "utility.forget.accuracy"
LOSS = "utility.forget.loss"
AUC = "attacks.forget_vs_test.loss.auc"
LIRA = "shadow.forget_vs_test.auc"
TEST = "utility.test.accuracy"
OVERRIDE_FLAG = "--accept-insufficient-evidence"

# The original's (control) rows: (gap = the effect, ci_low, ci_high, reference_half_width).
# STRONG: every control gate fails (bands: accuracy max(.01, min(.05, .04)) = .04, loss .2, AUC .05).
STRONG: dict[str, tuple[float, float, float, float]] = {
    ACC: (0.08, 0.06, 0.10, 0.01),
    LOSS: (-0.4, -0.5, -0.3, 0.02),
    AUC: (0.1, 0.07, 0.13, 0.01),
}
# WEAK: every control interval crosses its band (accuracy .03, loss .1, AUC .03): nothing fails.
WEAK: dict[str, tuple[float, float, float, float]] = {
    ACC: (0.02, -0.01, 0.05, 0.03),
    LOSS: (-0.1, -0.3, 0.1, 0.1),
    AUC: (0.01, -0.02, 0.04, 0.03),
}
# The candidate's rows (gap, ci_low, ci_high): well inside every band above.
CLEAN: dict[str, tuple[float, float, float]] = {
    ACC: (0.0, -0.01, 0.01),
    LOSS: (0.0, -0.02, 0.02),
    AUC: (0.0, -0.01, 0.01),
}
STRONG_D, WEAK_D = 0.4, 0.1  # the original's KS D (n = 100: critical D 0.192, cap 0.2)
CLEAN_FACTS = RunFacts(action="unlearn", steps_applied=5, candidate_weights="sha:b", original_weights="sha:a")


def _row(metric: str, gap: float, lo: float | None, hi: float | None, hw: float | None) -> dict[str, Any]:
    return {
        "metric": metric,
        "value": gap,
        "reference": 0.0,
        "gap": gap,
        "gap_ci_low": lo,
        "gap_ci_high": hi,
        "reference_half_width": hw,
    }


def _ks(d: float, n: tuple[int, int]) -> dict[str, Any]:
    return {"statistic": "loss", "d": d, "p_value": 0.5, "n_model": n[0], "n_reference": n[1]}


def _report(
    cand: dict[str, tuple[float, float, float]] | None = None,
    orig: dict[str, tuple[float, float, float, float]] | None = None,
    *,
    d: float = 0.05,
    d_orig: float = STRONG_D,
    n: tuple[int, int] = (100, 100),
    kind: str = "retrained",
    test: tuple[float, float, float] = (0.0, -0.01, 0.01),
    test_orig: tuple[float, float, float] = (0.02, 0.0, 0.04),
) -> dict[str, Any]:
    """A minimal evaluation-report dict with the candidate ``unlearned``, ``original`` and ``retrained``."""
    o = {**STRONG, **(orig or {})}
    c = {**CLEAN, **(cand or {})}
    if set(c) != set(o):
        raise AssertionError("candidate and original must have the same metrics")
    cand_rows = [_row(m, *c[m], o[m][3]) for m in c]
    orig_rows = [_row(m, *o[m]) for m in o]
    cand_rows += [_row(TEST, *test, 0.02), _row(KS_METRIC, d, None, None, None)]
    orig_rows += [_row(TEST, *test_orig, 0.02), _row(KS_METRIC, d_orig, None, None, None)]
    return {
        "models": {"original": "original", "retrained": "reference", "unlearned": "candidate"},
        "reference": {"name": "retrained", "kind": kind},
        "config": {"confidence_level": 0.95},
        "gaps": {"unlearned": cand_rows, "original": orig_rows},
        "forget_quality": {"unlearned": _ks(d, n), "original": _ks(d_orig, n)},
    }


def _gate(verdict: Verdict, name: str, *, control: bool = False) -> Gate:
    found = [g for g in (verdict.control if control else verdict.gates) if g.name == name]
    assert len(found) == 1, [g.name for g in verdict.gates]
    return found[0]


def _names(gates: tuple[Gate, ...]) -> list[str]:
    return [g.name for g in gates]


# == A. rules ===========================================================================================


def test_clean_candidate_with_adequate_evidence_passes_every_gate() -> None:
    v = decide(_report(), CLEAN_FACTS)
    assert _names(v.gates) == [
        "reference-retrained",
        "steps-applied",
        "weights-changed",
        "forget-accuracy",
        "forget-loss",
        "mia-loss",
        "ks",
        "test-accuracy",
    ]
    assert all(g.status == "pass" and g.direction == "" for g in v.gates)
    assert v.status == "pass" and v.evidence == "adequate" and v.passed
    assert v.promotable() and v.promotable(accept_insufficient_evidence=True)
    assert v.failing == ()
    assert v.reason.startswith(f"passes all {len(v.gates)} gates; evidence adequate")
    assert _names(v.control) == ["forget-accuracy", "forget-loss", "mia-loss", "ks"]
    assert all(g.status == "fail" for g in v.control)
    assert v.to_dict()["passed"] is True


def test_lira_auc_becomes_its_own_gate() -> None:
    report = _report(cand={LIRA: (0.0, -0.01, 0.01)}, orig={LIRA: (0.1, 0.07, 0.13, 0.01)})
    v = decide(report, CLEAN_FACTS)
    assert "mia-lira" in _names(v.gates) and "mia-lira" in _names(v.control)
    assert _gate(v, "mia-lira").metric == LIRA


# Each metric with an original effect that makes its band an exactly representable number b.
EDGE_METRICS = [
    (ACC, (0.0625, 0.05, 0.075, 0.0), 0.03125),  # min(0.05, 0.5·0.0625)
    (LOSS, (-0.25, -0.3, -0.2, 0.0), 0.125),  # min(0.25, 0.5·0.25)
    (AUC, (0.0625, 0.05, 0.075, 0.0), 0.03125),
]
GATE = {ACC: "forget-accuracy", LOSS: "forget-loss", AUC: "mia-loss"}
# Which sign of the gap is "still looks like a member": forget accuracy / AUC higher, forget loss lower.
DIRECTION = {
    (ACC, 1): "under-unlearning",
    (ACC, -1): "over-unlearning",
    (LOSS, 1): "over-unlearning",
    (LOSS, -1): "under-unlearning",
    (AUC, 1): "under-unlearning",
    (AUC, -1): "over-unlearning",
}


def _edge_cases(b: float) -> list[tuple[float, float, str]]:
    up, down = math.nextafter(b, math.inf), math.nextafter(-b, -math.inf)
    return [
        (-b, b, "pass"),  # exactly the band: inside (closed)
        (0.0, b, "pass"),
        (-b / 2, b / 2, "pass"),
        (up, 2 * b, "fail"),  # just wholly above
        (-2 * b, down, "fail"),  # just wholly below
        (3 * b, 4 * b, "fail"),
        (b, 2 * b, "inconclusive"),  # touches the upper edge: not wholly outside
        (-2 * b, -b, "inconclusive"),
        (-b, up, "inconclusive"),
        (down, b, "inconclusive"),
        (-2 * b, 2 * b, "inconclusive"),  # straddles both edges; gap 0
        (-2 * b, b / 2, "inconclusive"),
    ]


@pytest.mark.parametrize(("metric", "effect", "band"), EDGE_METRICS)
def test_equivalence_gate_at_and_around_the_band_edges(
    metric: str, effect: tuple[float, float, float, float], band: float
) -> None:
    for lo, hi, expected in _edge_cases(band):
        gap = (lo + hi) / 2
        v = decide(_report({metric: (gap, lo, hi)}, {metric: effect}), CLEAN_FACTS)
        g = _gate(v, GATE[metric])
        case = (metric, lo, hi, expected, g.status, g.reason)
        assert g.band == band, case
        assert g.status == expected, case
        assert (g.ci_low, g.ci_high, g.gap) == (lo, hi, gap)
        assert v.evidence == "adequate"  # the original fails this gate in every case
        assert v.status == expected, case  # every other gate passes
        assert v.passed is (expected == "pass"), case
        assert v.promotable() is (expected == "pass")
        assert v.promotable(accept_insufficient_evidence=True) is (expected == "pass")  # adequate: no waiver
        if expected == "pass":
            assert g.direction == "" and "inside" in g.reason
            continue
        sign = 1 if gap > 0 else -1 if gap < 0 else 0
        want = DIRECTION[(metric, sign)] if sign else "deviates"
        assert g.direction == want, case
        assert g.reason.startswith(f"{want}: ")
        assert ("outside" if expected == "fail" else "crosses") in g.reason
        assert f"{g.name} {expected}" in v.reason


@pytest.mark.parametrize(
    ("metric", "gap", "direction"),
    [
        (ACC, 0.3, "under-unlearning"),  # forget accuracy above the reference's: still remembers
        (ACC, -0.3, "over-unlearning"),
        (LOSS, 1.0, "over-unlearning"),  # forget loss above the reference's: forgot too much
        (LOSS, -1.0, "under-unlearning"),
        (AUC, 0.3, "under-unlearning"),  # the attack separates forget from test better than on the reference
        (AUC, -0.3, "over-unlearning"),
    ],
)
def test_failing_gate_names_the_direction(metric: str, gap: float, direction: str) -> None:
    v = decide(_report({metric: (gap, gap - 0.01, gap + 0.01)}), CLEAN_FACTS)
    g = _gate(v, GATE[metric])
    assert (g.status, g.direction) == ("fail", direction)
    assert v.status == "fail" and not v.passed
    assert f"{GATE[metric]} fail ({direction}: " in v.reason


def test_utility_gate_edges() -> None:
    budget = 2.0**-6
    pol = GatePolicy(utility_budget=budget)
    down = math.nextafter(-budget, -math.inf)
    cases = [
        ((0.0, -budget, 0.02), "pass"),  # the interval's low end exactly at −budget
        ((0.05, 0.01, 0.09), "pass"),  # better than the reference
        ((-0.05, -0.06, down), "fail"),  # wholly below −budget
        ((-0.03, -0.05, -budget), "inconclusive"),  # touches −budget from below
        ((0.0, down, 0.02), "inconclusive"),
    ]
    for test, expected in cases:
        v = decide(_report(test=test), CLEAN_FACTS, policy=pol)
        g = _gate(v, "test-accuracy")
        assert (g.status, g.band) == (expected, budget), (test, g.reason)
        assert g.direction == ("" if expected == "pass" else "deviates")
        assert v.status == expected and v.passed is (expected == "pass")


def test_ks_gate_edges_cap_and_noise_floor() -> None:
    # the original's D sets the band (0.5 · 0.25 = 0.125, above the critical D at n = 10⁶ and below the cap)
    big = (10**6, 10**6)
    for d, expected in [(0.125, "pass"), (math.nextafter(0.125, 1.0), "fail"), (0.0, "pass")]:
        v = decide(_report(d=d, d_orig=0.25, n=big), CLEAN_FACTS)
        g = _gate(v, "ks")
        assert (g.status, g.band, g.gap) == (expected, 0.125, d)
        assert g.direction == ("" if expected == "pass" else "deviates")
        assert v.status == expected
    # a huge original D is capped at 0.2
    v = decide(_report(d=0.21, d_orig=0.9, n=big), CLEAN_FACTS)
    assert (_gate(v, "ks").band, _gate(v, "ks").status) == (0.2, "fail")
    # the critical D is the floor when the original's D is small
    crit = ks_critical_d(100, 120, 0.05)
    assert 0.15 < crit < 0.2
    for d, expected in [(crit, "pass"), (crit + 1e-9, "fail")]:
        g = _gate(decide(_report(d=d, d_orig=0.0, n=(100, 120)), CLEAN_FACTS), "ks")
        assert g.band == pytest.approx(crit, rel=1e-15) and g.status == expected


def test_band_formula_matches_a_direct_computation_on_random_inputs() -> None:
    rng = np.random.default_rng(20240611)
    kinds = ["accuracy", "loss", "auc", "ks_d", "tpr", "balanced_accuracy"]
    for _ in range(500):
        fraction = float(rng.uniform(0.01, 1.0))
        caps = {k: float(rng.uniform(0.01, 0.5)) for k in kinds if rng.random() < 0.7}
        pol = GatePolicy(fraction=fraction, caps=caps)
        kind = kinds[int(rng.integers(len(kinds)))]
        effect, noise = float(rng.normal(0.0, 0.3)), float(rng.uniform(0.0, 0.3))
        share = fraction * abs(effect)
        if kind in caps:
            share = min(caps[kind], share)
        want = max(noise, share)  # the cap limits the effect's share, never the noise floor
        assert pol.band(kind, effect, noise) == want, (kind, effect, noise, pol)
        assert pol.band(kind, -effect, noise) == want  # the effect's sign does not matter


def test_decide_uses_the_originals_effect_and_the_reference_noise_for_every_band() -> None:
    rng = np.random.default_rng(5)
    for _ in range(100):
        pol = GatePolicy(
            fraction=float(rng.uniform(0.1, 1.0)),
            caps={k: float(rng.uniform(0.02, 0.4)) for k in ("accuracy", "loss", "auc", "ks_d")},
            ks_alpha=float(rng.uniform(0.01, 0.2)),
        )
        orig = {}
        for m in (ACC, LOSS, AUC):
            e = float(rng.normal(0.0, 0.2))
            orig[m] = (e, e - 0.05, e + 0.05, float(rng.uniform(0.0, 0.2)))
        n = (int(rng.integers(5, 500)), int(rng.integers(5, 500)))
        d_orig = float(rng.uniform(0.0, 1.0))
        v = decide(_report(orig=orig, d_orig=d_orig, n=n), CLEAN_FACTS, policy=pol)
        for m, kind in ((ACC, "accuracy"), (LOSS, "loss"), (AUC, "auc")):
            e, _, _, hw = orig[m]
            want = max(hw, min(pol.caps[kind], pol.fraction * abs(e)))
            assert _gate(v, GATE[m]).band == pytest.approx(want, rel=1e-12)
            assert _gate(v, GATE[m], control=True).band == pytest.approx(want, rel=1e-12)
        crit = math.sqrt(-math.log(pol.ks_alpha / 2) / 2) * math.sqrt((n[0] + n[1]) / (n[0] * n[1]))
        want = max(crit, min(pol.caps["ks_d"], pol.fraction * d_orig))
        assert _gate(v, "ks").band == pytest.approx(want, rel=1e-12)


def test_evidence_is_insufficient_when_no_control_gate_fails() -> None:
    v = decide(_report(orig=WEAK, d_orig=WEAK_D), CLEAN_FACTS)
    assert {g.status for g in v.control} <= {"pass", "inconclusive"}
    assert v.evidence == "insufficient"
    assert "fails none of the 4 forgetting gates" in v.evidence_reason
    assert v.status == "pass" and not v.passed  # every gate passes, yet it does not pass
    assert not v.promotable()
    assert v.promotable(accept_insufficient_evidence=True)
    assert v.reason.startswith("evidence insufficient: ")


@pytest.mark.parametrize("caught", ["forget-accuracy", "forget-loss", "mia-loss", "ks"])
def test_one_failing_control_gate_makes_the_evidence_adequate(caught: str) -> None:
    orig = dict(WEAK)
    d_orig = WEAK_D
    metric = {v: k for k, v in GATE.items()}.get(caught)
    if metric is not None:
        orig[metric] = STRONG[metric]
    else:
        d_orig = STRONG_D
    v = decide(_report(orig=orig, d_orig=d_orig), CLEAN_FACTS)
    assert [g.name for g in v.control if g.status == "fail"] == [caught]
    assert v.evidence == "adequate"
    assert v.evidence_reason.endswith(f"fails 1 of 4 gates ({caught})")
    assert v.passed


def test_promotable_with_the_override() -> None:
    crossing = {ACC: (0.02, -0.01, 0.05)}  # crosses the WEAK accuracy band 0.03
    outside = {ACC: (0.2, 0.15, 0.25)}
    weak = {"orig": WEAK, "d_orig": WEAK_D}

    insufficient_inconclusive = decide(_report(crossing, **weak), CLEAN_FACTS)
    assert (insufficient_inconclusive.evidence, insufficient_inconclusive.status) == (
        "insufficient",
        "inconclusive",
    )
    assert not insufficient_inconclusive.passed and not insufficient_inconclusive.promotable()
    assert insufficient_inconclusive.promotable(accept_insufficient_evidence=True)

    insufficient_fail = decide(_report(outside, **weak), CLEAN_FACTS)
    assert (insufficient_fail.evidence, insufficient_fail.status) == ("insufficient", "fail")
    assert not insufficient_fail.promotable(accept_insufficient_evidence=True)

    for gate_fails in (
        _report(test=(-0.1, -0.12, -0.08), **weak),  # the utility gate
        _report(d=0.5, **weak),  # KS
        _report(kind="proxy", **weak),  # an integrity gate
    ):
        v = decide(gate_fails, CLEAN_FACTS)
        assert v.evidence == "insufficient" and v.status == "fail"
        assert not v.promotable(accept_insufficient_evidence=True)

    adequate_inconclusive = decide(_report({ACC: (0.03, 0.01, 0.05)}), CLEAN_FACTS)  # band 0.04
    assert (adequate_inconclusive.evidence, adequate_inconclusive.status) == ("adequate", "inconclusive")
    assert not adequate_inconclusive.passed
    assert not adequate_inconclusive.promotable(accept_insufficient_evidence=True)


def test_verdict_invariants_on_random_reports() -> None:
    """Whatever the statuses: passed ⇔ all pass ∧ adequate; the override waives inconclusive only."""
    rng = np.random.default_rng(11)
    seen: set[tuple[str, str]] = set()
    for _ in range(300):
        cand = {}
        for m in (ACC, LOSS, AUC):
            centre, half = float(rng.normal(0.0, 0.08)), float(rng.uniform(0.0, 0.06))
            cand[m] = (centre, centre - half, centre + half)
        orig = STRONG if rng.random() < 0.5 else WEAK
        t = float(rng.normal(0.0, 0.02))
        v = decide(
            _report(
                cand,
                orig,
                d=float(rng.uniform(0, 0.3)),
                d_orig=STRONG_D if orig is STRONG else WEAK_D,
                test=(t, t - 0.01, t + 0.01),
            ),
            CLEAN_FACTS,
        )
        statuses = {g.status for g in v.gates}
        seen.add((v.status, v.evidence))
        assert v.passed == (statuses == {"pass"} and v.evidence == "adequate")
        if "inconclusive" in statuses or "fail" in statuses:
            assert not v.passed and not v.promotable()
        assert v.status == (
            "fail" if "fail" in statuses else "inconclusive" if "inconclusive" in statuses else "pass"
        )
        assert v.promotable() == v.passed
        assert v.promotable(accept_insufficient_evidence=True) == (
            v.passed or (v.evidence == "insufficient" and "fail" not in statuses)
        )
        assert v.failing == tuple(g for g in v.gates if g.status != "pass")
        for g in v.failing:
            assert f"{g.name} {g.status} (" in v.reason
    # the sample reached every combination, so the assertions above were exercised on each
    assert seen == {(s, e) for s in ("pass", "fail", "inconclusive") for e in ("adequate", "insufficient")}


# -- integrity gates --------------------------------------------------------------------------------------

INTEGRITY_CASES = [
    ({"kind": "proxy"}, CLEAN_FACTS, "reference-retrained", "the reference is a proxy model"),
    ({"kind": ""}, CLEAN_FACTS, "reference-retrained", "the reference is a missing model"),
    ({}, RunFacts(steps_applied=0), "steps-applied", "the run applied 0 unlearning steps"),
    (
        {},
        RunFacts(steps_applied=3, candidate_weights="sha256:aa", original_weights="sha256:aa"),
        "weights-changed",
        "the candidate's weights are byte-for-byte the original's",
    ),
    (
        {},
        RunFacts(steps_applied=3, report_sha256_recorded="sha256:aa", report_sha256_actual="sha256:bb"),
        "report-integrity",
        "evaluation.json does not match the digest in its ledger record",
    ),
    (
        {},
        RunFacts(steps_applied=3, report_sha256_recorded="sha256:aa", report_sha256_actual=None),
        "report-integrity",
        "evaluation.json does not match the digest in its ledger record",
    ),
]


@pytest.mark.parametrize(("report_kw", "facts", "name", "reason"), INTEGRITY_CASES)
@pytest.mark.parametrize("evidence", ["adequate", "insufficient"])
def test_each_integrity_gate_fails_with_its_own_name_and_reason(
    report_kw: dict[str, Any], facts: RunFacts, name: str, reason: str, evidence: str
) -> None:
    weak = {"orig": WEAK, "d_orig": WEAK_D} if evidence == "insufficient" else {}
    v = decide(_report(**report_kw, **weak), facts)
    assert v.evidence == evidence
    failing = [g for g in v.gates if g.status != "pass"]
    assert [g.name for g in failing] == [name]
    assert failing[0].status == "fail" and failing[0].reason.startswith(reason), failing[0].reason
    assert v.status == "fail" and not v.passed
    assert not v.promotable(accept_insufficient_evidence=True)  # never overridden
    assert f"{name} fail ({reason}" in v.reason


def test_integrity_gates_pass_when_the_facts_are_right() -> None:
    facts = RunFacts(
        steps_applied=1,
        candidate_weights="sha256:bb",
        original_weights="sha256:aa",
        report_sha256_recorded="sha256:cc",
        report_sha256_actual="sha256:cc",
    )
    v = decide(_report(), facts)
    integrity = v.gates[:4]
    assert _names(integrity) == [
        "reference-retrained",
        "steps-applied",
        "weights-changed",
        "report-integrity",
    ]
    assert all(g.status == "pass" for g in integrity)
    assert _gate(v, "steps-applied").reason == "1 unlearning steps applied"
    assert _gate(v, "report-integrity").reason == "evaluation.json matches its ledger record"
    assert v.passed


@pytest.mark.parametrize("steps", [None, 0, 7])
def test_steps_applied_is_absent_for_a_retrain(steps: int | None) -> None:
    v = decide(_report(), RunFacts(action="retrain", steps_applied=steps))
    assert "steps-applied" not in _names(v.gates)
    assert v.passed


def test_unknown_facts_add_no_gates() -> None:
    """RunFacts documents that a fact left at its default is unknown and its gate is not applied."""
    v = decide(_report())
    assert _names(v.gates)[0] == "reference-retrained"
    assert not {"steps-applied", "weights-changed", "report-integrity"} & set(_names(v.gates))
    # one digest alone cannot be compared
    v = decide(_report(), RunFacts(steps_applied=1, candidate_weights="sha256:aa"))
    assert "weights-changed" not in _names(v.gates)


# -- bad input ----------------------------------------------------------------------------------------------


def test_missing_models_raise() -> None:
    report = _report()
    with pytest.raises(ValueError, match=r"no gaps for model 'nope'; have \['original', 'unlearned'\]"):
        decide(report, model="nope")
    with pytest.raises(ValueError, match="no gaps for model 'baseline'"):
        decide(report, original="baseline")
    with pytest.raises(ValueError, match="no gaps for model 'unlearned'"):
        decide({"reference": {"kind": "retrained"}})


@pytest.mark.parametrize(("who", "metric"), [("unlearned", ACC), ("unlearned", AUC), ("original", LOSS)])
@pytest.mark.parametrize("end", ["gap_ci_low", "gap_ci_high"])
def test_missing_interval_raises(who: str, metric: str, end: str) -> None:
    report = _report()
    row = next(r for r in report["gaps"][who] if r["metric"] == metric)
    row[end] = None
    with pytest.raises(ValueError, match=f"metric '{metric}' has no interval: an equivalence test needs one"):
        decide(report, CLEAN_FACTS)


def test_missing_test_accuracy_interval_raises() -> None:
    report = _report()
    row = next(r for r in report["gaps"]["unlearned"] if r["metric"] == TEST)
    row["gap_ci_low"] = None
    with pytest.raises(ValueError, match="no test-accuracy gap with an interval"):
        decide(report, CLEAN_FACTS)
    report["gaps"]["unlearned"] = [r for r in report["gaps"]["unlearned"] if r["metric"] != TEST]
    with pytest.raises(ValueError, match="no test-accuracy gap with an interval"):
        decide(report, CLEAN_FACTS)


@pytest.mark.parametrize("metric", [ACC, LOSS])
def test_missing_forget_rows_raise(metric: str) -> None:
    report = _report()
    report["gaps"]["unlearned"] = [r for r in report["gaps"]["unlearned"] if r["metric"] != metric]
    with pytest.raises(ValueError, match=rf"no gap rows for \['{metric}'\]: cannot judge forgetting"):
        decide(report, CLEAN_FACTS)


def test_missing_forget_quality_section_raises_value_error() -> None:
    report = _report()
    del report["forget_quality"]
    with pytest.raises(ValueError, match="forget_quality"):
        decide(report, CLEAN_FACTS)


def test_half_test_accuracy_interval_raises_value_error() -> None:
    report = _report()
    next(r for r in report["gaps"]["unlearned"] if r["metric"] == TEST)["gap_ci_high"] = None
    with pytest.raises(ValueError, match="test-accuracy"):
        decide(report, CLEAN_FACTS)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fraction": 0.0}, "fraction must lie in"),
        ({"fraction": -0.5}, "fraction must lie in"),
        ({"fraction": 1.01}, "fraction must lie in"),
        ({"fraction": math.nan}, "fraction must lie in"),
        ({"utility_budget": -0.01}, "utility_budget must be a finite number >= 0"),
        ({"utility_budget": math.inf}, "utility_budget must be a finite number >= 0"),
        ({"utility_budget": math.nan}, "utility_budget must be a finite number >= 0"),
        ({"ks_alpha": 0.0}, "ks_alpha must lie in"),
        ({"ks_alpha": 1.0}, "ks_alpha must lie in"),
        ({"ks_alpha": math.nan}, "ks_alpha must lie in"),
        ({"caps": {"accuracy": 0.0}}, "cap for 'accuracy' must be a finite number > 0"),
        ({"caps": {"loss": -1.0}}, "cap for 'loss' must be a finite number > 0"),
        ({"caps": {"auc": math.inf}}, "cap for 'auc' must be a finite number > 0"),
        ({"caps": {"ks_d": math.nan}}, "cap for 'ks_d' must be a finite number > 0"),
    ],
)
def test_gate_policy_rejects_bad_values(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GatePolicy(**kwargs)


def test_gate_policy_accepts_the_edges() -> None:
    pol = GatePolicy(fraction=1.0, utility_budget=0.0, caps={})
    assert pol.band("accuracy", 0.3, 0.1) == 0.3  # no cap for a kind left out
    assert pol.to_dict() == {"fraction": 1.0, "caps": {}, "utility_budget": 0.0, "ks_alpha": 0.05}


# == B. ks_critical_d against an independent oracle ======================================================


def test_ks_critical_d_matches_the_kolmogorov_distribution() -> None:
    """c(α) = √(−ln(α/2)/2) is the first term of the Kolmogorov series P(K > c) = 2Σ(−1)^(k−1)e^(−2k²c²).

    So against scipy's exact asymptotic quantile ``kstwobign.ppf(1 − α)`` it agrees to 1e-9 (relative) only
    where the neglected second term 2e^(−8c²) is negligible (α ≲ 0.004); above that the relative excess is
    (α/2)³/(4c²) to leading order (2.1e-6 at α = 0.05), always on the conservative (larger) side.
    """
    rng = np.random.default_rng(3)
    for _ in range(300):
        n, m = int(rng.integers(1, 5000)), int(rng.integers(1, 5000))
        scale = math.sqrt((n + m) / (n * m))
        alpha = float(10 ** rng.uniform(-6, math.log10(0.004)))
        exact = float(sps.kstwobign.ppf(1 - alpha)) * scale
        assert ks_critical_d(n, m, alpha) == pytest.approx(exact, rel=1e-9, abs=0), (n, m, alpha)
    for _ in range(300):
        n, m = int(rng.integers(1, 5000)), int(rng.integers(1, 5000))
        scale = math.sqrt((n + m) / (n * m))
        alpha = float(rng.uniform(0.005, 0.3))
        exact = float(sps.kstwobign.ppf(1 - alpha)) * scale
        excess = ks_critical_d(n, m, alpha) / exact - 1
        c2 = -math.log(alpha / 2) / 2
        predicted = (alpha / 2) ** 3 / (4 * c2)
        assert 0.8 * predicted <= excess <= 1.25 * predicted, (n, m, alpha, excess, predicted)
    # the tabulated values
    assert ks_critical_d(1, 1, 0.05) / math.sqrt(2) == pytest.approx(1.358, abs=5e-4)
    assert ks_critical_d(1, 1, 0.01) / math.sqrt(2) == pytest.approx(1.628, abs=5e-4)
    with pytest.raises(ValueError, match="sample sizes must be >= 1"):
        ks_critical_d(0, 10, 0.05)
    with pytest.raises(ValueError, match="sample sizes must be >= 1"):
        ks_critical_d(10, 0, 0.05)


def test_ks_critical_d_has_the_nominal_size_under_the_null() -> None:
    """Two samples of one distribution: ks_2samp's D exceeds the critical D about α of the time.

    The asymptotic critical value is slightly conservative at finite n (the rate approaches α from below),
    so the band's low end is the 99.9% binomial bound at 0.75·α, its high end the one at α.
    """
    rng = np.random.default_rng(2024)
    n, m, reps = 300, 400, 1000
    ds = np.array(
        [sps.ks_2samp(rng.normal(size=n), rng.normal(size=m), method="asymp").statistic for _ in range(reps)]
    )
    for alpha in (0.05, 0.1, 0.2):
        rate = float(np.mean(ds > ks_critical_d(n, m, alpha)))
        lo = sps.binom.ppf(0.0005, reps, 0.75 * alpha) / reps
        hi = sps.binom.ppf(0.9995, reps, alpha) / reps
        assert lo <= rate <= hi, (alpha, rate, lo, hi)


def test_ks_gate_false_failure_rate_under_the_null_is_about_alpha() -> None:
    rng = np.random.default_rng(9)
    n, reps = 30, 300
    fails = 0
    for _ in range(reps):
        d = float(sps.ks_2samp(rng.normal(size=n), rng.normal(size=n)).statistic)
        fails += _gate(decide(_report(d=d, d_orig=0.0, n=(n, n)), CLEAN_FACTS), "ks").status == "fail"
    assert fails / reps <= sps.binom.ppf(0.9995, reps, 0.05) / reps


# == C. the Show table on real digits models ============================================================

FAST = EvaluationConfig(n_resamples=400)
LINEAGE_OK = {"batch_status": "completed", "still_carried": 0, "erased_total": 100}
# Tiny forget sets: lift the KS cap so that the critical D (0.96 at n = m = 4) is the KS band's floor; see
# test_tiny_forget_set_gives_insufficient_evidence.
TINY_POLICY = GatePolicy(caps={"accuracy": 0.05, "loss": 0.25, "auc": 0.05})


def _weights_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return "sha256:" + h.hexdigest()


def _accuracy(model: nn.Module, split: tuple[torch.Tensor, torch.Tensor]) -> float:
    with torch.no_grad():
        return float((model(split[0]).argmax(1) == split[1]).float().mean())


@pytest.fixture(scope="module")
def show(single_thread: None, digits_data: tuple[torch.Tensor, torch.Tensor, np.ndarray]) -> Iterator[dict]:
    """Overfit original (retain ∪ forget), retrained reference (retain), and the Show table's candidates."""
    x, y, perm = digits_data
    forget, retain, test = perm[:100], perm[100:200], perm[200:500]
    trainer = MLPTrainer(x, y, n_classes=10, steps=300, lr=1e-2)
    original = trainer(np.r_[forget, retain], 0)
    reference = trainer(retain, 0)
    splits = {s: (x[idx], y[idx]) for s, idx in (("retain", retain), ("forget", forget), ("test", test))}
    loss = nn.functional.cross_entropy

    one_step = copy.deepcopy(original)
    one_run = unlearn(
        one_step,
        loss,
        [splits["retain"]],
        [splits["forget"]],
        UnlearnConfig(method="ga", max_steps=1, device="cpu"),
    )
    far = copy.deepcopy(original)
    far_run = unlearn(
        far,
        loss,
        [splits["retain"]],
        [splits["forget"]],
        UnlearnConfig(method="ga", lr=1.0, max_steps=300, device="cpu"),
        callbacks=[lambda _: _accuracy(far, splits["forget"]) < 0.5],
    )
    models = {
        "original": original,
        "retrained": reference,
        "copy": copy.deepcopy(original),
        "reference_itself": reference,
        "one_step": one_step,
        "ga_far": far,
    }
    report = evaluate_models(models, splits, config=FAST).report.to_dict()
    tiny_splits = {**splits, "forget": (x[forget[:4]], y[forget[:4]])}
    tiny = evaluate_models(
        {"original": original, "retrained": reference, "candidate": original}, tiny_splits, config=FAST
    ).report.to_dict()
    yield {
        "report": report,
        "tiny": tiny,
        "digests": {name: _weights_digest(m) for name, m in models.items()},
        "runs": {"one_step": one_run, "ga_far": far_run},
    }


def _facts(show: dict[str, Any], model: str, **kw: Any) -> RunFacts:
    digests = show["digests"]
    return RunFacts(candidate_weights=digests[model], original_weights=digests["original"], **kw)


def _assert_refused_naming(verdict: Verdict) -> None:
    assert not verdict.passed
    for override in (False, True):
        decision = decide_promotion(
            verdict, lineage_gates(**LINEAGE_OK), accept_insufficient_evidence=override
        )
        assert not decision.allowed and not decision.override_used
        assert decision.refusal
        for g in verdict.failing:
            assert f"{g.name} {g.status} (" in decision.refusal
        assert OVERRIDE_FLAG not in decision.refusal  # adequate or failing evidence: no override offered


def test_show_copy_of_the_original(show: dict[str, Any]) -> None:
    assert show["digests"]["copy"] == show["digests"]["original"]
    v = decide(show["report"], _facts(show, "copy", steps_applied=1), model="copy")
    assert not v.passed and v.status == "fail"
    assert v.evidence == "adequate", v.evidence_reason
    assert _gate(v, "weights-changed").status == "fail"
    assert "byte-for-byte" in _gate(v, "weights-changed").reason
    assert {g.name for g in v.failing} >= {"weights-changed"}
    assert len(v.failing) >= 2  # it also fails/misses forgetting gates: it is the original
    for g in v.failing:
        assert f"{g.name} {g.status} ({g.reason})" in v.reason
    # the copy's forgetting gates are exactly the original's control gates
    assert [(g.name, g.status) for g in v.gates if g.metric and g.name != "test-accuracy"] == [
        (g.name, g.status) for g in v.control
    ]
    _assert_refused_naming(v)


def test_show_the_reference_itself_passes(show: dict[str, Any]) -> None:
    assert show["digests"]["reference_itself"] != show["digests"]["original"]
    v = decide(show["report"], _facts(show, "reference_itself", action="retrain"), model="reference_itself")
    assert "steps-applied" not in _names(v.gates)
    assert all(g.status == "pass" for g in v.gates), v.reason
    assert v.evidence == "adequate" and v.passed, v.reason
    assert v.reason.startswith("passes all")
    decision = decide_promotion(v, lineage_gates(**LINEAGE_OK))
    assert decision.allowed and not decision.override_used and decision.refusal == ""
    assert _names(decision.gates)[-2:] == ["batch-completed", "erasure-coverage"]
    # lineage failures refuse even a passing verdict
    for lineage, name in (
        ({**LINEAGE_OK, "batch_status": "abandoned"}, "batch-completed"),
        ({**LINEAGE_OK, "still_carried": 3}, "erasure-coverage"),
    ):
        refused = decide_promotion(v, lineage_gates(**lineage), accept_insufficient_evidence=True)
        assert not refused.allowed and refused.refusal.startswith(f"{name} (")


def test_show_one_unlearning_step_does_not_pass(show: dict[str, Any]) -> None:
    run = show["runs"]["one_step"]
    assert run.steps_applied == 1
    assert show["digests"]["one_step"] != show["digests"]["original"]
    v = decide(show["report"], _facts(show, "one_step", steps_applied=run.steps_applied), model="one_step")
    assert _gate(v, "steps-applied").status == "pass" and _gate(v, "weights-changed").status == "pass"
    assert not v.passed and v.status != "pass"
    acc = _gate(v, "forget-accuracy")  # one small step leaves it remembering its forget rows
    assert acc.status != "pass" and acc.direction == "under-unlearning", acc.reason
    _assert_refused_naming(v)


def test_show_ga_far_past_the_reference_is_over_unlearning(show: dict[str, Any]) -> None:
    run = show["runs"]["ga_far"]
    assert run.stop_reason == "callback" and run.steps_applied > 1
    utility = show["report"]["utility"]
    far_acc = utility["ga_far"]["forget"]["accuracy"]["estimate"]
    ref_acc = utility["retrained"]["forget"]["accuracy"]["estimate"]
    assert far_acc < 0.5 and ref_acc - far_acc > 0.3
    v = decide(show["report"], _facts(show, "ga_far", steps_applied=run.steps_applied), model="ga_far")
    acc = _gate(v, "forget-accuracy")
    assert (acc.status, acc.direction) == ("fail", "over-unlearning"), acc.reason
    assert "forget-accuracy fail (over-unlearning: " in v.reason
    assert not v.passed and v.status == "fail"
    _assert_refused_naming(v)


def test_tiny_forget_set_gives_insufficient_evidence(show: dict[str, Any]) -> None:
    """Four forget rows; the candidate is the original itself under another weights digest.

    The KS band's floor is the critical D at n = m = 4 (0.96), so the original's D = 0.75 (ks_2samp
    p ≈ 0.23, not significant) does not fail it; no gate fails and every forgetting gate is inconclusive.
    """
    tiny = show["tiny"]
    ks = tiny["forget_quality"]["original"]
    assert ks["n_model"] == 4 and ks["p_value"] > 0.05
    assert ks["d"] <= ks_critical_d(4, 4, 0.05)
    facts = RunFacts(steps_applied=1, candidate_weights="sha256:candidate", original_weights="sha256:orig")
    v = decide(tiny, facts, model="candidate", policy=TINY_POLICY)
    assert not any(g.status == "fail" for g in v.control)
    assert v.evidence == "insufficient", v.evidence_reason
    assert "fail" not in {g.status for g in v.gates}, v.reason
    assert not v.passed and not v.promotable()
    assert v.promotable(accept_insufficient_evidence=True)
    assert "evidence insufficient: " in v.reason

    refused = decide_promotion(v, lineage_gates(**LINEAGE_OK))
    assert not refused.allowed and not refused.override_used
    assert f"{OVERRIDE_FLAG} --reason TEXT" in refused.refusal
    for g in v.failing:
        assert g.name in refused.refusal
    allowed = decide_promotion(v, lineage_gates(**LINEAGE_OK), accept_insufficient_evidence=True)
    assert allowed.allowed and allowed.override_used and allowed.refusal == ""
    for lineage, name in (
        ({**LINEAGE_OK, "batch_status": "abandoned"}, "batch-completed"),
        ({**LINEAGE_OK, "still_carried": 2}, "erasure-coverage"),
    ):
        decision = decide_promotion(v, lineage_gates(**lineage), accept_insufficient_evidence=True)
        assert not decision.allowed and not decision.override_used
        assert f"{name} (" in decision.refusal
    # an identical-weights digest turns the same evidence into a failure the override cannot waive
    same = RunFacts(steps_applied=1, candidate_weights="sha256:orig", original_weights="sha256:orig")
    failed = decide(tiny, same, model="candidate", policy=TINY_POLICY)
    assert failed.evidence == "insufficient" and failed.status == "fail"
    decision = decide_promotion(failed, lineage_gates(**LINEAGE_OK), accept_insufficient_evidence=True)
    assert not decision.allowed and "weights-changed fail" in decision.refusal
    assert OVERRIDE_FLAG not in decision.refusal


def test_tiny_forget_set_default_policy_evidence_is_insufficient(show: dict[str, Any]) -> None:
    facts = RunFacts(steps_applied=1, candidate_weights="sha256:candidate", original_weights="sha256:orig")
    v = decide(show["tiny"], facts, model="candidate")
    assert v.evidence == "insufficient"


# -- check_override and lineage_gates ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "reason", "match"),
    [
        (True, "", "--accept-insufficient-evidence needs --reason TEXT"),
        (True, "   \t", "--accept-insufficient-evidence needs --reason TEXT"),
        (True, None, "--accept-insufficient-evidence needs --reason TEXT"),
        (False, "", "--reason must not be empty"),
        (False, "  \n", "--reason must not be empty"),
        (False, "the attacks are weak here", "--reason is only for --accept-insufficient-evidence"),
    ],
)
def test_check_override_errors(flag: bool, reason: str | None, match: str) -> None:
    with pytest.raises(PromotionInputError, match=match):
        check_override(flag, reason)


def test_check_override_accepts_a_reason_with_the_flag() -> None:
    assert check_override(True, "  ticket 42: 4-row request  ") == "ticket 42: 4-row request"
    assert check_override(False, None) == ""
    assert issubclass(PromotionInputError, ValueError)


def test_lineage_gates() -> None:
    ok = lineage_gates(**LINEAGE_OK)
    assert [(g.name, g.status) for g in ok] == [("batch-completed", "pass"), ("erasure-coverage", "pass")]
    bad = lineage_gates(batch_status="abandoned", still_carried=2, erased_total=5)
    assert [g.status for g in bad] == ["fail", "fail"]
    assert "'abandoned'" in bad[0].reason and "still carries 2 of 5" in bad[1].reason
    with pytest.raises(ValueError, match="0 <= still_carried <= erased_total"):
        lineage_gates(batch_status="completed", still_carried=-1, erased_total=5)
    with pytest.raises(ValueError, match="0 <= still_carried <= erased_total"):
        lineage_gates(batch_status="completed", still_carried=6, erased_total=5)
