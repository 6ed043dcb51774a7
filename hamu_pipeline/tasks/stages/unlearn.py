"""The unlearn stage: drive the champion to the reference's forget loss with the batch's method, or take
the exact retrain when the gate chose it or the target was not reached (docs/pipeline.md step 6)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import mlflow
from torch import nn

from hamu.controller import ForgetTarget
from hamu.models import model_digest
from hamu.train import TrainedModel
from hamu.unlearner import StepRecord
from hamu_pipeline.tasks.models import ServedModel, candidate_source, retrained_reference
from hamu_pipeline.tasks.stages.bank import Banked
from hamu_pipeline.tasks.stages.base import BatchContext, stage
from hamu_pipeline.tasks.stages.hardness import Gated
from hamu_pipeline.tasks.stages.reference import Reference
from hamu_pipeline.tasks.stages.split import Prepared
from hamu_pipeline.tasks.unlearning import (
    AccuracyTarget,
    accuracy_check,
    bank_accuracy_target,
    bank_forget_target,
    encoded_for,
    exact_accuracy_target,
    forget_target,
    retrain_instead,
    run_unlearning,
    target_summary,
)


@dataclass(frozen=True)
class Candidate:
    """The batch's model and how it was made.

    ``action`` is the outcome (``unlearn`` or ``retrain``); ``planned`` what the gate chose. They differ
    when a target-driven run missed its target and the retrain took its place (``fallback`` says why).
    """

    model: nn.Module
    source: ServedModel | TrainedModel
    action: str
    planned: str
    stop: str
    steps: int
    seconds: float
    weights: str
    champion_weights: str
    target: dict[str, Any] = field(default_factory=dict)
    fallback: str = ""
    history: Sequence[StepRecord] = ()
    tensor_names: tuple[str, ...] = ()
    #: The exact retrain when it is the outcome (also when the bank judged and the target was missed).
    retrained: TrainedModel | None = None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.action}
        if self.action != self.planned:
            out["reason"] = self.stop
        if self.fallback:
            out["fallback"] = self.fallback
            out["reason"] = self.fallback
        return out


def exact_retrain(ctx: BatchContext, prepared: Prepared, reference: Reference) -> TrainedModel:
    """The exact retrain: the reference when it was trained, else trained now (a bank-judged batch whose
    unlearning missed its target)."""
    if reference.exact and reference.trained is not None:
        return reference.trained
    found, _, _ = retrained_reference(ctx.paths, prepared.split, ctx.champion, train=True)
    if found is None:
        raise RuntimeError("the exact retrain could not be trained")
    return found


def unlearning_target(
    ctx: BatchContext, prepared: Prepared, reference: Reference, banked: Banked
) -> tuple[ForgetTarget, AccuracyTarget] | None:
    """The forget loss to drive unlearning to, and the forget accuracy to land near: the exact reference's,
    else the bank's estimates."""
    cfg, champion, forget = ctx.config, ctx.champion, prepared.forget
    if not cfg.to_target:
        return None
    policy = cfg.verdict_policy()
    if reference.exact and reference.trained is not None:
        ref_inputs = encoded_for(reference.trained, champion.featurizer, prepared.split.forget, forget[0])
        return (
            forget_target(champion, reference.model, forget, ref_inputs, policy, cfg.check_every),
            exact_accuracy_target(champion, reference.model, forget, ref_inputs, policy),
        )
    if banked.view is not None:
        return (
            bank_forget_target(champion, forget, prepared.test, banked.view, policy, cfg.check_every),
            bank_accuracy_target(champion, forget, prepared.test, banked.view, policy),
        )
    return None


@stage("unlearn", rerunnable=True)
def unlearn(
    ctx: BatchContext, prepared: Prepared, gated: Gated, reference: Reference, banked: Banked
) -> Candidate:
    """Unlearn (to the reference's or the bank's forget loss when ``to_target``), or register the exact
    retrain."""
    cfg, champion = ctx.config, ctx.champion
    planned = gated.action
    retrained: TrainedModel | None = None
    if planned == "unlearn":
        targets = unlearning_target(ctx, prepared, reference, banked)
        target = targets[0] if targets is not None else None
        result, seconds = run_unlearning(
            champion, prepared.retain, prepared.forget, cfg, ctx.audit.mlflow_run_id, target
        )
        target_params = target_summary(result, target)
        if targets is not None:
            target_params["target_source"] = "exact reference" if reference.exact else "reference bank"
            target_params.update(accuracy_check(result.model, prepared.forget, targets[1]))
        fallback = retrain_instead(target_params, result.steps_applied)
        if fallback:
            retrained = exact_retrain(ctx, prepared, reference)
            action, model, stop = "retrain", retrained.model, fallback
        else:
            action, model, stop = "unlearn", result.model, result.stop_reason
        steps, history, names = result.steps_applied, result.history, tuple(result.tensor_names)
    else:
        retrained = exact_retrain(ctx, prepared, reference)
        stop = gated.fallback or "retrained"
        action, model, seconds, steps = "retrain", retrained.model, reference.train_seconds, 0
        target_params, fallback, history, names = {}, gated.fallback, [], ()
    mlflow.log_metrics({"unlearn_seconds": seconds, "steps_applied": float(steps)})
    candidate = Candidate(
        model=model,
        source=candidate_source(champion, retrained, action),
        action=action,
        planned=planned,
        stop=stop,
        steps=steps,
        seconds=seconds,
        weights=model_digest(model),
        champion_weights=model_digest(champion.model),
        target=target_params,
        fallback=fallback,
        history=tuple(history),
        tensor_names=names,
        retrained=retrained,
    )
    ctx.audit.record(
        "unlearn",
        decision=action,
        reason=stop,
        params={
            "method": cfg.method if planned == "unlearn" else "exact-retrain",
            "steps": steps,
            **target_params,
        },
        inputs={"champion_weights": candidate.champion_weights},
        outputs={"weights": candidate.weights},
    )
    return candidate
