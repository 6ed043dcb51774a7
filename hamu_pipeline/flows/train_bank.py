"""Train the lineage's reference bank: K members with the champion's own recipe, each on a seeded half of
the training manifest, fanned out one Prefect task per member (Dask task runner), written atomically and
recorded (one MLflow run, keyed member manifests, a ``train-bank`` ledger record).

Workers: ``HAMU_BANK_WORKERS`` (default 1). Members run in worker *processes* when it is above 1, because
training seeds the process's global RNG: two members in threads of one process would not be reproducible.
On a GPU pool, one worker per GPU.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
from prefect import flow, unmapped
from prefect_dask import DaskTaskRunner

from hamu_pipeline.tasks.env import configure_environment

BANK_WORKERS_ENV = "HAMU_BANK_WORKERS"


def _workers() -> int:
    try:
        return max(1, int(os.environ.get(BANK_WORKERS_ENV, "1")))
    except ValueError:
        raise ValueError(f"{BANK_WORKERS_ENV} must be a whole number") from None


def _runner() -> DaskTaskRunner:
    n = _workers()
    return DaskTaskRunner(cluster_kwargs={"n_workers": n, "threads_per_worker": 1, "processes": n > 1})


@flow(
    name="train-bank",
    # prefect_dask's DaskTaskRunner subclasses the bare TaskRunner (see deletion_batch.shadow_references)
    task_runner=_runner(),  # type: ignore[arg-type]
)
def train_bank(
    preset: str = "fashion-mnist-cpu", model_name: str | None = None, n_models: int = 8, seed: int = 0
) -> dict[str, Any]:
    """Train (or replace) the reference bank of ``model_name``'s lineage; returns its ID and cost.

    Rows already erased are left out of every member: a bank is never trained on deleted data."""
    paths = configure_environment()
    from hamu.train.bank import load_bank, write_bank
    from hamu_pipeline.tasks.bank import (
        bank_folder,
        ensure_test_statistics,
        erased_record_ids,
        plan_for,
        record_bank,
        train_bank_member,
        without_erased,
    )
    from hamu_pipeline.tasks.models import load_preset_data, require_champion
    from hamu_pipeline.tasks.tracking import ensure_experiment

    ensure_experiment(paths)
    data = load_preset_data(preset)
    name = model_name or f"hamu-{preset}"
    champion = require_champion(name)
    plan = plan_for(data, champion, n_models, seed)
    membership = without_erased(plan.membership(), data, erased_record_ids(paths))
    start = time.perf_counter()
    k = list(range(plan.n_models))
    rows = [np.flatnonzero(membership[i]) for i in k]
    futures = train_bank_member.map(unmapped(data.train), unmapped(plan), k, rows)
    members = [f.result() for f in futures]
    seconds = time.perf_counter() - start
    write_bank(bank_folder(paths, name), plan, members, train_seconds=seconds, membership=membership)
    bank = load_bank(
        bank_folder(paths, name),
        manifest_digest=data.manifest_digest,
        recipe=plan.recipe,
        manifest_order=plan.manifest_order,
    )
    bank, _ = ensure_test_statistics(bank, data.test)  # the same in every batch: computed once, here
    run_id = record_bank(paths, data, champion, bank)
    retrain = float(champion.metadata.get("train_seconds", 0.0))
    return {
        "model_name": name,
        "bank_id": plan.bank_id,
        "n_models": plan.n_models,
        "train_seconds": round(seconds, 2),
        # recorded when the champion was trained, possibly under another load: not a within-run ratio
        "champion_train_seconds": round(retrain, 2) if retrain > 0 else None,
        "mlflow_run_id": run_id,
    }
