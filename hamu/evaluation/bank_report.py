"""The evaluation report of a batch judged against a reference bank instead of an exact retrain.

What it holds, per model (the original and the candidate):

* utility: accuracy (with a bootstrap interval) and mean loss on the retain, forget and test rows, and the
  test-accuracy change against the original with a paired interval (there is no retrained reference to
  compare with, so the utility gate asks that the candidate lose no more than the budget against the model
  it came from);
* the bank's membership evidence (:func:`hamu.evaluation.bank.bank_evidence`): the forget rows' offline
  LiRA scores against the test rows', and, when the lineage has erased rows before, the same for a sample
  of those, which must stay forgotten.

Like :class:`~hamu.evaluation.report.EvaluationReport` it carries no per-row numbers and no record IDs: the
scores live in memory only. The verdict on it is :func:`hamu.governance.verdict.decide`, which reads
``reference.kind == "bank"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hamu.evaluation.bank import DEFAULT_FPRS, bank_evidence, lira_scores, loss_gap, out_statistics
from hamu.evaluation.bootstrap import DEFAULT_LEVEL, bootstrap_mean
from hamu.evaluation.per_example import PerExample

SCHEMA = "hamu.bank-evaluation/1"
SPLITS = ("retain", "forget", "test")


def joint_lira_scores(
    target_phi: Mapping[str, np.ndarray],
    bank_phi: Mapping[str, np.ndarray],
    out_masks: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """A model's offline LiRA scores on several row groups (forget, test, erased) with one pooled σ.

    Why one σ for every group: a σ pooled per group would put the forget and test scores on different scales,
    and the gate compares those two distributions.
    """
    names = list(target_phi)
    stats = out_statistics(
        np.concatenate([bank_phi[n] for n in names], axis=1),
        np.concatenate([out_masks[n] for n in names], axis=1),
    )
    scores = lira_scores(np.concatenate([target_phi[n] for n in names]), stats)
    bounds = np.cumsum([0, *(len(target_phi[n]) for n in names)])
    return {n: scores[bounds[i] : bounds[i + 1]] for i, n in enumerate(names)}


def _utility(stats: Mapping[str, PerExample], level: float, n_resamples: int, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for split, per in stats.items():
        acc = bootstrap_mean(per.correct, n_resamples=n_resamples, level=level, seed=seed)
        out[split] = {
            "accuracy": {"estimate": acc.estimate, "ci_low": acc.low, "ci_high": acc.high},
            "loss": {"estimate": float(np.mean(per.loss))},
            "n": len(per),
        }
    return out


def _evidence(
    lira: Mapping[str, np.ndarray],
    losses: Mapping[str, np.ndarray],
    fprs: Sequence[float],
    level: float,
    n_resamples: int,
    seed: int,
) -> dict[str, Any]:
    """One model's bank evidence: the calibrated loss gap (gated) and the LiRA score AUC (reported), on the
    forget rows and on the re-checked erased rows, each against the test rows."""
    options: dict[str, Any] = {"level": level, "n_resamples": n_resamples, "seed": seed}

    def against_test(group: str) -> dict[str, Any]:
        return {
            "loss": loss_gap(losses[group], losses["test"], **options).to_dict(),
            "lira": bank_evidence(lira[group], lira["test"], fprs=fprs, **options).to_dict(),
        }

    erased = losses.get("erased")
    return {
        "forget": against_test("forget"),
        "erased": against_test("erased") if erased is not None and len(erased) else None,
    }


def bank_report(
    stats: Mapping[str, Mapping[str, PerExample]],
    scores: Mapping[str, Mapping[str, np.ndarray]],
    calibrated: Mapping[str, Mapping[str, np.ndarray]],
    *,
    bank: Mapping[str, Any],
    digests: Mapping[str, str] | None = None,
    level: float = DEFAULT_LEVEL,
    n_resamples: int = 500,
    seed: int = 0,
    fprs: Sequence[float] = DEFAULT_FPRS,
) -> dict[str, Any]:
    """The JSON-safe report: ``stats[model][split]`` per-example statistics, ``scores[model][group]`` the
    model's LiRA scores and ``calibrated[model][group]`` its calibrated losses
    (:func:`hamu.evaluation.bank.calibrated_losses`; groups ``forget``, ``test`` and optionally ``erased``),
    ``bank`` its description."""
    if "original" not in stats:
        raise ValueError("a bank report needs the original model's statistics (the no-op control)")
    for what, table in (("LiRA scores", scores), ("calibrated losses", calibrated)):
        for model in stats:
            for group in ("forget", "test"):
                if group not in table.get(model, {}):
                    raise ValueError(f"model {model!r} has no {group!r} {what}")
    for model in stats:
        lira_groups, loss_groups = set(scores.get(model, {})), set(calibrated.get(model, {}))
        if lira_groups != loss_groups:
            raise ValueError(
                f"model {model!r}: LiRA scores for {sorted(lira_groups)} but calibrated losses for "
                f"{sorted(loss_groups)}; both are needed for the same row groups"
            )
    original_test = stats["original"]["test"].correct
    utility = {m: _utility(s, level, n_resamples, seed) for m, s in stats.items()}
    change: dict[str, Any] = {}
    for model, per in stats.items():
        interval = bootstrap_mean(
            per["test"].correct - original_test, n_resamples=n_resamples, level=level, seed=seed
        )
        change[model] = {"gap": interval.estimate, "gap_ci_low": interval.low, "gap_ci_high": interval.high}
    evidence = {m: _evidence(scores[m], calibrated[m], fprs, level, n_resamples, seed) for m in stats}
    return {
        "schema": SCHEMA,
        "reference": {"kind": "bank", **dict(bank)},
        "config": {"confidence_level": level, "n_resamples": n_resamples, "seed": seed, "fprs": list(fprs)},
        "models": sorted(stats),
        "utility": utility,
        "test_accuracy_change": change,
        "bank": evidence,
        "digests": dict(digests or {}),
    }
