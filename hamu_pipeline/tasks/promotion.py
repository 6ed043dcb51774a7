"""Promotion: the one place where ``champion`` moves forward and requests become ``erased``.

The evidence is re-judged from the files the batch left (its evaluation report, checked against the digest
in its ledger record, and the facts of its unlearning record), by the same
:func:`hamu.governance.verdict.decide` the
batch used. A refused promotion changes nothing: aliases, queue and ledger stay exactly as they were.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from hamu.governance.audit import KeyedHasher, Ledger, LedgerRecord
from hamu.governance.audit.provenance import file_sha256
from hamu.governance.promotion import PromotionDecision, decide_promotion, lineage_gates
from hamu.governance.requests import JudgedRequest, RequestQueue, Status
from hamu.governance.verdict import GatePolicy, RunFacts, Verdict, decide
from hamu_pipeline.tasks.audit import BatchAudit
from hamu_pipeline.tasks.registration import refresh_model_card
from hamu_pipeline.tasks.tracking import alias_version
from hamu_pipeline.tasks.trail import verified_manifest


class PromotionRefused(RuntimeError):
    """The batch cannot be promoted for a reason that is not a gate (unknown, failed, not a candidate)."""


@dataclass(frozen=True)
class BatchEvidence:
    """What the ledger and the audit folder hold about one batch's candidate."""

    batch_id: str
    status: str
    facts: RunFacts
    report: dict[str, Any] = field(default_factory=dict)


def batch_status(records: list[LedgerRecord]) -> str:
    """One of ``completed``, ``rejected`` (accepted nothing), ``failed``, ``running``, ``unknown``."""
    if not records:
        return "unknown"
    steps = {r.step: r for r in records}
    if "completed" in steps:
        return "rejected" if steps["completed"].decision == "rejected" else "completed"
    if "failed" in steps or "recover" in steps or "abandon-versions" in steps:
        return "failed"
    return "running"


def read_batch(audit_root: Path, batch_id: str) -> BatchEvidence:
    """The batch's status, run facts and evaluation report; refuses unknown, failed and running batches."""
    records = [r for r in Ledger(audit_root).records() if r.batch_id == batch_id]
    status = batch_status(records)
    if status != "completed":
        what = {
            "unknown": "no ledger record names this batch",
            "rejected": "it accepted no request, so it made no candidate",
            "failed": "it failed; its versions are abandoned",
            "running": "it has not completed",
        }[status]
        raise PromotionRefused(f"batch {batch_id!r} cannot be promoted: status {status} ({what})")
    by_step = {r.step: r for r in records}
    evaluate, unlearn = by_step.get("evaluate"), by_step.get("unlearn")
    if evaluate is None or unlearn is None or "evaluation" not in evaluate.artifacts:
        raise PromotionRefused(f"batch {batch_id!r} has no evaluation or unlearning record")
    path = audit_root / evaluate.artifacts["evaluation"]["path"]
    if not path.exists():
        raise PromotionRefused(f"batch {batch_id!r}: its evaluation report is missing ({path})")
    facts = RunFacts(
        action=str(unlearn.decision),
        steps_applied=int(unlearn.params.get("steps", 0)),
        candidate_weights=unlearn.outputs.get("weights", ""),
        original_weights=unlearn.inputs.get("champion_weights", ""),
        report_sha256_recorded=evaluate.artifacts["evaluation"]["sha256"],
        report_sha256_actual=file_sha256(path),
    )
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PromotionRefused(f"batch {batch_id!r}: its evaluation report is unreadable: {exc}") from None
    return BatchEvidence(batch_id, status, facts, report)


def candidate_version(batch_id: str) -> ModelVersion:
    found = MlflowClient().search_model_versions(f"tags.batch_id = '{batch_id}'")
    if len(found) != 1:
        raise PromotionRefused(f"expected one model version tagged batch_id={batch_id!r}, found {len(found)}")
    return found[0]


def removed_by(
    version: ModelVersion, record_ids: set[str], hasher: KeyedHasher, records: list[LedgerRecord]
) -> set[str]:
    """The record IDs among ``record_ids`` that ``version``'s erasure manifest lists as removed.

    The manifest is used only if it is the one the ledger recorded for ``version``
    (:func:`hamu_pipeline.tasks.trail.verified_manifest` raises
    :class:`hamu_pipeline.tasks.trail.ManifestMismatch` otherwise).
    """
    manifest = verified_manifest(version, records)
    return {r for r in record_ids if hasher.hash(r) in manifest}


def judge(
    evidence: BatchEvidence,
    version: ModelVersion,
    queue: RequestQueue,
    hasher: KeyedHasher,
    records: list[LedgerRecord],
    *,
    policy: GatePolicy,
    accept_insufficient_evidence: bool,
) -> tuple[Verdict, PromotionDecision]:
    verdict = decide(evidence.report, evidence.facts, policy=policy)
    removed = queue.erased_record_ids()
    carried = len(removed - removed_by(version, removed, hasher, records))
    lineage = lineage_gates(
        batch_status=(version.tags or {}).get("batch_status", ""),
        still_carried=carried,
        erased_total=len(removed),
    )
    return verdict, decide_promotion(
        verdict, lineage, accept_insufficient_evidence=accept_insufficient_evidence
    )


def promote(
    audit: BatchAudit,
    queue: RequestQueue,
    version: ModelVersion,
    verdict: Verdict,
    decision: PromotionDecision,
    override_reason: str,
) -> tuple[str, int]:
    """Record the promotion, move ``champion``, flip the requests it no longer carries to ``erased``, receipt.

    Order: everything that can refuse (the ledger-verified manifest) runs before any side effect; then the
    ledger record names the move before the alias makes it. A crash after the record leaves an alias that
    ``hamu audit verify`` reports and a re-run of ``hamu promote`` completes; the reverse order would leave
    a moved alias that no record explains. Returns the previous champion version and the number of
    requests now erased.
    """
    client = MlflowClient()
    name, number = version.name, str(version.version)
    unlearned = queue.list(Status.UNLEARNED)
    served = removed_by(version, {r.record_id for r in unlearned}, audit.hasher, audit.ledger.records())
    flipped = [r for r in unlearned if r.record_id in served]
    previous = alias_version(version.name, "champion")
    prev = str(previous.version) if previous else ""
    if prev == number:  # a re-run after a crash: keep the real predecessor as the rollback target
        prev = (version.tags or {}).get("previous_champion", "")
    audit.record(
        "promote",
        decision="promoted",
        reason=f"previous champion {prev or '-'}"
        + (f"; OVERRIDE insufficient evidence: {override_reason}" if decision.override_used else ""),
        params={
            "candidate": number,
            "verdict": verdict.to_dict(),
            "gates": [g.to_dict() for g in decision.gates],
            "override": override_reason if decision.override_used else "",
            "requests_erased": len(flipped),
        },
        outputs={"model": name, "champion": number},
    )
    client.set_model_version_tag(name, number, "previous_champion", prev)
    if decision.override_used:
        client.set_model_version_tag(name, number, "evidence_override", override_reason[:500])
    client.set_registered_model_alias(name, "champion", number)
    erased = queue.mark_served(served, number)
    rows = [JudgedRequest(r.request_id, r.record_id, "erased", "") for r in flipped]
    if rows:
        audit.issue_receipts(
            rows,
            model_name=name,
            model_version=number,
            evidence={
                "served": True,
                "verdict": verdict.status,
                "evidence": verdict.evidence,
                "override": override_reason if decision.override_used else "",
            },
            stage="served",
        )
    refresh_model_card(name)
    return prev, erased
