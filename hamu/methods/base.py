"""What an unlearning method is: which objectives it differentiates, and how it combines their gradients.

Every method here is *paired-gradient* shaped: per step the unlearner computes (at most) one clipped gradient
of a retain objective and one of a forget objective, then the method turns them into an *equivalent
gradient* G such that the base optimizer's step ``w ← w − η·G`` is the method's update.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch

from hamu.core.layout import FlatLayout

#: ``task``: the user's loss (cross-entropy); ``kl``: KL(p_original ‖ p_θ) on the batch;
#: ``scrub``: α·KL + γ·task on the retain batch (SCRUB's retain objective).
Objective = Literal["task", "kl", "scrub"]


@dataclass(frozen=True)
class RuleOutput:
    """The equivalent gradient plus per-step diagnostics (tensors, still on the device)."""

    grad: torch.Tensor
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)
    stop_infeasible: torch.Tensor | None = None
    degradation: torch.Tensor | None = None


class UpdateRule(Protocol):
    """An unlearning method. ``retain_objective``/``forget_objective`` say which gradients it needs."""

    @property
    def name(self) -> str: ...

    @property
    def retain_objective(self) -> Objective | None: ...

    @property
    def forget_objective(self) -> Objective | None: ...

    def __call__(
        self,
        retain: torch.Tensor | None,
        forget: torch.Tensor | None,
        layout: FlatLayout,
        *,
        lr: float,
    ) -> RuleOutput: ...
