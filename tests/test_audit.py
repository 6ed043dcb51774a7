"""The audit ledger, keyed hashes and receipts: chain integrity and tamper detection."""

from __future__ import annotations

import itertools
import os
import stat
from pathlib import Path

import pytest

from hamu.governance.audit import (
    ErasureReceipt,
    KeyedHasher,
    Ledger,
    LedgerRecord,
    ReceiptStore,
    load_or_create_key,
    verify_ledger,
)
from hamu.governance.audit.keys import AuditKeyError

KEY = b"k" * 32


def _ledger_with_records(root: Path, n: int = 4) -> Ledger:
    ledger = Ledger(root, key=KEY)
    for i in range(n):
        art = ledger.add_artifact(f"report{i}", f"reports/r{i}.json", f'{{"step": {i}}}'.encode())
        ledger.append(
            LedgerRecord(
                step=f"step{i}",
                batch_id="b1",
                decision="ok",
                inputs={"x": "a" * 64},
                artifacts={f"report{i}": art},
                code_version="test",
                packages={"torch": "x"},
            )
        )
    return ledger


def test_chain_verifies_and_links(tmp_path: Path) -> None:
    ledger = _ledger_with_records(tmp_path)
    result = verify_ledger(tmp_path, KEY)
    assert result.ok and result.records == 4
    records = ledger.records()
    assert [r.seq for r in records] == [0, 1, 2, 3]
    assert all(b.prev_hash == a.record_hash for a, b in itertools.pairwise(records))


def test_flipping_any_byte_of_any_record_is_detected(tmp_path: Path) -> None:
    _ledger_with_records(tmp_path, n=3)
    path = tmp_path / "ledger.jsonl"
    original = path.read_bytes()
    # Flip bytes spread over the whole file (every record), skipping newline separators.
    positions = [i for i in range(0, len(original), max(1, len(original) // 60)) if original[i] != ord("\n")]
    for pos in positions:
        data = bytearray(original)
        data[pos] ^= 0x01
        path.write_bytes(bytes(data))
        result = verify_ledger(tmp_path, KEY)
        assert not result.ok, f"flip at byte {pos} went unnoticed"
        assert "record" in (result.error or "")
    path.write_bytes(original)
    assert verify_ledger(tmp_path, KEY).ok


def test_modified_or_missing_artifact_is_named(tmp_path: Path) -> None:
    _ledger_with_records(tmp_path, n=3)
    target = tmp_path / "reports" / "r1.json"
    data = bytearray(target.read_bytes())
    data[0] ^= 0x01
    target.write_bytes(bytes(data))
    result = verify_ledger(tmp_path, KEY)
    assert not result.ok and "report1" in (result.error or "") and "r1.json" in (result.error or "")
    target.unlink()
    result = verify_ledger(tmp_path, KEY)
    assert not result.ok and "missing" in (result.error or "")


def test_removed_record_breaks_the_chain(tmp_path: Path) -> None:
    _ledger_with_records(tmp_path, n=4)
    path = tmp_path / "ledger.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:1] + lines[2:]))
    result = verify_ledger(tmp_path, KEY)
    assert not result.ok and "seq" in (result.error or "")


def test_keyed_hash_is_keyed_and_stable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HAMU_AUDIT_KEY", raising=False)
    key = load_or_create_key(tmp_path)
    key_file = tmp_path / "secrets" / "audit.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_or_create_key(tmp_path) == key  # reused, not regenerated
    h1, h2 = KeyedHasher(key), KeyedHasher(os.urandom(32))
    assert h1.hash("fmnist-train-000123") == h1.hash("fmnist-train-000123")
    assert h1.hash("fmnist-train-000123") != h2.hash("fmnist-train-000123")
    assert "000123" not in h1.hash("fmnist-train-000123")
    assert key.hex() not in repr(h1)


def test_key_from_env_and_bad_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAMU_AUDIT_KEY", "ab" * 32)
    assert load_or_create_key(tmp_path) == bytes.fromhex("ab" * 32)
    assert not (tmp_path / "secrets").exists()
    monkeypatch.setenv("HAMU_AUDIT_KEY", "not-hex")
    with pytest.raises(AuditKeyError, match="hex"):
        load_or_create_key(tmp_path)
    monkeypatch.delenv("HAMU_AUDIT_KEY")
    load_or_create_key(tmp_path)
    os.chmod(tmp_path / "secrets" / "audit.key", 0o644)
    with pytest.raises(AuditKeyError, match="chmod 600"):
        load_or_create_key(tmp_path)


def test_receipts_are_found_by_keyed_hash(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, key=KEY)
    store = ReceiptStore(ledger)
    hasher = KeyedHasher(b"k" * 32)
    receipt = ErasureReceipt(
        request_hash=hasher.hash("req-1"),
        record_hash=hasher.hash("fmnist-train-000001"),
        verdict="accepted",
        reason="",
        batch_id="b7",
        issued_at="2026-01-01T00:00:00+00:00",
        model_version="3",
    )
    ref = store.write(receipt)
    ledger.append(LedgerRecord(step="receipts", batch_id="b7", artifacts={"r": ref}))
    assert store.find(hasher.hash("req-1")) == [receipt]
    assert store.find(hasher.hash("req-2")) == []
    text = (tmp_path / ref["path"]).read_text()
    assert "req-1" not in text and "fmnist-train-000001" not in text
    assert verify_ledger(tmp_path, KEY).ok


def test_redact_ids_replaces_every_raw_id_by_its_keyed_hash() -> None:
    """Validation reasons quote IDs; receipts and reports must not."""
    from hamu.governance.audit import KeyedHasher
    from hamu_pipeline.tasks.audit import redact_ids

    hasher = KeyedHasher(b"r" * 32)
    ids = ["req-001", "digits-train-000007", "bad id with spaces"]
    texts = [
        "record also requested by earlier request req-001 in this batch",
        "record_id 'digits-train-000007' does not match ^[a-z]+$",
        "request_id 'bad id with spaces' does not match",
        "req-0010 is a different ID and stays",
    ]
    out = [redact_ids(t, ids, hasher) for t in texts]
    for text in out[:3]:
        assert not any(i in text for i in ids), text
    assert f"<{hasher.hash('req-001').split(':', 1)[1][:16]}>" in out[0]
    assert out[3] == texts[3]


def test_fault_spec_must_name_a_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    from hamu_pipeline.tasks.faults import STAGES, check_fault_spec, maybe_fault

    monkeypatch.setenv("HAMU_FAULT", "after:evaluat")
    with pytest.raises(ValueError, match="not after:<stage>"):
        check_fault_spec()
    monkeypatch.setenv("HAMU_FAULT", f"after:{STAGES[0]}")
    check_fault_spec()
    maybe_fault(STAGES[1])  # another stage: no fault, the test process lives on
    with pytest.raises(ValueError, match="unknown fault stage"):
        maybe_fault("nonsense")
