"""PNG figures for the evaluation and for unlearning runs, drawn with matplotlib's Agg canvas.

Figures are built on :class:`matplotlib.figure.Figure` directly instead of ``pyplot``: no global backend or
figure registry is touched, so plotting is safe inside a worker thread or a server, and never opens a window.

* :func:`plot_roc_curves`: ROC of one attack for each model, linear and log-log (the low-FPR region is where
  membership leakage matters, as LiRA argues);
* :func:`plot_loss_histograms`: per-example loss on forget vs test rows, one panel per model;
* :func:`plot_tradeoff`: the trade-off trajectory ΔL_f against −ΔL_r over unlearning steps, several methods;
* :func:`plot_kappa_heatmap`: the per-tensor hardness κ_i = g_r,i · g_f,i over steps from a HAMU history.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import SymLogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from hamu.evaluation.metrics import roc_auc, roc_curve
from hamu.evaluation.report import PerExampleScores

DPI = 120


def _png_path(path: str | Path) -> Path:
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise ValueError(f"plots are written as PNG; the path must end in .png, got {str(target)!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _pick_models(scores: PerExampleScores, models: Sequence[str] | None) -> list[str]:
    chosen = list(models) if models is not None else scores.models
    if not chosen:
        raise ValueError("no models to plot")
    unknown = [m for m in chosen if m not in scores.outputs]
    if unknown:
        raise ValueError(f"unknown models {unknown}; have {scores.models}")
    return chosen


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    return path


def plot_roc_curves(
    scores: PerExampleScores,
    path: str | Path,
    *,
    attack: str = "loss",
    models: Sequence[str] | None = None,
    members: str = "forget",
    nonmembers: str = "test",
) -> Path:
    """ROC curves of ``attack`` (``lira`` included) on ``members`` vs ``nonmembers``, one line per model."""
    target = _png_path(path)
    chosen = _pick_models(scores, models)
    fig = Figure(figsize=(11, 4.8), layout="constrained")
    lin, log = fig.subplots(1, 2)
    floor = 1.0
    for m in chosen:
        pos = scores.scores(m, members, attack)
        neg = scores.scores(m, nonmembers, attack)
        fpr, tpr, _ = roc_curve(pos, neg)
        label = f"{m} (AUC {roc_auc(pos, neg):.3f})"
        lin.plot(fpr, tpr, drawstyle="default", label=label)
        log.plot(fpr, tpr, label=label)
        floor = min(floor, 1.0 / neg.size)
    lin.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    log.plot([floor, 1], [floor, 1], color="grey", linestyle=":", label="chance")
    lin.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        xlabel="false positive rate",
        ylabel="true positive rate",
        title="linear axes",
    )
    log.set(
        xscale="log",
        yscale="log",
        xlim=(floor / 2, 1),
        ylim=(floor / 2, 1.05),
        xlabel="false positive rate (log)",
        ylabel="true positive rate (log)",
        title="low-FPR region",
    )
    lin.legend(loc="lower right", fontsize="small")
    lin.grid(alpha=0.3)
    log.grid(alpha=0.3, which="both")
    fig.suptitle(f"Membership attack '{attack}': {members} (members) vs {nonmembers} (non-members)")
    return _save(fig, target)


def plot_loss_histograms(
    scores: PerExampleScores,
    path: str | Path,
    *,
    models: Sequence[str] | None = None,
    members: str = "forget",
    nonmembers: str = "test",
    bins: int = 40,
) -> Path:
    """Per-example loss histograms of ``members`` vs ``nonmembers``, one panel per model, shared log bins.

    Losses span orders of magnitude (memorised rows reach 1e-8), so the bins are log-spaced; bars show the
    fraction of each split's rows, so splits of different sizes stay comparable.
    """
    target = _png_path(path)
    chosen = _pick_models(scores, models)
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    losses = {m: (scores.outputs[m][members].loss, scores.outputs[m][nonmembers].loss) for m in chosen}
    every = np.concatenate([np.concatenate(v) for v in losses.values()])
    lo = max(float(every.min()), 1e-12)
    hi = max(float(every.max()), lo * 10)
    edges = np.geomspace(lo, hi, bins + 1)
    fig = Figure(figsize=(4.2 * len(chosen), 4.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(chosen), sharey=True))
    for ax, m in zip(axes, chosen, strict=True):
        mem, non = losses[m]
        for values, name in ((mem, members), (non, nonmembers)):
            ax.hist(
                np.clip(values, lo, None),
                bins=edges,
                weights=np.full(values.size, 1.0 / values.size),
                alpha=0.55,
                label=f"{name} (n={values.size})",
            )
        ax.set(xscale="log", title=m, xlabel="per-example cross-entropy loss (log)")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction of the split's rows")
    fig.suptitle(f"Per-example loss: {members} vs {nonmembers}")
    return _save(fig, target)


def _losses(record: Any, method: str, i: int) -> tuple[float, float]:
    if isinstance(record, Mapping):
        pair = (record.get("retain_loss"), record.get("forget_loss"))
    elif hasattr(record, "retain_loss") and hasattr(record, "forget_loss"):
        pair = (record.retain_loss, record.forget_loss)
    elif isinstance(record, Sequence) and not isinstance(record, str) and len(record) == 2:
        pair = (record[0], record[1])
    else:
        raise ValueError(
            f"method {method!r}, record {i}: expected a StepRecord-like object "
            "or a (retain_loss, forget_loss) pair"
        )
    r, f = pair
    if r is None or f is None:
        raise ValueError(
            f"method {method!r}, record {i}: retain or forget loss is missing (the unlearner records both "
            "when it is given both retain and forget data, evaluating the side a method has no objective for)"
        )
    r, f = float(r), float(f)
    if not (np.isfinite(r) and np.isfinite(f)):
        raise ValueError(f"method {method!r}, record {i}: non-finite loss")
    return r, f


def plot_tradeoff(
    trajectories: Mapping[str, Sequence[Any]],
    path: str | Path,
    *,
    title: str = "Unlearning trade-off: forget-loss rise vs retain-loss fall",
) -> Path:
    """ΔL_f(t) = L_f(t) − L_f(0) against −ΔL_r(t) = L_r(0) − L_r(t), one line per method.

    Up is more forgetting, right is better retention (left of 0: the retain loss rose). Inputs are
    :class:`~hamu.unlearner.StepRecord`\\ s (or their ``to_dict()``) or (retain_loss, forget_loss) pairs;
    step 0 is the starting model.
    """
    target = _png_path(path)
    if not trajectories:
        raise ValueError("no trajectories to plot")
    fig = Figure(figsize=(7, 5.5), layout="constrained")
    ax = fig.subplots()
    for method, records in trajectories.items():
        if len(records) == 0:
            raise ValueError(f"method {method!r} has an empty trajectory")
        pairs = np.array([_losses(rec, method, i) for i, rec in enumerate(records)])
        x = pairs[0, 0] - pairs[:, 0]
        y = pairs[:, 1] - pairs[0, 1]
        (line,) = ax.plot(
            x,
            y,
            marker=".",
            markersize=3,
            linewidth=1.4,
            label=f"{method} ({len(records)} step{'s' if len(records) != 1 else ''})",
        )
        ax.plot(x[-1], y[-1], marker="o", color=line.get_color(), markersize=7)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.plot([0], [0], marker="s", color="black", markersize=6, linestyle="none", label="start (step 0)")
    ax.set(
        xlabel="−ΔL_r = L_r(0) − L_r(t)   (retain loss fall; right is better)",
        ylabel="ΔL_f = L_f(t) − L_f(0)   (forget loss rise; up is more forgetting)",
        title=title,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", title="method (● = last step)")
    return _save(fig, target)


def _kappa_row(record: Any, i: int) -> list[float]:
    values = (
        record.get("kappa_per_tensor")
        if isinstance(record, Mapping)
        else getattr(record, "kappa_per_tensor", None)
    )
    if values is None:
        raise ValueError(f"record {i} has no kappa_per_tensor (only HAMU runs log per-tensor κ)")
    return [float(v) for v in values]


def plot_kappa_heatmap(
    history: Sequence[Any],
    tensor_names: Sequence[str],
    path: str | Path,
    *,
    title: str = "Per-tensor hardness κ_i = g_r,i · g_f,i over unlearning steps",
) -> Path:
    """Heatmap of κ_i = g_r,i · g_f,i (rows: parameter tensors, columns: steps) from an unlearner history.

    Negative κ_i (blue) means retain and forget gradients conflict in that tensor: forgetting there costs
    retention. The colour scale is symmetric-log around 0 because per-tensor dot products differ by orders of
    magnitude between layers.
    """
    target = _png_path(path)
    if len(history) == 0:
        raise ValueError("the history is empty")
    names = list(tensor_names)
    if not names:
        raise ValueError("no tensor names")
    rows = [_kappa_row(rec, i) for i, rec in enumerate(history)]
    for i, row in enumerate(rows):
        if len(row) != len(names):
            raise ValueError(f"record {i} has {len(row)} κ values but {len(names)} tensor names were given")
    kappa = np.array(rows, dtype=np.float64).T  # (tensors, steps)
    if not np.isfinite(kappa).all():
        raise ValueError("κ contains NaN/Inf")
    vmax = float(np.abs(kappa).max()) or 1.0
    linthresh = max(vmax * 1e-3, 1e-12)
    fig = Figure(
        figsize=(max(6.0, min(14.0, 4 + 0.04 * kappa.shape[1])), max(3.8, 1.2 + 0.45 * len(names))),
        layout="constrained",
    )
    ax = fig.subplots()
    image = ax.imshow(
        kappa,
        aspect="auto",
        interpolation="nearest",
        cmap="RdBu_r",
        norm=SymLogNorm(linthresh=linthresh, vmin=-vmax, vmax=vmax),
        extent=(-0.5, kappa.shape[1] - 0.5, len(names) - 0.5, -0.5),
    )
    ax.set_yticks(range(len(names)), labels=names, fontsize="small")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="unlearning step", ylabel="parameter tensor", title=title)
    fig.colorbar(image, ax=ax, label="κ_i (symlog scale; blue = conflict)")
    return _save(fig, target)
