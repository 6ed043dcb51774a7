"""Promotion gates: whether an unlearned model may become ``champion``.

Every gate reads the evaluation report (JSON) of its batch; nothing is recomputed. Three gates, all must
pass:

* ``mia-band``: every membership-attack metric (population attacks and LiRA) of the candidate lies inside its
  two-sided band around the retrained reference: neither under- nor over-unlearning;
* ``utility-budget``: test accuracy drop against the original ≤ ``utility_budget``;
* ``ks``: the KS statistic D between the candidate's and the reference's per-example forget losses is ≤
  ``ks_max`` (default: the report's own ``ks_d`` band).

Two lineage gates (:func:`lineage_gates`) come from the registry and the request queue, not the report:

* ``batch-completed``: the candidate's batch closed its requests and issued receipts (a version left by a
  batch that died is never promotable);
* ``erasure-coverage``: the candidate no longer carries any record erased so far, so promoting an older
  candidate cannot bring back records erased after it.
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


def lineage_gates(*, batch_status: str, still_carried: int, erased_total: int) -> list[GateResult]:
    """``still_carried``: erased records (per the queue) missing from the candidate's erasure manifest."""
    if still_carried < 0 or erased_total < still_carried:
        raise ValueError(f"need 0 <= still_carried <= erased_total, got {still_carried}, {erased_total}")
    completed = batch_status == "completed"
    return [
        GateResult(
            "batch-completed",
            completed,
            1.0 if completed else 0.0,
            1.0,
            "the batch closed its requests and issued receipts"
            if completed
            else f"batch status is {batch_status or 'unknown'!r}: only completed batches can be promoted",
        ),
        GateResult(
            "erasure-coverage",
            still_carried == 0,
            float(still_carried),
            0.0,
            f"the candidate carries none of the {erased_total} erased records"
            if still_carried == 0
            else f"the candidate still carries {still_carried} of {erased_total} erased records (erased "
            "after its batch): promote a newer candidate",
        ),
    ]
