"""The paper's two claims on CPU-sized data, following hamu-method.md §5 (the validated CPU protocol).

(a) At a fixed forget target (ΔL_f ≥ 0.5), HAMU-Q pays a lower retain cost ΔL_r than the weighted-sum
baselines; (b) unlearning gets harder as the forget set becomes like the retain set (ρ ↑): κ rises and the
achievable gains shrink, so Pearson(ρ, κ̄) should be ≥ 0.95.

Why it is built this way:

* ρ-splits are drawn over one fixed training subset, so retain ∪ forget is the same for every ρ and one
  original per (dataset, seed) serves all ρ (the near-duplicate setting adds rows, so it trains its own).
* Originals are deliberately under-trained (full-batch Adam, few steps): a model trained to zero loss has
  vanishing gradients, every baseline stands still and HAMU is infeasible at step 0 (§5 pitfalls).
* Full-batch g_r and g_f, each clipped to norm 1, SGD η = 0.01, c = 0.1 (feasible at step 0 per §5).
* Losses are cross-entropy measured by the benchmark after every step, not the methods' own objectives,
  so KL and SCRUB are read on the same scale as the others. Runs go to T steps (HAMU stops at its first
  infeasible step); the readout is the retain cost at the first step where ΔL_f ≥ target, and accuracies
  and the loss-attack AUC are taken from that step's weights (or the last weights if never reached).
* ``--controller`` also drives HAMU-Q to the same target with :func:`hamu.unlearn_to_target`, once per
  (dataset, seed, setting, ρ), from the same original: target forget loss = the original's forget loss +
  ``--target`` + the tolerance, tolerance 10% of the target (``CONTROLLER_TOL``; 0.05 at 0.5), so the band
  is ΔL_f ∈ [target, 1.2·target] = [0.5, 0.6]: its lower edge is the fixed schedule's ΔL_f ≥ target, and
  "reached" means the same for both. Same step budget T (rolled-back
  steps count), first-chunk η = ``--lr``, c capped at ``--c``, full-batch g_r and g_f clipped to norm 1,
  evaluation slices = the full retain and forget sets, ``check_every`` 10, no retain ceiling and no
  update-norm bound (the retain cost is what is measured). ΔL_r and ΔL_f at the stop are measured with
  the benchmark's own cross-entropy. An extra table compares it per setting with the fixed-schedule HAMU-Q
  of the same run: its reached count and ΔL_r at the first crossing of the target, and the same at its
  first entry into the band (ΔL_f ≥ target − tolerance, the controller's stopping rule); JSON key
  ``controller``, and the HAMU-Q rows gain ``reached_band``/``t_band``/``dLr_at_band``.

Usage:
  python bench/tradeoff.py --quick                    # digits, 3 seeds, ≤ 5 min on 2 cores
  python bench/tradeoff.py                            # full: fashion-mnist + tweets, 3 seeds, ≤ 60 min
  python bench/tradeoff.py --datasets fashion-mnist --seeds 0 --steps 150   # a slice
  python bench/tradeoff.py --quick --controller --tag ctrl-   # plus HAMU-Q driven to the target
  python bench/tradeoff.py --verdicts-from bench/out/full-tradeoff.json   # re-derive verdicts only
  python bench/tradeoff.py --verdicts-from docs/results.md   # ... from the full tables printed there
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import statistics
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    OUT,
    loss_auc_ci,
    losses_and_accuracy,
    machine,
    machine_line,
    mean_loss,
    run_method,
    set_threads,
    table,
    write_json,
)

from hamu import ForgetTarget, UnlearnConfig, unlearn_to_target
from hamu.data import add_near_duplicates, split_rho
from hamu.train import Recipe, sized_train_test, train_model

METHODS = ("hamu-q", "hamu-u", "ft", "ga", "gdiff", "kl", "scrub", "neggrad+")
RHOS = (0.0, 0.25, 0.5, 0.75, 1.0)
Range = tuple[float, float]  # (min, max) of one method's per-seed retain costs
#: The controller's band half-width, as a fraction of ``--target`` (± 0.05 at the default 0.5).
CONTROLLER_TOL = 0.1


@dataclass(frozen=True)
class DataSetup:
    """One dataset at CPU size: which rows, which class to forget, and the under-trained recipe."""

    name: str
    train_size: int | None
    test_size: int | None
    forget_class: int | str
    forget_size: int | None
    recipe: Recipe
    steps: int  # the step budget T (``--steps`` overrides it for every set)


SETUPS: dict[str, DataSetup] = {
    # §5 verbatim: MLP 64-128-128-10, 50 full-batch Adam(1e-3) steps.
    "digits": DataSetup(
        "digits",
        None,
        None,
        0,
        None,
        Recipe(model="mlp", model_config={"hidden": [128, 128]}, epochs=50, batch_size=100_000, lr=1e-3),
        300,
    ),
    # The fashion-mnist-cpu CNN, on a 1k/500 subset, trained full-batch for 60 Adam steps: under-trained on
    # purpose (the 20-epoch preset leaves HAMU-Q only ~40 feasible steps, see docs/data.md). T = 100 and the
    # 1k subset keep 3 seeds × 6 settings × 8 methods inside the full mode's hour on 2 CPU cores.
    "fashion-mnist": DataSetup(
        "fashion-mnist",
        1000,
        500,
        0,
        None,
        Recipe(
            model="cnn",
            model_config={"channels": [8, 16], "hidden": 128},
            epochs=60,
            batch_size=100_000,
            lr=3e-3,
        ),
        100,
    ),
    # The tweets-cpu text model on a 3k/1k subset, full-batch Adam; forget class "positive", 300 rows.
    "tweets": DataSetup(
        "tweets",
        3000,
        1000,
        "positive",
        300,
        Recipe(
            model="text",
            model_config={"embed_dim": 32, "hidden": 64},
            epochs=40,
            batch_size=100_000,
            lr=3e-3,
            vocab_size=5000,
            vocab_min_freq=2,
            text_max_len=64,
        ),
        150,
    ),
}


def load(setup: DataSetup) -> tuple[Any, Any]:
    return sized_train_test(setup.name, setup.train_size, setup.test_size)


def first_crossing(forget: list[float], target: float) -> int | None:
    for t, lf in enumerate(forget):
        if lf - forget[0] >= target:
            return t
    return None


def run_setting(
    setup: DataSetup,
    split: Any,
    original: Any,
    args: argparse.Namespace,
    *,
    seed: int,
    setting: str,
    rho: float,
    reference: Any | None,
) -> tuple[list[dict[str, Any]], dict[str, list[tuple[float, float]]]]:
    """Every method from the same original weights on one split; one row per method."""
    feat = original.featurizer
    xr, yr = split.tensors("retain", feat)
    xf, yf = split.tensors("forget", feat)
    xt, yt = split.tensors("test", feat)
    ref_auc: tuple[float, float, float] | None = None
    if reference is not None:
        # The reference has its own featurizer (a text vocabulary fitted on retain only).
        ref_f, _ = losses_and_accuracy(reference.model, *split.tensors("forget", reference.featurizer))
        ref_t, _ = losses_and_accuracy(reference.model, *split.tensors("test", reference.featurizer))
        ref_auc = loss_auc_ci(ref_f, ref_t)
    rows: list[dict[str, Any]] = []
    trajectories: dict[str, list[tuple[float, float]]] = {}
    kappas: list[float] = []
    for method in args.methods:
        model = copy.deepcopy(original.model)
        snap: dict[str, Any] = {}
        f0 = mean_loss(model, xf, yf)

        def on_step(
            t: int, lr_: float, lf_: float, snap: dict[str, Any] = snap, m: Any = model, f0: float = f0
        ) -> bool:
            if "t" not in snap and lf_ - f0 >= args.target:
                snap["t"] = t
                snap["state"] = copy.deepcopy(m.state_dict())
                return bool(args.stop_at_target)
            return False

        options = {"constraint_ratio": args.c} if method.startswith("hamu") else {}
        t0 = time.perf_counter()
        result, traj = run_method(
            model,
            method,
            [(xr, yr)],
            [(xf, yf)],
            (xr, yr, xf, yf),
            lr=args.lr,
            steps=args.steps or setup.steps,
            seed=seed,
            options=options,
            on_step=on_step,
        )
        seconds = time.perf_counter() - t0
        if method == "hamu-q":
            kappas = [float(r.diagnostics.get("kappa", float("nan"))) for r in result.history]
        reached = "t" in snap
        if reached:
            model.load_state_dict(snap["state"])
        t_star = snap.get("t")
        _, acc_r = losses_and_accuracy(model, xr, yr)
        loss_f, acc_f = losses_and_accuracy(model, xf, yf)
        loss_t, acc_t = losses_and_accuracy(model, xt, yt)
        row: dict[str, Any] = {
            "dataset": setup.name,
            "setting": setting,
            "rho": rho,
            "seed": seed,
            "method": method,
            "reached": reached,
            "t_target": t_star if t_star is not None else -1,
            "dLr_at_target": (traj.retain[t_star] - traj.retain[0]) if t_star is not None else float("nan"),
            "dLf_final": traj.forget[-1] - traj.forget[0],
            "dLr_final": traj.retain[-1] - traj.retain[0],
            "dLf_max": max(traj.forget) - traj.forget[0],
            "steps_applied": result.steps_applied,
            "stop_reason": result.stop_reason,
            "acc_retain": acc_r,
            "acc_forget": acc_f,
            "acc_test": acc_t,
            "seconds": seconds,
        }
        if method == "hamu-q" and getattr(args, "controller", False):
            # The same run read where it first enters the controller's band (ΔL_f ≥ target − tolerance),
            # so the comparison with the controller can also be made at the controller's stopping rule.
            t_band = first_crossing(traj.forget, args.target)
            row.update(
                reached_band=t_band is not None,
                t_band=t_band if t_band is not None else -1,
                dLr_at_band=(traj.retain[t_band] - traj.retain[0]) if t_band is not None else float("nan"),
            )
        if ref_auc is not None:
            auc = loss_auc_ci(loss_f, loss_t)[0]
            row.update(
                auc=auc,
                auc_ref=ref_auc[0],
                auc_ref_low=ref_auc[1],
                auc_ref_high=ref_auc[2],
                auc_gap=auc - ref_auc[0],
            )
        rows.append(row)
        trajectories[method] = list(zip(traj.retain, traj.forget, strict=True))
    k0 = kappas[0] if kappas else float("nan")
    kbar = float(np.mean(kappas)) if kappas else float("nan")
    for row in rows:
        row.update(kappa0=k0, kappa_mean=kbar, n_retain=len(yr), n_forget=len(yf))
    return rows, trajectories


def run_controller(
    setup: DataSetup,
    split: Any,
    original: Any,
    args: argparse.Namespace,
    *,
    seed: int,
    setting: str,
    rho: float,
) -> dict[str, Any]:
    """HAMU-Q driven by :func:`hamu.unlearn_to_target` into ΔL_f ∈ [target, target·(1 + 2·CONTROLLER_TOL)],
    from the same original, with the fixed-schedule run's budget, first η, c (as the cap), full batches and
    gradient clipping; one row with the stop, the steps and the retain and forget changes at the stop."""
    feat = original.featurizer
    xr, yr = split.tensors("retain", feat)
    xf, yf = split.tensors("forget", feat)
    model = copy.deepcopy(original.model)
    r0, f0 = mean_loss(model, xr, yr), mean_loss(model, xf, yf)
    tol = CONTROLLER_TOL * args.target
    target = ForgetTarget(loss=f0 + args.target + tol, tolerance=tol)  # the band starts at the target
    steps = args.steps or setup.steps
    cfg = UnlearnConfig(
        method="hamu-q",
        lr=args.lr,
        max_steps=steps,
        max_grad_norm=1.0,
        seed=seed,
        device="cpu",
        method_options={"constraint_ratio": args.c},
    )
    t0 = time.perf_counter()
    result = unlearn_to_target(
        model,
        F.cross_entropy,
        [(xr, yr)],
        [(xf, yf)],
        cfg,
        target,
        eval_forget=[(xf, yf)],
        eval_retain=[(xr, yr)],
    )
    seconds = time.perf_counter() - t0
    r1, f1 = mean_loss(model, xr, yr), mean_loss(model, xf, yf)
    decisions = result.decisions
    return {
        "dataset": setup.name,
        "setting": setting,
        "rho": rho,
        "seed": seed,
        "reached": result.reached,
        "stop_reason": result.stop_reason,
        "steps_taken": result.steps_taken,
        "steps_applied": result.steps_applied,
        "budget": steps,
        "chunks": len(decisions),
        "rolled_back": sum(d.get("action") == "rolled-back" for d in decisions),
        "final_method": decisions[-1]["method"] if decisions else "hamu-q",
        "lr_max": max((float(d["lr"]) for d in decisions), default=args.lr),
        "target_loss": target.loss,
        "tolerance": tol,
        "dLf_stop": f1 - f0,
        "dLr_stop": r1 - r0,
        "ctrl_forget_loss": (result.initial_forget_loss, result.final_forget_loss),
        "ctrl_retain_loss": (result.initial_retain_loss, result.final_retain_loss),
        "seconds": seconds,
    }


def train(setup: DataSetup, data: Any, seed: int) -> Any:
    return train_model(data, setup.recipe.with_options(seed=seed), progress=False)


def run_dataset(
    setup: DataSetup, args: argparse.Namespace, ctrl_rows: list[dict[str, Any]] | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every (seed, setting, ρ) of one dataset; with ``ctrl_rows`` given, the controller's run of each
    setting is appended to it (:func:`run_controller`)."""
    train_set, test_set = load(setup)
    rows: list[dict[str, Any]] = []
    plots: dict[str, Any] = {}
    for seed in args.seeds:
        t0 = time.perf_counter()
        original = train(setup, train_set, seed)
        print(
            f"[{setup.name} seed {seed}] original trained in {time.perf_counter() - t0:.1f}s: "
            f"train acc {original.metadata['metrics']['train']['accuracy']:.3f}",
            flush=True,
        )
        settings = [("plain", r) for r in args.rhos] + [("near-dup", r) for r in args.nd_rhos]
        for setting, rho in settings:
            split = split_rho(
                train_set,
                test_set,
                forget_class=setup.forget_class,
                rho=rho,
                seed=seed,
                size=setup.forget_size,
            )
            orig = original
            if setting == "near-dup":
                split = add_near_duplicates(split, seed=seed)
                orig = train(setup, split.train, seed)  # retain ∪ forget grew by the copies
            reference = None
            if rho in args.mia_rhos:
                reference = train_model(
                    split.retain,
                    setup.recipe.with_options(seed=seed),
                    spec=split.spec,
                    progress=False,
                )
            t1 = time.perf_counter()
            got, traj = run_setting(
                setup, split, orig, args, seed=seed, setting=setting, rho=rho, reference=reference
            )
            rows += got
            with (OUT / f"{args.tag}tradeoff-partial.jsonl").open("a") as fh:  # survives a killed run
                fh.writelines(json.dumps(r, default=float) + "\n" for r in got)
            if seed == args.seeds[0]:
                plots[f"{setup.name}-{setting}-rho{rho:g}"] = traj
            hq = next(r for r in got if r["method"] == "hamu-q")
            print(
                f"  {setting:<8} ρ={rho:<4g} κ0={hq['kappa0']:+.4f} κ̄={hq['kappa_mean']:+.4f} "
                f"hamu-q: reached={hq['reached']} ΔL_r@t*={hq['dLr_at_target']:+.4f} "
                f"({time.perf_counter() - t1:.1f}s)",
                flush=True,
            )
            if ctrl_rows is not None:
                cr = run_controller(setup, split, orig, args, seed=seed, setting=setting, rho=rho)
                ctrl_rows.append(cr)
                with (OUT / f"{args.tag}tradeoff-controller-partial.jsonl").open("a") as fh:
                    fh.write(json.dumps(cr, default=float) + "\n")
                print(
                    f"  {'':<8} {'':<6} controller: {cr['stop_reason']} after {cr['steps_taken']} steps "
                    f"({cr['rolled_back']} of {cr['chunks']} chunks rolled back, ended as "
                    f"{cr['final_method']}), ΔL_f={cr['dLf_stop']:+.4f} ΔL_r={cr['dLr_stop']:+.4f} "
                    f"({cr['seconds']:.1f}s)",
                    flush=True,
                )
    return rows, plots


def hamu_rows(rows: list[dict[str, Any]], ds: str, setting: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["dataset"] == ds and r["setting"] == setting and r["method"] == "hamu-q"]


def spread(values: list[float]) -> str:
    vals = [v for v in values if v == v]
    if not vals:
        return "—"
    med = statistics.median(vals)
    if len(vals) == 1:
        return f"{med:+.3f}"
    return f"{med:+.3f} [{min(vals):+.3f}, {max(vals):+.3f}]"


def compare_ranges(a: Range, b: Range) -> int:
    """Which of two methods has the lower retain cost across seeds, judged by the seeds' ranges alone.

    ``a`` and ``b`` are closed ranges ``(min, max)`` of the per-seed costs (one seed: ``(x, x)``). Returns
    -1 when ``a`` is lower (its whole range lies below ``b``'s: ``max(a) < min(b)``), +1 when ``b`` is lower,
    and 0 for a tie: the ranges overlap or touch, *whichever median is lower*. The rule is symmetric,
    ``compare_ranges(a, b) == -compare_ranges(b, a)``, so neither method gets the benefit of the doubt.
    """
    (a_lo, a_hi), (b_lo, b_hi) = a, b
    if not (a_lo <= a_hi and b_lo <= b_hi):  # also rejects NaN
        raise ValueError(f"not a (min, max) range: {a} vs {b}")
    if a_hi < b_lo:
        return -1
    if b_hi < a_lo:
        return 1
    return 0


def setting_verdict(
    ranges: Mapping[str, Range], medians: Mapping[str, float], subject: str = "hamu-q"
) -> str:
    """The verdict for one setting: ``subject`` against every other method that reached the target in
    every seed (the methods in ``ranges``), each pair judged by :func:`compare_ranges`.

    * ``"<subject> missed the target in some seed"`` when ``subject`` has no range;
    * ``"<m>, … lower"`` when some method's whole range lies below ``subject``'s;
    * else ``"tie within spread with <m>, …"`` when some ranges overlap ``subject``'s;
    * else ``"<subject> lowest"`` (its range lies below every other one, or no other method got there).

    Medians only order the names listed (lowest first, then by name); they never decide the outcome.
    """
    if subject not in ranges:
        return f"{subject} missed the target in some seed"
    others = sorted((m for m in ranges if m != subject), key=lambda m: (medians.get(m, float("inf")), m))
    outcome = {m: compare_ranges(ranges[m], ranges[subject]) for m in others}
    lower = [m for m in others if outcome[m] < 0]
    tied = [m for m in others if outcome[m] == 0]
    if lower:
        return f"{', '.join(lower)} lower"
    if tied:
        return f"tie within spread with {', '.join(tied)}"
    return f"{subject} lowest"


def verdict_record(
    ds: str, setting: str, rho: float, meds: Mapping[str, float], ranges: Mapping[str, Range]
) -> dict[str, Any]:
    """One row of the verdict table; "best baseline" is the other method with the lowest median (for
    reference; the verdict itself is :func:`setting_verdict`)."""
    others = {m: v for m, v in meds.items() if m != "hamu-q"}
    best_other = min(others, key=lambda m: others[m]) if others else None
    return {
        "dataset": ds,
        "setting": setting,
        "rho": rho,
        "verdict": setting_verdict(ranges, meds),
        "hamu_q": meds.get("hamu-q"),
        "best_other": best_other,
        "best_other_cost": others.get(best_other) if best_other else None,
        "ranges": dict(ranges),
    }


def verdict_table(settings: list[dict[str, Any]], floatfmt: str = ".4f") -> str:
    return table(
        [
            {
                "dataset": v["dataset"],
                "setting": v["setting"],
                "rho": f"{v['rho']:g}",
                "hamu-q ΔL_r@target": v["hamu_q"] if v["hamu_q"] is not None else "—",
                "best baseline": v["best_other"] or "none reached",
                "its ΔL_r@target": v["best_other_cost"] if v["best_other_cost"] is not None else "—",
                "verdict": v["verdict"],
            }
            for v in settings
        ],
        ["dataset", "setting", "rho", "hamu-q ΔL_r@target", "best baseline", "its ΔL_r@target", "verdict"],
        floatfmt,
    )


def summarise(rows: list[dict[str, Any]], args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """Per (dataset, setting, ρ, method): seeds reaching the target and the retain cost with its spread."""
    from scipy.stats import pearsonr

    out: list[dict[str, Any]] = []
    verdicts: dict[str, Any] = {"settings": [], "pearson": {}}
    keys = sorted({(r["dataset"], r["setting"], r["rho"]) for r in rows}, key=lambda k: (k[0], k[1], k[2]))
    for ds, setting, rho in keys:
        group = [r for r in rows if (r["dataset"], r["setting"], r["rho"]) == (ds, setting, rho)]
        meds: dict[str, float] = {}
        ranges: dict[str, tuple[float, float]] = {}
        for method in args.methods:
            mrows = [r for r in group if r["method"] == method]
            costs = [r["dLr_at_target"] for r in mrows if r["reached"]]
            n_seeds = len(mrows)
            if len(costs) == n_seeds and costs:
                meds[method] = statistics.median(costs)
                ranges[method] = (min(costs), max(costs))
            gaps = [r["auc_gap"] for r in mrows if "auc_gap" in r]
            out.append(
                {
                    "dataset": ds,
                    "setting": setting,
                    "rho": f"{rho:g}",
                    "method": method,
                    "reached": f"{len(costs)}/{n_seeds}",
                    "ΔL_r@target med [min,max]": spread(costs),
                    "ΔL_f max": spread([r["dLf_max"] for r in mrows]),
                    "κ0": statistics.median(r["kappa0"] for r in mrows),
                    "κ̄": statistics.median(r["kappa_mean"] for r in mrows),
                    "acc r/f/t": "/".join(
                        f"{statistics.median(r[k] for r in mrows):.3f}"
                        for k in ("acc_retain", "acc_forget", "acc_test")
                    ),
                    "AUC gap": spread(gaps) if gaps else "",
                }
            )
        verdicts["settings"].append(verdict_record(ds, setting, rho, meds, ranges))
    text = table(out, list(out[0].keys()) if out else [])
    vtab = verdict_table(verdicts["settings"])
    ptxt = []
    for ds in sorted({r["dataset"] for r in rows}):
        plain = [
            r for r in rows if r["dataset"] == ds and r["setting"] == "plain" and r["method"] == "hamu-q"
        ]
        rhos = sorted({r["rho"] for r in plain})
        if len(rhos) < 3:
            continue
        kbar = [float(np.mean([r["kappa_mean"] for r in plain if r["rho"] == rho])) for rho in rhos]
        k0 = [float(np.mean([r["kappa0"] for r in plain if r["rho"] == rho])) for rho in rhos]
        pr, pp = pearsonr(rhos, kbar)
        p0, _ = pearsonr(rhos, k0)
        pall, _ = pearsonr([r["rho"] for r in plain], [r["kappa_mean"] for r in plain])
        verdicts["pearson"][ds] = {"rho_kbar": pr, "p": pp, "rho_kappa0": p0, "all_points": pall}
        ptxt.append(
            f"{ds}: Pearson(ρ, κ̄ seed-mean) = {pr:.3f} (p={pp:.3g}); Pearson(ρ, κ0) = {p0:.3f}; "
            f"over all (ρ, seed) points = {pall:.3f}; κ̄ by ρ = "
            + ", ".join(f"{rho:g}:{k:+.4f}" for rho, k in zip(rhos, kbar, strict=True))
        )
    return text + "\n\n" + vtab + "\n\n" + "\n".join(ptxt), verdicts


def counts(values: list[str]) -> str:
    """``["target", "max_steps", "target"]`` → ``"target 2, max_steps 1"`` (most frequent first)."""
    tally: dict[str, int] = {}
    for v in values:
        tally[v] = tally.get(v, 0) + 1
    return ", ".join(f"{k} {n}" for k, n in sorted(tally.items(), key=lambda kv: (-kv[1], kv[0])))


def int_spread(values: list[int]) -> str:
    """Median [min, max] of step counts (``—`` when empty)."""
    if not values:
        return "—"
    med = f"{statistics.median(values):g}"
    return med if len(values) == 1 else f"{med} [{min(values)}, {max(values)}]"


def controller_summary(
    ctrl_rows: list[dict[str, Any]], rows: list[dict[str, Any]]
) -> tuple[str, list[dict[str, Any]]]:
    """Per (dataset, setting, ρ): the controller's reached count, steps taken, ΔL_f and ΔL_r at the stop
    (ΔL_r over the seeds that reached the band), its stop reasons and the variant it ended as, next to the
    fixed-schedule HAMU-Q of the same run: reached count, first-crossing step t*, ΔL_r at t*, and the same
    read where that run first enters the controller's band (ΔL_f ≥ target − tolerance, the controller's
    own stopping point), since the controller stops at the band's first chunk inside it."""
    out: list[dict[str, Any]] = []
    keys = sorted({(r["dataset"], r["setting"], r["rho"]) for r in ctrl_rows})
    for ds, setting, rho in keys:
        crows = [r for r in ctrl_rows if (r["dataset"], r["setting"], r["rho"]) == (ds, setting, rho)]
        fixed = [r for r in hamu_rows(rows, ds, setting) if r["rho"] == rho]
        reached = [r for r in crows if r["reached"]]
        fixed_reached = [r for r in fixed if r["reached"]]
        in_band = [r for r in fixed if r.get("reached_band")]
        out.append(
            {
                "dataset": ds,
                "setting": setting,
                "rho": f"{rho:g}",
                "ctrl reached": f"{len(reached)}/{len(crows)}",
                "ctrl steps med [min,max]": int_spread([r["steps_taken"] for r in crows]),
                "ctrl ΔL_f@stop": spread([r["dLf_stop"] for r in crows]),
                "ctrl ΔL_r@stop (reached)": spread([r["dLr_stop"] for r in reached]),
                "ctrl stops": counts([r["stop_reason"] for r in crows]),
                "ended as": counts([r["final_method"] for r in crows]),
                "fixed reached": f"{len(fixed_reached)}/{len(fixed)}" if fixed else "—",
                "fixed t* med": int_spread([r["t_target"] for r in fixed_reached]),
                "fixed ΔL_r@target": spread([r["dLr_at_target"] for r in fixed_reached]),
                "fixed in band": f"{len(in_band)}/{len(fixed)}" if fixed else "—",
                "fixed ΔL_r@band entry": spread([r["dLr_at_band"] for r in in_band]),
            }
        )
    return table(out, list(out[0].keys()) if out else []), out


def parse_spread(cell: str) -> tuple[float, float, float] | None:
    """Read a :func:`spread` cell back: ``"-0.111 [-0.111, -0.085]"`` → (median, min, max); a single seed's
    ``"-0.241"`` → (x, x, x); ``"—"`` or empty → None."""
    cell = cell.strip()
    if cell in ("", "—"):
        return None
    med, _, rest = cell.partition(" [")
    if not rest:
        return float(med), float(med), float(med)
    lo, hi = rest.rstrip("]").split(",")
    return float(med), float(lo), float(hi)


def markdown_tables(text: str) -> Iterator[tuple[list[str], list[list[str]]]]:
    """Every pipe table in ``text``: its header cells and its data rows' cells."""
    block: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        if len(block) >= 2:
            yield block[0], block[2:]
        block = []


SettingKey = tuple[str, str, float]


def settings_from_markdown(text: str) -> tuple[list[dict[str, Any]], dict[SettingKey, str]]:
    """Verdict records recomputed from the full tables this script prints (pasted into docs/results.md):
    their "reached" and "ΔL_r@target med [min,max]" columns hold each method's per-seed median and range,
    rounded to 3 decimals. Also returns the verdicts the text's verdict tables print, to compare."""
    stats: dict[SettingKey, dict[str, tuple[float, float, float]]] = {}
    old: dict[SettingKey, str] = {}
    seen: set[tuple[SettingKey, str]] = set()
    for header, rows in markdown_tables(text):
        if "verdict" in header and {"dataset", "setting", "rho"} <= set(header):  # trade-off tables only
            for cells in rows:
                rec = dict(zip(header, cells, strict=True))
                old[(rec["dataset"], rec["setting"], float(rec["rho"]))] = rec["verdict"]
        if "ΔL_r@target med [min,max]" not in header:
            continue
        for cells in rows:
            rec = dict(zip(header, cells, strict=True))
            key = (rec["dataset"], rec["setting"], float(rec["rho"]))
            if (key, rec["method"]) in seen:
                raise ValueError(f"{key} {rec['method']} appears in two full tables")
            seen.add((key, rec["method"]))
            reached, n_seeds = (int(x) for x in rec["reached"].split("/"))
            got = parse_spread(rec["ΔL_r@target med [min,max]"])
            bucket = stats.setdefault(key, {})
            if got is not None and reached == n_seeds:
                bucket[rec["method"]] = got
    settings = [
        verdict_record(
            *key,
            {m: v[0] for m, v in by_method.items()},
            {m: (v[1], v[2]) for m, v in by_method.items()},
        )
        for key, by_method in sorted(stats.items())
    ]
    return settings, old


def rederive_verdicts(path: Path) -> str:
    """``--verdicts-from``: the verdict tables recomputed with :func:`setting_verdict` from a stored run,
    either ``bench/out/<tag>tradeoff.json`` (raw per-seed rows) or a Markdown file holding the printed full
    tables (docs/results.md), followed by every verdict that differs from the one stored with it."""
    text = path.read_text()
    if path.suffix == ".json":
        payload = json.loads(text)
        rows = payload["rows"]
        methods = payload.get("args", {}).get("methods") or sorted({r["method"] for r in rows})
        _, verdicts = summarise(rows, argparse.Namespace(methods=methods))
        settings = verdicts["settings"]
        old = {(v["dataset"], v["setting"], v["rho"]): v["verdict"] for v in payload["verdicts"]["settings"]}
        floatfmt, source = ".4f", "raw per-seed rows"
    else:
        settings, old = settings_from_markdown(text)
        floatfmt, source = ".3f", "the printed full tables (median [min, max], 3 decimals)"
    out = [f"verdicts recomputed from {path} ({source}); symmetric rule: overlapping or touching ranges tie"]
    for ds in sorted({v["dataset"] for v in settings}):
        out += ["", verdict_table([v for v in settings if v["dataset"] == ds], floatfmt)]
    changes, touching = [], []
    for v in settings:
        key = (v["dataset"], v["setting"], v["rho"])
        name = f"{key[0]} {key[1]} ρ={key[2]:g}"
        if key in old and old[key] != v["verdict"]:
            changes.append(f"  {name}: {old[key]} → {v['verdict']}")
        hq = v["ranges"].get("hamu-q")
        for m, r in v["ranges"].items():
            if hq is not None and m != "hamu-q" and (hq[1] == r[0] or r[1] == hq[0]):
                touching.append(f"  {name}: hamu-q {list(hq)} and {m} {list(r)} touch (tie)")
    out += ["", f"changed verdicts ({len(changes)} of {len(old)} stored):", *changes]
    if touching:
        out += ["ranges that only touch at this precision (a tie by the rule):", *touching]
    return "\n".join(out)


def plot(plots: dict[str, Any], target: float, prefix: str) -> list[Path]:
    """Trade-off trajectories of the first seed (runs cut at 3× the target so GA's run-away stays on scale),
    plus κ̄ against ρ."""
    from hamu.evaluation import plot_tradeoff

    paths = []
    for key, traj in plots.items():
        cut = {}
        for m, pairs in traj.items():
            f0 = pairs[0][1]
            keep = [p for p in pairs if p[1] - f0 <= 3 * target] or pairs[:1]
            cut[m] = keep
        paths.append(
            plot_tradeoff(
                cut,
                OUT / f"{prefix}tradeoff-{key}.png",
                title=f"{key}: seed 0, target {target}",
            )
        )
    return paths


def plot_kappa(rows: list[dict[str, Any]], path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    for ds in sorted({r["dataset"] for r in rows}):
        plain = [
            r for r in rows if r["dataset"] == ds and r["setting"] == "plain" and r["method"] == "hamu-q"
        ]
        rhos = sorted({r["rho"] for r in plain})
        kbar = [float(np.mean([r["kappa_mean"] for r in plain if r["rho"] == rho])) for rho in rhos]
        ax.plot(rhos, kbar, marker="o", label=f"{ds} κ̄ (HAMU-Q run)")
        nd = [
            r for r in rows if r["dataset"] == ds and r["setting"] == "near-dup" and r["method"] == "hamu-q"
        ]
        if nd:
            nrhos = sorted({r["rho"] for r in nd})
            ax.plot(
                nrhos,
                [float(np.mean([r["kappa_mean"] for r in nd if r["rho"] == rho])) for rho in nrhos],
                marker="x",
                linestyle="none",
                markersize=9,
                label=f"{ds} near-duplicates",
            )
    ax.set(xlabel="ρ (share of forget rows drawn from other classes)", ylabel="mean κ = g_r·g_f")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=90)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits only, ≤ 5 min on 2 cores")
    parser.add_argument("--datasets", default="fashion-mnist,tweets", help="digits, fashion-mnist, tweets")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rhos", default=",".join(f"{r:g}" for r in RHOS))
    parser.add_argument("--nd-rhos", default="0.5", help="ρ values also run with near-duplicates in retain")
    parser.add_argument("--mia-rhos", default="0.5", help="ρ with a retrained reference (AUC gap)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--steps", type=int, default=0, help="step budget T (0: each set's own)")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--c", type=float, default=0.1, help="HAMU constraint ratio c = B/η")
    parser.add_argument("--target", type=float, default=0.5, help="ΔL_f that counts as forgotten")
    parser.add_argument("--stop-at-target", action="store_true", help="end each run at the target (faster)")
    parser.add_argument("--train-size", type=int, default=0, help="override the training subset (0: setup's)")
    parser.add_argument("--test-size", type=int, default=0, help="override the test subset (0: setup's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", default="", help="prefix of the output files")
    parser.add_argument(
        "--verdicts-from",
        type=Path,
        metavar="PATH",
        help="only recompute the verdicts from a stored <tag>tradeoff.json or a Markdown file with the "
        "printed full tables (docs/results.md), and list the ones that change; runs nothing",
    )
    parser.add_argument(
        "--controller",
        action="store_true",
        help="also drive HAMU-Q to the target with hamu.unlearn_to_target (band ± 10%% of --target) and "
        "print its reached counts and retain cost next to the fixed schedule's",
    )
    args = parser.parse_args()
    if args.verdicts_from:
        print(rederive_verdicts(args.verdicts_from))
        return
    if args.quick:
        args.datasets, args.steps, args.tag = "digits", min(args.steps or 150, 150), args.tag or "quick-"
    set_threads(args.threads)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.rhos = [float(r) for r in args.rhos.split(",")]
    args.nd_rhos = [float(r) for r in args.nd_rhos.split(",")] if args.nd_rhos else []
    args.mia_rhos = [float(r) for r in args.mia_rhos.split(",")] if args.mia_rhos else []
    args.methods = args.methods.split(",")
    print(machine_line())
    budgets = args.steps or ", ".join(f"{n} {SETUPS[n].steps}" for n in args.datasets.split(","))
    print(
        f"datasets {args.datasets}; seeds {args.seeds}; ρ {args.rhos}; near-dup ρ {args.nd_rhos}; "
        f"T={budgets}, "
        f"η={args.lr}, c={args.c}, target ΔL_f ≥ {args.target}, full-batch g_r and g_f clipped to 1\n",
        flush=True,
    )
    start = time.perf_counter()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{args.tag}tradeoff-partial.jsonl").unlink(missing_ok=True)
    rows: list[dict[str, Any]] = []
    plots: dict[str, Any] = {}
    ctrl_rows: list[dict[str, Any]] | None = None
    if args.controller:
        ctrl_rows = []
        (OUT / f"{args.tag}tradeoff-controller-partial.jsonl").unlink(missing_ok=True)
    for name in args.datasets.split(","):
        setup = SETUPS[name]
        if args.train_size:
            setup = replace(setup, train_size=args.train_size)
        if args.test_size:
            setup = replace(setup, test_size=args.test_size)
        got, pl = run_dataset(setup, args, ctrl_rows)
        rows += got
        plots.update(pl)
    elapsed = time.perf_counter() - start
    OUT.mkdir(parents=True, exist_ok=True)
    with (OUT / f"{args.tag}tradeoff.csv").open("w", newline="") as fh:
        fields = sorted({k for r in rows for k in r})
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    text, verdicts = summarise(rows, args)
    paths = plot(plots, args.target, args.tag)
    paths.append(plot_kappa(rows, OUT / f"{args.tag}kappa-vs-rho.png"))
    payload: dict[str, Any] = {
        "machine": machine(),
        "args": {k: v for k, v in vars(args).items()},
        "elapsed_s": elapsed,
        "verdicts": verdicts,
        "rows": rows,
    }
    ctrl_text = ""
    if ctrl_rows is not None:
        ctrl_table, ctrl_summary = controller_summary(ctrl_rows, rows)
        tol = CONTROLLER_TOL * args.target
        ctrl_seconds = sum(r["seconds"] for r in ctrl_rows)
        ctrl_text = (
            f"HAMU-Q driven by hamu.unlearn_to_target into ΔL_f ∈ "
            f"[{args.target:g}, {args.target + 2 * tol:g}] "
            f"(same T, first η = {args.lr}, c ≤ {args.c}, full batch, no retain ceiling), "
            f"{len(ctrl_rows)} runs in {ctrl_seconds:.0f}s; "
            f"'fixed' = the fixed-schedule HAMU-Q above (first step with ΔL_f ≥ {args.target:g}):\n\n"
            + ctrl_table
        )
        payload["controller"] = {
            "target_dLf": args.target,
            "tolerance": tol,
            "band_dLf": [args.target - tol, args.target + tol],
            "seconds": ctrl_seconds,
            "summary": ctrl_summary,
            "rows": ctrl_rows,
        }
    write_json(f"{args.tag}tradeoff.json", payload)
    print("\n" + text)
    if ctrl_text:
        print("\n" + ctrl_text)
    print(f"\nplots: {', '.join(str(p) for p in paths)}")
    print(f"elapsed {elapsed:.0f}s")


if __name__ == "__main__":
    main()
