"""Whether a batch's candidate may become ``champion``: the evidence verdict plus two lineage gates.

The evidence part is :func:`hamu.governance.verdict.decide` and nothing else, so ``hamu promote`` and the
batch that
produced the candidate cannot disagree. The lineage gates come from the registry and the request queue:

* ``batch-completed``: the candidate's batch closed its requests and issued receipts (a version left by a
  batch that died is never promotable);
* ``erasure-coverage``: the candidate no longer carries any record that a request has removed from some
  model so far, so promoting an older candidate cannot bring back records removed after it.

Neither lineage gate, nor any failing evidence gate, can be overridden. The only override is for evidence
that is ``insufficient`` (the attacks cannot tell the original from the reference): it needs an explicit
reason, which is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

from hamu.governance.verdict import Gate, Verdict


class PromotionInputError(ValueError):
    """The promotion request itself is malformed (e.g. an override without a reason)."""


def lineage_gates(*, batch_status: str, still_carried: int, erased_total: int) -> list[Gate]:
    """``still_carried``: removed records (per the queue) missing from the candidate's erasure manifest."""
    if still_carried < 0 or erased_total < still_carried:
        raise ValueError(f"need 0 <= still_carried <= erased_total, got {still_carried}, {erased_total}")
    completed = batch_status == "completed"
    return [
        Gate(
            "batch-completed",
            "pass" if completed else "fail",
            "the batch closed its requests and issued receipts"
            if completed
            else f"batch status is {batch_status or 'unknown'!r}: only completed batches can be promoted",
        ),
        Gate(
            "erasure-coverage",
            "pass" if still_carried == 0 else "fail",
            f"the candidate carries none of the {erased_total} removed records"
            if still_carried == 0
            else f"the candidate still carries {still_carried} of {erased_total} removed records (removed "
            "after its batch): promote a newer candidate",
            gap=float(still_carried),
        ),
    ]


def check_override(accept_insufficient_evidence: bool, reason: str | None) -> str:
    """The override's reason, stripped; a clear error when it is missing, empty, or given alone."""
    text = (reason or "").strip()
    if accept_insufficient_evidence and not text:
        raise PromotionInputError(
            "--accept-insufficient-evidence needs --reason TEXT: say why this evidence is accepted "
            "(it goes into the audit ledger and the model card)"
        )
    if reason is not None and not text:
        raise PromotionInputError("--reason must not be empty")
    if text and not accept_insufficient_evidence:
        raise PromotionInputError("--reason is only for --accept-insufficient-evidence")
    return text


@dataclass(frozen=True)
class PromotionDecision:
    allowed: bool
    override_used: bool
    refusal: str
    gates: tuple[Gate, ...]


def decide_promotion(
    verdict: Verdict, lineage: list[Gate], *, accept_insufficient_evidence: bool = False
) -> PromotionDecision:
    """Combine the verdict and the lineage gates; the override applies to insufficient evidence only."""
    gates = (*verdict.gates, *lineage)
    lineage_failed = [g for g in lineage if g.status != "pass"]
    evidence_ok = verdict.promotable(accept_insufficient_evidence=accept_insufficient_evidence)
    allowed = evidence_ok and not lineage_failed
    reasons = [f"{g.name} ({g.reason})" for g in lineage_failed]
    if not evidence_ok:
        reasons.insert(0, verdict.reason)
        if (
            verdict.evidence == "insufficient"
            and verdict.status != "fail"
            and not accept_insufficient_evidence
        ):
            reasons.append("to promote anyway: --accept-insufficient-evidence --reason TEXT")
    return PromotionDecision(
        allowed=allowed,
        override_used=allowed and not verdict.passed,
        refusal="" if allowed else "; ".join(reasons),
        gates=gates,
    )
