"""The gates of a candidate judged against a reference bank (a report with ``reference.kind == "bank"``).

The gated statistic is the **calibrated forget-loss gap** (:func:`hamu.evaluation.bank.loss_gap`): each
row's loss minus the mean loss of the bank members that never trained on it, averaged over the forget rows,
minus the same average over the test rows. The test rows are in no model's training set, so a model that
never saw the forget rows has a gap of about zero; a model that still remembers them has lower losses there
(negative gap), and one pushed past forgetting has higher ones (positive gap). The rule is the equivalence
rule of :mod:`hamu.governance.verdict` with zero in the reference's place:

* ``bank-loss``: the gap's whole interval inside ``±δ``, ``δ = max(noise, min(cap, fraction·|effect|))``,
  where the effect is the original's gap and the noise is the interval half-width of a model whose forget
  rows behave like its test rows (the original's, from the test rows' spread). Wholly below the band is
  under-unlearning, wholly above over-unlearning, crossing it inconclusive.
* ``bank-erased``: rows erased by earlier batches must stay forgotten. One-sided: the interval may not lie
  wholly below ``−max(noise, cap)``.
* ``test-accuracy``: non-inferiority against the original (there is no retrained reference to compare
  with): the change's interval must lie above ``−budget``.
* the integrity gates (``steps-applied``, ``weights-changed``, ``report-integrity``).

The no-op control is the original through ``bank-loss``: the evidence is adequate only when it fails there.

Why the loss gap and not the AUC of offline LiRA scores, which the report also carries: on the demo preset
(500 forget rows, 8 members) the LiRA AUC separates the original (0.575) from a retrain (0.512) by less than
its own interval is wide, so an exact retrain came out *inconclusive*; the loss gap puts the original at
−0.44 and the retrain at +0.01 with intervals of ±0.1 (docs/results.md, "Reference bank"). Zero is the
right reference only when the forget rows are drawn like the test rows (random deletion requests); a forget
set chosen by class or feature is not, and needs the exact reference (docs/evaluation.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hamu.governance.verdict import (
    Gate,
    GatePolicy,
    RunFacts,
    Status,
    Verdict,
    combine,
    evidence_of,
    integrity,
)


def _interval(gap: Mapping[str, Any]) -> tuple[float, float, float, float]:
    return float(gap["gap"]), float(gap["ci_low"]), float(gap["ci_high"]), float(gap["noise"])


def _direction(gap: float) -> str:
    return "under-unlearning" if gap < 0 else "over-unlearning" if gap > 0 else "deviates"


def loss_gate(found: Mapping[str, Any], original: Mapping[str, Any], pol: GatePolicy) -> Gate:
    """Two-sided equivalence of the calibrated forget-loss gap with zero."""
    gap, lo, hi, _ = _interval(found)
    band = pol.band("loss", float(original["gap"]), float(original["noise"]))
    if -band <= lo and hi <= band:
        status: Status = "pass"
    elif hi < -band or lo > band:
        status = "fail"
    else:
        status = "inconclusive"
    direction = "" if status == "pass" else _direction(gap)
    where = {"pass": "inside", "fail": "outside", "inconclusive": "crosses"}[status]
    reason = f"calibrated forget-loss gap {gap:+.4f}, interval [{lo:+.4f}, {hi:+.4f}] {where} ±{band:.4f}"
    if direction:
        reason = f"{direction}: {reason}"
    return Gate("bank-loss", status, reason, "bank.forget.loss_gap", gap, lo, hi, band, direction)


def erased_gate(found: Mapping[str, Any], pol: GatePolicy) -> Gate:
    """One-sided: rows erased before must not look like members (a gap wholly below the allowed margin)."""
    gap, lo, hi, noise = _interval(found)
    band = max(noise, pol.caps.get("loss", noise))
    status: Status = "pass" if lo >= -band else "fail" if hi < -band else "inconclusive"
    reason = (
        f"earlier-erased rows (n={int(found['n_forget'])}): calibrated loss gap {gap:+.4f}, interval "
        f"[{lo:+.4f}, {hi:+.4f}] against the allowed −{band:.4f}"
    )
    direction = "" if status == "pass" else "under-unlearning"
    return Gate("bank-erased", status, reason, "bank.erased.loss_gap", gap, lo, hi, band, direction)


def utility_gate(change: Mapping[str, Any], pol: GatePolicy) -> Gate:
    """Test accuracy may drop by at most the budget against the original."""
    est, lo, hi = float(change["gap"]), float(change["gap_ci_low"]), float(change["gap_ci_high"])
    budget = pol.utility_budget
    status: Status = "pass" if lo >= -budget else "fail" if hi < -budget else "inconclusive"
    reason = (
        f"test accuracy {est:+.4f} against the original, interval [{lo:+.4f}, {hi:+.4f}], "
        f"allowed drop {budget:.4f}"
    )
    return Gate(
        "test-accuracy",
        status,
        reason,
        "test_accuracy_change",
        est,
        lo,
        hi,
        budget,
        "" if status == "pass" else "deviates",
    )


def decide_bank(
    report: Mapping[str, Any], facts: RunFacts, *, model: str, original: str, policy: GatePolicy
) -> Verdict:
    """The verdict of ``model`` in a bank report (see the module docstring)."""
    evidence = report.get("bank", {})
    for name in (model, original):
        if name not in evidence or name not in report.get("test_accuracy_change", {}):
            raise ValueError(f"the bank report has no evidence for model {name!r}; have {sorted(evidence)}")
    found, base = evidence[model], evidence[original]
    forgetting = [loss_gate(found["forget"]["loss"], base["forget"]["loss"], policy)]
    if found.get("erased"):
        forgetting.append(erased_gate(found["erased"]["loss"], policy))
    control = [loss_gate(base["forget"]["loss"], base["forget"]["loss"], policy)]
    gates = [
        *integrity(report, facts, bank=True),
        *forgetting,
        utility_gate(report["test_accuracy_change"][model], policy),
    ]
    kind, why = evidence_of(control)
    return Verdict(
        model=model,
        status=combine(gates),
        evidence=kind,
        evidence_reason=why,
        gates=tuple(gates),
        control=tuple(control),
        policy=policy,
    )
