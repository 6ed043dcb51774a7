"""Scaling in the forget-set size: 0.1% to 20% of the training set.

Why: with fixed batch sizes an unlearning step costs two fixed-size forward/backward passes plus an O(P)
transform, so its time must not depend on how many rows are being forgotten; only the evaluation, which
runs the model over every forget row and bootstraps the attack AUC, should grow (linearly). A step time
that grows with |forget| would mean something scans the whole forget set per step.

One original (a short training on the full 60k Fashion-MNIST train set) serves every size: each split is
a seeded random forget sample of that same training set, so retain ∪ forget never changes.

Usage: python bench/scale.py [--fractions 0.001,0.005,0.01,0.02,0.05,0.1,0.2] [--steps 30]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    batches,
    loss_auc_ci,
    losses_and_accuracy,
    machine,
    machine_line,
    set_threads,
    table,
    write_json,
)

from hamu import StepRecord, UnlearnConfig, unlearn
from hamu.data import load_train_test, split_random, subset, to_tensors
from hamu.train import Recipe, train_model


def step_times(model: Any, method: str, retain: Any, forget: Any, steps: int, warmup: int) -> list[float]:
    import torch.nn.functional as F

    stamps: list[float] = []

    def stamp(_: StepRecord) -> bool:
        stamps.append(time.perf_counter())
        return False

    options = {"constraint_ratio": 0.0} if method.startswith("hamu") else {}  # c = 0: every step is full
    cfg = UnlearnConfig(
        method=method, lr=1e-3, max_steps=steps + warmup, device="cpu", method_options=options
    )
    start = time.perf_counter()
    unlearn(model, F.cross_entropy, retain, forget, cfg, callbacks=[stamp])
    times = [b - a for a, b in zip([start, *stamps[:-1]], stamps, strict=True)]
    return times[warmup:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fractions", default="0.001,0.005,0.01,0.02,0.05,0.1,0.2")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--retain-batch", type=int, default=256)
    parser.add_argument("--forget-batch", type=int, default=64)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--methods", default="hamu-q,gdiff")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    set_threads(args.threads)
    train, test = load_train_test("fashion-mnist")
    test = subset(test, args.test_size, seed=0)
    print(machine_line())
    t0 = time.perf_counter()
    recipe = Recipe(model="cnn", model_config={"channels": [8, 16], "hidden": 128}, epochs=1, batch_size=256)
    original = train_model(train, recipe, progress=False)
    print(f"original: 1 epoch on {len(train)} rows in {time.perf_counter() - t0:.1f}s")
    print(
        f"fixed batches: retain {args.retain_batch}, forget {args.forget_batch}; "
        f"median of {args.steps} steps "
        f"after {args.warmup} warm-up; evaluation = forward over the forget set + loss-attack AUC with a "
        f"200-resample bootstrap against {len(test)} test rows\n",
        flush=True,
    )
    feat = original.featurizer
    xt, yt = to_tensors(test, feat)
    lt, _ = losses_and_accuracy(original.model, xt, yt)
    loss_auc_ci(lt[:50], lt[50:100])  # warm-up: the first bootstrap pays one-off import and allocation costs
    rows: list[dict[str, Any]] = []
    for frac in [float(f) for f in args.fractions.split(",")]:
        split = split_random(train, test, fraction=frac, seed=0)
        xr, yr = split.tensors("retain", feat)
        xf, yf = split.tensors("forget", feat)
        row: dict[str, Any] = {"forget %": f"{100 * frac:g}", "forget rows": len(yf)}
        for method in args.methods.split(","):
            times = step_times(
                copy.deepcopy(original.model),
                method,
                batches(xr, yr, args.retain_batch, 0),
                batches(xf, yf, min(args.forget_batch, len(yf)), 1),
                args.steps,
                args.warmup,
            )
            row[f"{method} step ms"] = 1e3 * statistics.median(times)
        t0 = time.perf_counter()
        lf, _ = losses_and_accuracy(original.model, xf, yf)
        loss_auc_ci(lf, lt)
        row["eval s"] = time.perf_counter() - t0
        row["eval µs/row"] = 1e6 * row["eval s"] / len(yf)
        rows.append(row)
        print(table([row], list(row)).splitlines()[-1], flush=True)
    n = np.array([r["forget rows"] for r in rows], dtype=float)
    ev = np.array([r["eval s"] for r in rows])
    slope, intercept = np.polyfit(n, ev, 1)
    r2 = 1 - np.sum((ev - (slope * n + intercept)) ** 2) / np.sum((ev - ev.mean()) ** 2)
    print("\n" + table(rows, list(rows[0]), ".3f"))
    spreads = {
        m: max(r[f"{m} step ms"] for r in rows) / min(r[f"{m} step ms"] for r in rows)
        for m in args.methods.split(",")
    }
    print(
        "\nstep time max/min over sizes: "
        + ", ".join(f"{m} {s:.2f}" for m, s in spreads.items())
        + f"; eval time linear fit: {1e6 * slope:.1f} µs/row + {intercept:.3f}s, R²={r2:.4f}"
    )
    write_json(
        "scale.json",
        {
            "machine": machine(),
            "args": vars(args),
            "rows": rows,
            "eval_fit": {"slope_s_per_row": slope, "intercept_s": intercept, "r2": r2},
            "step_spread": spreads,
        },
    )


if __name__ == "__main__":
    main()
