"""The reference bank in the pipeline: ``hamu bank train``, batches judged by the bank, by both, and the
refusals (a bank of another manifest, a crash while training one), each leaving the state as it was.

Real Prefect, MLflow, queue and ledger on the digits preset; the bank has 4 members.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import hamu_cli, pipeline_home, submit_requests

pytestmark = pytest.mark.slow

PRESET = "digits-cpu"
NAME = f"hamu-{PRESET}"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with pipeline_home(tmp_path_factory.mktemp("hamu-home-bank")) as root:
        assert hamu_cli("init", "--preset", PRESET).exit_code == 0
        yield root


def _records(home: Path) -> list[Any]:
    from hamu.governance.audit import Ledger

    return Ledger(home / "audit").records()


def _batch(**options: Any) -> dict[str, Any]:
    from hamu_pipeline.flows.config import BatchConfig
    from hamu_pipeline.flows.deletion_batch import deletion_batch

    config = BatchConfig(preset=PRESET, shadow_models=0, cost_aware=False, eval_retain_rows=300, **options)
    return deletion_batch(config)


def _bank_folder(home: Path) -> Path:
    return home / "models" / "banks" / NAME


def test_bank_train_writes_a_verified_bank_and_records_it_without_raw_ids(home: Path) -> None:
    import mlflow

    from hamu_pipeline.tasks.models import load_preset_data

    result = hamu_cli("bank", "train", "--preset", PRESET, "--models", "4")
    assert result.exit_code == 0, result.output
    body = json.loads((_bank_folder(home) / "bank.json").read_text())
    assert body["plan"]["n_models"] == 4 and len(body["members"]) == 4
    assert hamu_cli("bank", "show", "--preset", PRESET).exit_code == 0
    record = [r for r in _records(home) if r.step == "train-bank"][-1]
    assert record.params["bank_id"] == body["plan"]["bank_id"]
    run = mlflow.get_run(record.refs["mlflow_run_id"])
    assert run.data.tags["hamu.kind"] == "reference-bank"
    folder = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="bank/members"))
    manifests = [json.loads(p.read_text()) for p in sorted(folder.glob("member-*.json"))]
    assert len(manifests) == 4
    ids = set(load_preset_data(PRESET).manifest_ids)
    text = " ".join(p.read_text() for p in folder.glob("*.json"))
    assert not any(i in text for i in list(ids)[:200])  # keyed hashes only, no raw record IDs
    assert sum(m["rows"] for m in manifests) == 2 * len(ids)  # each row IN for exactly half of 4


def test_a_batch_judged_by_both_records_the_bank_beside_the_exact_verdict(home: Path) -> None:
    from hamu_pipeline.tasks.models import load_preset_data

    submit_requests(home, load_preset_data(PRESET).manifest_ids[:40], "both")
    summary = _batch(reference_mode="both", method="gdiff", max_steps=20, to_target=False)
    assert summary["status"] == "completed"
    assert summary["evidence_mode"] == "both"
    assert summary["bank_verdict"] in ("pass", "fail", "inconclusive")
    records = [r for r in _records(home) if r.batch_id == summary["batch_id"]]
    steps = {r.step: r for r in records}
    assert steps["bank"].decision == "loaded"
    assert steps["reference"].decision == "both"
    assert "bank_evaluation" in steps["evaluate"].artifacts
    assert steps["evaluate"].params["evidence_mode"] == "both"
    receipts = list((home / "audit" / "receipts").rglob("*.json"))
    assert any(json.loads(p.read_text()).get("evidence", {}).get("evidence_mode") == "both" for p in receipts)


def test_a_batch_judged_by_the_bank_alone_writes_a_bank_report(home: Path) -> None:
    from hamu_pipeline.tasks.models import load_preset_data

    submit_requests(home, load_preset_data(PRESET).manifest_ids[40:80], "bank")
    summary = _batch(reference_mode="bank", method="gdiff", max_steps=20, to_target=False)
    records = {r.step: r for r in _records(home) if r.batch_id == summary["batch_id"]}
    # the bank judged first; only when its evidence could not decide did the exact reference decide
    first = next(r for r in _records(home) if r.batch_id == summary["batch_id"] and r.step == "reference")
    assert first.decision == "bank"
    report = json.loads((home / "audit" / records["evaluate"].artifacts["evaluation"]["path"]).read_text())
    if summary["evidence_mode"] == "bank":
        assert report["reference"]["kind"] == "bank"
        assert {"original", "unlearned"} <= set(report["bank"])
        gates = {g["name"] for g in records["evaluate"].params["verdict"]["gates"]}
        assert "reference-retrained" not in gates and "bank-lira" in gates
    else:
        assert summary["evidence_mode"] == "both" and report["reference"]["kind"] == "retrained"


def test_a_bank_of_another_manifest_is_refused_never_used(home: Path) -> None:
    from hamu.governance.requests import RequestQueue
    from hamu.train.bank import BankMismatchError
    from hamu_pipeline.tasks.models import load_preset_data

    path = _bank_folder(home) / "bank.json"
    original = path.read_text()
    body = json.loads(original)
    body["plan"]["manifest_digest"] = "0" * 64
    path.write_text(json.dumps(body))
    try:
        assert hamu_cli("bank", "show", "--preset", PRESET).exit_code == 1
        submit_requests(home, load_preset_data(PRESET).manifest_ids[80:100], "refused")
        with RequestQueue(f"sqlite:///{home / 'requests.db'}") as queue:
            before = sorted((r.request_id, r.status.value) for r in queue.list())
        with pytest.raises(BankMismatchError, match="another training manifest"):
            _batch(reference_mode="bank", method="gdiff", max_steps=5, to_target=False)
        with RequestQueue(f"sqlite:///{home / 'requests.db'}") as queue:
            assert sorted((r.request_id, r.status.value) for r in queue.list()) == before
        summary = _batch(method="gdiff", max_steps=5, to_target=False)  # auto: refused, recorded, exact
        assert summary["evidence_mode"] == "exact"
        assert summary["bank_note"].startswith("bank refused")
        refused = [r for r in _records(home) if r.batch_id == summary["batch_id"] and r.step == "bank"]
        assert refused and refused[0].decision == "refused"
    finally:
        path.write_text(original)


def test_the_bank_is_bound_to_the_manifests_order_and_refused_for_a_reordered_one(home: Path) -> None:
    """The same rows in another order share the manifest digest; the bank's membership is by position."""
    from hamu.data.digest import order_digest
    from hamu.train.bank import BankMismatchError
    from hamu_pipeline.tasks.bank import find_bank
    from hamu_pipeline.tasks.env import StatePaths
    from hamu_pipeline.tasks.models import PresetData, load_preset_data, require_champion

    data = load_preset_data(PRESET)
    body = json.loads((_bank_folder(home) / "bank.json").read_text())
    assert body["plan"]["manifest_order"] == order_digest(data.train)
    paths, champion = StatePaths(home.resolve()), require_champion(NAME)
    assert find_bank(paths, data, champion) is not None
    reordered = PresetData(PRESET, data.train.select([*range(1, len(data.train)), 0]), data.test)
    assert reordered.manifest_digest == data.manifest_digest
    with pytest.raises(BankMismatchError, match="another order"):
        find_bank(paths, reordered, champion)


def test_a_crash_while_training_the_bank_leaves_the_old_bank_in_use(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hamu.train.bank as bank_module

    before = {p.name: p.read_bytes() for p in _bank_folder(home).iterdir()}
    real = bank_module.train_model
    calls = {"n": 0}

    def dies_on_the_third(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("worker lost")
        return real(*args, **kwargs)

    monkeypatch.setattr(bank_module, "train_model", dies_on_the_third)
    result = hamu_cli("bank", "train", "--preset", PRESET, "--models", "4", "--seed", "7")
    assert result.exit_code != 0
    assert {p.name: p.read_bytes() for p in _bank_folder(home).iterdir()} == before
    assert not list(_bank_folder(home).parent.glob(".bank-*"))
    assert hamu_cli("bank", "show", "--preset", PRESET).exit_code == 0


def test_a_new_bank_leaves_erased_rows_out_of_every_member(home: Path) -> None:
    from hamu.governance.requests import RequestQueue
    from hamu.train.bank import load_bank
    from hamu_pipeline.tasks.models import load_preset_data

    submit_requests(home, load_preset_data(PRESET).manifest_ids[100:130], "erase")
    summary = _batch(exact=True)
    assert summary["action"] == "retrain"
    promoted = hamu_cli(
        "promote", "--batch", summary["batch_id"], "--accept-insufficient-evidence", "--reason", "weak"
    )
    assert promoted.exit_code == 0, promoted.output
    with RequestQueue(f"sqlite:///{home / 'requests.db'}") as queue:
        erased = queue.erased_record_ids()
    assert erased
    assert hamu_cli("bank", "train", "--preset", PRESET, "--models", "4", "--seed", "3").exit_code == 0
    data = load_preset_data(PRESET)
    body = json.loads((_bank_folder(home) / "bank.json").read_text())
    from hamu_pipeline.tasks.bank import champion_recipe
    from hamu_pipeline.tasks.models import require_champion

    recipe = champion_recipe(require_champion(NAME))
    bank = load_bank(
        _bank_folder(home),
        manifest_digest=data.manifest_digest,
        manifest_order=data.manifest_order,
        recipe=recipe,
    )
    rows = np.asarray([data.positions[r] for r in erased])
    assert not bank.membership[:, rows].any()
    assert body["plan"]["seed"] == 3


def test_the_trail_with_banks_verifies(home: Path) -> None:
    """Bank training, refreshes and bank-judged batches are ledger records like any other: the trail, the
    receipts, the versions and the aliases still verify."""
    result = hamu_cli("audit", "verify")
    assert result.exit_code == 0, result.output
    steps = {r.step for r in _records(home)}
    assert {"train-bank", "bank", "reference", "evaluate"} <= steps


def test_rows_short_of_out_members_refresh_the_affected_members(home: Path) -> None:
    """A row needs ``bank_min_out`` members that never saw it; with 4 members each row has 2, so asking for
    3 retrains, for each forget row, a member that saw it, and the bank record and the report say so."""
    from hamu_pipeline.tasks.models import load_preset_data

    ids = load_preset_data(PRESET).manifest_ids[140:160]
    submit_requests(home, ids, "short")
    summary = _batch(reference_mode="bank", bank_min_out=3, method="gdiff", max_steps=10, to_target=False)
    records = [r for r in _records(home) if r.batch_id == summary["batch_id"]]
    bank_record = next(r for r in records if r.step == "bank")
    assert bank_record.decision == "refreshed"
    assert "fewer than 3 members" in bank_record.reason
    refreshed = bank_record.params["refreshed"]
    assert refreshed["rows_dropped"] == len(ids) and refreshed["members"]
    body = json.loads((_bank_folder(home) / "bank.json").read_text())
    assert body["refreshed"][-1]["members"] == refreshed["members"]
    assert hamu_cli("bank", "show", "--preset", PRESET).exit_code == 0  # the ledger vouches for the new bank


def test_auto_audits_the_bank_with_the_exact_reference_every_nth_batch(home: Path) -> None:
    """Under auto, a batch is judged by the bank alone at most ``bank_audit_every − 1`` times in a row: then
    the exact reference is trained too (``both``), as it is whenever the bank alone cannot decide."""
    from hamu_pipeline.tasks.models import load_preset_data

    decisions: list[str] = []
    for n, start in enumerate((160, 170)):
        submit_requests(home, load_preset_data(PRESET).manifest_ids[start : start + 10], f"auto-{n}")
        summary = _batch(bank_audit_every=2, method="gdiff", max_steps=10, to_target=False)
        decisions += [
            r.decision for r in _records(home) if r.batch_id == summary["batch_id"] and r.step == "reference"
        ]
    assert "both" in decisions, decisions
    runs = "".join("b" if d == "bank" else "." for d in decisions).split(".")
    assert max(len(r) for r in runs) <= 1, decisions  # never two bank-only batches in a row


@pytest.mark.parametrize("retrain_on_fail", [False, True])
def test_a_candidate_that_fails_its_gates_is_replaced_by_the_exact_retrain(
    home: Path, retrain_on_fail: bool
) -> None:
    """Gradient ascent at a large step wrecks test accuracy: the verdict fails it. With ``retrain_on_fail``
    (the default) the batch honours its requests with the exact retrain instead, judged again and saying
    why; without it the failing candidate is registered, not promotable."""
    from hamu_pipeline.tasks.models import load_preset_data

    start = 200 if retrain_on_fail else 230
    submit_requests(
        home, load_preset_data(PRESET).manifest_ids[start : start + 30], f"wreck-{retrain_on_fail}"
    )
    summary = _batch(
        method="ga", lr=0.5, max_steps=20, to_target=False, retrain_on_fail=retrain_on_fail, exact=False
    )
    records = [r for r in _records(home) if r.batch_id == summary["batch_id"]]
    first = next(r for r in records if r.step == "evaluate")
    assert first.decision == "fail", first.reason
    if retrain_on_fail:
        assert summary["action"] == "retrain"
        assert summary["reason"].startswith("exact retrain: the unlearned candidate failed its gates")
        assert [r.decision for r in records if r.step == "unlearn"] == ["unlearn", "retrain"]
        last = [r for r in records if r.step == "evaluate"][-1]
        assert last.decision != "fail" and last.artifacts["evaluation"]["path"].endswith("evaluation-2.json")
    else:
        assert summary["action"] == "unlearn" and summary["verdict"] == "fail"
