"""Evaluation tasks: LiRA reference models (one task each, fanned out by the flow's task runner), the
three-model evaluation, and the plots."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from torch import nn

from hamu.evaluation import (
    Evaluation,
    EvaluationConfig,
    MLPTrainer,
    ReferenceSpec,
    ReferenceStats,
    evaluate_models,
    make_reference_specs,
    plot_kappa_heatmap,
    plot_loss_histograms,
    plot_roc_curves,
    plot_tradeoff,
    shadow_query,
    train_reference,
)
from hamu.unlearner import StepRecord

Splits = Mapping[str, tuple[Any, Any]]


@task(name="shadow-specs", cache_policy=NO_CACHE)
def shadow_specs(splits: Splits, k: int, seed: int, n_classes: int) -> list[ReferenceSpec]:
    """K reference-model specs trained on halves of the retain rows (never forget or test rows)."""
    retain_x, retain_y = splits["retain"]
    trainer = MLPTrainer(retain_x, retain_y, n_classes=n_classes)
    query = shadow_query(splits)
    return make_reference_specs(query, train_fn=trainer, candidates=len(retain_y), k=k, seed=seed)


@task(name="train-shadow-reference", cache_policy=NO_CACHE)
def train_shadow(spec: ReferenceSpec) -> ReferenceStats:
    return train_reference(spec)


@task(name="evaluate-models", cache_policy=NO_CACHE)
def evaluate(
    models: Mapping[str, nn.Module],
    splits: Splits,
    *,
    reference_kind: str,
    stats: Sequence[ReferenceStats] | None,
    digests: Mapping[str, str],
    seed: int,
) -> Evaluation:
    return evaluate_models(
        models,
        splits,
        reference_kind=reference_kind,  # type: ignore[arg-type]
        config=EvaluationConfig(seed=seed, n_resamples=500),
        shadow=list(stats) if stats else None,
        digests=digests,
    )


@task(name="plots", cache_policy=NO_CACHE)
def make_plots(
    evaluation: Evaluation, history: Sequence[StepRecord], tensor_names: Sequence[str], method: str, out: Path
) -> dict[str, Path]:
    """ROC curves, loss histograms, the trade-off trajectory and the per-layer κ heatmap (when HAMU ran)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "roc": plot_roc_curves(evaluation.scores, out / "roc.png"),
        "loss_histograms": plot_loss_histograms(evaluation.scores, out / "loss_histograms.png"),
    }
    if history:
        paths["tradeoff"] = plot_tradeoff({method: list(history)}, out / "tradeoff.png")
        if history[0].kappa_per_tensor is not None:
            paths["kappa_heatmap"] = plot_kappa_heatmap(list(history), list(tensor_names), out / "kappa.png")
    return {k: Path(v) for k, v in paths.items()}
