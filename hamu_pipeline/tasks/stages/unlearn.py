"""The unlearn stage: drive the champion to the reference's forget loss with the batch's method, or take
the exact retrain when the gate chose it or the target was not reached (docs/pipeline.md step 6)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import mlflow
from torch import nn

from hamu.models import model_digest
from hamu.train import TrainedModel
from hamu.unlearner import StepRecord
from hamu_pipeline.tasks.models import ServedModel, candidate_source
from hamu_pipeline.tasks.stages.base import BatchContext, stage
from hamu_pipeline.tasks.stages.hardness import Gated
from hamu_pipeline.tasks.stages.reference import Reference
from hamu_pipeline.tasks.stages.split import Prepared
from hamu_pipeline.tasks.unlearning import (
    encoded_for,
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

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.action}
        if self.action != self.planned:
            out["reason"] = self.stop
        if self.fallback:
            out["fallback"] = self.fallback
        return out


@stage("unlearn", rerunnable=True)
def unlearn(ctx: BatchContext, prepared: Prepared, gated: Gated, reference: Reference) -> Candidate:
    """Unlearn (to the reference's forget loss when ``to_target``), or register the exact retrain."""
    cfg, champion = ctx.config, ctx.champion
    planned = gated.action
    if planned == "unlearn":
        target = None
        if cfg.to_target and reference.exact:
            forget = prepared.forget
            ref_inputs = encoded_for(reference.trained, champion.featurizer, prepared.split.forget, forget[0])
            target = forget_target(
                champion, reference.model, forget, ref_inputs, cfg.verdict_policy(), cfg.check_every
            )
        result, seconds = run_unlearning(
            champion, prepared.retain, prepared.forget, cfg, ctx.audit.mlflow_run_id, target
        )
        target_params = target_summary(result, target)
        fallback = retrain_instead(target_params, result.steps_applied)
        action, model, stop = (
            ("retrain", reference.model, fallback)
            if fallback
            else ("unlearn", result.model, result.stop_reason)
        )
        steps, history, names = result.steps_applied, result.history, tuple(result.tensor_names)
    else:
        action, model, stop, seconds, steps = (
            "retrain",
            reference.model,
            "retrained",
            reference.train_seconds,
            0,
        )
        target_params, fallback, history, names = {}, "", [], ()
    mlflow.log_metrics({"unlearn_seconds": seconds, "steps_applied": float(steps)})
    candidate = Candidate(
        model=model,
        source=candidate_source(champion, reference.trained, action),
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
