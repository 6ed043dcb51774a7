"""A trail an auditor can trust: the keyed chain, anchors outside the ledger, receipts the ledger vouches
for, torn-tail repair, the audit key's handling, and manifests checked against the ledger (real MLflow).

Each test breaks the trail the way an attacker or a crash would and checks that verification names it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from hamu.governance.audit import (
    Anchor,
    AuditKeyError,
    ErasureReceipt,
    KeyedHasher,
    Ledger,
    LedgerRecord,
    ReceiptStore,
    check_receipts,
    create_key,
    key_fingerprint,
    load_key,
    load_or_create_key,
    verify_ledger,
)
from hamu.governance.audit.ledger import REPAIR_STEP
from hamu.governance.audit.provenance import sha256_json

KEY = bytes(range(32))
HASHER = KeyedHasher(KEY)


def _receipt(request_id: str, batch: str, anchor: Anchor | None) -> ErasureReceipt:
    return ErasureReceipt(
        request_hash=HASHER.hash(request_id),
        record_hash=HASHER.hash(f"rec-{request_id}"),
        verdict="accepted",
        reason="",
        batch_id=batch,
        issued_at="2026-01-01T00:00:00+00:00",
        model_version="2",
        ledger_anchor=anchor.to_dict() if anchor else {},
    )


def _trail(root: Path, batches: int = 3) -> Ledger:
    """A ledger of a few batches, each closing with an anchored receipt (as the pipeline writes them)."""
    ledger = Ledger(root, key=KEY)
    store = ReceiptStore(ledger)
    for b in range(batches):
        ledger.append(LedgerRecord(step="claim", batch_id=f"b{b}", code_version="t", packages={"x": "1"}))
        ref = store.write(_receipt(f"req-{b}", f"b{b}", ledger.head()))
        ledger.append(
            LedgerRecord(
                step="receipts", batch_id=f"b{b}", artifacts={"r": ref}, code_version="t", packages={"x": "1"}
            )
        )
    return ledger


def _lines(root: Path) -> list[str]:
    return (root / "ledger.jsonl").read_text().splitlines(keepends=True)


def test_intact_trail_verifies(tmp_path: Path) -> None:
    _trail(tmp_path)
    result = verify_ledger(tmp_path, KEY)
    assert result.ok and result.records == 6 and result.problems == ()
    assert check_receipts(Ledger(tmp_path)) == []


def test_full_rewrite_with_recomputed_plain_hashes_is_detected(tmp_path: Path) -> None:
    """Before the chain was keyed, anyone could edit a record and recompute every later hash."""
    _trail(tmp_path)
    records = [json.loads(line) for line in _lines(tmp_path)]
    records[1]["decision"] = "forged"
    prev = "0" * 64
    for data in records:
        data["prev_hash"] = prev
        body = {k: v for k, v in data.items() if k != "record_hash"}
        data["record_hash"] = sha256_json(body)
        prev = data["record_hash"]
    (tmp_path / "ledger.jsonl").write_text("".join(json.dumps(d, sort_keys=True) + "\n" for d in records))
    result = verify_ledger(tmp_path, KEY)
    assert not result.ok and "not MACed" in (result.error or "")


def test_rewrite_under_another_key_is_reported_as_the_wrong_key(tmp_path: Path) -> None:
    other = Ledger(tmp_path, key=b"x" * 32)
    other.append(LedgerRecord(step="claim", batch_id="b0"))
    result = verify_ledger(tmp_path, KEY)
    assert not result.ok and key_fingerprint(b"x" * 32) in (result.error or "")
    assert "wrong audit key" in (result.error or "")


def test_truncated_ledger_is_caught_by_the_receipts_anchors(tmp_path: Path) -> None:
    """A chain cut short is still a valid chain; the receipts' anchors are not in it any more."""
    _trail(tmp_path)
    lines = _lines(tmp_path)
    (tmp_path / "ledger.jsonl").write_text("".join(lines[:3]))
    assert verify_ledger(tmp_path, KEY).ok  # the shorter chain alone looks fine ...
    problems = check_receipts(Ledger(tmp_path))
    # ... but batch b1's receipt record and batch b2's records are gone: their receipts are unreferenced.
    assert any("b2" in p and "not referenced" in p for p in problems), problems
    assert any("b1" in p and "not referenced" in p for p in problems), problems


def test_truncation_before_an_anchor_is_named_as_removed_records(tmp_path: Path) -> None:
    ledger = _trail(tmp_path, batches=1)
    # A receipt referenced by the last record, anchored at record 5 of a chain cut back to 2 records.
    ref = ReceiptStore(ledger).write(_receipt("req-late", "b9", Anchor(5, "hmac-sha256:" + "0" * 64)))
    ledger.append(LedgerRecord(step="receipts", batch_id="b9", artifacts={"r": ref}))
    problems = check_receipts(Ledger(tmp_path))
    assert any("anchors ledger record 5" in p and "removed from its end" in p for p in problems), problems


def test_emptied_or_deleted_ledger_is_detected(tmp_path: Path) -> None:
    _trail(tmp_path)
    (tmp_path / "ledger.jsonl").write_text("")
    assert verify_ledger(tmp_path, KEY).ok  # zero records chain trivially ...
    assert len(check_receipts(Ledger(tmp_path))) == 3  # ... but every receipt is now unvouched for
    (tmp_path / "ledger.jsonl").unlink()
    result = verify_ledger(tmp_path, KEY)
    assert not result.ok and "no ledger" in (result.error or "")


def test_reordered_records_are_detected(tmp_path: Path) -> None:
    _trail(tmp_path)
    lines = _lines(tmp_path)
    lines[2], lines[3] = lines[3], lines[2]
    (tmp_path / "ledger.jsonl").write_text("".join(lines))
    result = verify_ledger(tmp_path, KEY)
    assert not result.ok and "removed or reordered" in (result.error or "")


def test_forged_receipt_is_named_and_never_found(tmp_path: Path) -> None:
    ledger = _trail(tmp_path)
    forged = _receipt("req-forged", "b1", ledger.head())
    path = tmp_path / "receipts" / "b1" / f"{forged.request_hash.split(':')[1][:32]}.json"
    path.write_bytes(forged.to_json())
    problems = check_receipts(Ledger(tmp_path))
    assert problems == [
        f"receipt receipts/b1/{path.name} is not referenced by any ledger record (forged or stray)"
    ]
    assert ReceiptStore(Ledger(tmp_path)).find(forged.request_hash) == []
    assert len(ReceiptStore(Ledger(tmp_path)).find(HASHER.hash("req-1"))) == 1


def test_altered_receipt_is_never_found(tmp_path: Path) -> None:
    _trail(tmp_path)
    hashed = HASHER.hash("req-1")
    path = tmp_path / "receipts" / "b1" / f"{hashed.split(':')[1][:32]}.json"
    data = json.loads(path.read_text())
    data["model_version"] = "99"
    path.write_text(json.dumps(data))
    assert ReceiptStore(Ledger(tmp_path)).find(hashed) == []
    assert not verify_ledger(tmp_path, KEY).ok


def test_torn_last_line_is_reported_then_repaired_and_recorded(tmp_path: Path) -> None:
    ledger = _trail(tmp_path, batches=1)
    with open(tmp_path / "ledger.jsonl", "ab") as fh:
        fh.write(b'{"step": "unlearn", "batch_id": "b1", "par')  # a crash mid-write
    result = verify_ledger(tmp_path, KEY)
    assert not result.ok and "torn" in (result.error or "")
    assert len(ledger.records()) == 2  # readers skip the torn tail
    ledger.append(LedgerRecord(step="claim", batch_id="b2"))
    steps = [r.step for r in ledger.records()]
    assert steps == ["claim", "receipts", REPAIR_STEP, "claim"]
    repair = ledger.records()[2]
    assert repair.params["torn_bytes"] == 42 and "unlearn" not in json.dumps(repair.params)
    assert verify_ledger(tmp_path, KEY).ok


def test_append_without_the_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AuditKeyError, match="needs the audit key"):
        Ledger(tmp_path).append(LedgerRecord(step="claim", batch_id="b0"))
    assert not (tmp_path / "ledger.jsonl").exists()


# ---------------------------------------------------------------------------------------------- the key
def test_read_commands_never_create_a_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HAMU_AUDIT_KEY", raising=False)
    with pytest.raises(AuditKeyError, match="Restore the key from its backup"):
        load_key(tmp_path)
    assert not (tmp_path / "secrets").exists()


def test_a_lost_key_is_not_silently_replaced_once_the_trail_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HAMU_AUDIT_KEY", raising=False)
    ledger_file = tmp_path / "audit" / "ledger.jsonl"
    key = load_or_create_key(tmp_path, ledger=ledger_file)  # first run: created
    Ledger(tmp_path / "audit", key=key).append(LedgerRecord(step="claim", batch_id="b0"))
    (tmp_path / "secrets" / "audit.key").unlink()
    with pytest.raises(AuditKeyError, match="no audit key"):
        load_or_create_key(tmp_path, ledger=ledger_file)
    assert not (tmp_path / "secrets" / "audit.key").exists()


def test_created_key_is_private_and_fingerprinted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HAMU_AUDIT_KEY", raising=False)
    key = create_key(tmp_path)
    path = tmp_path / "secrets" / "audit.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_key(tmp_path) == key
    assert [p.name for p in path.parent.iterdir()] == ["audit.key"]  # no temporary file left behind
    record = Ledger(tmp_path, key=key).append(LedgerRecord(step="claim", batch_id="b0"))
    assert record.key_id == key_fingerprint(key) != key_fingerprint(os.urandom(32))
    assert key.hex() not in (tmp_path / "ledger.jsonl").read_text()


def _create(home: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    out.put(create_key(Path(home)).hex())


def test_racing_first_runs_end_with_one_key(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [ctx.Process(target=_create, args=(str(tmp_path), out)) for _ in range(4)]
    for p in procs:
        p.start()
    keys = {out.get(timeout=30) for _ in procs}
    for p in procs:
        p.join()
    assert keys == {(tmp_path / "secrets" / "audit.key").read_text()}


# -------------------------------------------------------------------------- manifests against the ledger
@pytest.fixture()
def registry(mlflow_store: Path) -> Path:
    """The private MLflow store with an experiment whose artifacts stay under it."""
    import mlflow

    experiment = mlflow.create_experiment("trail", artifact_location=(mlflow_store / "artifacts").as_uri())
    mlflow.set_experiment(experiment_id=experiment)
    return mlflow_store


def _register(root: Path, ledger: Ledger, erased: list[str], batch: str) -> tuple[str, Path]:
    """A version registered as the pipeline does: checkpoint + manifest artifacts, ledger record, anchor."""
    import mlflow
    import torch
    from mlflow import MlflowClient
    from safetensors.torch import save_file

    from hamu.governance.audit import ANCHOR_TAG
    from hamu.governance.lineage import ErasureManifest
    from hamu.models.checkpoint import tensors_digest
    from hamu_pipeline.tasks.lineage import MANIFEST_FILE

    folder = root / f"ckpt-{batch}"
    folder.mkdir()
    weights = {"w": torch.arange(4, dtype=torch.float32)}
    save_file(weights, str(folder / "model.safetensors"))
    manifest = ErasureManifest(frozenset(HASHER.hash(r) for r in erased))
    (folder / MANIFEST_FILE).write_bytes(manifest.to_json())
    client = MlflowClient()
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(folder), artifact_path="checkpoint")
    head = ledger.head()
    version = client.create_model_version(
        "m",
        source=run.info.artifact_uri,
        run_id=run.info.run_id,
        tags={"batch_id": batch, "batch_status": "completed", ANCHOR_TAG: head.to_tag() if head else ""},
    )
    ledger.append(
        LedgerRecord(
            step="register",
            batch_id=batch,
            outputs={
                "model_version": str(version.version),
                "weights": tensors_digest(weights),
                "erasures": manifest.digest(),
            },
        )
    )
    artifact = Path(run.info.artifact_uri.removeprefix("file://")) / "checkpoint"
    return str(version.version), artifact


def test_swapped_erasure_manifest_is_refused_and_named(registry: Path) -> None:
    """A manifest pasted into an old version's checkpoint must not let a rollback pass its coverage gate."""
    from mlflow import MlflowClient

    from hamu_pipeline.tasks.promotion import removed_by
    from hamu_pipeline.tasks.trail import ManifestMismatch, cross_check, verified_manifest

    client = MlflowClient()
    client.create_registered_model("m")
    ledger = Ledger(registry / "audit", key=KEY)
    ledger.append(LedgerRecord(step="claim", batch_id="b0"))
    old, old_folder = _register(registry, ledger, [], "b0")
    _, new_folder = _register(registry, ledger, ["rec-1"], "b1")
    records = ledger.records()
    version = client.get_model_version("m", old)
    assert len(verified_manifest(version, records)) == 0
    assert cross_check(registry / "audit", HASHER, []) == []

    (old_folder / "erasures.json").write_bytes((new_folder / "erasures.json").read_bytes())
    with pytest.raises(ManifestMismatch, match="manifest was replaced"):
        removed_by(version, {"rec-1"}, HASHER, records)
    problems = cross_check(registry / "audit", HASHER, [])
    assert any(f"version m/{old}" in p and "replaced" in p for p in problems), problems


def test_cross_check_names_versions_aliases_and_weights_the_ledger_does_not_vouch_for(registry: Path) -> None:
    from mlflow import MlflowClient
    from safetensors.torch import save_file

    from hamu_pipeline.tasks.trail import cross_check

    client = MlflowClient()
    client.create_registered_model("m")
    ledger = Ledger(registry / "audit", key=KEY)
    ledger.append(LedgerRecord(step="claim", batch_id="b0"))
    version, folder = _register(registry, ledger, [], "b0")
    # champion set without any ledger record moving it
    client.set_registered_model_alias("m", "champion", version)
    problems = cross_check(registry / "audit", HASHER, [])
    assert any("no ledger record put it there" in p for p in problems), problems
    ledger.append(LedgerRecord(step="promote", batch_id="b0", outputs={"model": "m", "champion": version}))
    assert cross_check(registry / "audit", HASHER, []) == []
    # weights swapped in the artifact store
    import torch

    save_file({"w": torch.zeros(4)}, str(folder / "model.safetensors"))
    problems = cross_check(registry / "audit", HASHER, [])
    assert any("weights differ" in p for p in problems), problems
    # a ledger cut back to before the version's anchor
    lines = (registry / "audit" / "ledger.jsonl").read_text().splitlines(keepends=True)
    (registry / "audit" / "ledger.jsonl").write_text(lines[0])
    problems = cross_check(registry / "audit", HASHER, [])
    assert any("has no registering ledger record" in p for p in problems), problems


# ------------------------------------------------------------------ review findings: each must stay fixed
def test_a_last_record_without_its_newline_is_completed_not_glued_to(tmp_path: Path) -> None:
    ledger = _trail(tmp_path, batches=1)
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(path.read_bytes().rstrip(b"\n"))  # a crash between the record and its newline
    ledger.append(LedgerRecord(step="claim", batch_id="b2"))
    assert [r.step for r in ledger.records()] == ["claim", "receipts", "claim"]
    assert verify_ledger(tmp_path, KEY).ok


def test_appending_under_another_key_or_onto_a_forged_line_is_refused(tmp_path: Path) -> None:
    _trail(tmp_path, batches=1)
    before = (tmp_path / "ledger.jsonl").read_bytes()
    with pytest.raises(AuditKeyError, match="wrong audit key"):
        Ledger(tmp_path, key=b"x" * 32).append(LedgerRecord(step="claim", batch_id="b2"))
    assert (tmp_path / "ledger.jsonl").read_bytes() == before
    last = json.loads(before.splitlines()[-1])
    last["decision"] = "forged"  # a key-less edit of the last line keeps its key_id but not its MAC
    (tmp_path / "ledger.jsonl").write_bytes(
        b"\n".join([*before.splitlines()[:-1], json.dumps(last).encode()]) + b"\n"
    )
    with pytest.raises(AuditKeyError, match="does not carry a valid MAC"):
        Ledger(tmp_path, key=KEY).append(LedgerRecord(step="claim", batch_id="b2"))


def test_trace_refuses_a_ledger_with_a_line_appended_without_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forged receipt plus one un-MACed line referencing it must not be shown as an erasure receipt."""
    from typer.testing import CliRunner

    from hamu.governance.audit.keys import KEY_ENV
    from hamu_pipeline.flows.cli import app

    home = tmp_path / "home"
    monkeypatch.setenv("HAMU_HOME", str(home))
    monkeypatch.setenv(KEY_ENV, KEY.hex())
    ledger = _trail(home / "audit", batches=1)
    forged = _receipt("req-forged", "evil", None)
    ref = ReceiptStore(ledger).write(forged, stage="served")
    line = LedgerRecord(step="receipts", batch_id="evil", artifacts={"r": ref}, seq=2, record_hash="x")
    with open(home / "audit" / "ledger.jsonl", "a") as fh:
        fh.write(json.dumps(line.__dict__) + "\n")
    result = CliRunner().invoke(app, ["audit", "trace", "req-forged"])
    assert result.exit_code == 1 and "BROKEN" in result.output and "nothing was changed" in result.output


def test_an_abandoned_tag_does_not_exempt_a_served_version(registry: Path) -> None:
    """The batch_status tag lives outside the chain: setting it must not hide swapped champion weights."""
    import torch
    from mlflow import MlflowClient
    from safetensors.torch import save_file

    from hamu_pipeline.tasks.trail import cross_check

    client = MlflowClient()
    client.create_registered_model("m")
    ledger = Ledger(registry / "audit", key=KEY)
    ledger.append(LedgerRecord(step="claim", batch_id="b0"))
    version, folder = _register(registry, ledger, [], "b0")
    ledger.append(LedgerRecord(step="promote", batch_id="b0", outputs={"model": "m", "champion": version}))
    client.set_registered_model_alias("m", "champion", version)
    save_file({"w": torch.zeros(4)}, str(folder / "model.safetensors"))
    client.set_model_version_tag("m", version, "batch_status", "abandoned")
    problems = cross_check(registry / "audit", HASHER, [])
    assert any("weights differ" in p for p in problems), problems


def test_an_unreadable_manifest_is_a_refusal_not_a_traceback(registry: Path) -> None:
    from mlflow import MlflowClient

    from hamu_pipeline.tasks.trail import ManifestMismatch, cross_check, verified_manifest

    client = MlflowClient()
    client.create_registered_model("m")
    ledger = Ledger(registry / "audit", key=KEY)
    ledger.append(LedgerRecord(step="claim", batch_id="b0"))
    version, folder = _register(registry, ledger, [], "b0")
    (folder / "erasures.json").write_text("{not json")
    with pytest.raises(ManifestMismatch, match="cannot be read"):
        verified_manifest(client.get_model_version("m", version), ledger.records())
    assert any("cannot be read" in p for p in cross_check(registry / "audit", HASHER, []))


def test_readers_wait_for_an_append_in_progress(tmp_path: Path) -> None:
    """A verify running during an append must not see a half-written line: readers take a shared lock."""
    import fcntl
    import threading

    _trail(tmp_path, batches=1)
    got: list[int] = []
    line = json.dumps(LedgerRecord(step="half-written", batch_id="b9").__dict__).encode() + b"\n"
    with open(tmp_path / "ledger.jsonl", "ab") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # an appender mid-write
        fh.write(line[:20])
        fh.flush()
        reader = threading.Thread(target=lambda: got.append(len(Ledger(tmp_path).records())))
        reader.start()
        reader.join(timeout=0.5)
        assert reader.is_alive() and got == []  # blocked behind the appender, not reading the torn line
        fh.write(line[20:])
        fh.flush()
        fcntl.flock(fh, fcntl.LOCK_UN)
    reader.join()
    assert got == [3]


def test_an_original_a_dead_first_run_never_recorded_is_abandoned_and_recorded(registry: Path) -> None:
    """A first run killed between registering the original and its ledger record left a version that
    verification would report forever; the next first run abandons it, with a record."""
    from mlflow import MlflowClient

    from hamu_pipeline.tasks.env import StatePaths
    from hamu_pipeline.tasks.models import _abandon_unrecorded_originals
    from hamu_pipeline.tasks.trail import cross_check

    client = MlflowClient()
    client.create_registered_model("m")
    ledger = Ledger(registry / "audit", key=KEY)
    ledger.append(LedgerRecord(step="claim", batch_id="b0"))
    orphan = client.create_model_version("m", source=(registry / "src").as_uri(), tags={"role": "original"})
    assert any("no registering ledger record" in p for p in cross_check(registry / "audit", HASHER, []))
    os.environ["HAMU_AUDIT_KEY"] = KEY.hex()
    try:
        _abandon_unrecorded_originals(StatePaths(registry), "m")
    finally:
        del os.environ["HAMU_AUDIT_KEY"]
    assert client.get_model_version("m", orphan.version).tags["batch_status"] == "abandoned"
    assert ledger.records()[-1].step == "abandon-versions"
    assert cross_check(registry / "audit", HASHER, []) == []
