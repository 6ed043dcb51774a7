"""ROC-based attack metrics and utility metrics, vectorised so one code path serves estimates and bootstraps.

A threshold attack predicts "member" when its score is ≥ t. Its ROC curve has one point per *distinct* score
value (ties move together), so every ROC quantity is a function of how many members and non-members sit at
each distinct score. :class:`ScoreGrid` maps both groups onto that descending grid once; counts per grid cell
can then be taken for the original sample or for thousands of bootstrap resamples at once (one ``bincount``),
and :func:`summarise_counts` turns counts into:

* ROC AUC = P(s_member > s_nonmember) + ½ P(tie) (the trapezoid under the ROC, = Mann-Whitney U / (P·N));
* balanced accuracy at the best threshold = max_t ½(TPR(t) + 1 − FPR(t)) (≥ ½: "predict nobody" is a
  threshold);
* TPR at FPR ≤ α = the largest TPR among thresholds whose FPR does not exceed α (no interpolation, so it is a
  TPR that a real threshold achieves).

These agree with scikit-learn's ``roc_auc_score``, ``roc_curve(drop_intermediate=False)`` and
``balanced_accuracy_score`` (see tests/test_attacks.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_FPRS: tuple[float, ...] = (0.01, 0.001)
SMALL_SAMPLE = 30  # below this many rows on either side, AUC / KS are computed but flagged


def as_scores(name: str, values: np.ndarray | Sequence[float]) -> np.ndarray:
    """A finite, non-empty 1-D float64 array, or a ValueError that names the offending input."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN/Inf ({int((~np.isfinite(arr)).sum())} of {arr.size})")
    return arr


@dataclass(frozen=True)
class ScoreGrid:
    """Members' and non-members' scores placed on the descending grid of distinct score values."""

    thresholds: np.ndarray  # distinct scores, descending
    member_cell: np.ndarray  # grid cell of each member
    nonmember_cell: np.ndarray  # grid cell of each non-member

    @classmethod
    def build(cls, members: np.ndarray, nonmembers: np.ndarray) -> ScoreGrid:
        m = as_scores("member scores", members)
        n = as_scores("non-member scores", nonmembers)
        values, inverse = np.unique(np.concatenate([m, n]), return_inverse=True)
        cell = values.size - 1 - inverse  # descending order
        return cls(thresholds=values[::-1].copy(), member_cell=cell[: m.size], nonmember_cell=cell[m.size :])

    @property
    def n_members(self) -> int:
        return int(self.member_cell.size)

    @property
    def n_nonmembers(self) -> int:
        return int(self.nonmember_cell.size)

    def counts(
        self, member_idx: np.ndarray | None = None, nonmember_idx: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-cell counts, shape (b, cells): the sample itself (b = 1) or one row per resample.

        ``member_idx`` / ``nonmember_idx`` are (b, n) arrays of row indices (bootstrap resamples of each
        group, drawn separately: a stratified resample keeps both group sizes fixed, as AUC needs).
        """
        return _cell_counts(self.member_cell, member_idx, self.thresholds.size), _cell_counts(
            self.nonmember_cell, nonmember_idx, self.thresholds.size
        )


def _cell_counts(cell: np.ndarray, idx: np.ndarray | None, n_cells: int) -> np.ndarray:
    if idx is None:
        return np.bincount(cell, minlength=n_cells)[None, :].astype(np.float64)
    b = idx.shape[0]
    flat = (np.arange(b, dtype=np.int64)[:, None] * n_cells + cell[idx]).ravel()
    return np.bincount(flat, minlength=b * n_cells).reshape(b, n_cells).astype(np.float64)


def roc_from_counts(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr), shape (b, cells + 1), from per-cell counts in descending-score order; starts at (0, 0)."""
    zero = np.zeros((pos.shape[0], 1))
    tp = np.concatenate([zero, np.cumsum(pos, axis=1)], axis=1)
    fp = np.concatenate([zero, np.cumsum(neg, axis=1)], axis=1)
    return fp / fp[:, -1:], tp / tp[:, -1:]


@dataclass(frozen=True)
class RocStats:
    """ROC summaries, one entry per sample/resample (arrays of shape (b,))."""

    auc: np.ndarray
    balanced_accuracy: np.ndarray
    tpr_at_fpr: dict[float, np.ndarray]


def summarise_counts(pos: np.ndarray, neg: np.ndarray, fprs: Sequence[float] = DEFAULT_FPRS) -> RocStats:
    """AUC, best balanced accuracy and TPR at each FPR budget from per-cell counts (see module docstring)."""
    n_pos = pos.sum(axis=1)
    n_neg = neg.sum(axis=1)
    tp_before = np.cumsum(pos, axis=1) - pos
    auc = (neg * (tp_before + 0.5 * pos)).sum(axis=1) / (n_pos * n_neg)
    fpr, tpr = roc_from_counts(pos, neg)
    balanced = 0.5 * (tpr + 1.0 - fpr).max(axis=1)
    at: dict[float, np.ndarray] = {}
    for alpha in fprs:
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"FPR budgets must lie in [0, 1), got {alpha}")
        # fpr rises along the curve, so the admissible points form a prefix; tpr rises too: take the last.
        last = (fpr <= alpha).sum(axis=1) - 1
        at[float(alpha)] = np.take_along_axis(tpr, last[:, None], axis=1)[:, 0]
    return RocStats(auc=auc, balanced_accuracy=balanced, tpr_at_fpr=at)


def roc_stats(
    members: np.ndarray | Sequence[float],
    nonmembers: np.ndarray | Sequence[float],
    fprs: Sequence[float] = DEFAULT_FPRS,
) -> dict[str, float]:
    """Point estimates for one attack: ``auc``, ``balanced_accuracy`` and ``tpr@<fpr>`` for each budget."""
    grid = ScoreGrid.build(np.asarray(members), np.asarray(nonmembers))
    stats = summarise_counts(*grid.counts(), fprs)
    out = {"auc": float(stats.auc[0]), "balanced_accuracy": float(stats.balanced_accuracy[0])}
    out.update({tpr_key(a): float(v[0]) for a, v in stats.tpr_at_fpr.items()})
    return out


def tpr_key(alpha: float) -> str:
    """The report key of a TPR budget, e.g. ``tpr@0.01``."""
    return f"tpr@{alpha:g}"


def roc_auc(members: np.ndarray | Sequence[float], nonmembers: np.ndarray | Sequence[float]) -> float:
    """ROC AUC with members as the positive class (ties count ½)."""
    return roc_stats(members, nonmembers, fprs=())["auc"]


def tpr_at_fpr(
    members: np.ndarray | Sequence[float], nonmembers: np.ndarray | Sequence[float], fpr: float
) -> float:
    """The largest TPR that a threshold with FPR ≤ ``fpr`` achieves."""
    return roc_stats(members, nonmembers, fprs=(fpr,))[tpr_key(fpr)]


def best_balanced_accuracy(
    members: np.ndarray | Sequence[float], nonmembers: np.ndarray | Sequence[float]
) -> float:
    """Balanced accuracy of the best single threshold (≥ 0.5)."""
    return roc_stats(members, nonmembers, fprs=())["balanced_accuracy"]


def roc_curve(
    members: np.ndarray | Sequence[float], nonmembers: np.ndarray | Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) with one point per distinct score, starting at (0, 0) with threshold +inf."""
    grid = ScoreGrid.build(np.asarray(members), np.asarray(nonmembers))
    fpr, tpr = roc_from_counts(*grid.counts())
    return fpr[0], tpr[0], np.concatenate([[np.inf], grid.thresholds])


def per_class_table(
    targets: np.ndarray, correct: np.ndarray, loss: np.ndarray
) -> dict[int, dict[str, float]]:
    """Accuracy, mean loss and count for each class present in ``targets``."""
    out: dict[int, dict[str, float]] = {}
    for c in np.unique(targets):
        rows = targets == c
        out[int(c)] = {
            "n": int(rows.sum()),
            "accuracy": float(correct[rows].mean()),
            "loss": float(loss[rows].mean()),
        }
    return out
