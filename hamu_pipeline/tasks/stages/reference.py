"""The reference stage: what the candidate is judged against (docs/pipeline.md step 5).

Three modes. ``exact``: the model retrained without the forget rows (cached by the retain digest). ``bank``:
the lineage's reference bank, with no retrain. ``both``: the exact reference decides and the bank is judged
beside it, an audit of the bank. Which one a batch takes is :func:`reference_mode`, a plain function.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hamu.evaluation import MissingReferenceError
from hamu.governance.audit import LedgerRecord
from hamu.models import model_digest
from hamu.train import TrainedModel
from hamu_pipeline.tasks.config import BatchConfig
from hamu_pipeline.tasks.models import retrained_reference
from hamu_pipeline.tasks.stages.bank import Banked
from hamu_pipeline.tasks.stages.base import BatchContext, stage
from hamu_pipeline.tasks.stages.hardness import Gated
from hamu_pipeline.tasks.stages.split import Prepared


@dataclass(frozen=True)
class Reference:
    """``kind`` ``retrained`` (exact, for this retain set), ``proxy`` (another retain set's, labelled) or
    ``bank`` (no model: the bank's members stand in). ``mode`` is the evidence the batch uses."""

    trained: TrainedModel | None
    kind: str
    train_seconds: float
    mode: str = "exact"
    why: str = ""

    @property
    def model(self) -> Any:
        """The reference's network (a bank-only reference has none)."""
        if self.trained is None:
            raise MissingReferenceError(
                "this batch is judged by the reference bank: there is no retrained model"
            )
        return self.trained.model

    @property
    def exact(self) -> bool:
        return self.kind == "retrained"

    def summary(self) -> dict[str, Any]:
        return {"evidence_mode": self.mode, "evidence_mode_reason": self.why}


def reference_mode(
    config: BatchConfig,
    bank_available: bool,
    bank_batches_since_audit: int,
    action: str,
    *,
    audit: bool = False,
) -> tuple[str, str]:
    """``(mode, why)``: judge by the exact reference, the bank, or both.

    Both whenever the exact reference is trained anyway (the outcome is the retrain, or an audit is due, or
    the bank's evidence was inconclusive): the bank is then judged beside the exact reference, for free.
    """
    if config.reference_mode == "exact" or not bank_available:
        why = "reference_mode is exact" if config.reference_mode == "exact" else "no reference bank to use"
        return "exact", why
    if audit:
        return "both", "the bank's evidence was inconclusive: the exact reference decides"
    if action == "retrain":
        return "both", "the outcome is the exact retrain; the bank judges it too"
    if config.reference_mode == "both":
        return "both", "reference_mode is both"
    if config.reference_mode == "auto" and bank_batches_since_audit + 1 >= config.bank_audit_every:
        return "both", f"sampled exact audit of the bank (every {config.bank_audit_every} batches)"
    return "bank", "the lineage's reference bank (no retrain)"


def bank_batches_since_audit(records: Sequence[LedgerRecord]) -> int:
    """Batches judged by the bank alone since the last one that also trained the exact reference."""
    count = 0
    for record in reversed(records):
        if record.step != "reference":
            continue
        if record.decision == "bank":
            count += 1
        elif record.decision == "both":
            break
    return count


def trains_reference(config: BatchConfig, action: str) -> bool:
    """Whether the batch may train the exact reference when none is cached: when asked to, and always when
    the batch's outcome is the retrain itself."""
    return config.train_reference or action == "retrain"


def usable_reference(model: TrainedModel | None, kind: str, action: str) -> TrainedModel:
    """The reference the batch goes on with, or the error that explains why there is none it may use.

    No reference at all stops the batch; a proxy may judge an unlearned candidate (labelled as such) but can
    never be the outcome of a retrain, since it was trained on another retain set.
    """
    if model is None:
        raise MissingReferenceError(
            "no retrained reference for this retain set and train_reference is off: enable it "
            "(BatchConfig.train_reference) so that the batch trains the reference it is judged against"
        )
    if action == "retrain" and kind != "retrained":
        raise MissingReferenceError("retraining was chosen but only a proxy reference exists")
    return model


@stage("reference", rerunnable=True)
def reference(
    ctx: BatchContext, prepared: Prepared, gated: Gated, banked: Banked, audit: bool = False
) -> Reference:
    """Choose the evidence; for exact or both, load the cached exact reference for this retain set, or train
    it, or fall back to a labelled proxy."""
    since = bank_batches_since_audit(ctx.audit.ledger.records()) if banked.available else 0
    mode, why = reference_mode(ctx.config, banked.available, since, gated.action, audit=audit)
    if mode == "bank":
        ctx.audit.record("reference", decision=mode, reason=why, params=banked.describe())
        return Reference(None, "bank", 0.0, mode, why)
    train = trains_reference(ctx.config, gated.action) or mode == "both"
    found, kind, seconds = retrained_reference(ctx.paths, prepared.split, ctx.champion, train=train)
    model = usable_reference(found, kind, gated.action)
    ctx.audit.record(
        "reference",
        decision=mode,
        reason=why,
        params={"kind": kind, "train_seconds": round(seconds, 3)},
        outputs={"weights": model_digest(model.model)},
    )
    return Reference(model, kind, seconds, mode, why)
