"""The hardness gate: unlearn, or retrain exactly.

Exact retraining on the retain set is the gold standard; unlearning is worth it only when it is cheaper
and, for HAMU, its geometry says the requested forgetting is reachable without damaging the retain loss.
The gate weighs both:

* infeasible (no step within the trust region raises the forget loss by B) → retrain;
* degradation unavoidable (κ > κ2 on most sampled batches) → retrain;
* the unlearning step budget is predicted to cost more wall time than retraining from the recorded
  recipe → retrain (small models often retrain faster than they unlearn); the prediction times the run's
  own method on the run's device (:func:`hamu.hardness.assess_hardness`);
* otherwise → unlearn.

The two hardness verdicts describe HAMU's constrained step, so they gate only runs of a HAMU method
(``hamu-q``/``hamu-u``); for a baseline (``gdiff``, ``ga``, ``scrub``, ...) they are recorded as an advisory
warning and the cost comparison alone decides. With the ``warn`` policy a hardness verdict against unlearning
is recorded as a warning and unlearning goes ahead; cost still picks the cheaper exact retrain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from hamu.hardness import HAMU_METHODS, HardnessReport

GatePolicy = Literal["stop", "warn"]
Action = Literal["unlearn", "retrain"]


@dataclass(frozen=True)
class CostEstimate:
    """Predicted wall time, in seconds, of the two ways to honour the request.

    ``steps``, ``method`` and ``device`` say what the unlearning prediction is: that many steps of that
    method, each as long as the steps timed on that device (see :meth:`from_report`).

    ``evidence_seconds`` is what certifying an unlearned model costs on top of the unlearning, and
    ``evidence`` says what it is: the exact reference's retrain when the batch is judged against one (then
    unlearning can never be cheaper than serving that retrain), about nothing with a reference bank. The
    retrain path certifies itself.
    """

    unlearn_seconds: float
    retrain_seconds: float
    steps: int | None = None
    method: str | None = None
    device: str | None = None
    evidence_seconds: float = 0.0
    evidence: str = ""

    def __post_init__(self) -> None:
        for name, value in (
            ("unlearn_seconds", self.unlearn_seconds),
            ("retrain_seconds", self.retrain_seconds),
            ("evidence_seconds", self.evidence_seconds),
        ):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")

    @classmethod
    def from_report(cls, report: HardnessReport, steps: int, retrain_seconds: float) -> CostEstimate:
        """``steps`` steps at the report's timed seconds per step, on the method and device it timed."""
        return cls(
            unlearn_seconds=report.seconds_per_step * steps,
            retrain_seconds=retrain_seconds,
            steps=steps,
            method=report.method,
            device=report.device,
        )

    @property
    def honour_by_unlearning(self) -> float:
        """Seconds to honour the request by unlearning: the steps plus the evidence that certifies them."""
        return self.unlearn_seconds + self.evidence_seconds

    @property
    def unlearn_over_retrain(self) -> float:
        total = self.honour_by_unlearning
        return total / self.retrain_seconds if self.retrain_seconds > 0 else float("inf")

    def describe_unlearning(self) -> str:
        what = "the unlearning budget"
        if self.steps is not None and self.method is not None:
            what = f"{self.steps} {self.method} steps"
        what = f"{what} on {self.device}" if self.device is not None else what
        if self.evidence_seconds > 0:
            what += f" plus {self.evidence_seconds:.1f} s for {self.evidence or 'its evidence'}"
        return what


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    verdict: str
    warnings: tuple[str, ...] = field(default_factory=tuple)
    cost: CostEstimate | None = None
    method: str | None = None

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
    method: str | None = None,
) -> Decision:
    """Apply the gate; ``cost=None`` skips the cost comparison (recorded in the reason).

    ``method`` is the run's method (default: the one the report timed); HAMU's hardness verdict forces a
    retrain only for a HAMU method and is an advisory warning otherwise. ``force_retrain`` are reasons that
    demand an exact retrain whatever the geometry says (e.g. the lineage's cumulative drift is over
    budget); ``advisories`` are carried into the warnings.
    """
    if policy not in ("stop", "warn"):
        raise ValueError(f"unknown gate policy {policy!r}; accepted: stop, warn")
    method = method or hardness.method
    verdict = hardness.verdict
    warnings: list[str] = list(advisories)

    def decision(action: Action, reason: str) -> Decision:
        return Decision(action, reason, verdict, tuple(warnings), cost, method)

    if force_retrain:
        return decision("retrain", "; ".join(force_retrain))
    geometry_says_retrain = verdict in ("infeasible", "degradation-unavoidable")
    binding = method in HAMU_METHODS
    if geometry_says_retrain:
        why = (
            "the forget constraint cannot be met within the trust region (infeasible)"
            if verdict == "infeasible"
            else f"retain degradation is unavoidable on {hardness.degradation_fraction:.0%} of sampled "
            f"batches (κ={hardness.kappa:.3g} > κ2={hardness.kappa2:.3g})"
        )
        if not binding:
            warnings.append(
                f"HAMU hardness (advisory: the batch runs {method!r}, not HAMU): {why}; not a gate for it"
            )
        elif policy == "stop":
            return decision("retrain", f"hardness gate: {why}")
        else:
            warnings.append(f"hardness gate (warn policy): {why}; unlearning anyway")
    if cost is not None and cost.honour_by_unlearning >= cost.retrain_seconds:
        return decision(
            "retrain",
            f"exact retraining is cheaper: predicted {cost.retrain_seconds:.1f} s against "
            f"{cost.honour_by_unlearning:.1f} s for {cost.describe_unlearning()}",
        )
    reason = f"hardness verdict {verdict!r}" + ("" if binding else f" (advisory for {method!r})")
    reason += (
        f"; unlearning predicted at {cost.unlearn_over_retrain:.2f}× the retrain time"
        if cost is not None
        else "; no cost estimate"
    )
    return decision("unlearn", reason)
