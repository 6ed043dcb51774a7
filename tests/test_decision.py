"""The hardness gate on real hardness reports from a small model."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from hamu.governance.decision import CostEstimate, decide
from hamu.hardness import HardnessReport, assess_hardness
from hamu.quickstart import digits_mlp, digits_split, train_briefly


@pytest.fixture(scope="module")
def report() -> HardnessReport:
    split = digits_split(0.0, seed=1)
    x = torch.cat([split.retain[0], split.forget[0]])
    y = torch.cat([split.retain[1], split.forget[1]])
    model = train_briefly(digits_mlp(1), (x, y))
    before = [p.detach().clone() for p in model.parameters()]
    rep = assess_hardness(
        model, F.cross_entropy, [split.retain], [split.forget], lr=0.01, batches=2, device="cpu"
    )
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)), "model changed"
    return rep


def test_report_is_consistent(report: HardnessReport) -> None:
    assert report.batches == 2
    assert report.kappa == pytest.approx(sum(report.kappa_per_tensor.values()), rel=1e-4, abs=1e-8)
    assert -1.0 <= report.cosine <= 1.0
    assert report.kappa1 == pytest.approx(
        -report.constraint * report.retain_grad_norm / (0.01 * report.retain_grad_norm)
    )
    assert report.to_dict()["verdict"] == report.verdict


def test_feasible_cheap_unlearning_proceeds(report: HardnessReport) -> None:
    assert report.feasible
    easy = dataclasses.replace(report, degradation_fraction=0.0)
    decision = decide(easy, CostEstimate(unlearn_seconds=1.0, retrain_seconds=10.0))
    assert decision.action == "unlearn" and not decision.warnings


def test_cheaper_retrain_wins(report: HardnessReport) -> None:
    easy = dataclasses.replace(report, degradation_fraction=0.0)
    decision = decide(easy, CostEstimate(unlearn_seconds=5.0, retrain_seconds=0.55))
    assert decision.action == "retrain" and "cheaper" in decision.reason


@pytest.mark.parametrize(
    "field,value,verdict",
    [("feasible_fraction", 0.5, "infeasible"), ("degradation_fraction", 1.0, "degradation-unavoidable")],
)
def test_hard_verdicts_gate(report: HardnessReport, field: str, value: float, verdict: str) -> None:
    hard = dataclasses.replace(report, **{field: value})
    assert hard.verdict == verdict
    stopped = decide(hard, CostEstimate(1.0, 10.0), policy="stop")
    assert stopped.action == "retrain" and "hardness gate" in stopped.reason
    warned = decide(hard, CostEstimate(1.0, 10.0), policy="warn")
    assert warned.action == "unlearn" and warned.warnings


def test_bad_policy_and_cost(report: HardnessReport) -> None:
    with pytest.raises(ValueError, match="stop, warn"):
        decide(report, policy="maybe")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unlearn_seconds"):
        CostEstimate(-1.0, 1.0)


def test_report_times_the_runs_steps(report: HardnessReport) -> None:
    # by default the HAMU variant assessed, on the device asked for, as many steps as batches
    assert (report.method, report.device, report.timed_steps) == ("hamu-q", "cpu", 2)
    assert report.seconds_per_step > 0 and math.isfinite(report.seconds_per_step)
    assert report.to_dict()["seconds_per_step"] == report.seconds_per_step


def test_drift_over_budget_forces_retrain_whatever_the_geometry(report: HardnessReport) -> None:
    easy = dataclasses.replace(report, degradation_fraction=0.0)
    cheap = CostEstimate(unlearn_seconds=1.0, retrain_seconds=100.0)
    assert decide(easy, cheap).action == "unlearn"
    forced = decide(easy, cheap, force_retrain=["cumulative utility drift 0.05 > budget 0.03"])
    assert forced.action == "retrain" and "cumulative utility drift" in forced.reason
    advised = decide(easy, cheap, advisories=["a full retrain is recommended"])
    assert advised.action == "unlearn" and advised.warnings == ("a full retrain is recommended",)
