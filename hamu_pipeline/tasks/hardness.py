"""Hardness assessment and the unlearn-or-retrain gate on the current champion."""

from __future__ import annotations

from typing import Any

from hamu.core.transform import HamuConfig
from hamu.governance.decision import CostEstimate, Decision, decide
from hamu.hardness import HardnessReport, assess_hardness
from hamu_pipeline.tasks.config import RUN_DEVICE, BatchConfig
from hamu_pipeline.tasks.loaders import batches
from hamu_pipeline.tasks.models import ServedModel, objective


def assess(
    champion: ServedModel, retain: tuple[Any, Any], forget: tuple[Any, Any], config: BatchConfig
) -> tuple[HardnessReport, float]:
    """HAMU's geometry on ``hardness_batches`` paired batches, and the measured seconds per step of the
    batch's method on the device the unlearning runs on (after one warm-up step). The champion's model is
    not changed (the assessment works on a copy)."""
    hamu = HamuConfig(
        variant="hamu-u" if config.method == "hamu-u" else "hamu-q", constraint_ratio=config.constraint_ratio
    )
    report = assess_hardness(
        champion.model,
        objective(champion),
        batches(retain, config.batch_size, seed=config.seed),
        batches(forget, config.batch_size, seed=config.seed + 1),
        hamu=hamu,
        lr=config.lr,
        batches=config.hardness_batches,
        max_grad_norm=config.max_grad_norm,
        device=RUN_DEVICE,
        method=config.method,
        method_options=config.method_options(),
    )
    return report, report.seconds_per_step


def gate(
    report: HardnessReport,
    seconds_per_step: float,
    champion: ServedModel,
    retain_rows: int,
    config: BatchConfig,
    drift_breaches: list[str],
    *,
    bank_available: bool = False,
) -> Decision:
    """Retrain cost: the champion's recorded training time, scaled to the retain set's size. Honouring the
    request by unlearning costs the steps plus the evidence: a retrain of the exact reference unless the
    lineage's reference bank judges the candidate (``bank_available``). A source whose lineage is over its
    drift budget is retrained exactly when ``drift_action`` is ``retrain``. HAMU's hardness verdict gates
    only HAMU methods (an advisory for the baselines)."""
    cost = None
    if config.cost_aware:
        trained_rows = max(int(champion.metadata.get("data_size", retain_rows)), 1)
        retrain = float(champion.metadata.get("train_seconds", 0.0)) * retain_rows / trained_rows
        by_bank = bank_available and config.reference_mode != "exact"
        cost = CostEstimate(
            unlearn_seconds=seconds_per_step * config.max_steps,
            retrain_seconds=retrain,
            steps=config.max_steps,
            method=report.method,
            device=report.device,
            evidence_seconds=0.0 if by_bank else retrain,
            evidence="the reference bank (inference only)" if by_bank else "the exact reference's retrain",
        )
    drift = [f"drift budget of the source version {champion.version}: {b}" for b in drift_breaches]
    forced = drift if config.drift_action == "retrain" else []
    if config.exact:
        forced = ["exact retraining was requested for this batch", *forced]
    advisories = [] if forced else [f"{d}; a full retrain is recommended" for d in drift]
    return decide(
        report,
        cost,
        policy=config.gate_policy,
        force_retrain=forced,
        advisories=advisories,
        method=config.method,
    )
