"""Forget quality against the retrained reference: the KS test and the paired gaps of every metric.

This module measures; :mod:`hamu.governance.verdict` judges. Gaps are two-sided on purpose: exact unlearning
means
"indistinguishable from retraining without D_f", and a model whose forget rows look *less* familiar than the
retrained model's is as detectable as one that still remembers them (the Streisand effect).
:func:`member_direction` names which sign of a gap means "still looks like a member".

The KS test (``scipy.stats.ks_2samp``) compares the per-example distribution of one statistic (default: the
loss) on the forget rows between the model and the reference: TOFU's forget quality, with the vision analogue
of its truth ratio. It is reported as D, p and both n together, because a p-value is not an effect size and is
not comparable across forget-set sizes; the equivalence band applies to D.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps

from hamu.evaluation.bootstrap import Interval
from hamu.evaluation.metrics import SMALL_SAMPLE, as_scores


@dataclass(frozen=True)
class KSResult:
    """Two-sample KS between a model's and the reference's per-example statistic on the same forget rows."""

    statistic: str
    d: float
    p_value: float
    n_model: int
    n_reference: int
    small_sample: bool

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def ks_forget_quality(
    model_values: np.ndarray, reference_values: np.ndarray, *, statistic: str = "loss"
) -> KSResult:
    """KS D and p (``scipy.stats.ks_2samp``, two-sided, exact where scipy chooses) with both sample sizes."""
    a = as_scores(f"model {statistic}", model_values)
    b = as_scores(f"reference {statistic}", reference_values)
    res = sps.ks_2samp(a, b)
    return KSResult(
        statistic=statistic,
        d=float(res.statistic),
        p_value=float(res.pvalue),
        n_model=int(a.size),
        n_reference=int(b.size),
        small_sample=min(a.size, b.size) < SMALL_SAMPLE,
    )


def metric_kind(metric: str) -> str:
    """The band a dotted metric path falls under: ``...accuracy`` → accuracy, ``...tpr@0.01`` → tpr, etc."""
    if ".tpr@" in metric:  # the budget itself contains a dot (tpr@0.01)
        return "tpr"
    last = metric.rsplit(".", 1)[-1]
    if last in ("accuracy", "loss", "auc", "balanced_accuracy", "ks_d"):
        return last
    raise ValueError(f"no pass band for metric {metric!r}")


def member_direction(metric: str) -> int:
    """+1 if higher means the forget rows look *more* like training data, −1 if lower does, 0 if n/a."""
    if metric == "utility.forget.accuracy":
        return 1
    if metric == "utility.forget.loss":
        return -1
    if metric.startswith(("attacks.forget_vs_test.", "shadow.forget_vs_test.")):
        return 1
    return 0


@dataclass(frozen=True)
class GapResult:
    """One metric of one model against the reference: both values and the paired gap with its interval.

    ``reference_half_width`` is half the width of the reference's *own* interval for the metric: the
    sampling noise of the metric on these rows, which sets the floor of its equivalence band
    (:mod:`hamu.governance.verdict`). Whether a gap passes is decided only there.
    """

    metric: str
    value: float
    reference: float
    gap: float
    gap_ci_low: float | None
    gap_ci_high: float | None
    reference_half_width: float | None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def gap_row(
    metric: str, value: float, reference: float, gap: Interval | None, reference_interval: Interval | None
) -> GapResult:
    """The paired gap of one metric, with the reference's own sampling noise next to it."""
    metric_kind(metric)  # every reported metric must belong to a known kind
    return GapResult(
        metric=metric,
        value=float(value),
        reference=float(reference),
        gap=float(value - reference if gap is None else gap.estimate),
        gap_ci_low=None if gap is None else gap.low,
        gap_ci_high=None if gap is None else gap.high,
        reference_half_width=(
            None if reference_interval is None else (reference_interval.high - reference_interval.low) / 2
        ),
    )
