"""Run the unlearner on the champion, streaming step diagnostics to MLflow (CUDA when present).

With a forget target (the default in the batch flow) the run is driven by :func:`hamu.unlearn_to_target`
until the forget loss on a fixed slice of the forget rows is within the target's band of the retrained
reference's; the target itself comes from :func:`hamu.governance.verdict.forget_loss_target`, the same band
rule as
the ``forget-loss`` gate.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from mlflow import MlflowClient
from mlflow.entities import Metric

from hamu import StepRecord, UnlearnResult, unlearn
from hamu.controller import ForgetTarget, TargetResult, mean_loss, unlearn_to_target
from hamu.evaluation import compute_per_example
from hamu.evaluation.bank import expected_forget_loss
from hamu.governance.verdict import GatePolicy, forget_accuracy_target, forget_loss_target
from hamu_pipeline.tasks.bank import BankView
from hamu_pipeline.tasks.config import BatchConfig
from hamu_pipeline.tasks.loaders import batches
from hamu_pipeline.tasks.models import ServedModel, objective


class MlflowStepLogger:
    """Callback: buffer each step's scalars and flush them to MLflow in batches."""

    def __init__(self, run_id: str, every: int = 20) -> None:
        self.client = MlflowClient()
        self.run_id = run_id
        self.every = every
        self.buffer: list[Metric] = []

    def __call__(self, record: StepRecord) -> bool:
        now = int(time.time() * 1000)
        values = {"step.retain_loss": record.retain_loss, "step.forget_loss": record.forget_loss}
        values.update({f"step.{k}": v for k, v in record.diagnostics.items()})
        for key, value in values.items():
            if value is not None:
                self.buffer.append(Metric(key, float(value), now, record.step))
        if len(self.buffer) >= self.every * len(values):
            self.flush()
        return False

    def flush(self) -> None:
        for i in range(0, len(self.buffer), 900):
            self.client.log_batch(self.run_id, metrics=self.buffer[i : i + 900])
        self.buffer.clear()


EVAL_SLICE_ROWS = 512


def _fixed_slice(data: tuple[Any, Any], rows: int, seed: int) -> list[tuple[Any, Any]]:
    """A fixed random subset of ``data`` as one batch: the controller reads its losses every few steps.

    Not held out from unlearning: the gates judge every forget row, so the slice measures the same rows the
    run works on, and it stays the same rows at every check."""
    n = int(data[1].shape[0])
    idx = np.sort(np.random.default_rng(seed).choice(n, size=min(rows, n), replace=False))
    index = torch.as_tensor(idx)
    return [(data[0][index], data[1][index])]


def forget_target(
    champion: ServedModel,
    reference_model: torch.nn.Module,
    forget: tuple[Any, Any],
    reference_inputs: Any,
    policy: GatePolicy,
    check_every: int,
) -> ForgetTarget:
    """The reference's mean loss on the forget rows, within half the ``forget-loss`` gate's band."""
    orig = compute_per_example(champion.model, forget).loss
    ref = compute_per_example(reference_model, (reference_inputs, forget[1])).loss
    loss, tolerance, _ = forget_loss_target(orig.tolist(), ref.tolist(), policy=policy)
    return ForgetTarget(loss=loss, tolerance=tolerance, check_every=check_every)


@dataclasses.dataclass(frozen=True)
class AccuracyTarget:
    """The forget accuracy the candidate must land within (checked once the loss target is reached)."""

    accuracy: float
    tolerance: float

    def contains(self, value: float) -> bool:
        return abs(value - self.accuracy) <= self.tolerance


def exact_accuracy_target(
    champion: ServedModel,
    reference_model: torch.nn.Module,
    forget: tuple[Any, Any],
    reference_inputs: Any,
    policy: GatePolicy,
) -> AccuracyTarget:
    """The exact reference's forget accuracy, within half the ``forget-accuracy`` gate's band."""
    orig = compute_per_example(champion.model, forget).correct
    ref = compute_per_example(reference_model, (reference_inputs, forget[1])).correct
    accuracy, tolerance, _ = forget_accuracy_target(orig.tolist(), ref.tolist(), policy=policy)
    return AccuracyTarget(accuracy, tolerance)


def bank_accuracy_target(
    champion: ServedModel, forget: tuple[Any, Any], test: tuple[Any, Any], view: BankView, policy: GatePolicy
) -> AccuracyTarget:
    """The forget accuracy a model of the champion's strength would have without the forget rows: per row,
    the members that never saw it, shifted by the champion-minus-members accuracy gap on the test rows."""
    orig = compute_per_example(champion.model, forget).correct
    served_test = compute_per_example(champion.model, test).correct
    _, per_row = expected_forget_loss(
        view.correct["forget"], view.out["forget"], view.correct["test"], served_test
    )  # the same estimate, for correctness instead of loss
    accuracy, tolerance, _ = forget_accuracy_target(orig.tolist(), per_row.tolist(), policy=policy)
    return AccuracyTarget(accuracy, tolerance)


def accuracy_check(model: torch.nn.Module, forget: tuple[Any, Any], target: AccuracyTarget) -> dict[str, Any]:
    """The candidate's forget accuracy against the accuracy target, for the ledger and the fallback rule."""
    accuracy = float(compute_per_example(model, forget).correct.mean())
    return {
        "forget_accuracy": accuracy,
        "target_accuracy": target.accuracy,
        "accuracy_tolerance": target.tolerance,
        "accuracy_inside": target.contains(accuracy),
    }


def bank_forget_target(
    champion: ServedModel,
    forget: tuple[Any, Any],
    test: tuple[Any, Any],
    view: BankView,
    policy: GatePolicy,
    check_every: int,
) -> ForgetTarget:
    """The forget loss a model of the champion's strength would have without the forget rows, estimated from
    the bank's members that never saw each row (:func:`hamu.evaluation.bank.expected_forget_loss`), within
    half the ``forget-loss`` gate's band: the target when no exact reference is trained."""
    served_forget = compute_per_example(champion.model, forget).loss
    served_test = compute_per_example(champion.model, test).loss
    _, per_row = expected_forget_loss(view.loss["forget"], view.out["forget"], view.loss["test"], served_test)
    loss, tolerance, _ = forget_loss_target(served_forget.tolist(), per_row.tolist(), policy=policy)
    return ForgetTarget(loss=loss, tolerance=tolerance, check_every=check_every)


def run_unlearning(
    champion: ServedModel,
    retain: tuple[Any, Any],
    forget: tuple[Any, Any],
    config: BatchConfig,
    run_id: str,
    target: ForgetTarget | None = None,
) -> tuple[UnlearnResult, float]:
    cfg = config.unlearn_config()
    logger = MlflowStepLogger(run_id)
    start = time.perf_counter()
    model = copy.deepcopy(champion.model)
    retain_batches = batches(retain, config.batch_size, seed=config.seed)
    forget_batches = batches(forget, config.batch_size, seed=config.seed + 1)
    result: UnlearnResult
    if target is None:
        result = unlearn(
            model, objective(champion), retain_batches, forget_batches, cfg, callbacks=[logger], progress=True
        )
    else:
        eval_retain = _fixed_slice(retain, EVAL_SLICE_ROWS, config.seed + 3)
        # the retain set may get no worse than the forget set may miss its target by
        ceiling = mean_loss(champion.model, F.cross_entropy, eval_retain, device="cpu") + target.tolerance
        result = unlearn_to_target(
            model,
            objective(champion),
            retain_batches,
            forget_batches,
            cfg,
            dataclasses.replace(target, retain_ceiling=ceiling),
            eval_forget=_fixed_slice(forget, EVAL_SLICE_ROWS, config.seed + 2),
            eval_retain=eval_retain,
            max_update_norm=config.max_update_norm,
            progress=True,
            measure_fn=F.cross_entropy,  # the target and the ceiling are cross-entropy, as the gates read
        )
        for record in result.history:
            logger(record)
    seconds = time.perf_counter() - start
    logger.flush()
    result.model.cpu().eval()
    return result, seconds


def encoded_for(model: Any, shared: Any, rows: Any, default: Any) -> Any:
    """``rows`` as ``model`` reads them: re-encoded when its featurizer is not ``shared`` (a text retrain
    fitted its vocabulary on the retain rows), else ``default`` (the shared encoding)."""
    if model.featurizer.to_config() == shared.to_config():
        return default
    return model.featurizer.encode(rows)


def target_summary(result: UnlearnResult, target: ForgetTarget | None) -> dict[str, Any]:
    """What the ledger and the report say about a target-driven run: reached or not, and why."""
    if target is None or not isinstance(result, TargetResult):
        return {}
    why = (
        f"forget loss {result.initial_forget_loss:.4f} → {result.final_forget_loss:.4f}, target "
        f"{target.loss:.4f} ± {target.tolerance:.4f}, stop {result.stop_reason} after "
        f"{result.steps_taken} steps"
    )
    return {
        "target_loss": target.loss,
        "target_tolerance": target.tolerance,
        "reached": bool(result.reached),
        "initial_forget_loss": result.initial_forget_loss,
        "final_forget_loss": result.final_forget_loss,
        "steps_taken": result.steps_taken,
        "controller": result.decisions,
        "why": why,
    }


def retrain_instead(target_params: dict[str, Any], steps_applied: int) -> str:
    """Why the batch's outcome must be the exact retrain after a target-driven run, or "" if it need not.

    Three cases: the target was not reached within the step budget; or it was "reached" without a single step
    (the original already sits inside the band), which leaves a candidate identical to the original, still
    trained on the forget rows, that the verdict's integrity gates would fail anyway; or the mean forget loss
    was reached with a forget accuracy outside its own target (when one was checked).
    """
    if not target_params:
        return ""
    if not target_params["reached"]:
        return f"exact retrain: the forget target was not reached ({target_params['why']})"
    if steps_applied == 0:
        return f"exact retrain: the original already sits inside the forget target ({target_params['why']})"
    if target_params.get("accuracy_inside") is False:
        return (
            "exact retrain: the forget loss reached its target but the forget accuracy "
            f"{target_params['forget_accuracy']:.4f} is outside {target_params['target_accuracy']:.4f} ± "
            f"{target_params['accuracy_tolerance']:.4f} (the rows' distribution, not only their mean loss, "
            f"must match the reference; {target_params['why']})"
        )
    return ""
