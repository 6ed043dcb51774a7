"""Unlearning vs exact retraining for one deletion batch: wall time and membership signal, in one run.

Why: unlearning is only worth its approximation if it is much cheaper than retraining the reference and
leaves no more membership signal than the reference has. Both depend on the training budget (retraining
cost grows with epochs; a longer-trained original memorises more and has smaller gradients), so we measure
at two budgets: the ``fashion-mnist-cpu`` preset (20 epochs) and a longer recipe (default 60 epochs).

For each budget: train the original on retain ∪ forget, retrain the reference on retain (timed), run
HAMU-Q from the original (timed, mini-batches of fixed size, stops at its first infeasible step), and
compute the loss-attack AUC (forget vs test) of all three with 95% bootstrap intervals. The crossover is the
training budget (in epochs) at which retraining costs as much as the measured unlearning run:
E* = t_unlearn / (t_retrain / E).

Usage: python bench/unlearn_vs_retrain.py [--epochs 20,60] [--steps 200] [--batch 512]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    batches,
    loss_auc_ci,
    losses_and_accuracy,
    machine,
    machine_line,
    run_method,
    set_threads,
    table,
    write_json,
)

from hamu.train import train_model
from hamu.workloads import get_workload, workload_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="fashion-mnist-cpu")
    parser.add_argument("--epochs", default="20,60", help="training budgets: the preset's and a longer one")
    parser.add_argument("--method", default="hamu-q")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=512, help="retain and forget mini-batch size")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--c", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    set_threads(args.threads)
    workload = get_workload(args.preset)  # a built-in preset or one the project file names
    split = workload_split(workload)
    print(machine_line())
    print(
        f"workload {workload.name}: sizes {split.sizes()}, {args.method} c={args.c} η={args.lr}, "
        f"batch {args.batch}\n"
    )
    rows: list[dict[str, Any]] = []
    for epochs in [int(e) for e in args.epochs.split(",")]:
        recipe = workload.recipe.with_options(epochs=epochs)
        t0 = time.perf_counter()
        original = train_model(split.train, recipe, spec=split.spec, progress=False)
        t_orig = time.perf_counter() - t0
        t0 = time.perf_counter()
        reference = train_model(split.retain, recipe, spec=split.spec, progress=False)
        t_retrain = time.perf_counter() - t0
        feat = original.featurizer
        xr, yr = split.tensors("retain", feat)
        xf, yf = split.tensors("forget", feat)
        xt, yt = split.tensors("test", feat)
        model = copy.deepcopy(original.model)
        options = {"constraint_ratio": args.c} if args.method.startswith("hamu") else {}
        # The monitor tensors are tiny slices: the benchmark must not bill its own logging to unlearning.
        t0 = time.perf_counter()
        result, _ = run_method(
            model,
            args.method,
            batches(xr, yr, args.batch, 0),
            batches(xf, yf, args.batch, 1),
            (xr[:2], yr[:2], xf[:2], yf[:2]),
            lr=args.lr,
            steps=args.steps,
            seed=0,
            options=options,
        )
        t_unlearn = time.perf_counter() - t0
        for name, net in (("original", original.model), ("unlearned", model), ("reference", reference.model)):
            lf, acc_f = losses_and_accuracy(net, xf, yf)
            lt, acc_t = losses_and_accuracy(net, xt, yt)
            auc, lo, hi = loss_auc_ci(lf, lt)
            rows.append(
                {
                    "epochs": epochs,
                    "model": name,
                    "time s": {"original": t_orig, "unlearned": t_unlearn, "reference": t_retrain}[name],
                    "steps": result.steps_applied if name == "unlearned" else "",
                    "stop": result.stop_reason if name == "unlearned" else "",
                    "forget acc": acc_f,
                    "test acc": acc_t,
                    "AUC forget vs test": auc,
                    "95% CI": f"[{lo:.3f}, {hi:.3f}]",
                    "_lo": lo,
                    "_hi": hi,
                }
            )
        ref_row, un_row = rows[-1], rows[-2]
        inside = ref_row["_lo"] <= un_row["AUC forget vs test"] <= ref_row["_hi"]
        ratio = t_unlearn / t_retrain
        crossover = t_unlearn / (t_retrain / epochs)
        un_row["unlearn/retrain"] = ratio
        un_row["AUC in ref CI"] = inside
        un_row["crossover epochs"] = crossover
        print(
            f"[{epochs} epochs] retrain {t_retrain:.1f}s, unlearn {t_unlearn:.2f}s "
            f"({result.steps_applied} steps, {result.stop_reason}), ratio {ratio:.3f}, "
            f"unlearned AUC {un_row['AUC forget vs test']:.3f} in reference CI "
            f"{ref_row['95% CI']}: {inside}; "
            f"crossover at {crossover:.2f} epochs of retraining",
            flush=True,
        )
    cols = [
        "epochs",
        "model",
        "time s",
        "steps",
        "stop",
        "forget acc",
        "test acc",
        "AUC forget vs test",
        "95% CI",
        "unlearn/retrain",
        "AUC in ref CI",
        "crossover epochs",
    ]
    print("\n" + table(rows, cols))
    path = write_json(
        "unlearn_vs_retrain.json",
        {"machine": machine(), "args": vars(args), "sizes": split.sizes(), "rows": rows},
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
