"""Evaluation and audit of unlearning: utility, membership attacks, forget quality, evidence strength.

Pure torch / numpy / scipy code (scikit-learn serves only as the tests' oracle) plus matplotlib for figures,
imported only when a plot is drawn; no orchestration imports. The entry point is :func:`evaluate_models`;
docs/evaluation.md explains every number in the report.
"""

from typing import TYPE_CHECKING, Any

from hamu.evaluation.attacks import ATTACKS, CONTRASTS, AttackResult, attack_score, population_attack
from hamu.evaluation.bootstrap import Interval, Resampler, bootstrap_mean, bootstrap_roc, percentile_interval
from hamu.evaluation.evaluate import (
    Evaluation,
    EvaluationConfig,
    MissingReferenceError,
    evaluate_models,
    shadow_query,
)
from hamu.evaluation.forget_quality import GapResult, KSResult, gap_row, ks_forget_quality
from hamu.evaluation.metrics import best_balanced_accuracy, roc_auc, roc_curve, roc_stats, tpr_at_fpr
from hamu.evaluation.per_example import NonFiniteOutputError, PerExample, compute_per_example
from hamu.evaluation.report import (
    EvaluationReport,
    PerExampleScores,
    RecordIdLeakError,
    assert_free_of_ids,
    digest_ids,
)
from hamu.evaluation.shadow import (
    MLPTrainer,
    OfflineLira,
    ReferenceSpec,
    ReferenceStats,
    ShadowConfig,
    TokenBagTrainer,
    make_reference_specs,
    reference_trainer,
    run_references,
    train_shadow_model,
)

if TYPE_CHECKING:
    from hamu.evaluation.plots import plot_kappa_heatmap, plot_loss_histograms, plot_roc_curves, plot_tradeoff

# matplotlib is an optional dependency (the "pipeline" extra): the numbers must not need it, so the plotting
# functions are imported on first use.
_PLOTS = frozenset({"plot_kappa_heatmap", "plot_loss_histograms", "plot_roc_curves", "plot_tradeoff"})


def __getattr__(name: str) -> Any:
    if name in _PLOTS:
        from hamu.evaluation import plots

        return getattr(plots, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ATTACKS",
    "CONTRASTS",
    "AttackResult",
    "Evaluation",
    "EvaluationConfig",
    "EvaluationReport",
    "GapResult",
    "Interval",
    "KSResult",
    "MLPTrainer",
    "MissingReferenceError",
    "NonFiniteOutputError",
    "OfflineLira",
    "PerExample",
    "PerExampleScores",
    "RecordIdLeakError",
    "ReferenceSpec",
    "ReferenceStats",
    "Resampler",
    "ShadowConfig",
    "TokenBagTrainer",
    "assert_free_of_ids",
    "attack_score",
    "best_balanced_accuracy",
    "bootstrap_mean",
    "bootstrap_roc",
    "compute_per_example",
    "digest_ids",
    "evaluate_models",
    "gap_row",
    "ks_forget_quality",
    "make_reference_specs",
    "percentile_interval",
    "plot_kappa_heatmap",
    "plot_loss_histograms",
    "plot_roc_curves",
    "plot_tradeoff",
    "population_attack",
    "reference_trainer",
    "roc_auc",
    "roc_curve",
    "roc_stats",
    "run_references",
    "shadow_query",
    "tpr_at_fpr",
    "train_shadow_model",
]
