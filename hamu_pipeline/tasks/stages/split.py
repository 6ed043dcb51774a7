"""The split stage: what this batch forgets (its accepted records plus earlier erasures the champion still
carries), what it retains, and their tensors and digests (``hamu.governance.lineage``, docs/pipeline.md step
3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np

from hamu.data import Split, split_by_ids
from hamu.governance.lineage import ForgetPlan, plan_forget
from hamu_pipeline.tasks.registration import log_dataset_digests
from hamu_pipeline.tasks.stages.base import BatchContext, stage
from hamu_pipeline.tasks.stages.intake import Validated

Tensors = tuple[Any, Any]


@dataclass(frozen=True)
class Prepared:
    """The batch's data: the forget plan, the dataset split, its tensors, and the retain rows evaluated."""

    plan: ForgetPlan
    split: Split
    retain: Tensors
    forget: Tensors
    test: Tensors
    #: Sorted indices into ``retain`` of the rows the evaluation reads (at most ``eval_retain_rows``)
    eval_rows: np.ndarray

    @property
    def digests(self) -> dict[str, str]:
        """Retain, forget and test digests; the forget digest is keyed (``hmac-sha256:``)."""
        s = self.split
        return {"retain": s.retain_digest, "forget": s.forget_digest, "test": s.test_digest}

    def eval_splits(self) -> dict[str, Tensors]:
        """The rows the evaluation judges: the sampled retain rows, every forget row, every test row."""
        keep = self.eval_rows
        return {
            "retain": (self.retain[0][keep], self.retain[1][keep]),
            "forget": self.forget,
            "test": self.test,
        }

    def summary(self) -> dict[str, Any]:
        return {"carried_over": len(self.plan.carried_over)}


@stage("split", rerunnable=True)
def split(ctx: BatchContext, validated: Validated) -> Prepared:
    """Plan the forget set from the champion's erasure manifest, split, encode and digest the three sets."""
    accepted = [r.record_id for r in validated.accepted]
    erased = set(validated.erased_before)
    plan = plan_forget(ctx.data.manifest_ids, accepted, erased, ctx.champion.manifest, ctx.hasher.hash)
    train = ctx.data.train
    if plan.absent:
        train = train.filter(lambda r: r["record_id"] not in plan.absent)
    parts = split_by_ids(train, ctx.data.test, list(plan.forget), keyed_hash=ctx.hasher.hash)
    feat = ctx.champion.featurizer
    retain, forget, test = (parts.tensors(p, feat) for p in ("retain", "forget", "test"))
    n_retain = len(retain[1])
    gen = np.random.default_rng(ctx.config.seed)
    rows = np.sort(gen.choice(n_retain, size=min(ctx.config.eval_retain_rows, n_retain), replace=False))
    prepared = Prepared(plan, parts, retain, forget, test, rows)
    log_dataset_digests(prepared.digests, parts.spec.name, parts.sizes())
    mlflow.log_params({f"size_{k}": v for k, v in parts.sizes().items()})
    ctx.audit.record(
        "split",
        params={
            "sizes": parts.sizes(),
            "previously_erased": len(erased),
            "absent_from_source": len(plan.absent),
            "carried_over": len(plan.carried_over),
        },
        inputs={**prepared.digests, "erasures_after": plan.manifest_after.digest()},
    )
    return prepared
