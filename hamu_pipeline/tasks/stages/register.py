"""The register stage: the candidate becomes a model version with its lineage (erasure manifest, digests,
evidence, drift, the ledger anchor), without an alias yet (docs/pipeline.md step 8).

Not re-runnable: a second attempt would register a second version."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hamu.governance.audit import ANCHOR_TAG
from hamu.governance.audit.provenance import code_version
from hamu_pipeline.tasks.registration import register_candidate
from hamu_pipeline.tasks.stages.base import BatchContext, stage
from hamu_pipeline.tasks.stages.evaluate import Evaluated
from hamu_pipeline.tasks.stages.intake import Validated
from hamu_pipeline.tasks.stages.split import Prepared
from hamu_pipeline.tasks.stages.unlearn import Candidate


@dataclass(frozen=True)
class Registered:
    model_version: str

    def summary(self) -> dict[str, Any]:
        return {"model_version": self.model_version}


def version_tags(
    ctx: BatchContext, validated: Validated, prepared: Prepared, candidate: Candidate, evaluated: Evaluated
) -> dict[str, str]:
    """What a reviewer reads on the version: where it came from, what it erased, and how it was judged."""
    head = ctx.audit.ledger.head()
    verdict, drift = evaluated.verdict, evaluated.drift
    return {
        "batch_id": ctx.batch_id,
        "prefect_flow_run_id": ctx.flow_run_id,
        "source_version": ctx.champion.version,
        "code_version": code_version(),
        ANCHOR_TAG: head.to_tag() if head else "",  # a ledger cut back before this point is then detected
        "action": candidate.action,
        "gates_passed": str(verdict.passed),
        "verdict": verdict.status,
        "evidence": verdict.evidence,
        "erased_in_batch": str(len(validated.accepted)),
        "carried_over": str(len(prepared.plan.carried_over)),
        "retrain_recommended": "; ".join(drift.breaches)[:500],
        **drift.state.to_tags(),
    }


@stage("register")
def register(
    ctx: BatchContext, validated: Validated, prepared: Prepared, candidate: Candidate, evaluated: Evaluated
) -> Registered:
    """Register the candidate with its erasure manifest next to its checkpoint; no alias moves here."""
    metadata = dict(candidate.source.metadata)  # a retrain carries the reference's featurizer and config
    metadata.update(
        role="unlearned" if candidate.action == "unlearn" else "retrained",
        data_digest=prepared.split.retain_digest,
        data_size=len(prepared.retain[1]),
        batch_id=ctx.batch_id,
        source_version=ctx.champion.version,
    )
    metadata.pop("split", None)
    manifest = prepared.plan.manifest_after
    version = register_candidate(
        name=ctx.champion.name,
        model=candidate.model,
        metadata=metadata,
        example=candidate.source.featurizer.encode(prepared.split.test.select(range(2))),
        report_path=evaluated.report_path,
        manifest=manifest,
        tags=version_tags(ctx, validated, prepared, candidate, evaluated),
    )
    number = str(version.version)
    ctx.audit.record(
        "register",
        decision="registered",
        params={"erased_records": len(manifest), "carried_over": len(prepared.plan.carried_over)},
        outputs={"model_version": number, "weights": candidate.weights, "erasures": manifest.digest()},
    )
    return Registered(number)
