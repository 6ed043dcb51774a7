"""The closing stages: the batch report, the receipts, the queue's verdicts, and the candidate's completion
(docs/pipeline.md steps 9 and 10), plus the short way out when validation accepted nothing.

Their order is the crash-safety argument: a batch that dies before ``close-requests`` leaves its requests
claimed (recovery releases them and abandons the version); one that dies after it is rolled forward by
recovery (the version gets its ``candidate`` alias and the batch its ``completed`` record).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hamu_pipeline.tasks.batch_report import write_batch_report
from hamu_pipeline.tasks.faults import maybe_fault
from hamu_pipeline.tasks.intake import close_requests as close_in_queue
from hamu_pipeline.tasks.registration import complete_candidate, refresh_model_card
from hamu_pipeline.tasks.stages.base import BatchContext, stage
from hamu_pipeline.tasks.stages.evaluate import Evaluated
from hamu_pipeline.tasks.stages.hardness import Gated
from hamu_pipeline.tasks.stages.intake import Validated
from hamu_pipeline.tasks.stages.register import Registered
from hamu_pipeline.tasks.stages.unlearn import Candidate

#: What an accepted request's first receipt says: the record is gone from a candidate, not yet from the
#: served model.
PENDING_PROMOTION = (
    "pending promotion: the candidate no longer carries the record; the served model does until "
    "`hamu promote` moves champion to it (a second receipt is issued then)"
)


@dataclass(frozen=True)
class Done:
    """A closing stage's part of the summary (report locations, or the batch's final status)."""

    fields: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return dict(self.fields)


@stage("report")
def report(
    ctx: BatchContext, validated: Validated, gated: Gated, candidate: Candidate, evaluated: Evaluated
) -> Done:
    """Write the Markdown and HTML report to the ledger, the MLflow run and a Prefect link artifact."""
    decision = {**gated.decision.to_dict(), "unlearning": candidate.target, "outcome": candidate.action}
    links = write_batch_report(
        ctx.audit,
        summary={**ctx.summary, "source_version": ctx.champion.version},
        judged=validated.judged,
        hardness=gated.report.to_dict(),
        decision=decision,
        evaluation=evaluated.report,
        verdict=evaluated.verdict.to_dict(),
        drift=evaluated.drift.to_dict(),
        plots=evaluated.plots,
        folder=ctx.work / "report",
    )
    return Done(links)


@stage("receipts")
def receipts(
    ctx: BatchContext,
    validated: Validated,
    candidate: Candidate,
    evaluated: Evaluated,
    registered: Registered,
) -> Done:
    """One receipt per request, keyed hashes only; accepted ones name the candidate, pending promotion."""
    verdict = evaluated.verdict
    evidence = {
        "status": PENDING_PROMOTION,
        "verdict": verdict.status,
        "gates_passed": verdict.passed,
        "evidence": verdict.evidence,
        "evidence_mode": evaluated.mode,
        "action": candidate.action,
    }
    if evaluated.bank_verdict is not None:
        evidence["bank_verdict"] = evaluated.bank_verdict.status
    ctx.audit.issue_receipts(
        validated.judged,
        model_name=ctx.champion.name,
        model_version=registered.model_version,
        evidence=evidence,
    )
    return Done({})


@stage("close-requests")
def close_requests(ctx: BatchContext, validated: Validated, registered: Registered) -> Done:
    """Accepted requests become ``unlearned`` with the candidate's version; the rejected, ``rejected``."""
    accepted = [r.request_id for r in validated.accepted]
    close_in_queue(ctx.queue, ctx.batch_id, accepted, registered.model_version)
    return Done({})


@stage("close")
def close(ctx: BatchContext, registered: Registered) -> Done:
    """The version becomes the ``candidate``, the model card lists it, the working area goes, and a
    ``completed`` record closes the batch."""
    complete_candidate(ctx.champion.name, registered.model_version)
    maybe_fault("close")  # the window between the candidate alias and the `completed` record
    refresh_model_card(ctx.champion.name)
    ctx.audit.delete_work_area(ctx.work)
    ctx.audit.record("completed", decision="candidate", outputs={"model_version": registered.model_version})
    return Done({"status": "completed"})


@stage("reject")
def reject(ctx: BatchContext, validated: Validated) -> Done:
    """Validation accepted nothing: report, receipts and closed requests, and no model is touched."""
    why = "no request was accepted"
    outcome = {"action": "none", "reason": why}
    links = write_batch_report(
        ctx.audit,
        summary={**ctx.summary, **outcome, "source_version": ctx.champion.version},
        judged=validated.judged,
        hardness={},
        decision={},
        evaluation=None,
        verdict=None,
        drift={},
        plots={},
        folder=ctx.work / "report",
    )
    ctx.audit.issue_receipts(validated.judged, model_name=ctx.champion.name, model_version="", evidence={})
    close_in_queue(ctx.queue, ctx.batch_id, [], "")
    ctx.audit.delete_work_area(ctx.work)
    ctx.audit.record("completed", decision="rejected", reason=why)
    return Done({**outcome, **links, "status": "rejected"})
