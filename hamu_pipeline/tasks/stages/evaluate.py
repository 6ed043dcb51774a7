"""The evaluate stage: original vs reference vs candidate on the same rows, the one verdict on that
evidence, and the lineage's cumulative drift after this batch (docs/pipeline.md step 7).

The two decisions taken here, the verdict's wiring and the drift outcome, are plain functions
(:func:`judge`, :func:`drift_outcome`), tested without Prefect.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow

from hamu.evaluation import Evaluation, MissingReferenceError, ReferenceStats
from hamu.governance.drift import DriftBudget, DriftState, advance, batch_gaps, breaches
from hamu.governance.verdict import GatePolicy, RunFacts, Verdict, decide
from hamu_pipeline.tasks.bank import bank_evidence_report
from hamu_pipeline.tasks.evaluation import evaluate as evaluate_models
from hamu_pipeline.tasks.evaluation import make_plots, own_inputs
from hamu_pipeline.tasks.lineage import drift_of
from hamu_pipeline.tasks.registration import log_report_metrics
from hamu_pipeline.tasks.stages.bank import Banked
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
    """The evidence (report on disk in the working area), its verdict, the drift outcome and the plots.

    ``mode`` is the evidence used: ``exact``, ``bank`` or ``both`` (the exact verdict decides, the bank's
    is recorded beside it). ``needs_exact``: the bank alone could not decide; the flow trains the exact
    reference and evaluates again.
    """

    evaluation: Evaluation | None
    report: dict[str, Any]
    report_path: Path
    verdict: Verdict
    drift: DriftOutcome
    plots: dict[str, Path]
    ledger_report: str
    mode: str = "exact"
    bank_verdict: Verdict | None = None
    mode_reason: str = ""

    def fails(self, candidate: Candidate) -> bool:
        """An unlearned candidate the verdict refuses (not merely inconclusive)."""
        return candidate.action == "unlearn" and self.verdict.status == "fail"

    @property
    def needs_exact(self) -> bool:
        v = self.verdict
        return self.mode == "bank" and (v.status == "inconclusive" or v.evidence != "adequate")

    def summary(self) -> dict[str, Any]:
        v = self.verdict
        out = {
            "evidence_mode": self.mode,
            **({"evidence_mode_reason": self.mode_reason} if self.mode_reason else {}),
            "evidence": v.evidence,
            "gates_passed": v.passed,
            "verdict": v.status,
            "verdict_reason": v.reason,
            "drift": self.drift.to_dict(),
            "report_path": self.ledger_report,
        }
        if self.bank_verdict is not None:
            out["bank_verdict"] = self.bank_verdict.status
            out["bank_agrees"] = bank_agrees(v, self.bank_verdict)
        return out


def bank_agrees(exact: Verdict, bank: Verdict) -> bool:
    """Whether the bank's verdict is the exact reference's (pass against not pass)."""
    return (exact.status == "pass") == (bank.status == "pass")


def bank_rows(ctx: BatchContext, prepared: Prepared, banked: Banked) -> dict[str, Any]:
    """The rows a bank report reads: the evaluated retain sample, forget, test, and the re-checked erased."""
    split = prepared.split
    rows = {
        "retain": split.retain.select([int(i) for i in prepared.eval_rows]),
        "forget": split.forget,
        "test": split.test,
    }
    if banked.erased.size:
        rows["erased"] = ctx.data.train.select(banked.erased.tolist())
    return rows


def judge_by_bank(
    ctx: BatchContext, prepared: Prepared, candidate: Candidate, banked: Banked
) -> tuple[dict[str, Any], Verdict]:
    """The bank report of the champion and the candidate, and the candidate's verdict on it."""
    if banked.view is None:
        raise ValueError("no bank view: this batch has no reference bank")
    models = {
        "original": (ctx.champion.model, ctx.champion.featurizer),
        "unlearned": (candidate.model, candidate.source.featurizer),
    }
    report = bank_evidence_report(
        models,
        bank_rows(ctx, prepared, banked),
        banked.view,
        bank=banked.describe(),
        digests=prepared.digests,
        seed=ctx.config.seed,
    )
    return report, judge(report, candidate, ctx.config.verdict_policy())


@stage("evaluate", rerunnable=True)
def evaluate(
    ctx: BatchContext,
    prepared: Prepared,
    reference: Reference,
    candidate: Candidate,
    banked: Banked,
    shadow: Sequence[ReferenceStats] | None,
    attempt: int = 0,
) -> Evaluated:
    """Evaluate against the exact reference, the bank, or both; judge the candidate; advance the drift.

    ``attempt``: a later evaluation of the same batch (the bank could not decide, or the unlearned candidate
    failed and the retrain took its place); its files get their own names, so earlier files (and the
    ledger records vouching for them) stay as they were.
    """
    cfg = ctx.config
    exact = reference.trained if reference.trained is not None else candidate.retrained
    bank_report_: dict[str, Any] | None = None
    bank_verdict: Verdict | None = None
    if banked.available:
        bank_report_, bank_verdict = judge_by_bank(ctx, prepared, candidate, banked)
    evaluation: Evaluation | None = None
    if exact is not None:
        mode = "both" if bank_report_ is not None else "exact"
        kind = reference.kind if reference.trained is not None else "retrained"
        featurizers = {"retrained": exact.featurizer, "unlearned": candidate.source.featurizer}
        own = own_inputs(prepared.split, featurizers, ctx.champion.featurizer, prepared.eval_rows)
        evaluation = evaluate_models(
            {"original": ctx.champion.model, "retrained": exact.model, "unlearned": candidate.model},
            prepared.eval_splits(),
            reference_kind=kind,
            stats=None if bank_report_ is not None else shadow,
            digests=prepared.digests,
            seed=cfg.seed,
            model_inputs=own,
        )
        evaluation.scores.save(ctx.work / "scores")
        report = evaluation.report.to_dict()
        verdict = judge(report, candidate, cfg.verdict_policy())
    elif bank_report_ is not None and bank_verdict is not None:
        mode, report, verdict, bank_verdict = "bank", bank_report_, bank_verdict, None
    else:
        raise MissingReferenceError(
            "neither an exact reference nor a reference bank to judge the candidate by"
        )
    stem = f"evaluation-{attempt}" if attempt else "evaluation"
    report_path = ctx.work / f"{stem}.json"
    if evaluation is not None:
        evaluation.report.write(report_path)
    else:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(report, indent=1, sort_keys=True))
    artifacts = {"evaluation": (report_path.name, report_path.read_bytes())}
    if mode == "both" and bank_report_ is not None:
        bank_path = ctx.work / f"{stem}-bank.json"
        bank_path.write_text(json.dumps(bank_report_, indent=1, sort_keys=True))
        artifacts["bank_evaluation"] = (bank_path.name, bank_path.read_bytes())
        mlflow.log_artifact(str(bank_path))
    plots = make_plots(evaluation, candidate.history, candidate.tensor_names, cfg.method, ctx.work / "plots")
    log_report_metrics(report)
    mlflow.set_tags(
        {
            "verdict": verdict.status,
            "evidence": verdict.evidence,
            "gates_passed": str(verdict.passed),
            "evidence_mode": mode,
        }
    )
    drift = drift_outcome(drift_of(ctx.champion), candidate, report, cfg.drift_budget(), cfg.drift_action)
    mlflow.log_metrics({f"drift.{k}": float(v) for k, v in drift.state.to_dict().items()})
    params: dict[str, Any] = {"drift": drift.to_dict(), "verdict": verdict.to_dict(), "evidence_mode": mode}
    if bank_verdict is not None:
        params["bank_verdict"] = {"status": bank_verdict.status, "agrees": bank_agrees(verdict, bank_verdict)}
    ctx.audit.record(
        "evaluate",
        decision=verdict.status,
        reason=f"evidence {verdict.evidence} ({mode}): {verdict.reason}"[:2000],
        params=params,
        artifacts=artifacts,
    )
    in_ledger = str(ctx.paths.audit / "batches" / ctx.batch_id / report_path.name)
    why = (
        "the outcome is the exact retrain (unlearning missed its target); the bank judges it too"
        if reference.mode == "bank" and mode == "both"
        else ""
    )
    return Evaluated(
        evaluation, report, report_path, verdict, drift, plots, in_ledger, mode, bank_verdict, mode_reason=why
    )
