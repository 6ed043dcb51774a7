"""The hardness gate's cost estimate and verdict on a real (tiny) digits MLP.

What is checked is *what* was timed (the device the run uses, the configured method's own step through the
method registry, how many steps), that the estimate is positive and finite, and that the gate follows it;
never the wall-time values themselves.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hamu.hardness
from hamu.core.transform import HamuConfig
from hamu.governance.decision import CostEstimate, decide
from hamu.hardness import HardnessReport, assess_hardness
from hamu.methods.registry import METHODS
from hamu.quickstart import train_briefly
from hamu.unlearner import resolve_device
from hamu_pipeline.flows.config import BatchConfig
from hamu_pipeline.tasks.hardness import assess, gate
from hamu_pipeline.tasks.models import ServedModel

Data = tuple[torch.Tensor, torch.Tensor]


@pytest.fixture(scope="module")
def digits(
    digits_data: tuple[torch.Tensor, torch.Tensor, np.ndarray], single_thread: None
) -> tuple[nn.Module, Data, Data]:
    """A briefly trained 64-32-10 MLP, its retain set (400 rows) and forget set (80 rows)."""
    x, y, perm = digits_data
    forget, retain = perm[:80], perm[80:480]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    train_briefly(model, (x[perm[:480]], y[perm[:480]]), steps=60)
    return model, (x[retain], y[retain]), (x[forget], y[forget])


def _assess(digits: tuple[nn.Module, Data, Data], **options: Any) -> HardnessReport:
    model, retain, forget = digits
    options.setdefault("device", "cpu")
    return assess_hardness(model, F.cross_entropy, [retain], [forget], lr=0.01, batches=2, **options)


class _Counting:
    """Delegates to a registry-built rule and counts its steps."""

    def __init__(self, rule: Any) -> None:
        self.rule = rule
        self.calls = 0

    @property
    def name(self) -> str:
        return str(self.rule.name)

    @property
    def retain_objective(self) -> Any:
        return self.rule.retain_objective

    @property
    def forget_objective(self) -> Any:
        return self.rule.forget_objective

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.rule(*args, **kwargs)


@pytest.fixture
def count_steps(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``count_steps(name)`` wraps the registry's factory for ``name``; it returns a function giving the
    number of steps its rules took."""

    def install(name: str) -> Any:
        built: list[_Counting] = []
        factory = METHODS[name]

        def counting(**options: Any) -> _Counting:
            built.append(_Counting(factory(**options)))
            return built[-1]

        monkeypatch.setitem(METHODS, name, counting)
        return lambda: sum(rule.calls for rule in built)

    return install


def _champion(model: nn.Module, rows: int, train_seconds: float) -> ServedModel:
    return ServedModel(
        name="hamu-test",
        version="1",
        model=model,
        metadata={"data_size": rows, "train_seconds": train_seconds},
        featurizer=None,  # type: ignore[arg-type]  # the hardness tasks never encode
        checkpoint=Path("unused"),
    )


def _batch_config(method: str, **options: Any) -> BatchConfig:
    return BatchConfig(method=method, batch_size=128, hardness_batches=2, max_steps=50, **options)


# -- 1. the device the run uses ------------------------------------------------------------------------


def test_times_on_the_resolved_run_device(
    digits: tuple[nn.Module, Data, Data], monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []

    def spy(name: str) -> torch.device:
        asked.append(name)
        return resolve_device(name)

    monkeypatch.setattr(hamu.hardness, "resolve_device", spy)
    model = digits[0]
    before = [(p.device, p.detach().clone()) for p in model.parameters()]
    report = _assess(digits, device="auto")
    assert asked == ["auto"]
    expected = resolve_device("auto")
    assert torch.device(report.device).type == expected.type
    assert report.to_dict()["device"] == report.device
    for (device, value), p in zip(before, model.parameters(), strict=True):
        assert p.device == device and torch.equal(p.detach(), value), (
            "the caller's model was changed or moved"
        )


def test_task_times_on_the_device_the_unlearning_task_uses(
    digits: tuple[nn.Module, Data, Data], monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []

    def spy(name: str) -> torch.device:
        asked.append(name)
        return resolve_device(name)

    monkeypatch.setattr(hamu.hardness, "resolve_device", spy)
    model, retain, forget = digits
    report, per_step = assess(_champion(model, 480, 1.0), retain, forget, _batch_config("gdiff"))
    # hamu_pipeline.tasks.unlearning.run_unlearning runs on device="auto" (CUDA when present)
    assert asked == ["auto"]
    assert torch.device(report.device).type == resolve_device("auto").type
    assert report.method == "gdiff" and per_step == report.seconds_per_step


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_times_on_cuda_and_leaves_a_cpu_model_on_the_cpu(digits: tuple[nn.Module, Data, Data]) -> None:
    report = _assess(digits, device="auto")
    assert report.device.startswith("cuda")
    assert all(p.device.type == "cpu" for p in digits[0].parameters())


# -- 2. the configured method's step -------------------------------------------------------------------


@pytest.mark.parametrize("method", ["hamu-q", "gdiff", "ga", "scrub"])
def test_times_the_configured_methods_step(
    digits: tuple[nn.Module, Data, Data], count_steps: Any, method: str
) -> None:
    steps = count_steps(method)
    report = _assess(digits, method=method, timed_steps=3)
    assert steps() == 3 + 1, "one warm-up step plus the timed steps of the configured method"
    assert report.method == method and report.timed_steps == 3
    assert report.seconds_per_step > 0 and math.isfinite(report.seconds_per_step)


def test_an_infeasible_hamu_request_is_still_timed_for_every_step(
    digits: tuple[nn.Module, Data, Data], count_steps: Any
) -> None:
    steps = count_steps("hamu-q")
    # c = 1 with clipped gradients: the constraint needs the whole reach of every block, which S < 1 denies
    report = _assess(digits, hamu=HamuConfig(constraint_ratio=1.0), method="hamu-q", timed_steps=2)
    assert not report.feasible
    assert steps() == 2 + 1 and report.timed_steps == 2
    assert report.seconds_per_step > 0 and math.isfinite(report.seconds_per_step)


def test_task_times_the_batch_method_with_the_runs_options(
    digits: tuple[nn.Module, Data, Data], count_steps: Any
) -> None:
    model, retain, forget = digits
    steps = count_steps("neggrad+")
    report, _ = assess(_champion(model, 480, 1.0), retain, forget, _batch_config("neggrad+"))
    assert report.method == "neggrad+" and steps() == report.timed_steps + 1 == 2 + 1


# -- 3. HAMU's verdict gates only HAMU runs ------------------------------------------------------------


@pytest.fixture(scope="module")
def infeasible(digits: tuple[nn.Module, Data, Data]) -> dict[str, HardnessReport]:
    return {
        m: _assess(digits, hamu=HamuConfig(constraint_ratio=1.0), method=m, timed_steps=1)
        for m in ("hamu-q", "gdiff")
    }


def test_hamu_infeasibility_gates_hamu_but_is_advisory_for_baselines(
    infeasible: dict[str, HardnessReport],
) -> None:
    cheap = CostEstimate(unlearn_seconds=1.0, retrain_seconds=100.0)
    hamu_report, gdiff_report = infeasible["hamu-q"], infeasible["gdiff"]
    assert hamu_report.verdict == gdiff_report.verdict == "infeasible"
    retrained = decide(hamu_report, cheap)
    assert retrained.action == "retrain" and "hardness gate" in retrained.reason
    baseline = decide(gdiff_report, cheap)
    assert baseline.action == "unlearn" and baseline.verdict == "infeasible"
    assert any("advisory" in w and "gdiff" in w and "infeasible" in w for w in baseline.warnings)
    assert baseline.method == "gdiff" and baseline.to_dict()["method"] == "gdiff"
    # the report a baseline's decision carries still has HAMU's geometry
    assert math.isfinite(gdiff_report.kappa) and math.isfinite(gdiff_report.kappa2)


def test_degradation_verdict_is_advisory_for_baselines(infeasible: dict[str, HardnessReport]) -> None:
    cheap = CostEstimate(unlearn_seconds=1.0, retrain_seconds=100.0)
    for method in ("hamu-q", "gdiff"):
        degraded = dataclasses.replace(infeasible[method], feasible_fraction=1.0, degradation_fraction=1.0)
        assert degraded.verdict == "degradation-unavoidable"
        expected = "retrain" if method == "hamu-q" else "unlearn"
        assert decide(degraded, cheap).action == expected
    # an explicit method overrides the report's
    assert decide(infeasible["hamu-q"], cheap, method="ga").action == "unlearn"


def test_baselines_still_retrain_when_retraining_is_cheaper(infeasible: dict[str, HardnessReport]) -> None:
    decision = decide(infeasible["gdiff"], CostEstimate(unlearn_seconds=50.0, retrain_seconds=5.0))
    assert decision.action == "retrain" and "cheaper" in decision.reason


@pytest.mark.parametrize("method,action", [("gdiff", "unlearn"), ("ga", "unlearn"), ("hamu-q", "retrain")])
def test_gate_task_sends_only_hamu_to_retraining_on_hamu_infeasibility(
    digits: tuple[nn.Module, Data, Data], infeasible: dict[str, HardnessReport], method: str, action: str
) -> None:
    model, retain, _ = digits
    report = dataclasses.replace(infeasible["gdiff"], method=method)
    cfg = _batch_config(method, cost_aware=False)
    decision = gate(report, report.seconds_per_step, _champion(model, 480, 1.0), len(retain[1]), cfg, [])
    assert decision.action == action and decision.verdict == "infeasible"


# -- the decision follows the timed estimate -----------------------------------------------------------


@pytest.mark.parametrize("ratio,action", [(10.0, "unlearn"), (0.1, "retrain")])
def test_gate_follows_the_timed_estimate(
    digits: tuple[nn.Module, Data, Data], ratio: float, action: str
) -> None:
    model, retain, forget = digits
    cfg = _batch_config("gdiff")
    report, per_step = assess(_champion(model, 480, 1.0), retain, forget, cfg)
    assert per_step > 0 and math.isfinite(per_step)
    # a recorded training time `ratio` times the predicted unlearning budget (scaled to the retain set)
    train_seconds = ratio * per_step * cfg.max_steps * 480 / len(retain[1])
    champion = _champion(model, 480, train_seconds)
    # judged by a reference bank, certifying the unlearned model costs no retrain: only the steps count
    decision = gate(report, per_step, champion, len(retain[1]), cfg, [], bank_available=True)
    assert decision.action == action
    assert decision.cost is not None
    assert decision.cost.unlearn_seconds == pytest.approx(per_step * cfg.max_steps)
    assert (decision.cost.method, decision.cost.device, decision.cost.steps) == (
        "gdiff",
        report.device,
        cfg.max_steps,
    )
    recorded = decision.to_dict()["cost"]
    assert recorded["device"] == report.device and recorded["method"] == "gdiff"


# -- 5. the constraint the report states is the guaranteed total ---------------------------------------


def _clipped(model: nn.Module, data: Data, clip: float) -> list[torch.Tensor]:
    model.zero_grad()
    F.cross_entropy(model(data[0]), data[1]).backward()
    grads = [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    norm = torch.cat([g.flatten() for g in grads]).norm()
    return [g * min(1.0, clip / (float(norm) + 1e-6)) for g in grads]


def test_unnormalised_split_reports_the_constraint_total(digits: tuple[nn.Module, Data, Data]) -> None:
    model, retain, forget = digits
    c, lr = 0.5, 0.01
    g_r, g_f = _clipped(model, retain, 1.0), _clipped(model, forget, 1.0)
    S = sum(float(a.norm() * b.norm()) for a, b in zip(g_r, g_f, strict=True))
    assert S < 0.5, "the check below needs the total to differ from B clearly"
    report = assess_hardness(
        model,
        F.cross_entropy,
        [retain],
        [forget],
        hamu=HamuConfig(constraint_ratio=c, split="grad-norm-unnormalised"),
        lr=lr,
        batches=1,
        device="cpu",
        timed_steps=1,
    )
    assert report.constraint == pytest.approx(c * lr * S, rel=1e-4)
    # the global thresholds are computed with that total: κ1 = −Σ_t B_t·‖g_r‖/(η‖g_r‖)
    assert report.kappa1 == pytest.approx(-report.constraint / lr, rel=1e-4)
    normalised = dataclasses.replace(HamuConfig(constraint_ratio=c), split="grad-norm")
    plain = assess_hardness(
        model, F.cross_entropy, [retain], [forget], hamu=normalised, lr=lr, batches=1, device="cpu"
    )
    assert plain.constraint == pytest.approx(c * lr, rel=1e-6)
