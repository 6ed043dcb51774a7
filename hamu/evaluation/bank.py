"""The maths of a reference bank: membership evidence on forget rows without retraining per deletion batch.

Why a bank: the gold standard for "was this row forgotten?" is a model retrained without it, which costs one
full training run per deletion batch. A reference bank pays that cost once, up front:

1. train K models (K even) with the served model's own recipe, each on a seeded random half of the training
   manifest (:func:`assign_membership`: every row is IN for exactly K/2 models, so it is OUT for K/2);
2. on every row x, the bank models that did *not* train on x give the distribution of a statistic (LiRA's φ,
   the loss) for a model that never saw x (:func:`out_statistics`), the offline-LiRA "OUT" Gaussian of
   :mod:`hamu.evaluation.shadow`, but fitted per row from the models that happen to be OUT for it;
3. a candidate model (the served one, or an unlearned one) is scored per forget row,
   (φ_candidate(x) − μ_out(x)) / σ_out(x) (:func:`lira_scores`), and the same on test rows, which were
   never in the manifest and so are OUT for every bank model: they calibrate what a non-member looks like;
4. forget rows whose scores are indistinguishable from the test rows' carry no membership evidence
   (:func:`bank_evidence`: AUC with a bootstrap interval and the width a pure-chance AUC would have);
5. :func:`expected_forget_loss` gives the forget-set loss a never-trained-on model of the served model's
   strength would have had, the utility target an unlearned model should land near.

A row whose every bank model trained on it (impossible with :func:`assign_membership`, possible once rows are
added to a bank) has no OUT model and no evidence: :func:`short_rows` names them so that the affected part
of the bank can be retrained. Everything here is pure numpy/scipy on arrays the caller already computed;
per-row arrays are information about the forget rows and never go into a report (:meth:`BankEvidence.to_dict`
carries none).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

from hamu.evaluation.bootstrap import bootstrap_roc
from hamu.evaluation.metrics import as_scores

MIN_SIGMA = 1e-6
MIN_RESAMPLES = 100
DEFAULT_FPRS: tuple[float, ...] = (0.01, 0.001)
# n_t·fpr is a float product (100 × 0.29 = 28.999…96); a count this close to an integer is that integer.
_COUNT_TOLERANCE = 1e-9


def assign_membership(n_rows: int, n_models: int, seed: int) -> np.ndarray:
    """Which bank model trains on which manifest row: bool (n_models, n_rows), True = IN.

    Every row is IN for exactly ``n_models // 2`` models, a subset drawn uniformly per row (the K/2 smallest
    of K seeded uniforms), so every row also has exactly K/2 OUT models: the per-row OUT distribution is
    never fitted from fewer models than that. Each model thus trains on about half the rows (Binomial(N, ½)).
    The draw is a deterministic function of ``seed``, so the bank can be rebuilt or audited from the seed
    alone.
    """
    if n_models < 2 or n_models % 2:
        raise ValueError(f"n_models must be even and >= 2 (each row IN for half of them), got {n_models}")
    if n_rows < 1:
        raise ValueError(f"n_rows must be >= 1, got {n_rows}")
    rng = np.random.default_rng(seed)
    ranks = np.argsort(np.argsort(rng.random((n_models, n_rows)), axis=0), axis=0)
    membership: np.ndarray = ranks < n_models // 2
    return membership


@dataclass(frozen=True)
class OutStats:
    """Per-row distribution of a statistic over the bank models that did not train on the row.

    ``pooled_std`` exists because per-row variances from K/2 models are noisy (LiRA's "fixed variance"
    recommendation for small K); it is NaN only when no row has two OUT models to estimate a variance from.
    """

    mean: np.ndarray  # (n,) mean over OUT models; NaN where n_out == 0
    std: np.ndarray  # (n,) std over OUT models (ddof=1); NaN where n_out < 2
    n_out: np.ndarray  # (n,) int64, number of OUT models per row
    pooled_std: float  # sqrt of the (n_out − 1)-weighted mean of per-row variances, floored at MIN_SIGMA


def _check_mask(name: str, mask: np.ndarray) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.dtype != np.bool_:
        raise ValueError(f"{name} must be a bool array (True = OUT), got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (models, rows), got shape {arr.shape}")
    return arr


def _masked_moments(
    name: str, values: np.ndarray, out_mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, unbiased variance, count) over the masked entries of each column; NaN where undefined.

    Entries outside the mask are never read, so a bank model's value on a row it trained on may be anything
    (even NaN); the masked ones must be finite, or they would silently poison the row's mean.
    """
    vals = np.asarray(values, dtype=np.float64)
    if vals.ndim != 2 or vals.shape != out_mask.shape:
        raise ValueError(f"{name} has shape {vals.shape} but its OUT mask has shape {out_mask.shape}")
    bad = out_mask & ~np.isfinite(vals)
    if bad.any():
        raise ValueError(f"{name} contains NaN/Inf at {int(bad.sum())} OUT entries")
    n_out = out_mask.sum(axis=0).astype(np.int64)
    x = np.where(out_mask, vals, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n_out > 0, x.sum(axis=0) / n_out, np.nan)
        dev = np.where(out_mask, vals - mean, 0.0)
        var = np.where(n_out > 1, (dev**2).sum(axis=0) / (n_out - 1), np.nan)
    return mean, var, n_out


def out_statistics(values: np.ndarray, out_mask: np.ndarray) -> OutStats:
    """Per-row mean/std of ``values`` (K, n) over the models where ``out_mask`` (K, n) is True (OUT).

    The pooled std weights each row's variance by its degrees of freedom (n_out − 1), the usual pooled
    estimator, so a row with more OUT models counts for more; the floor keeps scores finite when every OUT
    model agrees exactly.
    """
    mask = _check_mask("out_mask", out_mask)
    mean, var, n_out = _masked_moments("values", values, mask)
    dof = np.where(n_out > 1, n_out - 1, 0)
    if dof.sum() > 0:
        pooled_var = float((np.where(dof > 0, var, 0.0) * dof).sum() / dof.sum())
        pooled = max(math.sqrt(pooled_var), MIN_SIGMA)
    else:
        pooled = math.nan
    return OutStats(mean=mean, std=np.sqrt(var), n_out=n_out, pooled_std=pooled)


def short_rows(out_mask: np.ndarray, min_out: int) -> np.ndarray:
    """Indices (int64) of rows with fewer than ``min_out`` OUT models.

    These rows cannot be scored (or only with a noisy OUT distribution): the bank, or the part of it whose
    models trained on them, must be retrained before they can be audited.
    """
    mask = _check_mask("out_mask", out_mask)
    if min_out < 0:
        raise ValueError(f"min_out must be >= 0, got {min_out}")
    return np.flatnonzero(mask.sum(axis=0) < min_out).astype(np.int64)


def lira_scores(target_phi: np.ndarray, out: OutStats, *, fixed_variance: bool = True) -> np.ndarray:
    """Offline-LiRA scores (φ_target − μ_out) / σ_out per row; higher = more member-like.

    ``fixed_variance`` (default) uses the pooled std for every row, as LiRA recommends for few reference
    models. Otherwise each row's own std (floored at MIN_SIGMA) is used, falling back to the pooled one where
    the row has fewer than two OUT models to estimate it from.
    """
    phi = np.asarray(target_phi, dtype=np.float64)
    if phi.shape != out.mean.shape:
        raise ValueError(f"expected {out.mean.shape[0]} target φ values, got shape {phi.shape}")
    if not np.isfinite(phi).all():
        raise ValueError(f"target φ contains NaN/Inf ({int((~np.isfinite(phi)).sum())} of {phi.size})")
    empty = int((out.n_out == 0).sum())
    if empty:
        raise ValueError(f"{empty} rows have no OUT model and cannot be scored (see short_rows)")
    if fixed_variance:
        sigma = np.full_like(phi, out.pooled_std)
    else:
        sigma = np.where(
            out.n_out >= 2, np.maximum(np.nan_to_num(out.std, nan=MIN_SIGMA), MIN_SIGMA), out.pooled_std
        )
    if np.isnan(sigma).any():
        raise ValueError("no row has 2 OUT models, so there is no std to scale the scores by")
    scores: np.ndarray = (phi - out.mean) / sigma
    return scores


def fpr_key(fpr: float) -> str:
    """The report key of an FPR budget, e.g. ``fpr_0.01``."""
    return f"fpr_{fpr:g}"


def null_half_width(n_forget: int, n_test: int, level: float) -> float:
    """Half-width of the AUC's interval when both groups come from one distribution (Hanley–McNeil, AUC ½).

    Under the null the AUC is a Mann–Whitney U / (n_f n_t) with variance (n_f + n_t + 1) / (12 n_f n_t), so
    an AUC within z·sqrt(that) of ½ is what chance alone produces at these sizes: the resolution of the audit.
    """
    z = float(sps.norm.ppf((1.0 + level) / 2.0))
    return z * math.sqrt((n_forget + n_test + 1) / (12.0 * n_forget * n_test))


@dataclass(frozen=True)
class BankEvidence:
    """How distinguishable a candidate's forget-row scores are from its test-row (non-member) scores.

    ``detectable[k]`` is the fraction of forget rows whose score exceeds the test scores' empirical
    (1 − fpr) quantile, taken as an order statistic: the largest test score value with at most ⌊n_t·fpr⌋ test
    scores strictly above it, so the threshold's FPR on the test rows is at most ``fpr``. When n_t·fpr < 1
    (``resolved[k]`` False) that threshold is simply the maximum test score: the test set is too small to
    resolve that FPR, and the fraction is the one at FPR 0, not at ``fpr``.
    """

    auc: float  # P(forget > test) + ½ P(tie): forget rows as positives
    auc_ci_low: float
    auc_ci_high: float  # percentile bootstrap at `level`, rows resampled within each group
    null_half_width: float  # see :func:`null_half_width`
    mean_score_gap: float  # mean(forget scores) − mean(test scores)
    detectable: dict[str, float]
    resolved: dict[str, bool]
    n_forget: int
    n_test: int
    level: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (plain floats/ints/bools); no per-row values, which describe forget rows."""
        return {
            "auc": float(self.auc),
            "auc_ci_low": float(self.auc_ci_low),
            "auc_ci_high": float(self.auc_ci_high),
            "null_half_width": float(self.null_half_width),
            "mean_score_gap": float(self.mean_score_gap),
            "detectable": {k: float(v) for k, v in self.detectable.items()},
            "resolved": {k: bool(v) for k, v in self.resolved.items()},
            "n_forget": int(self.n_forget),
            "n_test": int(self.n_test),
            "level": float(self.level),
        }


def detectable_fraction(forget_scores: np.ndarray, test_scores: np.ndarray, fpr: float) -> tuple[float, bool]:
    """(fraction of forget scores above the test scores' (1 − fpr) order statistic, whether n_t·fpr >= 1)."""
    test = np.sort(test_scores)
    allowed = math.floor(test.size * fpr + _COUNT_TOLERANCE)  # test rows allowed above the threshold
    threshold = test[test.size - 1 - min(allowed, test.size - 1)]
    return float((forget_scores > threshold).mean()), allowed >= 1


def bank_evidence(
    forget_scores: np.ndarray,
    test_scores: np.ndarray,
    *,
    fprs: Sequence[float] = DEFAULT_FPRS,
    level: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
) -> BankEvidence:
    """Membership evidence of a candidate on the forget rows, calibrated by the test rows.

    The AUC and its stratified percentile bootstrap come from :func:`hamu.evaluation.bootstrap.bootstrap_roc`
    (O(n log n) per sample via the shared score grid), so the bank's AUC is the same number the population
    attacks report. Compare the interval with ½ ± ``null_half_width``: an interval inside it is what a model
    that never saw the forget rows would also produce.
    """
    forget = as_scores("forget_scores", forget_scores)
    test = as_scores("test_scores", test_scores)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if n_resamples < MIN_RESAMPLES:
        raise ValueError(f"n_resamples must be >= {MIN_RESAMPLES}, got {n_resamples}")
    budgets = [float(a) for a in fprs]
    for alpha in budgets:
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"fprs must lie in (0, 1), got {alpha}")
    auc = bootstrap_roc(forget, test, fprs=(), n_resamples=n_resamples, level=level, seed=seed)["auc"]
    detectable: dict[str, float] = {}
    resolved: dict[str, bool] = {}
    for alpha in budgets:
        detectable[fpr_key(alpha)], resolved[fpr_key(alpha)] = detectable_fraction(forget, test, alpha)
    return BankEvidence(
        auc=auc.estimate,
        auc_ci_low=auc.low,
        auc_ci_high=auc.high,
        null_half_width=null_half_width(forget.size, test.size, level),
        mean_score_gap=float(forget.mean() - test.mean()),
        detectable=detectable,
        resolved=resolved,
        n_forget=int(forget.size),
        n_test=int(test.size),
        level=float(level),
    )


def expected_forget_loss(
    bank_forget_loss: np.ndarray,
    forget_out: np.ndarray,
    bank_test_loss: np.ndarray,
    served_test_loss: np.ndarray,
) -> tuple[float, np.ndarray]:
    """The forget-set mean loss the served model would have had had it never seen the forget rows.

    Estimated without retraining: per forget row, the mean loss of its OUT bank models (a never-trained-on
    loss), shifted by how much stronger the served model (all the data) is than the half-data bank models.
    That strength gap is measured on test rows, which no model saw, so it contains no membership effect:
    shift = mean(served_test_loss) − mean over models of mean(bank_test_loss[k]).
    Returns (mean of the shifted per-row expectations, the shifted per-row expectations, shape (n_f,)).
    """
    mask = _check_mask("forget_out", forget_out)
    mean, _, n_out = _masked_moments("bank_forget_loss", bank_forget_loss, mask)
    empty = int((n_out == 0).sum())
    if empty:
        raise ValueError(f"{empty} forget rows have no OUT bank model (see short_rows)")
    bank_test = np.asarray(bank_test_loss, dtype=np.float64)
    if bank_test.ndim != 2 or bank_test.shape[0] != mask.shape[0]:
        raise ValueError(f"bank_test_loss must have shape ({mask.shape[0]}, n_test), got {bank_test.shape}")
    if bank_test.shape[1] == 0:
        raise ValueError("bank_test_loss has no test rows")
    if not np.isfinite(bank_test).all():
        raise ValueError("bank_test_loss contains NaN/Inf")
    served = as_scores("served_test_loss", served_test_loss)
    if served.size != bank_test.shape[1]:
        raise ValueError(
            f"served_test_loss has {served.size} rows but bank_test_loss has {bank_test.shape[1]} test rows"
        )
    shift = float(served.mean() - bank_test.mean(axis=1).mean())
    expected: np.ndarray = mean + shift
    return float(expected.mean()), expected


#: Losses are capped at this many nats before calibration: one destroyed row (loss 300 after a runaway
#: gradient ascent) would otherwise decide a mean over hundreds.
LOSS_CAP = 10.0


@dataclass(frozen=True)
class LossGap:
    """The calibrated forget-loss gap: how much lower (member-like, negative) or higher (over-unlearned,
    positive) a model's losses are on the forget rows than on the test rows, each row's loss taken relative
    to the mean loss of the bank members that never saw it.

    ``noise`` is the half-width of the gap's interval for a model whose forget rows behave like its test
    rows: z · sd(test-row values) · √(1/n_f + 1/n_t); the band of a gate on it is never narrower.
    """

    gap: float
    ci_low: float
    ci_high: float
    noise: float
    n_forget: int
    n_test: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "gap": float(self.gap),
            "ci_low": float(self.ci_low),
            "ci_high": float(self.ci_high),
            "noise": float(self.noise),
            "n_forget": int(self.n_forget),
            "n_test": int(self.n_test),
        }


def calibrated_losses(model_loss: np.ndarray, bank_loss: np.ndarray, out_mask: np.ndarray) -> np.ndarray:
    """Per row: the model's loss minus the mean loss of the members that never saw the row (both capped at
    :data:`LOSS_CAP`). Rows with no such member raise (they cannot be calibrated)."""
    model = np.clip(as_scores("model_loss", model_loss), 0.0, LOSS_CAP)
    stats = out_statistics(np.clip(np.asarray(bank_loss, dtype=np.float64), 0.0, LOSS_CAP), out_mask)
    if model.shape != stats.mean.shape:
        raise ValueError(f"model_loss has {model.shape[0]} rows, the bank's losses {stats.mean.shape[0]}")
    empty = int((stats.n_out == 0).sum())
    if empty:
        raise ValueError(f"{empty} row(s) have no bank member that never trained on them")
    return model - stats.mean


def loss_gap(
    forget: np.ndarray, test: np.ndarray, *, level: float = 0.95, n_resamples: int = 1000, seed: int = 0
) -> LossGap:
    """mean(forget) − mean(test) of calibrated losses, with a percentile-bootstrap interval (rows resampled
    within each group) and the analytic noise floor of :class:`LossGap`."""
    f = as_scores("forget", forget)
    t = as_scores("test", test)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if n_resamples < MIN_RESAMPLES:
        raise ValueError(f"n_resamples must be >= {MIN_RESAMPLES}, got {n_resamples}")
    rng = np.random.default_rng(seed)
    reps = np.empty(n_resamples)
    for i in range(n_resamples):
        reps[i] = f[rng.integers(0, f.size, f.size)].mean() - t[rng.integers(0, t.size, t.size)].mean()
    alpha = (1.0 - level) / 2.0
    z = float(sps.norm.ppf(0.5 + level / 2.0))
    sd = float(t.std(ddof=1)) if t.size > 1 else 0.0
    return LossGap(
        gap=float(f.mean() - t.mean()),
        ci_low=float(np.quantile(reps, alpha)),
        ci_high=float(np.quantile(reps, 1.0 - alpha)),
        noise=z * sd * math.sqrt(1.0 / f.size + 1.0 / t.size),
        n_forget=int(f.size),
        n_test=int(t.size),
    )
