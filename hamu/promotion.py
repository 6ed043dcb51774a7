"""Promotion gates: whether an unlearned model may become ``champion``.

Every gate reads the evaluation report (JSON) of its batch; nothing is recomputed. Three gates, all must
pass:

* ``mia-band``: every membership-attack metric (population attacks and LiRA) of the candidate lies inside its
  two-sided band around the retrained reference: neither under- nor over-unlearning;
* ``utility-budget``: test accuracy drop against the original ≤ ``utility_budget``;
* ``ks``: the KS statistic D between the candidate's and the reference's per-example forget losses is ≤
  ``ks_max`` (default: the report's own ``ks_d`` band).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    value: float
    limit: float
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _failed_metrics(verdict: Mapping[str, Any], prefixes: tuple[str, ...]) -> list[str]:
    found = []
    for kind in ("under_unlearning", "over_unlearning", "deviates"):
        found += [f"{m} ({kind.replace('_', '-')})" for m in verdict.get(kind, []) if m.startswith(prefixes)]
    return found


def promotion_gates(
    report: Mapping[str, Any],
    *,
    model: str = "unlearned",
    utility_budget: float = 0.02,
    ks_max: float | None = None,
) -> list[GateResult]:
    if model not in report.get("verdicts", {}):
        raise ValueError(f"the report has no verdict for model {model!r}")
    if not utility_budget >= 0:
        raise ValueError(f"utility_budget must be >= 0, got {utility_budget!r}")
    verdict = report["verdicts"][model]
    mia_failures = _failed_metrics(verdict, ("attacks.", "shadow."))
    gates = [
        GateResult(
            "mia-band",
            not mia_failures,
            float(len(mia_failures)),
            0.0,
            "all attack metrics inside their bands" if not mia_failures else "; ".join(mia_failures[:6]),
        )
    ]
    acc = report["utility"]
    drop = float(acc["original"]["test"]["accuracy"]["estimate"]) - float(
        acc[model]["test"]["accuracy"]["estimate"]
    )
    gates.append(
        GateResult(
            "utility-budget",
            drop <= utility_budget,
            drop,
            utility_budget,
            f"test accuracy drop {drop:+.4f} against the original (budget {utility_budget:.4f})",
        )
    )
    limit = float(ks_max if ks_max is not None else report["config"]["bands"]["ks_d"])
    d = float(report["forget_quality"][model]["d"])
    p = float(report["forget_quality"][model]["p_value"])
    n = int(report["forget_quality"][model]["n_model"])
    gates.append(
        GateResult(
            "ks",
            d <= limit,
            d,
            limit,
            f"KS D={d:.3f} (p={p:.3g}, n={n}) against the reference, limit {limit}",
        )
    )
    return gates
