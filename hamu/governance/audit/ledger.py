"""An append-only ledger of pipeline steps (JSON lines), chained with a MAC under the audit key.

Each record carries the MAC of the previous record, so changing, removing or reordering any record breaks
every later link. The MAC is HMAC-SHA-256 under the audit key (``record_hash = "hmac-sha256:<hex>"``):
with a plain hash anyone could rewrite the whole file and recompute a valid chain; with the key only its
holder can. Each record names the key's fingerprint, so a wrong key is reported as such.

Truncation (dropping the last records, or emptying the file) leaves a valid shorter chain. It is caught
by anchors kept outside the ledger: every receipt and every registered model version carries the chain
head at its time (:class:`Anchor`), and verification checks that each anchor is still in the chain
(:mod:`hamu.governance.audit.trail`).

Records reference artifacts (reports, receipts, validation results) by path and SHA-256;
:func:`verify_ledger` re-checks the chain and every referenced file offline and names every problem.
Appends take an exclusive ``flock`` so concurrent writers serialise, and are fsynced. A crash can leave a
torn last line; the next append truncates it and records the repair (the torn bytes' length and digest,
never their content).
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hamu.governance.audit.keys import AuditKeyError, key_fingerprint
from hamu.governance.audit.provenance import (
    canonical_json,
    code_version,
    file_sha256,
    package_versions,
    sha256_bytes,
)

GENESIS = "0" * 64
MAC_PREFIX = "hmac-sha256:"
#: The step name of the record that documents a torn tail's truncation.
REPAIR_STEP = "ledger-repair"
#: The model-registry tag under which a registered version keeps the chain head at its registration.
ANCHOR_TAG = "ledger_head"


@dataclass
class LedgerRecord:
    """One step. ``inputs``/``outputs`` map names to SHA-256 digests; ``artifacts`` map names to
    ``{"path": relative path under the audit root, "sha256": ...}``."""

    step: str
    batch_id: str
    decision: str = ""
    reason: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, dict[str, str]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # prefect flow/task run IDs, mlflow run ID, ...
    seq: int = -1
    time: str = ""
    prev_hash: str = ""
    record_hash: str = ""
    code_version: str = ""
    packages: dict[str, str] = field(default_factory=dict)
    key_id: str = ""

    def body(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("record_hash")
        return data


@dataclass(frozen=True)
class Anchor:
    """The chain head at one moment: the last record's sequence number and MAC.

    Kept outside the ledger (in receipts and MLflow version tags) so that a ledger cut back to before the
    anchor no longer contains it.
    """

    seq: int
    record_hash: str

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "record_hash": self.record_hash}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Anchor:
        return cls(seq=int(data["seq"]), record_hash=str(data["record_hash"]))

    def to_tag(self) -> str:
        return f"{self.seq}:{self.record_hash}"

    @classmethod
    def from_tag(cls, tag: str) -> Anchor:
        seq, _, mac = tag.partition(":")
        return cls(seq=int(seq), record_hash=mac)


@dataclass(frozen=True)
class VerifyResult:
    """``chain_ok``: every record parsed, MACed and linked (artifact problems or a torn tail aside), so
    the records can be read and cross-checked."""

    ok: bool
    records: int
    error: str | None = None
    problems: tuple[str, ...] = ()
    chain_ok: bool = True


def read_locked(path: Path) -> bytes:
    """The ledger's bytes under a shared ``flock``: a reader never sees an append half written."""
    with open(path, "rb") as fh:
        fcntl.flock(fh, fcntl.LOCK_SH)
        try:
            return fh.read()
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def record_mac(key: bytes, record: LedgerRecord) -> str:
    return MAC_PREFIX + hmac.new(key, canonical_json(record.body()), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class _Tail:
    """The parsed file: complete records' lines, and a torn last line (bytes) if any."""

    lines: list[bytes]
    torn: bytes
    complete_size: int


def _read_tail(data: bytes) -> _Tail:
    """Split the file into complete lines; an unterminated last line that is not valid JSON is torn."""
    parts = data.split(b"\n")
    last = parts.pop()  # after the final newline: b"" when the file ends cleanly
    torn = b""
    if last.strip():
        try:
            json.loads(last.decode("utf-8"))
            parts.append(last)  # complete JSON, only the newline missing
        except (UnicodeDecodeError, json.JSONDecodeError):
            torn = last
    return _Tail([p for p in parts if p.strip()], torn, len(data) - len(torn))


class Ledger:
    """The ledger file ``<root>/ledger.jsonl``; artifact paths are relative to ``root``.

    Reading needs no key; appending does (``key``), since every record is MACed.
    """

    def __init__(self, root: Path, key: bytes | None = None) -> None:
        self.root = root
        self.path = root / "ledger.jsonl"
        self._key = key

    def __repr__(self) -> str:
        return f"Ledger(root={self.root!r}, key=<{'hidden' if self._key else 'none'}>)"

    def add_artifact(self, name: str, relative: str, data: bytes) -> dict[str, str]:
        """Write an artifact under the audit root (atomically, fsynced) and return its reference."""
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        return {"path": relative, "sha256": sha256_bytes(data)}

    def append(self, record: LedgerRecord) -> LedgerRecord:
        """Chain ``record`` to the last one and write it (after repairing a torn tail, if any)."""
        self._locked_write(record, record.batch_id)
        return record

    def repair(self, batch_id: str = "ledger") -> bool:
        """Repair what a crash mid-append left (a torn last line, a missing newline); True if it did.

        Readers that must trust the chain (promotion, rollback, trace) repair first, so that a crash never
        blocks them until the next batch appends.
        """
        return self._locked_write(None, batch_id)

    def _locked_write(self, record: LedgerRecord | None, batch_id: str) -> bool:
        if self._key is None:
            raise AuditKeyError("writing to the ledger needs the audit key (Ledger(root, key=...))")
        self.root.mkdir(parents=True, exist_ok=True)
        repaired = False
        with open(self.path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                fh.seek(0)
                data = fh.read()
                tail = _read_tail(data)
                last = json.loads(tail.lines[-1]) if tail.lines else None
                count = len(tail.lines)
                self._check_tail_key(last)
                if not tail.torn and data and not data.endswith(b"\n"):
                    fh.write(b"\n")  # a complete last record whose newline a crash cut off
                    fh.flush()
                    os.fsync(fh.fileno())
                    repaired = True
                if tail.torn:
                    fh.truncate(tail.complete_size)
                    repair = self._chain(
                        LedgerRecord(
                            step=REPAIR_STEP,
                            batch_id=batch_id,
                            decision="truncated",
                            reason="a crash left a partly written last line; it was cut off",
                            params={"torn_bytes": len(tail.torn), "torn_sha256": sha256_bytes(tail.torn)},
                        ),
                        count,
                        last["record_hash"] if last else GENESIS,
                    )
                    self._write(fh, repair)
                    last, count, repaired = asdict(repair), count + 1, True
                if record is not None:
                    self._write(fh, self._chain(record, count, last["record_hash"] if last else GENESIS))
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return repaired

    def _check_tail_key(self, last: dict[str, Any] | None) -> None:
        """Refuse to chain under a key other than the one that wrote the last record, or onto a forgery.

        Why: appending under a wrong key (a mistyped ``$HAMU_AUDIT_KEY``) would break the chain for good at
        that record, and chaining onto an un-MACed line would vouch for it.
        """
        assert self._key is not None
        if last is None:
            return
        mine = key_fingerprint(self._key)
        written = last.get("key_id") or "?"
        if written != mine:
            raise AuditKeyError(
                f"wrong audit key: the ledger's last record was written under key {written}, this key is "
                f"{mine}; nothing was appended"
            )
        try:
            valid = hmac.compare_digest(record_mac(self._key, LedgerRecord(**last)), last["record_hash"])
        except (TypeError, KeyError):
            valid = False
        if not valid:
            raise AuditKeyError(
                f"the ledger's last record ({last.get('seq', '?')}) does not carry a valid MAC: it was "
                "altered or forged; run `hamu audit verify`. Nothing was appended"
            )

    def _chain(self, record: LedgerRecord, seq: int, prev: str) -> LedgerRecord:
        assert self._key is not None
        record.seq = seq
        record.prev_hash = prev
        record.time = record.time or datetime.now(UTC).isoformat()
        record.code_version = record.code_version or code_version()
        record.packages = record.packages or package_versions()
        record.key_id = key_fingerprint(self._key)
        record.record_hash = record_mac(self._key, record)
        return record

    @staticmethod
    def _write(fh: Any, record: LedgerRecord) -> None:
        fh.seek(0, os.SEEK_END)
        fh.write((json.dumps(asdict(record), sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())

    def records(self) -> list[LedgerRecord]:
        if not self.path.exists():
            return []
        return [LedgerRecord(**json.loads(line)) for line in _read_tail(read_locked(self.path)).lines]

    def head(self) -> Anchor | None:
        """The current chain head (None for an empty ledger)."""
        records = self.records()
        return Anchor(records[-1].seq, records[-1].record_hash) if records else None


def verify_ledger(root: Path, key: bytes, *, artifacts: bool = True) -> VerifyResult:
    """Re-check every record's MAC, the chain links and (``artifacts``) every referenced file; name every
    problem.

    Chain problems stop the walk at the first broken record (later links are meaningless after it);
    artifact problems are collected for every record.
    """
    path = root / "ledger.jsonl"
    if not path.exists():
        return _result(0, [f"no ledger at {path}"])
    expected_key = key_fingerprint(key)
    tail = _read_tail(read_locked(path))
    problems: list[str] = []
    prev = GENESIS
    count = 0
    chain_ok = True
    for raw in tail.lines:
        problem, record = _check_record(raw, count, prev, key, expected_key)
        if problem:
            problems.append(problem)
            chain_ok = False
            break
        assert record is not None
        for name, ref in record.artifacts.items() if artifacts else ():
            target = root / ref["path"]
            if not target.exists():
                problems.append(f"record {record.seq}: artifact {name!r} missing: {target}")
            elif file_sha256(target) != ref["sha256"]:
                problems.append(f"record {record.seq}: artifact {name!r} was modified: {target}")
        prev = record.record_hash
        count += 1
    if tail.torn:
        problems.append(
            f"the last line is torn ({len(tail.torn)} bytes, a crash mid-append); the next append "
            "truncates it and records the repair"
        )
    return _result(count, problems, chain_ok=chain_ok)


def _check_record(
    raw: bytes, seq: int, prev: str, key: bytes, expected_key: str
) -> tuple[str | None, LedgerRecord | None]:
    try:
        record = LedgerRecord(**json.loads(raw.decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError) as exc:
        return f"record {seq} is unreadable: {exc}", None
    where = f"record {record.seq} ({record.step})"
    if record.seq != seq:
        return f"record at position {seq} has seq {record.seq}: a record was removed or reordered", None
    if not record.record_hash.startswith(MAC_PREFIX):
        return f"{where} is not MACed under the audit key (an unkeyed ledger cannot be trusted)", None
    if record.key_id != expected_key:
        return (
            f"{where} was written under key {record.key_id or '?'}, not this key ({expected_key}): "
            "wrong audit key, or the record was forged",
            None,
        )
    if record.prev_hash != prev:
        return f"{where} does not chain to its predecessor", None
    if not hmac.compare_digest(record_mac(key, record), record.record_hash):
        return f"{where} was modified: its MAC does not match", None
    return None, record


def _result(count: int, problems: list[str], *, chain_ok: bool = False) -> VerifyResult:
    return VerifyResult(
        ok=not problems,
        records=count,
        error=problems[0] if problems else None,
        problems=tuple(problems),
        chain_ok=chain_ok,
    )
