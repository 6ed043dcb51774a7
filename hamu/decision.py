"""The hardness gate: unlearn with HAMU, or retrain exactly.

Exact retraining on the retain set is the gold standard; unlearning is worth it only when it is cheaper
and its geometry says the requested forgetting is reachable without damaging the retain loss. The gate
weighs both:

* infeasible (no step within the trust region raises the forget loss by B) → retrain;
* degradation unavoidable (κ > κ2 on most sampled batches) → retrain;
* the unlearning step budget is predicted to cost more wall time than retraining from the recorded
  recipe → retrain (small models often retrain faster than they unlearn);
* otherwise → unlearn.

With the ``warn`` policy a hardness verdict against unlearning is recorded as a warning and unlearning goes
ahead; cost still picks the cheaper exact retrain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from hamu.hardness import HardnessReport

GatePolicy = Literal["stop", "warn"]
Action = Literal["unlearn", "retrain"]


@dataclass(frozen=True)
class CostEstimate:
    """Predicted wall time, in seconds, of the two ways to honour the request."""

    unlearn_seconds: float
    retrain_seconds: float

    def __post_init__(self) -> None:
        for name, value in (
            ("unlearn_seconds", self.unlearn_seconds),
            ("retrain_seconds", self.retrain_seconds),
        ):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")

    @property
    def unlearn_over_retrain(self) -> float:
        return self.unlearn_seconds / self.retrain_seconds if self.retrain_seconds > 0 else float("inf")


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    verdict: str
    warnings: tuple[str, ...] = field(default_factory=tuple)
    cost: CostEstimate | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["warnings"] = list(self.warnings)
        return out


def decide(
    hardness: HardnessReport,
    cost: CostEstimate | None = None,
    *,
    policy: GatePolicy = "stop",
    force_retrain: Sequence[str] = (),
    advisories: Sequence[str] = (),
) -> Decision:
    """Apply the gate; ``cost=None`` skips the cost comparison (recorded in the reason).

    ``force_retrain`` are reasons that demand an exact retrain whatever the geometry says (e.g. the
    lineage's cumulative drift is over budget); ``advisories`` are carried into the warnings.
    """
    if policy not in ("stop", "warn"):
        raise ValueError(f"unknown gate policy {policy!r}; accepted: stop, warn")
    verdict = hardness.verdict
    warnings: list[str] = list(advisories)
    if force_retrain:
        return Decision("retrain", "; ".join(force_retrain), verdict, tuple(warnings), cost)
    geometry_says_retrain = verdict in ("infeasible", "degradation-unavoidable")
    if geometry_says_retrain:
        why = (
            "the forget constraint cannot be met within the trust region (infeasible)"
            if verdict == "infeasible"
            else f"retain degradation is unavoidable on {hardness.degradation_fraction:.0%} of sampled "
            f"batches (κ={hardness.kappa:.3g} > κ2={hardness.kappa2:.3g})"
        )
        if policy == "stop":
            return Decision("retrain", f"hardness gate: {why}", verdict, tuple(warnings), cost)
        warnings.append(f"hardness gate (warn policy): {why}; unlearning anyway")
    if cost is not None and cost.unlearn_seconds >= cost.retrain_seconds:
        return Decision(
            "retrain",
            f"exact retraining is cheaper: predicted {cost.retrain_seconds:.1f} s against "
            f"{cost.unlearn_seconds:.1f} s for the unlearning budget",
            verdict,
            tuple(warnings),
            cost,
        )
    reason = f"hardness verdict {verdict!r}"
    reason += (
        f"; unlearning predicted at {cost.unlearn_over_retrain:.2f}× the retrain time"
        if cost is not None
        else "; no cost estimate"
    )
    return Decision("unlearn", reason, verdict, tuple(warnings), cost)
