"""What an unlearning method is: which objectives it differentiates, and how it combines their gradients.

Every method here is *paired-gradient* shaped: per step the unlearner computes (at most) one clipped gradient
of a retain objective and one of a forget objective, then the method turns them into an *equivalent
gradient* G such that the base optimizer's step ``w ← w − η·G`` is the method's update.

Beyond :class:`UpdateRule`'s members, a method may carry what the loop needs from it, so the loop never asks
which method it runs (read them with :func:`objective_weights` and :func:`stops_on_degradation`):

* ``objective_weights``: (α, γ) of its ``scrub`` objective α·KL + γ·task (default SCRUB's, see
  :data:`SCRUB_ALPHA` and :data:`SCRUB_GAMMA`);
* ``stops_on_degradation``: whether the run stops, without applying the step, on a step whose
  ``RuleOutput.degradation`` is set (default False).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch

from hamu.core.layout import FlatLayout

#: ``task``: the user's loss (cross-entropy); ``kl``: KL(p_original ‖ p_θ) on the batch;
#: ``scrub``: α·KL + γ·task on the retain batch (SCRUB's retain objective).
Objective = Literal["task", "kl", "scrub"]

#: SCRUB's weights of its retain objective α·KL + γ·task.
SCRUB_ALPHA = 0.001
SCRUB_GAMMA = 0.99


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


def objective_weights(rule: UpdateRule) -> tuple[float, float]:
    """(α, γ) of ``rule``'s ``scrub`` objective: its ``objective_weights``, else SCRUB's defaults."""
    alpha, gamma = getattr(rule, "objective_weights", (SCRUB_ALPHA, SCRUB_GAMMA))
    return float(alpha), float(gamma)


def stops_on_degradation(rule: UpdateRule) -> bool:
    """Whether a step with its degradation flag set ends the run: ``rule.stops_on_degradation`` or False."""
    return bool(getattr(rule, "stops_on_degradation", False))
