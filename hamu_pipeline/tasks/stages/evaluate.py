"""The evaluate stage: original vs reference vs candidate on the same rows, the one verdict on that
evidence, and the lineage's cumulative drift after this batch (docs/pipeline.md step 7).

The two decisions taken here, the verdict's wiring and the drift outcome, are plain functions
(:func:`judge`, :func:`drift_outcome`), tested without Prefect.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow

from hamu.evaluation import Evaluation, ReferenceStats
from hamu.governance.drift import DriftBudget, DriftState, advance, batch_gaps, breaches
from hamu.governance.verdict import GatePolicy, RunFacts, Verdict, decide
from hamu_pipeline.tasks.evaluation import evaluate as evaluate_models
from hamu_pipeline.tasks.evaluation import make_plots, own_inputs
from hamu_pipeline.tasks.lineage import drift_of
from hamu_pipeline.tasks.registration import log_report_metrics
from hamu_pipeline.tasks.stages.base import BatchContext, stage
from hamu_pipeline.tasks.stages.reference import Reference
from hamu_pipeline.tasks.stages.split import Prepared
from hamu_pipeline.tasks.stages.unlearn import Candidate


@dataclass(frozen=True)
class DriftOutcome:
    """The lineage's cumulative drift after this batch, against its budget."""

    state: DriftState
    budget: DriftBudget
    breaches: tuple[str, ...]
    recommendation: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.to_dict(),
            "budget": self.budget.to_dict(),
            "breaches": list(self.breaches),
            "recommendation": self.recommendation,
        }


def drift_outcome(
    source: DriftState,
    candidate: Candidate,
    report: Mapping[str, Any],
    budget: DriftBudget,
    drift_action: str,
) -> DriftOutcome:
    """An exact retrain resets the lineage; unlearning compounds its utility deficit and AUC gap."""
    deficit, auc_gap = batch_gaps(report)
    state = advance(source, exact=candidate.action == "retrain", utility_deficit=deficit, auc_gap=auc_gap)
    over = breaches(state, budget)
    what = "the next batch retrains exactly" if drift_action == "retrain" else "retrain fully"
    return DriftOutcome(state, budget, tuple(over), f"{what} (cumulative drift over budget)" if over else "")


def judge(report: Mapping[str, Any], candidate: Candidate, policy: GatePolicy) -> Verdict:
    """The one verdict on this candidate, with what the report cannot know: how it was made and whether its
    weights are the original's (a no-op candidate fails the integrity gates)."""
    facts = RunFacts(
        action=candidate.action,
        steps_applied=candidate.steps,
        candidate_weights=candidate.weights,
        original_weights=candidate.champion_weights,
    )
    return decide(report, facts, policy=policy)


@dataclass(frozen=True)
class Evaluated:
    """The evidence (report on disk in the working area), its verdict, the drift outcome and the plots."""

    evaluation: Evaluation
    report: dict[str, Any]
    report_path: Path
    verdict: Verdict
    drift: DriftOutcome
    plots: dict[str, Path]
    ledger_report: str

    def summary(self) -> dict[str, Any]:
        v = self.verdict
        return {
            "evidence": v.evidence,
            "gates_passed": v.passed,
            "verdict": v.status,
            "verdict_reason": v.reason,
            "drift": self.drift.to_dict(),
            "report_path": self.ledger_report,
        }


@stage("evaluate", rerunnable=True)
def evaluate(
    ctx: BatchContext,
    prepared: Prepared,
    reference: Reference,
    candidate: Candidate,
    shadow: Sequence[ReferenceStats] | None,
) -> Evaluated:
    """Evaluate the three models, judge the candidate, and advance the lineage's drift."""
    cfg = ctx.config
    featurizers = {"retrained": reference.trained.featurizer, "unlearned": candidate.source.featurizer}
    own = own_inputs(prepared.split, featurizers, ctx.champion.featurizer, prepared.eval_rows)
    evaluation = evaluate_models(
        {"original": ctx.champion.model, "retrained": reference.model, "unlearned": candidate.model},
        prepared.eval_splits(),
        reference_kind=reference.kind,
        stats=shadow,
        digests=prepared.digests,
        seed=cfg.seed,
        model_inputs=own,
    )
    evaluation.scores.save(ctx.work / "scores")
    plots = make_plots(evaluation, candidate.history, candidate.tensor_names, cfg.method, ctx.work / "plots")
    report_path = evaluation.report.write(ctx.work / "evaluation.json")
    report = evaluation.report.to_dict()
    log_report_metrics(report)
    verdict = judge(report, candidate, cfg.verdict_policy())
    mlflow.set_tags(
        {"verdict": verdict.status, "evidence": verdict.evidence, "gates_passed": str(verdict.passed)}
    )
    drift = drift_outcome(drift_of(ctx.champion), candidate, report, cfg.drift_budget(), cfg.drift_action)
    mlflow.log_metrics({f"drift.{k}": float(v) for k, v in drift.state.to_dict().items()})
    ctx.audit.record(
        "evaluate",
        decision=verdict.status,
        reason=f"evidence {verdict.evidence}: {verdict.reason}"[:2000],
        params={"drift": drift.to_dict(), "verdict": verdict.to_dict()},
        artifacts={"evaluation": ("evaluation.json", report_path.read_bytes())},
    )
    in_ledger = str(ctx.paths.audit / "batches" / ctx.batch_id / "evaluation.json")
    return Evaluated(evaluation, report, report_path, verdict, drift, plots, in_ledger)
