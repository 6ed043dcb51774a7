"""Hardness assessment before touching the model.

Samples a few paired retain/forget gradient batches on the current model (no update is applied) and
reports what HAMU's geometry says about the request: κ = g_r·g_f globally and per tensor, the thresholds
κ1 and κ2, whether the requested forget improvement is feasible, the predicted first-order retain change
of the best feasible step, and whether retain degradation is unavoidable. A pipeline gate turns this into
"unlearn with HAMU" or "retrain exactly".
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from hamu.core.solver import Branch
from hamu.core.transform import HamuConfig, HamuTransform
from hamu.unlearner import LossFn, UnlearnConfig, Unlearner, _cycle, _FrozenBatchNorm


@dataclass(frozen=True)
class HardnessReport:
    """Aggregates over the sampled batches (plain numbers, JSON-serialisable)."""

    batches: int
    variant: str
    lr: float
    constraint: float
    kappa: float
    kappa_std: float
    kappa1: float
    kappa2: float
    cosine: float
    angle_degrees: float
    retain_grad_norm: float
    forget_grad_norm: float
    feasible_fraction: float
    degradation_fraction: float
    predicted_retain_change: float
    predicted_forget_change: float
    kappa_per_tensor: dict[str, float]
    seconds_per_batch: float = 0.0

    @property
    def feasible(self) -> bool:
        return self.feasible_fraction == 1.0

    @property
    def degradation_unavoidable(self) -> bool:
        """True when most sampled steps cannot meet the constraint without raising the retain loss."""
        return self.degradation_fraction > 0.5

    @property
    def verdict(self) -> str:
        if not self.feasible:
            return "infeasible"
        if self.degradation_unavoidable:
            return "degradation-unavoidable"
        if self.kappa <= self.kappa1:
            return "easy"
        return "hard"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["feasible"] = self.feasible
        out["degradation_unavoidable"] = self.degradation_unavoidable
        out["verdict"] = self.verdict
        return out


def assess_hardness(
    model: nn.Module,
    loss_fn: LossFn,
    retain: Iterable[Any],
    forget: Iterable[Any],
    *,
    hamu: HamuConfig | None = None,
    lr: float = 0.01,
    batches: int = 3,
    max_grad_norm: float | None = 1.0,
    device: str = "auto",
) -> HardnessReport:
    """Measure κ, κ1, κ2, feasibility and the stopping rule on ``batches`` paired batches; the model is
    left unchanged."""
    if batches < 1:
        raise ValueError(f"batches must be >= 1, got {batches!r}")
    cfg = hamu or HamuConfig()
    options = {k: v for k, v in asdict(cfg).items()}
    runner = Unlearner(
        model,
        loss_fn,
        UnlearnConfig(
            method=cfg.variant,
            lr=lr,
            max_steps=0,
            max_grad_norm=max_grad_norm,
            device=device,
            method_options={k: v for k, v in options.items() if k != "variant"},
        ),
    )
    transform = HamuTransform(cfg)
    retain_it, forget_it = _cycle(retain, "retain"), _cycle(forget, "forget")
    rows: list[torch.Tensor] = []
    per_tensor = torch.zeros(runner.layout.num_segments, device=runner.device)
    stamps: list[float] = []
    with _FrozenBatchNorm(runner.model, True):
        for _ in range(batches):
            stamps.append(time.perf_counter())
            g_r = runner.objective_gradient("task", [next(retain_it)])
            g_f = runner.objective_gradient("task", [next(forget_it)])
            out = transform(g_r.flat, g_f.flat, runner.layout, lr=lr)
            feasible = (out.blocks.branch < int(Branch.INFEASIBLE)).all()
            r_norm, f_norm = g_r.flat.norm(), g_f.flat.norm()
            rows.append(
                torch.stack(
                    [
                        out.kappa_global,
                        out.kappa1_global,
                        out.kappa2_global,
                        r_norm,
                        f_norm,
                        feasible.float(),
                        out.degradation.float(),
                        out.predicted_retain_change,
                        out.predicted_forget_change,
                    ]
                )
            )
            per_tensor += out.kappa
    stats = torch.stack(rows).double()
    stamps.append(time.perf_counter())
    # Wall time of one paired gradient evaluation; the first batch pays warm-up costs, so it is left out
    # whenever there is more than one.
    spans = [b - a for a, b in itertools.pairwise(stamps)]
    seconds_per_batch = sum(spans[1:]) / (len(spans) - 1) if len(spans) > 1 else spans[0]
    mean = stats.mean(dim=0).tolist()
    kappa_std = float(stats[:, 0].std(unbiased=False))
    kappa, k1, k2, rn, fn, feas, degr, d_ret, d_for = mean
    denom = rn * fn
    cosine = kappa / denom if denom > 0 else 0.0
    cosine = max(-1.0, min(1.0, cosine))
    return HardnessReport(
        batches=batches,
        variant=cfg.variant,
        lr=lr,
        constraint=cfg.total_constraint(lr),
        kappa=kappa,
        kappa_std=kappa_std,
        kappa1=k1,
        kappa2=k2,
        cosine=cosine,
        angle_degrees=math.degrees(math.acos(cosine)),
        retain_grad_norm=rn,
        forget_grad_norm=fn,
        feasible_fraction=feas,
        degradation_fraction=degr,
        predicted_retain_change=d_ret,
        predicted_forget_change=d_for,
        kappa_per_tensor=dict(zip(runner.names, (per_tensor / batches).tolist(), strict=True)),
        seconds_per_batch=seconds_per_batch,
    )
