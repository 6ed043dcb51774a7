"""Forget quality against the retrained reference: the KS test, gaps, and two-sided pass bands.

Why two-sided: exact unlearning means "indistinguishable from retraining without D_f". An unlearned model
whose forget rows look *less* familiar than the retrained model's (forget accuracy far below retrain's,
membership AUC well under the reference) is as detectable as one that still remembers them: the Streisand
effect. So every metric is judged by |M_unlearned − M_reference| ≤ band, and a failure is labelled with its
direction: ``under-unlearning`` (still looks like a member), ``over-unlearning`` (looks less like a member
than never-seen data does on the reference) or ``deviates`` (utility or control metrics, where either
direction is simply a difference).

The KS test (``scipy.stats.ks_2samp``) compares the per-example distribution of one statistic (default: the
loss) on the forget rows between the model and the reference: TOFU's forget quality, with the vision analogue
of its truth ratio. It is reported as D, p and both n together, because a p-value is not an effect size and is
not comparable across forget-set sizes; the pass band applies to D.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from scipy import stats as sps

from hamu.evaluation.bootstrap import Interval
from hamu.evaluation.metrics import SMALL_SAMPLE, as_scores

Verdict = Literal["pass", "under-unlearning", "over-unlearning", "deviates", "not gated"]


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


@dataclass(frozen=True)
class PassBands:
    """Half-widths of the two-sided bands |M − M_reference| ≤ band; ``None`` reports a metric without gating.

    The defaults are starting points for small classification models, not calibrated thresholds: calibrate
    them against the seed-to-seed spread of retrained models (train two references and evaluate one against
    the other; the gaps you see are the floor a band must exceed).
    """

    accuracy: float | None = 0.05
    loss: float | None = 0.25
    auc: float | None = 0.05
    balanced_accuracy: float | None = 0.05
    tpr: float | None = 0.05
    ks_d: float | None = 0.2

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is not None and not (np.isfinite(value) and value >= 0):
                raise ValueError(f"pass band {name!r} must be a finite number >= 0 or None, got {value!r}")

    def for_kind(self, kind: str) -> float | None:
        value: float | None = getattr(self, kind)
        return value

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)


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
    """One metric of one model against the reference: values, paired gap with its interval, band, verdict."""

    metric: str
    value: float
    reference: float
    gap: float
    gap_ci_low: float | None
    gap_ci_high: float | None
    band: float | None
    passed: bool | None
    verdict: Verdict

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def judge_gap(
    metric: str, value: float, reference: float, gap: Interval | None, bands: PassBands
) -> GapResult:
    """Apply the two-sided band to one metric and name the direction of a failure."""
    diff = value - reference if gap is None else gap.estimate
    band = bands.for_kind(metric_kind(metric))
    if band is None:
        passed: bool | None = None
        verdict: Verdict = "not gated"
    elif abs(diff) <= band:
        passed, verdict = True, "pass"
    else:
        passed = False
        sign = member_direction(metric) * np.sign(diff)
        verdict = "under-unlearning" if sign > 0 else "over-unlearning" if sign < 0 else "deviates"
    return GapResult(
        metric=metric,
        value=float(value),
        reference=float(reference),
        gap=float(diff),
        gap_ci_low=None if gap is None else gap.low,
        gap_ci_high=None if gap is None else gap.high,
        band=band,
        passed=passed,
        verdict=verdict,
    )
