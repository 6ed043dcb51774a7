"""Standard unlearning baselines as equivalent-gradient rules.

``g_r`` is the clipped gradient of the retain objective and ``g_f`` the clipped gradient of the *raw* forget
objective (cross-entropy, or KL for SCRUB), i.e. the direction in which forgetting *decreases*. Each rule
returns G with ``w ← w − η·G``:

=========  ==========================================================================================
method     equivalent gradient G
=========  ==========================================================================================
ft         g_r                                            (fine-tune on retain)
ga         −g_f                                           (gradient ascent on forget)
gdiff      ½(g_r − g_f)                                   (equal-weight gradient difference)
neggrad+   w·g_r − (1−w)·g_f                              (weighted; w = ``retain_weight``)
kl         ½(∇KL_r − g_f)                                 (retain objective KL to the original)
scrub      ½(∇(α·KL_r + γ·CE_r) − ∇KL_f)                  (simultaneous SCRUB; α=0.001, γ=0.99)
gru        −d, d = g_f − (κ/‖g_r‖²)·g_r if κ > 0 else g_f (ascent projected off g_r on conflict)
pcgrad     ½(G_r' + G_f') with G_r = g_r, G_f = −g_f, each projected off the other when G_r·G_f < 0
=========  ==========================================================================================

``gru`` and ``pcgrad`` follow the published definitions: the objectives conflict when the forget *ascent*
direction raises the retain loss, i.e. when κ = g_r·g_f > 0 (the public HAMU reference projects when κ < 0,
the non-conflicting case). κ, norms and projections are global over the whole model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hamu.core.layout import FlatLayout
from hamu.methods.base import SCRUB_ALPHA, SCRUB_GAMMA, Objective, RuleOutput


def _require(name: str, **grads: torch.Tensor | None) -> dict[str, torch.Tensor]:
    missing = [k for k, v in grads.items() if v is None]
    if missing:
        raise ValueError(f"method {name!r} needs the {' and '.join(missing)} gradient")
    return {k: v for k, v in grads.items() if v is not None}


@dataclass(frozen=True)
class FineTune:
    name: str = "ft"
    retain_objective: Objective | None = "task"
    forget_objective: Objective | None = None

    def __call__(
        self,
        retain: torch.Tensor | None,
        forget: torch.Tensor | None,
        layout: FlatLayout,
        *,
        lr: float,
    ) -> RuleOutput:
        g = _require(self.name, retain=retain)
        return RuleOutput(grad=g["retain"])


@dataclass(frozen=True)
class GradientAscent:
    name: str = "ga"
    retain_objective: Objective | None = None
    forget_objective: Objective | None = "task"

    def __call__(
        self,
        retain: torch.Tensor | None,
        forget: torch.Tensor | None,
        layout: FlatLayout,
        *,
        lr: float,
    ) -> RuleOutput:
        g = _require(self.name, forget=forget)
        return RuleOutput(grad=-g["forget"])


@dataclass(frozen=True)
class WeightedDifference:
    """w·g_r − (1−w)·g_f: GDiff (w = ½), NegGrad+ (tunable w), and KL/SCRUB with other objectives."""

    name: str = "gdiff"
    retain_weight: float = 0.5
    retain_objective: Objective | None = "task"
    forget_objective: Objective | None = "task"

    def __post_init__(self) -> None:
        if not 0.0 <= self.retain_weight <= 1.0:
            raise ValueError(f"retain_weight must be in [0, 1], got {self.retain_weight!r}")

    def __call__(
        self,
        retain: torch.Tensor | None,
        forget: torch.Tensor | None,
        layout: FlatLayout,
        *,
        lr: float,
    ) -> RuleOutput:
        g = _require(self.name, retain=retain, forget=forget)
        w = self.retain_weight
        return RuleOutput(grad=w * g["retain"] - (1.0 - w) * g["forget"])


def _dot_and_norms(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return a @ b, a @ a, b @ b


@dataclass(frozen=True)
class GradientRectified:
    name: str = "gru"
    retain_objective: Objective | None = "task"
    forget_objective: Objective | None = "task"

    def __call__(
        self,
        retain: torch.Tensor | None,
        forget: torch.Tensor | None,
        layout: FlatLayout,
        *,
        lr: float,
    ) -> RuleOutput:
        g = _require(self.name, retain=retain, forget=forget)
        g_r, g_f = g["retain"], g["forget"]
        kappa, r_sq, _ = _dot_and_norms(g_r, g_f)
        conflict = (kappa > 0) & (r_sq > 0)
        coef = torch.where(conflict, kappa / torch.where(r_sq > 0, r_sq, 1.0), 0.0)
        ascent = g_f - coef * g_r
        return RuleOutput(grad=-ascent, diagnostics={"kappa": kappa, "projected": conflict})


@dataclass(frozen=True)
class PCGrad:
    name: str = "pcgrad"
    retain_objective: Objective | None = "task"
    forget_objective: Objective | None = "task"

    def __call__(
        self,
        retain: torch.Tensor | None,
        forget: torch.Tensor | None,
        layout: FlatLayout,
        *,
        lr: float,
    ) -> RuleOutput:
        g = _require(self.name, retain=retain, forget=forget)
        task_r, task_f = g["retain"], -g["forget"]
        dot, r_sq, f_sq = _dot_and_norms(task_r, task_f)
        conflict = dot < 0
        proj_r = torch.where(conflict & (f_sq > 0), dot / torch.where(f_sq > 0, f_sq, 1.0), 0.0)
        proj_f = torch.where(conflict & (r_sq > 0), dot / torch.where(r_sq > 0, r_sq, 1.0), 0.0)
        grad = 0.5 * ((task_r - proj_r * task_f) + (task_f - proj_f * task_r))
        return RuleOutput(grad=grad, diagnostics={"kappa": -dot, "projected": conflict})


@dataclass(frozen=True)
class Scrub(WeightedDifference):
    """SCRUB run simultaneously: retain objective α·KL_r + γ·CE_r, forget objective KL_f (ascended)."""

    name: str = "scrub"
    alpha: float = SCRUB_ALPHA
    gamma: float = SCRUB_GAMMA
    retain_objective: Objective | None = "scrub"
    forget_objective: Objective | None = "kl"

    @property
    def objective_weights(self) -> tuple[float, float]:
        """(α, γ) of the retain objective α·KL + γ·CE."""
        return self.alpha, self.gamma
