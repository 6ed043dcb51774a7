"""Population membership-inference attacks: one threshold rule on one per-example score for all rows.

Every score is oriented so that **higher = "member"** (the convention of the ROC code):

==================  ===============================  =========================================
attack              score                            why it separates
==================  ===============================  =========================================
``loss``            −ℓ = log p_y                     training rows have lower loss (Yeom 2018)
``confidence``      p_y                              ... and higher true-class probability
``entropy``         −H(p)                            ... and more peaked predictions
``modified_entropy`` −Mentr (Song & Mittal 2021)     label-aware entropy; monotone in p_y for
                                                     a correct prediction, penalises confident errors
==================  ===============================  =========================================

For unlearning, "members" are the forget rows and "non-members" the test rows; the retrained model's value,
not 0.5, is the target (forget and test need not be identically distributed). The same attacks on
retain-vs-test are a control: unlearning should not change how exposed the retain set is.

These attacks are known to *understate* leakage (Hayes et al. 2025): a population threshold averages over
easy and hard examples. :mod:`hamu.evaluation.shadow` adds a per-example (LiRA) attack for that reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from hamu.evaluation.bootstrap import DEFAULT_LEVEL, DEFAULT_RESAMPLES, Interval, bootstrap_roc
from hamu.evaluation.metrics import DEFAULT_FPRS, SMALL_SAMPLE
from hamu.evaluation.per_example import PerExample

ScoreFn = Callable[[PerExample], np.ndarray]

ATTACKS: dict[str, ScoreFn] = {
    "loss": lambda pe: -pe.loss,
    "confidence": lambda pe: pe.confidence,
    "entropy": lambda pe: -pe.entropy,
    "modified_entropy": lambda pe: -pe.modified_entropy,
}

# (members, non-members) split pairs the report evaluates; the second is the control.
CONTRASTS: dict[str, tuple[str, str]] = {
    "forget_vs_test": ("forget", "test"),
    "retain_vs_test": ("retain", "test"),
}


def attack_score(per_example: PerExample, attack: str) -> np.ndarray:
    """The attack's per-example score (higher = member)."""
    try:
        fn = ATTACKS[attack]
    except KeyError:
        raise ValueError(f"unknown attack {attack!r}; expected one of {sorted(ATTACKS)}") from None
    return fn(per_example)


@dataclass(frozen=True)
class AttackResult:
    """One attack on one (members, non-members) pair: point estimates, intervals and sample sizes.

    ``small_sample`` is set when either side has fewer than 30 rows; ``fpr_resolved`` says, per FPR budget,
    whether there are enough non-members (n ≥ 1/α) for that budget to mean anything: with fewer, the only
    admissible threshold has FPR = 0 and "TPR at 0.1% FPR" is really "TPR at zero false positives".
    """

    attack: str
    metrics: dict[str, Interval]
    n_members: int
    n_nonmembers: int
    small_sample: bool
    fpr_resolved: dict[str, bool] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
            "n_members": self.n_members,
            "n_nonmembers": self.n_nonmembers,
            "small_sample": self.small_sample,
            "fpr_resolved": dict(self.fpr_resolved),
        }


def fpr_resolution(n_nonmembers: int, fprs: Sequence[float]) -> dict[str, bool]:
    """Whether each FPR budget α is resolvable with this many non-members (α·n ≥ 1)."""
    return {f"{a:g}": a * n_nonmembers >= 1.0 for a in fprs}


def population_attack(
    members: PerExample,
    nonmembers: PerExample,
    attack: str,
    *,
    fprs: Sequence[float] = DEFAULT_FPRS,
    n_resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> AttackResult:
    """Run one population attack on one model's per-example outputs, with bootstrap intervals.

    Stand-alone entry point; :func:`hamu.evaluation.evaluate.evaluate_models` does the same for every model
    with shared (paired) resamples.
    """
    metrics = bootstrap_roc(
        attack_score(members, attack),
        attack_score(nonmembers, attack),
        fprs=fprs,
        n_resamples=n_resamples,
        level=level,
        seed=seed,
    )
    n_m, n_n = len(members), len(nonmembers)
    return AttackResult(
        attack=attack,
        metrics=metrics,
        n_members=n_m,
        n_nonmembers=n_n,
        small_sample=min(n_m, n_n) < SMALL_SAMPLE,
        fpr_resolved=fpr_resolution(n_n, fprs),
    )
