"""The deletion-batch flow: the stages of ``docs/pipeline.md``, in order (each one in
:mod:`hamu_pipeline.tasks.stages`).

Every stage appends its own hash-chained audit record. The champion alias is never moved here (promotion
is a separate, gated step), so a crash at any point leaves the served model as it was; claimed requests of
a dead batch are released by the next run.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect_dask import DaskTaskRunner

from hamu.evaluation import ReferenceSpec, ReferenceStats
from hamu_pipeline.tasks.config import BatchConfig
from hamu_pipeline.tasks.evaluation import shadow_specs, train_shadow
from hamu_pipeline.tasks.faults import check_fault_spec
from hamu_pipeline.tasks.reporting import publish
from hamu_pipeline.tasks.stages import (
    BatchContext,
    Prepared,
    bank,
    claim,
    close,
    close_requests,
    evaluate,
    guarded,
    hardness,
    new_batch_id,
    nothing_claimed,
    open_batch,
    receipts,
    reference,
    register,
    reject,
    report,
    retrain_after_failure,
    split,
    unlearn,
    validate,
)


@flow(name="deletion-batch")
def deletion_batch(config: BatchConfig | None = None, batch_id: str | None = None) -> dict[str, Any]:
    """Claim → validate → split → bank → hardness → reference → unlearn → evaluate → register → report →
    receipts → close. Returns the batch summary (also published as Prefect artifacts)."""
    check_fault_spec()
    with open_batch(config or BatchConfig(), batch_id or new_batch_id()) as ctx:
        claimed = claim(ctx)
        if not claimed.requests:
            return {**ctx.summary, **nothing_claimed(ctx.queue, ctx.batch_id)}
        with guarded(ctx, claimed):
            validated = validate(ctx, claimed)
            if not validated.accepted:
                reject(ctx, validated)
            else:
                prepared = split(ctx, validated)
                banked = bank(ctx, validated, prepared)
                gated = hardness(ctx, prepared, banked)
                ref = reference(ctx, prepared, gated, banked)
                candidate = unlearn(ctx, prepared, gated, ref, banked)
                shadow = None if banked.available else lira_statistics(ctx, prepared)
                evaluated = evaluate(ctx, prepared, ref, candidate, banked, shadow)
                if evaluated.needs_exact:  # the bank could not decide: the exact reference does
                    ref = reference(ctx, prepared, gated, banked, audit=True)
                    evaluated = evaluate(ctx, prepared, ref, candidate, banked, None, attempt=1)
                if ctx.config.retrain_on_fail and evaluated.fails(candidate):  # honour it with the retrain
                    gated = retrain_after_failure(gated, evaluated.verdict.reason)
                    ref = reference(ctx, prepared, gated, banked)
                    candidate = unlearn(ctx, prepared, gated, ref, banked)
                    evaluated = evaluate(ctx, prepared, ref, candidate, banked, None, attempt=2)
                registered = register(ctx, validated, prepared, candidate, evaluated)
                report(ctx, validated, gated, candidate, evaluated)
                receipts(ctx, validated, candidate, evaluated, registered)
                close_requests(ctx, validated, registered)
                close(ctx, registered)
        ctx.summary["stage_seconds"] = ctx.timings
        publish(ctx.summary)
        return ctx.summary


def lira_statistics(ctx: BatchContext, prepared: Prepared) -> list[ReferenceStats] | None:
    """The LiRA reference models' statistics on the evaluated rows (none when ``shadow_models`` < 2)."""
    k = ctx.config.shadow_models
    if k < 2:
        return None
    n_classes = len(prepared.split.spec.class_names)
    return shadow_references(shadow_specs(prepared.eval_splits(), k, ctx.config.seed, n_classes))


@flow(
    name="shadow-references",
    # prefect_dask's DaskTaskRunner subclasses the bare TaskRunner, whose (invariant) future type then
    # defaults to PrefectConcurrentFuture, so flow()'s TaskRunner[PrefectFuture[Any]] refuses it; it runs fine
    task_runner=DaskTaskRunner(cluster_kwargs={"n_workers": 1, "threads_per_worker": 2, "processes": False}),  # type: ignore[arg-type]
)
def shadow_references(specs: list[ReferenceSpec]) -> list[ReferenceStats]:
    """Train the LiRA reference models in parallel on a Dask cluster (one task per model)."""
    futures = train_shadow.map(specs)
    return [f.result() for f in futures]
