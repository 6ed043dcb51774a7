"""The reference bank against the exact reference: cost, agreement of verdicts on a panel, and attack power.

Why: a deletion batch judged by the lineage's bank instead of an exact retrain is only worth having if
(1) its per-batch evidence costs a small fraction of a retrain, (2) its verdict agrees with the exact
reference's on candidates that did and did not forget, and (3) its statistics separate a model that still
carries the forget rows from one that never saw them at least as well as the population attacks do.

One run, one machine: train the preset's original on the full manifest and the exact reference on the
retain set (both timed), a bank of K members on seeded halves of the manifest (timed), then judge a panel of
candidates both ways:

* ``copy``: the original unchanged (must fail);
* ``one-step``: one HAMU-Q step (must fail: it forgot nothing measurable);
* ``to-target``: HAMU-Q driven by the controller to the *bank's* forget target (no retrain);
* ``retrain``: the exact reference itself (must pass);
* ``over``: gradient ascent pushed past the reference's forget loss by a nat (must fail).

The forget set is a random sample of the manifest, like real deletion requests (the bank's zero reference
assumes forget rows drawn like the test rows). Usage:
python bench/bank.py [--preset fashion-mnist-cpu] [--models 8] [--forget 500] [--budget 300]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import batches, machine, machine_line, set_threads, table, write_json

from hamu import ForgetTarget, UnlearnConfig, unlearn, unlearn_to_target
from hamu.controller import mean_loss
from hamu.data import record_ids
from hamu.data.digest import dataset_digest, order_digest
from hamu.data.splits import split_by_ids
from hamu.data.tensors import to_tensors
from hamu.evaluation import EvaluationConfig, compute_per_example, evaluate_models
from hamu.evaluation.bank import calibrated_losses, expected_forget_loss
from hamu.evaluation.bank_report import bank_report, joint_lira_scores
from hamu.governance.verdict import RunFacts, decide, forget_loss_target
from hamu.models import model_digest
from hamu.train import train_model
from hamu.train.bank import BankPlan, train_member
from hamu.train.losses import recipe_loss
from hamu.workloads import get_workload


def over_unlearn(model: nn.Module, forget: tuple[torch.Tensor, torch.Tensor], goal: float) -> nn.Module:
    """Gradient ascent on the forget rows (norm-clipped steps) until their mean loss reaches ``goal``."""
    out = copy.deepcopy(model)
    opt = torch.optim.SGD(out.parameters(), lr=0.01)
    for _ in range(500):
        if mean_loss(out, F.cross_entropy, [forget], device="cpu") >= goal:
            break
        out.train()
        opt.zero_grad()
        (-F.cross_entropy(out(forget[0]), forget[1])).backward()
        torch.nn.utils.clip_grad_norm_(out.parameters(), 1.0)
        opt.step()
    return out.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="fashion-mnist-cpu")
    parser.add_argument("--models", type=int, default=8, help="bank members (even)")
    parser.add_argument("--forget", type=int, default=500, help="random forget rows (a deletion batch)")
    parser.add_argument("--budget", type=int, default=300, help="controller step budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    set_threads(args.threads)
    workload = get_workload(args.preset)  # a built-in preset or one the project file names
    train, test = workload.data()
    rng = np.random.default_rng(args.seed)
    manifest = record_ids(train)
    forget_ids = [manifest[i] for i in sorted(rng.choice(len(manifest), size=args.forget, replace=False))]
    split = split_by_ids(train, test, forget_ids)
    recipe = workload.recipe
    print(machine_line())
    print(
        f"workload {workload.name}: sizes {split.sizes()}, bank of {args.models}, random forget set\n",
        flush=True,
    )

    t0 = time.perf_counter()
    original = train_model(split.train, recipe, spec=split.spec, progress=False)
    t_original = time.perf_counter() - t0
    t0 = time.perf_counter()
    reference = train_model(split.retain, recipe, spec=split.spec, progress=False)
    t_retrain = time.perf_counter() - t0
    plan = BankPlan(
        dataset_digest(split.train),
        recipe.to_dict(),
        len(split.train),
        args.models,
        args.seed,
        order_digest(split.train),
    )
    t0 = time.perf_counter()
    members = [train_member(split.train, plan, k) for k in range(plan.n_models)]
    t_bank = time.perf_counter() - t0
    print(f"original {t_original:.1f}s, retrain {t_retrain:.1f}s, bank {t_bank:.1f}s", flush=True)

    feat = original.featurizer
    retain, forget, test_t = (split.tensors(p, feat) for p in ("retain", "forget", "test"))
    position = {rid: i for i, rid in enumerate(record_ids(split.train))}
    rows = np.asarray([position[r] for r in record_ids(split.forget)])
    out_mask = {
        "forget": ~plan.membership()[:, rows],
        "test": np.ones((plan.n_models, len(split.test)), bool),
    }

    def member_stats(ds: Any) -> tuple[np.ndarray, np.ndarray]:
        per = [compute_per_example(m.model, to_tensors(ds, m.featurizer)) for m in members]
        return np.stack([p.phi for p in per]), np.stack([p.loss for p in per])

    # the members' test-row statistics are the same in every batch: the bank keeps them (one-off cost)
    t0 = time.perf_counter()
    test_phi, test_loss = member_stats(split.test)
    t_bank += time.perf_counter() - t0
    t0 = time.perf_counter()
    forget_phi, forget_loss = member_stats(split.forget)  # per batch: the members on the forget rows
    t_members = time.perf_counter() - t0
    bank_stats = {
        "phi": {"forget": forget_phi, "test": test_phi},
        "loss": {"forget": forget_loss, "test": test_loss},
    }

    # the controller's target from the bank alone, and the exact one for comparison
    served_forget = compute_per_example(original.model, forget).loss
    served_test = compute_per_example(original.model, test_t).loss
    _, per_row = expected_forget_loss(
        bank_stats["loss"]["forget"], out_mask["forget"], bank_stats["loss"]["test"], served_test
    )
    loss, tol, _ = forget_loss_target(served_forget.tolist(), per_row.tolist())
    ref_forget = (reference.featurizer.encode(split.forget), forget[1])
    exact_loss = float(compute_per_example(reference.model, ref_forget).loss.mean())
    print(f"forget target from the bank {loss:.4f} ± {tol:.4f}; the exact reference's {exact_loss:.4f}")
    eval_retain = [(retain[0][:512], retain[1][:512])]
    ceiling = mean_loss(original.model, F.cross_entropy, eval_retain, device="cpu") + tol
    cfg = UnlearnConfig(
        method="hamu-q",
        lr=0.01,
        max_steps=args.budget,
        device="cpu",
        method_options={"constraint_ratio": 0.1},
    )
    # Unlearning differentiates the workload's own objective; targets and gates read cross-entropy.
    objective = recipe_loss(recipe, split.spec.num_classes)
    to_target = copy.deepcopy(original.model)
    t0 = time.perf_counter()
    result = unlearn_to_target(
        to_target,
        objective,
        batches(*retain, 256, 0),
        batches(*forget, 256, 1),
        cfg,
        ForgetTarget(loss=loss, tolerance=tol, retain_ceiling=ceiling),
        eval_forget=[forget],
        eval_retain=eval_retain,
        measure_fn=F.cross_entropy,
    )
    t_unlearn = time.perf_counter() - t0
    print(f"to-target: {result.stop_reason} after {result.steps_taken} steps ({t_unlearn:.1f}s)", flush=True)
    one = copy.deepcopy(original.model)
    one_cfg = UnlearnConfig(method="hamu-q", lr=0.01, max_steps=1, device="cpu")
    one_result = unlearn(one, objective, batches(*retain, 256, 0), batches(*forget, 256, 1), one_cfg)
    panel: dict[str, tuple[nn.Module, Any, RunFacts]] = {
        "copy": (copy.deepcopy(original.model), feat, RunFacts(action="unlearn", steps_applied=1)),
        "one-step": (one, feat, RunFacts(action="unlearn", steps_applied=one_result.steps_applied)),
        "to-target": (to_target, feat, RunFacts(action="unlearn", steps_applied=result.steps_applied)),
        "retrain": (reference.model, reference.featurizer, RunFacts(action="retrain")),
        "over": (over_unlearn(original.model, forget, exact_loss + 1.0), feat, RunFacts(action="unlearn")),
    }
    retain_eval = split.retain.select(list(range(min(3000, len(split.retain)))))
    own_ref = {
        "retain": reference.featurizer.encode(retain_eval),
        "forget": ref_forget[0],
        "test": reference.featurizer.encode(split.test),
    }
    splits = {"retain": to_tensors(retain_eval, feat), "forget": forget, "test": test_t}
    rows_out: list[dict[str, Any]] = []
    power: dict[str, Any] = {}
    original_weights = model_digest(original.model)
    for name, (model, featurizer, facts) in panel.items():
        facts = RunFacts(
            action=facts.action,
            steps_applied=facts.steps_applied,
            candidate_weights=model_digest(model),
            original_weights=original_weights,
        )
        own = {"retrained": own_ref}
        if featurizer is not feat:
            own["unlearned"] = own_ref
        ev = evaluate_models(
            {"original": original.model, "retrained": reference.model, "unlearned": model},
            splits,
            config=EvaluationConfig(n_resamples=500),
            model_inputs=own,
        )
        exact = decide(ev.report.to_dict(), facts)
        t0 = time.perf_counter()
        stats: dict[str, dict[str, Any]] = {}
        scores: dict[str, dict[str, np.ndarray]] = {}
        calibrated: dict[str, dict[str, np.ndarray]] = {}
        for who, (m, f) in {"original": (original.model, feat), "unlearned": (model, featurizer)}.items():
            per = {
                g: compute_per_example(m, to_tensors(ds, f))
                for g, ds in (("retain", retain_eval), ("forget", split.forget), ("test", split.test))
            }
            stats[who] = per
            scores[who] = joint_lira_scores(
                {g: per[g].phi for g in ("forget", "test")}, bank_stats["phi"], out_mask
            )
            calibrated[who] = {
                g: calibrated_losses(per[g].loss, bank_stats["loss"][g], out_mask[g])
                for g in ("forget", "test")
            }
        report = bank_report(stats, scores, calibrated, bank={"n_models": plan.n_models}, n_resamples=500)
        bank = decide(report, facts)
        t_judge = time.perf_counter() - t0
        gap = report["bank"]["unlearned"]["forget"]["loss"]
        lira = report["bank"]["unlearned"]["forget"]["lira"]
        rows_out.append(
            {
                "candidate": name,
                "forget acc": float(stats["unlearned"]["forget"].correct.mean()),
                "exact verdict": f"{exact.status} ({exact.evidence})",
                "bank verdict": f"{bank.status} ({bank.evidence})",
                "agree": (exact.status == "pass") == (bank.status == "pass"),
                "exact not passing": ", ".join(g.name for g in exact.failing) or "-",
                "bank not passing": ", ".join(g.name for g in bank.failing) or "-",
                "loss gap": f"{gap['gap']:+.3f} [{gap['ci_low']:+.3f},{gap['ci_high']:+.3f}]",
                "LiRA AUC": f"{lira['auc']:.3f} [{lira['auc_ci_low']:.3f},{lira['auc_ci_high']:.3f}]",
                "det@1%": lira["detectable"]["fpr_0.01"],
                "bank judge s": t_judge,
            }
        )
        print(f"{name}: exact {exact.status}, bank {bank.status} ({bank.reason[:120]})", flush=True)
        if name == "retrain":
            attacks = ev.report.to_dict()["attacks"]
            pairs = (("original", "original", "original"), ("unlearned", "reference", "retrained"))
            for who, label, exact_name in pairs:
                population = attacks[exact_name]["forget_vs_test"]
                power[label] = {
                    "bank LiRA AUC": report["bank"][who]["forget"]["lira"],
                    "bank loss gap": report["bank"][who]["forget"]["loss"],
                    "population AUC": {a: population[a]["metrics"]["auc"] for a in population},
                }
    judge_s = float(np.median([r["bank judge s"] for r in rows_out]))
    per_batch = t_members + judge_s
    cost = {
        "retrain s": t_retrain,
        "bank one-off s": t_bank,
        "bank / retrain": t_bank / t_retrain,
        "per-batch bank evidence s": per_batch,
        "per-batch / retrain": per_batch / t_retrain,
        "batches to pay off": t_bank / max(t_retrain - per_batch, 1e-9),
        "unlearn to target s": t_unlearn,
        "(unlearn + evidence) / retrain": (t_unlearn + per_batch) / t_retrain,
    }
    print("\nAgreement (one run):\n" + table(rows_out, list(rows_out[0])))
    print("\nCost:\n" + table([cost], list(cost)))
    power_rows = []
    for label, p in power.items():
        row = {
            "model": label,
            "bank LiRA AUC": f"{p['bank LiRA AUC']['auc']:.3f} "
            f"[{p['bank LiRA AUC']['auc_ci_low']:.3f},{p['bank LiRA AUC']['auc_ci_high']:.3f}]",
            "bank loss gap": f"{p['bank loss gap']['gap']:+.3f} "
            f"[{p['bank loss gap']['ci_low']:+.3f},{p['bank loss gap']['ci_high']:+.3f}]",
        }
        for attack, value in p["population AUC"].items():
            row[f"{attack} AUC"] = f"{value['estimate']:.3f} [{value['ci_low']:.3f},{value['ci_high']:.3f}]"
        power_rows.append(row)
    print("\nPower (forget vs test rows):\n" + table(power_rows, list(power_rows[0])))
    path = write_json(
        f"bank-{workload.name}.json",
        {"machine": machine(), "args": vars(args), "agreement": rows_out, "cost": cost, "power": power},
    )
    print(f"\nraw results: {path}")
    print(f"bank_evidence_over_retrain={per_batch / t_retrain:.4f}")


if __name__ == "__main__":
    main()
