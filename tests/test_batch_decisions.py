"""The deletion batch's decisions, tested without Prefect, MLflow or a queue.

The flow only lists stages; what it decides lives in plain functions of ``hamu_pipeline.tasks.stages``: the
path
(unlearn or retrain: hardness verdict, measured cost, the lineage's drift), which reference may be trained
and used, the verdict's wiring (a candidate that is the original's weights fails), and the drift outcome
after the batch. Each is run here on real (tiny) digits models, with a bad case that must come out wrong.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hamu.evaluation import EvaluationConfig, MissingReferenceError, MLPTrainer, evaluate_models
from hamu.governance.drift import DriftBudget, DriftState
from hamu.hardness import HardnessReport, assess_hardness
from hamu.models import model_digest
from hamu.train import TrainedModel
from hamu_pipeline.tasks.config import BatchConfig
from hamu_pipeline.tasks.models import ServedModel
from hamu_pipeline.tasks.stages import (
    Candidate,
    choose_path,
    drift_outcome,
    judge,
    trains_reference,
    usable_reference,
)

Data = tuple[torch.Tensor, torch.Tensor]


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def models(
    digits_data: tuple[torch.Tensor, torch.Tensor, np.ndarray], single_thread: None
) -> Iterator[dict[str, Any]]:
    """An original trained on forget ∪ retain, the reference trained on retain only, and their splits."""
    x, y, perm = digits_data
    forget, retain, test = perm[:100], perm[100:300], perm[300:600]
    trainer = MLPTrainer(x, y, n_classes=10, steps=300, lr=1e-2)
    original, reference = trainer(np.r_[forget, retain], 0), trainer(retain, 0)
    splits = {s: (x[i], y[i]) for s, i in (("retain", retain), ("forget", forget), ("test", test))}
    candidates = {"copy": copy.deepcopy(original), "reference": reference}
    report = evaluate_models(
        {"original": original, "retrained": reference, **candidates},
        splits,
        config=EvaluationConfig(n_resamples=300),
    ).report.to_dict()
    yield {"original": original, "reference": reference, "splits": splits, "report": report}


@pytest.fixture(scope="module")
def hardness_report(models: dict[str, Any]) -> HardnessReport:
    splits = models["splits"]
    return assess_hardness(
        models["original"], F.cross_entropy, [splits["retain"]], [splits["forget"]], lr=0.01, batches=2,
        device="cpu",
    )  # fmt: skip


def _champion(
    model: nn.Module, *, train_seconds: float = 1e6, tags: dict[str, str] | None = None
) -> ServedModel:
    return ServedModel(
        name="hamu-test",
        version="3",
        model=model,
        metadata={"data_size": 300, "train_seconds": train_seconds},
        featurizer=None,  # type: ignore[arg-type]  # no decision here encodes rows
        checkpoint=Path("unused"),
        tags=tags or {},
    )


def _candidate(model: nn.Module, original: nn.Module, *, action: str, steps: int) -> Candidate:
    return Candidate(
        model=model,
        source=_champion(original),
        action=action,
        planned=action,
        stop="target" if action == "unlearn" else "retrained",
        steps=steps,
        seconds=1.0,
        weights=model_digest(model),
        champion_weights=model_digest(original),
    )


def _feasible(report: HardnessReport) -> HardnessReport:
    """The same report with HAMU's verdict out of the way, so that cost and drift decide."""
    return dataclasses.replace(report, feasible_fraction=1.0, degradation_fraction=0.0)


# ------------------------------------------------------------------------------------ the path: cost gate
def test_cost_gate_retrains_when_retraining_is_cheaper(hardness_report: HardnessReport) -> None:
    report, cfg = _feasible(hardness_report), BatchConfig(method="hamu-q", max_steps=100)
    costly_champion = _champion(nn.Linear(1, 1), train_seconds=1e6)
    costly = choose_path(report, 1.0, costly_champion, 200, cfg, bank_available=True)
    assert costly.action == "unlearn", costly.reason
    # without a bank, certifying the unlearned model needs the exact reference: that retrain is paid anyway
    certified = choose_path(report, 1.0, costly_champion, 200, cfg)
    assert certified.action == "retrain" and "exact reference's retrain" in certified.reason, certified.reason
    cheap = choose_path(report, 1.0, _champion(nn.Linear(1, 1), train_seconds=1.0), 200, cfg)
    assert cheap.action == "retrain" and "retraining is cheaper" in cheap.reason, cheap.reason
    assert cheap.cost is not None and cheap.cost.unlearn_seconds == pytest.approx(100.0)
    # the champion's recorded training time is scaled to this batch's retain set (300 rows → 200)
    assert cheap.cost.retrain_seconds == pytest.approx(1.0 * 200 / 300)
    off = choose_path(report, 1.0, _champion(nn.Linear(1, 1), train_seconds=1.0), 200, cfg.model_copy(
        update={"cost_aware": False}))  # fmt: skip
    assert off.action == "unlearn" and off.cost is None


def test_exact_request_always_retrains(hardness_report: HardnessReport) -> None:
    cfg = BatchConfig(exact=True)
    decision = choose_path(_feasible(hardness_report), 1.0, _champion(nn.Linear(1, 1)), 200, cfg)
    assert decision.action == "retrain" and "exact retraining was requested" in decision.reason


# ---------------------------------------------------------------------------------- the path: drift budget
@pytest.mark.parametrize("drift_action", ["recommend", "retrain"])
def test_a_lineage_over_its_drift_budget(hardness_report: HardnessReport, drift_action: str) -> None:
    """Over budget (read from the champion's version tags): forced retrain under ``retrain``, an advisory
    warning under ``recommend``; within budget, neither."""
    cfg = BatchConfig(drift_action=drift_action, drift_max_batches=3)
    report = _feasible(hardness_report)
    within = _champion(nn.Linear(1, 1), tags=DriftState(batches=2).to_tags())
    over = _champion(nn.Linear(1, 1), tags=DriftState(batches=4).to_tags())
    calm = choose_path(report, 1.0, within, 200, cfg, bank_available=True)
    assert calm.action == "unlearn" and not calm.warnings
    decision = choose_path(report, 1.0, over, 200, cfg, bank_available=True)
    if drift_action == "retrain":
        assert decision.action == "retrain" and "drift budget of the source version 3" in decision.reason
    else:
        assert decision.action == "unlearn"
        assert any("a full retrain is recommended" in w for w in decision.warnings), decision.warnings


# ---------------------------------------------------------------------------------- the reference choice
def test_which_reference_may_be_trained() -> None:
    assert trains_reference(BatchConfig(), "unlearn")
    off = BatchConfig(train_reference=False)
    assert not trains_reference(off, "unlearn")
    assert trains_reference(off, "retrain")  # a retrain's outcome *is* the reference


def test_which_reference_may_be_used() -> None:
    trained = TrainedModel(nn.Linear(1, 1), None, {})  # type: ignore[arg-type]
    assert usable_reference(trained, "retrained", "retrain") is trained
    assert usable_reference(trained, "proxy", "unlearn") is trained  # judged, labelled proxy
    with pytest.raises(MissingReferenceError, match="only a proxy"):
        usable_reference(trained, "proxy", "retrain")
    with pytest.raises(MissingReferenceError, match="train_reference is off"):
        usable_reference(None, "missing", "unlearn")


# ---------------------------------------------------------------------------------- the verdict's wiring
def test_a_copy_of_the_original_fails_and_the_reference_passes(models: dict[str, Any]) -> None:
    """The same report, judged for two candidates: the byte-for-byte copy fails (the integrity gate sees its
    weights are the original's, and the evidence shows it still knows the forget set); the exact retrain
    passes."""
    original, reference, report = models["original"], models["reference"], models["report"]
    cfg = BatchConfig()
    copy_report = {**report, "gaps": {**report["gaps"], "unlearned": report["gaps"]["copy"]}}
    copy_report["forget_quality"] = {
        **report["forget_quality"],
        "unlearned": report["forget_quality"]["copy"],
    }
    copy_report["utility"] = {**report["utility"], "unlearned": report["utility"]["copy"]}
    no_op = judge(copy_report, _candidate(original, original, action="unlearn", steps=4),
                  cfg.verdict_policy())  # fmt: skip
    assert not no_op.passed and no_op.status == "fail"
    assert "weights-changed" in {g.name for g in no_op.failing}, [g.name for g in no_op.failing]

    ref_report = {**report, "gaps": {**report["gaps"], "unlearned": report["gaps"]["reference"]}}
    ref_report["forget_quality"] = {
        **report["forget_quality"], "unlearned": report["forget_quality"]["reference"]
    }  # fmt: skip
    ref_report["utility"] = {**report["utility"], "unlearned": report["utility"]["reference"]}
    exact = judge(
        ref_report, _candidate(reference, original, action="retrain", steps=0), cfg.verdict_policy()
    )
    assert exact.status == "pass", exact.reason


def test_an_unlearning_run_without_a_step_fails(models: dict[str, Any]) -> None:
    original, reference, report = models["original"], models["reference"], models["report"]
    ref_report = {**report, "gaps": {**report["gaps"], "unlearned": report["gaps"]["reference"]}}
    ref_report["forget_quality"] = {
        **report["forget_quality"], "unlearned": report["forget_quality"]["reference"]
    }  # fmt: skip
    ref_report["utility"] = {**report["utility"], "unlearned": report["utility"]["reference"]}
    lazy = judge(
        ref_report, _candidate(reference, original, action="unlearn", steps=0), BatchConfig().verdict_policy()
    )
    assert not lazy.passed and lazy.status == "fail", lazy.reason
    assert "steps-applied" in {g.name for g in lazy.failing}


# ---------------------------------------------------------------------------------------- drift outcome
def test_drift_after_the_batch(models: dict[str, Any]) -> None:
    """An exact retrain resets the lineage; unlearning adds a batch and its gaps, and over budget the
    recommendation follows ``drift_action``."""
    original, report = models["original"], models["report"]
    report = {**report, "gaps": {**report["gaps"], "unlearned": report["gaps"]["copy"]}}
    report["utility"] = {**report["utility"], "unlearned": report["utility"]["copy"]}
    budget = DriftBudget(utility=0.5, mia=5.0, max_batches=3)
    source = DriftState(batches=3, utility=0.01, mia=0.1)
    exact = _candidate(original, original, action="retrain", steps=0)
    retrained = drift_outcome(source, exact, report, budget, "retrain")
    assert retrained.state == DriftState() and not retrained.breaches and retrained.recommendation == ""
    unlearned = _candidate(original, original, action="unlearn", steps=5)
    for action, advice in (("retrain", "the next batch retrains exactly"), ("recommend", "retrain fully")):
        after = drift_outcome(source, unlearned, report, budget, action)
        assert after.state.batches == 4 and after.state.mia > source.mia
        assert after.breaches and after.recommendation.startswith(advice), after.recommendation
        assert after.to_dict()["breaches"] == list(after.breaches)
    calm = drift_outcome(DriftState(), unlearned, report, budget, "retrain")
    assert calm.state.batches == 1 and not calm.breaches and calm.recommendation == ""
