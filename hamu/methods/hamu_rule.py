"""HAMU-Q / HAMU-U as an equivalent-gradient rule: G = −δ/η, so SGD(η) applies exactly w + δ."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hamu.core.layout import FlatLayout
from hamu.core.solver import Branch
from hamu.core.transform import HamuConfig, HamuTransform
from hamu.methods.base import Objective, RuleOutput


@dataclass(frozen=True)
class HamuRule:
    config: HamuConfig = field(default_factory=HamuConfig)
    retain_objective: Objective | None = "task"
    forget_objective: Objective | None = "task"

    @property
    def name(self) -> str:
        return self.config.variant

    @property
    def stops_on_degradation(self) -> bool:
        """The sign-correct stopping rule, when the config asks for it."""
        return self.config.stop_on_degradation

    def __call__(
        self,
        retain: torch.Tensor | None,
        forget: torch.Tensor | None,
        layout: FlatLayout,
        *,
        lr: float,
    ) -> RuleOutput:
        if retain is None or forget is None:
            raise ValueError(f"method {self.name!r} needs both the retain and the forget gradient")
        out = HamuTransform(self.config)(retain, forget, layout, lr=lr, scale=-1.0 / lr)
        diagnostics: dict[str, torch.Tensor] = {
            "kappa": out.kappa_global,
            "kappa1": out.kappa1_global,
            "kappa2": out.kappa2_global,
            "predicted_retain_change": out.predicted_retain_change,
            "predicted_forget_change": out.predicted_forget_change,
            "stopping_margin": out.stopping_margin,
            "constraint_total": out.constraint_total,
            "kappa_per_tensor": out.kappa,
        }
        for branch, count in zip(Branch, out.branch_counts.unbind(), strict=True):
            diagnostics[f"branch_{branch.label}"] = count
        return RuleOutput(
            grad=out.update,  # −δ/η, scaled inside the transform
            diagnostics=diagnostics,
            stop_infeasible=out.stop_infeasible,
            degradation=out.degradation,
        )
