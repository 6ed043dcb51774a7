"""The hardness stage: HAMU's geometry on the champion, then the unlearn-or-retrain gate (hardness verdict,
measured cost, the source lineage's drift budget; ``hamu.governance.decision``, docs/pipeline.md step 4)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np

from hamu.governance.decision import Decision
from hamu.governance.drift import breaches
from hamu.hardness import HardnessReport
from hamu_pipeline.tasks.config import BatchConfig
from hamu_pipeline.tasks.hardness import assess, gate
from hamu_pipeline.tasks.lineage import drift_of
from hamu_pipeline.tasks.models import ServedModel
from hamu_pipeline.tasks.stages.bank import Banked
from hamu_pipeline.tasks.stages.base import BatchContext, stage
from hamu_pipeline.tasks.stages.split import Prepared


@dataclass(frozen=True)
class Gated:
    """The champion's hardness report and the gate's decision on it."""

    report: HardnessReport
    decision: Decision
    #: Why the batch retrains after all, when its unlearned candidate failed the gates (see
    #: :func:`retrain_after_failure`); empty otherwise.
    fallback: str = ""

    @property
    def action(self) -> str:
        return self.decision.action

    def summary(self) -> dict[str, Any]:
        return {
            "action": self.decision.action,
            "reason": self.decision.reason,
            "hardness_verdict": self.report.verdict,
            "kappa": self.report.kappa,
        }


def choose_path(
    report: HardnessReport,
    seconds_per_step: float,
    champion: ServedModel,
    retain_rows: int,
    cfg: BatchConfig,
    *,
    bank_available: bool = False,
) -> Decision:
    """Unlearn or retrain: the gate on the hardness report, the measured cost of each way to honour the
    request (with its evidence), and the drift the champion's lineage has accumulated (read from its version
    tags) against this batch's budget."""
    over_source = breaches(drift_of(champion), cfg.drift_budget())
    return gate(
        report, seconds_per_step, champion, retain_rows, cfg, over_source, bank_available=bank_available
    )


@stage("hardness", rerunnable=True)
def hardness(ctx: BatchContext, prepared: Prepared, banked: Banked) -> Gated:
    """Assess the champion on paired retain/forget batches and decide between unlearning and retraining."""
    cfg = ctx.config
    report, per_step = assess(ctx.champion, prepared.retain, prepared.forget, cfg)
    decision = choose_path(
        report, per_step, ctx.champion, len(prepared.retain[1]), cfg, bank_available=banked.available
    )
    mlflow.log_metrics({f"hardness.{k}": float(v) for k, v in report.to_dict().items() if _finite_number(v)})
    ctx.audit.record(
        "hardness",
        decision=decision.action,
        reason=decision.reason,
        params={"verdict": report.verdict, "warnings": list(decision.warnings)},
        artifacts={
            "hardness": ("hardness.json", json.dumps(report.to_dict(), sort_keys=True).encode()),
            "decision": ("decision.json", json.dumps(decision.to_dict(), sort_keys=True).encode()),
        },
    )
    return Gated(report, decision)


def retrain_after_failure(gated: Gated, verdict_reason: str) -> Gated:
    """The same gate with the exact retrain as its action: the unlearned candidate failed its gates, and the
    request is honoured by the model that never saw the rows."""
    why = f"exact retrain: the unlearned candidate failed its gates ({verdict_reason})"[:2000]
    decision = dataclasses.replace(gated.decision, action="retrain", reason=why)
    return Gated(gated.report, decision, fallback=why)


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and bool(np.isfinite(value))
