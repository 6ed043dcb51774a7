"""Unlearning driven to the reference's forget loss vs exact retraining: reached or not, the one verdict, and
the wall-time ratio, in one run.

Why: a deletion batch may ship an unlearned model only when it is as forgotten as a model retrained without
the data (and no more), and it is only worth shipping when that costs less than the retrain. For each preset
(and training budget): train the original on retain ∪ forget and the reference on retain (timed), set the
forget target from the two models' forget losses with the forget-loss gate's band
(:func:`hamu.governance.verdict.forget_loss_target`), drive HAMU-Q to it with :func:`hamu.unlearn_to_target`
(timed,
per step budget), then evaluate original / reference / candidate and judge the candidate with
:func:`hamu.governance.verdict.decide` (population attacks, no LiRA shadows: the LiRA gate is not part of
this table).

Usage: python bench/to_target.py [--preset fashion-mnist-cpu] [--epochs 20] [--budgets 100,300]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import batches, machine, machine_line, set_threads, table, write_json

from hamu import ForgetTarget, UnlearnConfig, unlearn_to_target
from hamu.controller import mean_loss
from hamu.evaluation import EvaluationConfig, compute_per_example, evaluate_models
from hamu.governance.verdict import RunFacts, decide, forget_loss_target
from hamu.train import train_model
from hamu.train.losses import recipe_loss
from hamu.workloads import get_workload, workload_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="fashion-mnist-cpu")
    parser.add_argument("--epochs", default="", help="training budgets (default: the preset's)")
    parser.add_argument("--budgets", default="100,300", help="step budgets of the controller")
    parser.add_argument("--batch", type=int, default=256, help="retain and forget mini-batch size")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--c", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    set_threads(args.threads)
    workload = get_workload(args.preset)  # a built-in preset or one the project file names
    split = workload_split(workload)
    print(machine_line())
    print(
        f"workload {workload.name}: sizes {split.sizes()}, hamu-q c≤{args.c} η0={args.lr}, "
        f"batch {args.batch}\n"
    )
    epochs_list = [int(e) for e in args.epochs.split(",")] if args.epochs else [workload.recipe.epochs]
    rows: list[dict[str, Any]] = []
    for epochs in epochs_list:
        recipe = workload.recipe.with_options(epochs=epochs)
        original = train_model(split.train, recipe, spec=split.spec, progress=False)
        t0 = time.perf_counter()
        reference = train_model(split.retain, recipe, spec=split.spec, progress=False)
        t_retrain = time.perf_counter() - t0
        feat = original.featurizer
        retain, forget, test = (split.tensors(p, feat) for p in ("retain", "forget", "test"))
        ref_forget = (reference.featurizer.encode(split.forget), forget[1])
        orig_losses = compute_per_example(original.model, forget).loss
        ref_losses = compute_per_example(reference.model, ref_forget).loss
        loss, tol, band = forget_loss_target(orig_losses.tolist(), ref_losses.tolist())
        eval_retain = [(retain[0][:512], retain[1][:512])]
        ceiling = mean_loss(original.model, F.cross_entropy, eval_retain, device="cpu") + tol
        target = ForgetTarget(loss=loss, tolerance=tol, retain_ceiling=ceiling)
        # Unlearning differentiates the workload's own objective; the target is read in cross-entropy.
        objective = recipe_loss(recipe, split.spec.num_classes)
        own = {}
        if reference.featurizer.to_config() != feat.to_config():
            own["retrained"] = {
                "retain": reference.featurizer.encode(split.retain),
                "forget": ref_forget[0],
                "test": reference.featurizer.encode(split.test),
            }
        for budget in [int(b) for b in args.budgets.split(",")]:
            model = copy.deepcopy(original.model)
            cfg = UnlearnConfig(
                method="hamu-q", lr=args.lr, max_steps=budget, device="cpu",
                method_options={"constraint_ratio": args.c},
            )  # fmt: skip
            t0 = time.perf_counter()
            result = unlearn_to_target(
                model,
                objective,
                batches(*retain, args.batch, 0),
                batches(*forget, args.batch, 1),
                cfg,
                target,
                eval_forget=[forget],
                eval_retain=eval_retain,
                measure_fn=F.cross_entropy,
            )
            t_unlearn = time.perf_counter() - t0
            ev = evaluate_models(
                {"original": original.model, "retrained": reference.model, "unlearned": model},
                {"retain": (retain[0][:3000], retain[1][:3000]), "forget": forget, "test": test},
                config=EvaluationConfig(),
                model_inputs={"retrained": {**own["retrained"], "retain": own["retrained"]["retain"][:3000]}}
                if own
                else None,
            )
            verdict = decide(
                ev.report.to_dict(), RunFacts(action="unlearn", steps_applied=result.steps_applied)
            )
            gates = {g.name: g for g in verdict.gates}
            rows.append(
                {
                    "epochs": epochs,
                    "budget": budget,
                    "reached": result.reached,
                    "stop": result.stop_reason,
                    "steps": result.steps_taken,
                    "L_f start": result.initial_forget_loss,
                    "L_f final": result.final_forget_loss,
                    "target": f"{loss:.3f}±{tol:.3f}",
                    "unlearn s": t_unlearn,
                    "retrain s": t_retrain,
                    "unlearn/retrain": t_unlearn / t_retrain,
                    "forget acc gap": gates["forget-accuracy"].gap,
                    "test acc gap": gates["test-accuracy"].gap,
                    "verdict": verdict.status,
                    "evidence": verdict.evidence,
                    "not passing": ", ".join(f"{g.name}:{g.status}" for g in verdict.failing) or "-",
                }
            )
            print(
                f"[{epochs} epochs, budget {budget}] {result.stop_reason} after {result.steps_taken} steps, "
                f"L_f {result.initial_forget_loss:.3f} → {result.final_forget_loss:.3f} "
                f"(target {loss:.3f}±{tol:.3f}), unlearn {t_unlearn:.1f}s vs retrain {t_retrain:.1f}s; "
                f"verdict {verdict.status} "
                f"({verdict.evidence})",
                flush=True,
            )
    cols = list(rows[0]) if rows else []
    print("\n" + table(rows, cols))
    path = write_json(
        f"to_target-{workload.name}.json",
        {"machine": machine(), "args": vars(args), "sizes": split.sizes(), "band": band, "rows": rows},
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
