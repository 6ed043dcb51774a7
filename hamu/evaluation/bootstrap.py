"""Seeded percentile bootstrap over rows, shared across models so that gaps are paired.

Why rows, and why shared: every model is evaluated on the *same* rows, so the uncertainty that matters for a
gap M_unlearned − M_retrained is which rows happened to be in the forget/test sets. Drawing one set of row
resamples per split and applying it to every model gives paired replicates of each metric; the gap's
interval then comes from the replicate-wise differences (a paired bootstrap), which is much tighter and more
honest than combining two independent intervals.

What it does not cover: the randomness of *training*. A single retrained model is one draw from a
distribution of retrained models (the reason the NeurIPS 2023 competition used 512). These intervals are
conditional on the models at hand; docs/evaluation.md says so.

Resamples are stratified by split (members and non-members are resampled separately, keeping both sizes
fixed), generated deterministically per (seed, split name, chunk) and in chunks so memory stays bounded for
large splits.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from hamu.evaluation.metrics import DEFAULT_FPRS, ScoreGrid, as_scores, summarise_counts, tpr_key

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile-bootstrap interval at the evaluation's confidence level."""

    estimate: float
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def to_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "ci_low": self.low, "ci_high": self.high}


def percentile_interval(estimate: float, replicates: np.ndarray, level: float) -> Interval:
    """The (1−level)/2 and (1+level)/2 percentiles of the replicates around the sample estimate."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must lie in (0, 1), got {level}")
    reps = np.asarray(replicates, dtype=np.float64)
    if reps.size == 0:
        raise ValueError("no bootstrap replicates")
    lo, hi = np.quantile(reps, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return Interval(estimate=float(estimate), low=float(lo), high=float(hi))


class Resampler:
    """Row resamples for each named split: the same ones for every model and every metric.

    ``chunks(split)`` yields (b, n) index arrays whose rows are resamples; chunk boundaries are the same for
    all splits, so zipping the chunks of two splits pairs their resamples (members-vs-non-members metrics).
    """

    def __init__(
        self,
        sizes: Mapping[str, int],
        *,
        n_resamples: int = DEFAULT_RESAMPLES,
        seed: int = 0,
        max_chunk_entries: int = 4_000_000,
    ) -> None:
        if n_resamples < 1:
            raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
        for name, n in sizes.items():
            if n < 1:
                raise ValueError(f"split {name!r} is empty")
        self.sizes = dict(sizes)
        self.n_resamples = n_resamples
        self.seed = seed
        widest = max(self.sizes.values(), default=1)
        self.chunk = max(1, min(n_resamples, max_chunk_entries // widest))

    def chunks(self, split: str) -> Iterator[np.ndarray]:
        if split not in self.sizes:
            raise KeyError(f"the resampler knows no split {split!r}; it has {sorted(self.sizes)}")
        n = self.sizes[split]
        key = zlib.crc32(split.encode("utf-8"))
        for j, start in enumerate(range(0, self.n_resamples, self.chunk)):
            b = min(self.chunk, self.n_resamples - start)
            rng = np.random.default_rng([self.seed, key, j])
            yield rng.integers(0, n, size=(b, n), dtype=np.int64)

    def mean(self, split: str, values: np.ndarray) -> np.ndarray:
        """Replicates of the mean of a per-row statistic of ``split``, shape (n_resamples,)."""
        return np.concatenate([values[idx].mean(axis=1) for idx in self.chunks(split)])

    def roc(
        self, members: str, nonmembers: str, grid: ScoreGrid, fprs: Sequence[float] = DEFAULT_FPRS
    ) -> dict[str, np.ndarray]:
        """Replicates of AUC, balanced accuracy and TPR@FPR for scores already placed on ``grid``."""
        parts: list[dict[str, np.ndarray]] = []
        for m_idx, n_idx in zip(self.chunks(members), self.chunks(nonmembers), strict=True):
            stats = summarise_counts(*grid.counts(m_idx, n_idx), fprs)
            part = {"auc": stats.auc, "balanced_accuracy": stats.balanced_accuracy}
            part.update({tpr_key(a): v for a, v in stats.tpr_at_fpr.items()})
            parts.append(part)
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def bootstrap_mean(
    values: np.ndarray | Sequence[float],
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> Interval:
    """Percentile-bootstrap interval of a mean (accuracy = mean of 0/1 correctness, mean loss, ...)."""
    arr = as_scores("values", values)
    res = Resampler({"rows": arr.size}, n_resamples=n_resamples, seed=seed)
    return percentile_interval(float(arr.mean()), res.mean("rows", arr), level)


def bootstrap_roc(
    members: np.ndarray | Sequence[float],
    nonmembers: np.ndarray | Sequence[float],
    *,
    fprs: Sequence[float] = DEFAULT_FPRS,
    n_resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> dict[str, Interval]:
    """Stratified percentile-bootstrap intervals of AUC, best balanced accuracy and TPR@FPR of one attack."""
    grid = ScoreGrid.build(np.asarray(members), np.asarray(nonmembers))
    res = Resampler(
        {"members": grid.n_members, "nonmembers": grid.n_nonmembers}, n_resamples=n_resamples, seed=seed
    )
    reps = res.roc("members", "nonmembers", grid, fprs)
    point = summarise_counts(*grid.counts(), fprs)
    estimates = {"auc": point.auc[0], "balanced_accuracy": point.balanced_accuracy[0]}
    estimates.update({tpr_key(a): v[0] for a, v in point.tpr_at_fpr.items()})
    return {k: percentile_interval(float(estimates[k]), reps[k], level) for k in reps}
