"""Promotion decisions: lineage gates and the insufficient-evidence override, each failing on its condition.

The evidence gates themselves are :mod:`hamu.governance.verdict`'s (tests/test_verdict.py); here they are
built by
hand so each combination with the lineage gates and the override is exercised exactly.
"""

from __future__ import annotations

import pytest

from hamu.governance.promotion import PromotionInputError, check_override, decide_promotion, lineage_gates
from hamu.governance.verdict import Gate, GatePolicy, Verdict


def _verdict(status: str, evidence: str) -> Verdict:
    gate = Gate("forget-accuracy", status, f"gap +0.0100 ({status})")  # type: ignore[arg-type]
    control = Gate("forget-accuracy", "fail" if evidence == "adequate" else "inconclusive", "control")
    return Verdict(
        model="unlearned",
        status=status,  # type: ignore[arg-type]
        evidence=evidence,  # type: ignore[arg-type]
        evidence_reason="why",
        gates=(gate,),
        control=(control,),
        policy=GatePolicy(),
    )


OK_LINEAGE = lineage_gates(batch_status="completed", still_carried=0, erased_total=90)


def test_lineage_gates_block_incomplete_batches_and_uncovered_erasures() -> None:
    assert [g.name for g in OK_LINEAGE] == ["batch-completed", "erasure-coverage"]
    assert all(g.status == "pass" for g in OK_LINEAGE)
    dead = lineage_gates(batch_status="abandoned", still_carried=0, erased_total=90)
    assert dead[0].status == "fail" and "abandoned" in dead[0].reason and dead[1].status == "pass"
    stale = lineage_gates(batch_status="completed", still_carried=30, erased_total=90)
    assert stale[1].status == "fail" and stale[1].gap == 30.0 and "30 of 90" in stale[1].reason
    with pytest.raises(ValueError):
        lineage_gates(batch_status="completed", still_carried=5, erased_total=4)


@pytest.mark.parametrize(
    ("status", "evidence", "override", "allowed", "used"),
    [
        ("pass", "adequate", False, True, False),
        ("pass", "adequate", True, True, False),  # an unneeded override is not "used"
        ("inconclusive", "adequate", True, False, False),  # adequate evidence that cannot decide: no
        ("fail", "adequate", True, False, False),
        ("inconclusive", "insufficient", False, False, False),
        ("inconclusive", "insufficient", True, True, True),
        ("pass", "insufficient", True, True, True),
        ("fail", "insufficient", True, False, False),  # a failing gate is never overridden
    ],
)
def test_override_waives_insufficient_evidence_only(
    status: str, evidence: str, override: bool, allowed: bool, used: bool
) -> None:
    decision = decide_promotion(_verdict(status, evidence), OK_LINEAGE, accept_insufficient_evidence=override)
    assert (decision.allowed, decision.override_used) == (allowed, used)
    assert bool(decision.refusal) == (not allowed)
    if not allowed:
        assert "forget-accuracy" in decision.refusal or "insufficient" in decision.refusal
    if evidence == "insufficient" and status != "fail" and not override:
        assert "--accept-insufficient-evidence --reason" in decision.refusal


def test_lineage_failures_refuse_even_with_the_override() -> None:
    stale = lineage_gates(batch_status="completed", still_carried=3, erased_total=10)
    for verdict in (_verdict("pass", "adequate"), _verdict("inconclusive", "insufficient")):
        decision = decide_promotion(verdict, stale, accept_insufficient_evidence=True)
        assert not decision.allowed and "erasure-coverage" in decision.refusal
        assert [g.name for g in decision.gates][-2:] == ["batch-completed", "erasure-coverage"]


def test_override_needs_a_real_reason() -> None:
    assert check_override(True, "  legal hold: regulator accepted the retrain-free path ") == (
        "legal hold: regulator accepted the retrain-free path"
    )
    assert check_override(False, None) == ""
    with pytest.raises(PromotionInputError, match="needs --reason"):
        check_override(True, None)
    with pytest.raises(PromotionInputError, match=r"needs --reason"):
        check_override(True, "   ")
    with pytest.raises(PromotionInputError, match="must not be empty"):
        check_override(False, "")
    with pytest.raises(PromotionInputError, match="only for"):
        check_override(False, "because")
