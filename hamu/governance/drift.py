"""Cumulative drift across sequential deletion batches, and when to retrain from scratch instead.

Each unlearning batch moves the served model a little away from what exact retraining would give. One
batch's evaluation shows its own gap; a chain of batches compounds them. Two quantities are tracked along
a model's lineage since its last exact (re)training:

* ``utility``: test-accuracy deficit of the model against the exact reference of the *same* cumulative
  retain set. The pipeline's reference is always retrained without every record erased so far, so this
  gap is cumulative by construction: it is measured, not summed.
* ``mia``: the sum over batches of the largest absolute membership-attack AUC gap (forget vs test) to the
  reference. Each batch's forget set is attacked only once, when it is erased, so the trail of earlier
  gaps is carried forward as a sum: a conservative bound on the total mis-calibration of the chain.

Exact retraining resets both to zero. When a budget is exceeded the pipeline recommends (or, by
configuration, performs) a full retrain and records why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

_AUC_PREFIXES = ("attacks.forget_vs_test.", "shadow.forget_vs_test.")


@dataclass(frozen=True)
class DriftBudget:
    """Limits on cumulative drift; ``max_batches`` caps unlearning batches between exact retrains."""

    utility: float = 0.03
    mia: float = 0.15
    max_batches: int = 20

    def __post_init__(self) -> None:
        for name in ("utility", "mia"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"drift budget {name} must be a finite number >= 0, got {value!r}")
        if not (isinstance(self.max_batches, int) and self.max_batches >= 1):
            raise ValueError(f"drift budget max_batches must be an integer >= 1, got {self.max_batches!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DriftState:
    """Where a model's lineage stands: unlearning batches since the last exact retrain and their drift."""

    batches: int = 0
    utility: float = 0.0
    mia: float = 0.0

    def to_tags(self) -> dict[str, str]:
        return {
            "drift_batches": str(self.batches),
            "drift_utility": f"{self.utility:.6f}",
            "drift_mia": f"{self.mia:.6f}",
        }

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> DriftState:
        """Read a registry version's tags; a version without them (an original) has no drift."""
        try:
            return cls(
                batches=int(tags.get("drift_batches", 0)),
                utility=float(tags.get("drift_utility", 0.0)),
                mia=float(tags.get("drift_mia", 0.0)),
            )
        except ValueError as exc:
            raise ValueError(f"unreadable drift tags on a model version: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def batch_gaps(report: Mapping[str, Any], model: str = "unlearned") -> tuple[float, float]:
    """(utility deficit, largest |AUC gap|) of ``model`` against the retrained reference in a report.

    A bank report has no retrained reference: the deficit is against the original, and the AUC gap is the
    bank's forget-vs-test LiRA AUC against ½.
    """
    if report.get("reference", {}).get("kind") == "bank":
        change = float(report["test_accuracy_change"][model]["gap"])
        return -change, abs(float(report["bank"][model]["forget"]["lira"]["auc"]) - 0.5)
    utility = report["utility"]
    deficit = float(utility["retrained"]["test"]["accuracy"]["estimate"]) - float(
        utility[model]["test"]["accuracy"]["estimate"]
    )
    aucs = [
        abs(float(row["gap"]))
        for row in report["gaps"][model]
        if row["metric"].startswith(_AUC_PREFIXES) and row["metric"].endswith(".auc")
    ]
    if not aucs:
        raise ValueError("the report has no forget-vs-test AUC gap; cannot track MIA drift")
    return deficit, max(aucs)


def advance(previous: DriftState, *, exact: bool, utility_deficit: float, auc_gap: float) -> DriftState:
    """The lineage state after one more batch: reset by an exact retrain, compounded by unlearning."""
    if exact:
        return DriftState()
    return DriftState(
        batches=previous.batches + 1,
        utility=max(0.0, float(utility_deficit)),
        mia=previous.mia + abs(float(auc_gap)),
    )


def breaches(state: DriftState, budget: DriftBudget) -> list[str]:
    """Human-readable reasons the state exceeds the budget (empty when within it)."""
    found = []
    if state.utility > budget.utility:
        found.append(
            f"cumulative utility drift {state.utility:.4f} > budget {budget.utility:.4f} "
            "(test-accuracy deficit against exact retraining)"
        )
    if state.mia > budget.mia:
        found.append(f"cumulative MIA drift {state.mia:.4f} > budget {budget.mia:.4f} (sum of |AUC gaps|)")
    if state.batches > budget.max_batches:
        found.append(
            f"{state.batches} unlearning batches since the last exact retrain > {budget.max_batches}"
        )
    return found
