"""The lineage's reference bank in the pipeline: where it lives, how a batch finds it, how its training is
recorded (MLflow run, keyed member manifests, a ledger record), and the bank's evidence on a batch's rows.

One bank per registered model name, under ``HAMU_HOME/models/banks/<name>``. A batch uses it only when it
was trained on this workload's manifest with the champion's recipe; any other bank is refused by digest,
with the reason recorded (:class:`hamu.train.bank.BankMismatchError`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from hamu.data.digest import manifest, manifest_digest
from hamu.data.tensors import to_tensors
from hamu.evaluation.bank import calibrated_losses
from hamu.evaluation.bank_report import bank_report, joint_lira_scores
from hamu.evaluation.per_example import PerExample, compute_per_example
from hamu.governance.audit import Ledger, LedgerRecord, load_or_create_key
from hamu.governance.audit.keys import KeyedHasher
from hamu.train import TrainedModel
from hamu.train.bank import (
    Bank,
    BankIntegrityError,
    BankPlan,
    TestStatistics,
    attach_test_statistics,
    load_bank,
    read_bank_file,
    train_member,
    write_bank,
)
from hamu_pipeline.tasks.env import StatePaths
from hamu_pipeline.tasks.models import PresetData, ServedModel


def bank_folder(paths: StatePaths, model_name: str) -> Any:
    return paths.models / "banks" / model_name


def champion_recipe(champion: ServedModel) -> dict[str, Any]:
    """The recipe the served model was trained with: every bank member is trained the same way."""
    recipe = champion.metadata.get("recipe")
    if not isinstance(recipe, dict):
        raise ValueError(
            f"{champion.name}/{champion.version} records no training recipe: a bank cannot copy it"
        )
    return recipe


def plan_for(data: PresetData, champion: ServedModel, n_models: int, seed: int) -> BankPlan:
    return BankPlan(
        data.manifest_digest, champion_recipe(champion), len(data.train), n_models, seed, data.manifest_order
    )


def find_bank(paths: StatePaths, data: PresetData, champion: ServedModel) -> Bank | None:
    """The lineage's bank for this manifest and recipe, verified; ``None`` when no bank was trained.

    A bank of another manifest or recipe, with a changed file, or whose ``bank.json`` is not the one the
    ledger's last ``train-bank`` record for this lineage vouches for, raises (never silently used).
    """
    folder = bank_folder(paths, champion.name)
    if not (folder / "bank.json").exists():
        return None
    bank = load_bank(
        folder,
        manifest_digest=data.manifest_digest,
        recipe=champion_recipe(champion),
        manifest_order=data.manifest_order,
    )
    recorded = [
        r
        for r in Ledger(paths.audit).records()
        if r.step == "train-bank" and r.batch_id == f"bank-{champion.name}"
    ]
    actual = _json_sha(read_bank_file(folder))
    if not recorded or recorded[-1].outputs.get("bank") != actual:
        raise BankIntegrityError(
            f"the bank at {folder} is not the one the audit trail recorded last for {champion.name} "
            "(changed, or trained outside `hamu bank train`); train a new bank"
        )
    return bank


def ensure_test_statistics(bank: Bank, test: Any) -> tuple[Bank, bool]:
    """The bank with its members' statistics on this test set, computed and kept once (True when they were
    computed now: the caller records the changed bank)."""
    digest = manifest_digest(manifest(test))
    if bank.test_statistics is not None and bank.test_statistics.test_digest == digest:
        return bank, False
    stats = [member_statistics(m, test, f"bank-member-{k}") for k, m in enumerate(bank.members)]
    phi, loss = np.stack([s.phi for s in stats]), np.stack([s.loss for s in stats])
    correct = np.stack([s.correct for s in stats])
    return attach_test_statistics(bank, TestStatistics(digest, phi, loss, correct)), True


@task(name="train-bank-member", cache_policy=NO_CACHE)
def train_bank_member(train: Any, plan: BankPlan, k: int, rows: np.ndarray) -> TrainedModel:
    """One bank member: the served recipe on its seeded half of the manifest (``rows``)."""
    return train_member(train, plan, k, rows=rows)


def erased_record_ids(paths: StatePaths) -> set[str]:
    """Every record the queue has erased so far."""
    from hamu.governance.requests import RequestQueue

    with RequestQueue(paths.requests_url) as queue:
        return set(queue.erased_record_ids())


def without_erased(membership: np.ndarray, data: PresetData, erased: set[str]) -> np.ndarray:
    """The plan's membership less every erased row: those rows become OUT for every member."""
    out = membership.copy()
    rows = [data.positions[r] for r in erased if r in data.positions]
    out[:, rows] = False
    return out


def record_bank(paths: StatePaths, data: PresetData, champion: ServedModel, bank: Bank) -> str:
    """One MLflow run per bank (plan, digests, each member's subset as a keyed manifest) and a ledger
    record."""
    key = load_or_create_key(paths.home, ledger=paths.audit / "ledger.jsonl")
    hasher = KeyedHasher(key)
    ids = np.asarray(data.manifest_ids)
    body = read_bank_file(bank.folder)
    # nested when a batch refreshes the bank inside its own run
    with mlflow.start_run(
        run_name=f"train-bank-{champion.name}", nested=mlflow.active_run() is not None
    ) as run:
        mlflow.set_tags({"hamu.kind": "reference-bank", "bank_id": bank.plan.bank_id, "model": champion.name})
        mlflow.log_params(
            {
                "bank_id": bank.plan.bank_id,
                "n_models": bank.plan.n_models,
                "seed": bank.plan.seed,
                "manifest_digest": bank.plan.manifest_digest,
                "recipe_digest": body["plan"]["recipe_digest"],
            }
        )
        mlflow.log_metric("bank_train_seconds", bank.train_seconds)
        mlflow.log_dict(body, "bank/bank.json")
        for k in range(bank.plan.n_models):
            hashes = sorted(hasher.hash_many([str(i) for i in ids[bank.membership[k]]]))
            manifest = {"member": k, "rows": len(hashes), "record_hashes": hashes}
            mlflow.log_dict(manifest, f"bank/members/member-{k}.json")
        run_id = run.info.run_id
    Ledger(paths.audit, key=key).append(
        LedgerRecord(
            step="train-bank",
            batch_id=f"bank-{champion.name}",
            decision="trained",
            reason=f"reference bank of {bank.plan.n_models} members, each on a seeded half of the manifest",
            params={
                "bank_id": bank.plan.bank_id,
                "n_models": bank.plan.n_models,
                "seed": bank.plan.seed,
                "train_seconds": round(bank.train_seconds, 3),
                "refreshed": list(body.get("refreshed", [])),
            },
            inputs={"manifest": bank.plan.manifest_digest, "recipe": body["plan"]["recipe_digest"]},
            outputs={
                "bank": _json_sha(body),
                **{f"member-{e['member']}": e["sha256"] for e in body["members"]},
            },
            refs={"mlflow_run_id": run_id},
        )
    )
    return run_id


def _json_sha(body: dict[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


# -- the bank's evidence on a batch's rows ---------------------------------------------------------------


@dataclass(frozen=True)
class BankView:
    """The bank members' per-example statistics on one batch's rows, and which members never saw each row.

    Groups: ``forget`` (the batch's forget rows), ``test`` (OUT for every member: the calibration
    non-members) and ``erased`` (a sample of rows erased by earlier batches, re-checked every batch). Each
    group's arrays are ``(members, rows)`` in the order of the rows the batch evaluates.
    """

    phi: dict[str, np.ndarray]
    loss: dict[str, np.ndarray]
    out: dict[str, np.ndarray]
    correct: dict[str, np.ndarray]

    def calibrated(self, target_loss: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A model's calibrated losses on the groups it was evaluated on (its loss minus the mean loss of the
        members that never saw each row)."""
        return {g: calibrated_losses(loss, self.loss[g], self.out[g]) for g, loss in target_loss.items()}

    def scores(self, target_phi: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A model's offline LiRA scores on the groups it was evaluated on (one pooled σ)."""
        groups = [g for g in ("forget", "test", "erased") if g in target_phi and g in self.phi]
        return joint_lira_scores(
            {g: target_phi[g] for g in groups},
            {g: self.phi[g] for g in groups},
            {g: self.out[g] for g in groups},
        )


def member_statistics(member: TrainedModel, rows: Any, name: str) -> PerExample:
    """One member's per-example statistics on a hamu dataset, encoded with that member's own featurizer."""
    return compute_per_example(
        member.model, to_tensors(rows, member.featurizer), model_name=name, split_name="bank"
    )


def bank_view(bank: Bank, groups: dict[str, tuple[Any, np.ndarray | None]]) -> BankView:
    """Every member on each group of rows: ``groups[name] = (dataset, manifest positions or None)``; rows
    without positions (the test set) are OUT for every member. The test set's statistics kept with the bank
    are used when they are this test set's."""
    phi: dict[str, np.ndarray] = {}
    loss: dict[str, np.ndarray] = {}
    out: dict[str, np.ndarray] = {}
    correct: dict[str, np.ndarray] = {}
    kept = bank.test_statistics
    for name, (rows, positions) in groups.items():
        if positions is None and kept is not None and kept.test_digest == manifest_digest(manifest(rows)):
            phi[name], loss[name], correct[name] = kept.phi, kept.loss, kept.correct
        else:
            stats = [member_statistics(m, rows, f"bank-member-{k}") for k, m in enumerate(bank.members)]
            phi[name] = np.stack([s.phi for s in stats])
            loss[name] = np.stack([s.loss for s in stats])
            correct[name] = np.stack([s.correct for s in stats])
        out[name] = np.ones_like(phi[name], dtype=bool) if positions is None else bank.out_mask[:, positions]
    return BankView(phi, loss, out, correct)


__all__ = [
    "BankView",
    "bank_folder",
    "bank_view",
    "find_bank",
    "plan_for",
    "record_bank",
    "train_bank_member",
    "write_bank",
]


def model_statistics(model: Any, featurizer: Any, groups: dict[str, Any], name: str) -> dict[str, PerExample]:
    """A model's per-example statistics on each group of rows (hamu datasets), in its own encoding."""
    return {
        group: compute_per_example(model, to_tensors(rows, featurizer), model_name=name, split_name=group)
        for group, rows in groups.items()
    }


def bank_evidence_report(
    models: dict[str, tuple[Any, Any]],
    rows: dict[str, Any],
    view: BankView,
    *,
    bank: dict[str, Any],
    digests: dict[str, str],
    seed: int,
) -> dict[str, Any]:
    """The bank report (:func:`hamu.evaluation.bank_report.bank_report`) of ``models`` (name → (network,
    featurizer)) on the batch's ``rows`` (retain sample, forget, test, and erased when re-checked)."""
    stats: dict[str, dict[str, PerExample]] = {}
    scores: dict[str, dict[str, np.ndarray]] = {}
    calibrated: dict[str, dict[str, np.ndarray]] = {}
    for name, (model, featurizer) in models.items():
        per = model_statistics(model, featurizer, rows, name)
        stats[name] = {s: per[s] for s in ("retain", "forget", "test")}
        scores[name] = view.scores({g: p.phi for g, p in per.items() if g != "retain"})
        calibrated[name] = view.calibrated({g: p.loss for g, p in per.items() if g != "retain"})
    return bank_report(stats, scores, calibrated, bank=bank, digests=digests, seed=seed)
