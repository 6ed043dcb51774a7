"""An append-only, hash-chained ledger of pipeline steps (JSON lines).

Each record carries the SHA-256 of the previous record, so changing, removing or reordering any record
breaks every later link. Records reference artifacts (reports, receipts, validation results) by path and
SHA-256; :func:`verify_ledger` re-checks the chain and every referenced file offline and names the first
broken record or file. Appends take an exclusive ``flock`` so concurrent writers serialise.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hamu.audit.provenance import code_version, file_sha256, package_versions, sha256_json

GENESIS = "0" * 64


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

    def body(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("record_hash")
        return data


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    records: int
    error: str | None = None


class Ledger:
    """The ledger file ``<root>/ledger.jsonl``; artifact paths are relative to ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "ledger.jsonl"

    def add_artifact(self, name: str, relative: str, data: bytes) -> dict[str, str]:
        """Write an artifact under the audit root (atomically) and return its reference for a record."""
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        return {"path": relative, "sha256": file_sha256(target)}

    def append(self, record: LedgerRecord) -> LedgerRecord:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                fh.seek(0)
                last = None
                count = 0
                for line in fh:
                    if line.strip():
                        last = line
                        count += 1
                prev = json.loads(last)["record_hash"] if last else GENESIS
                record.seq = count
                record.prev_hash = prev
                record.time = record.time or datetime.now(UTC).isoformat()
                record.code_version = record.code_version or code_version()
                record.packages = record.packages or package_versions()
                record.record_hash = sha256_json(record.body())
                fh.seek(0, os.SEEK_END)
                fh.write(json.dumps(asdict(record), sort_keys=True, ensure_ascii=False) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return record

    def records(self) -> list[LedgerRecord]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                out.append(LedgerRecord(**json.loads(line)))
        return out


def verify_ledger(root: Path) -> VerifyResult:
    """Re-check every record's hash, the chain links, and every referenced artifact's SHA-256."""
    path = root / "ledger.jsonl"
    if not path.exists():
        return VerifyResult(ok=False, records=0, error=f"no ledger at {path}")
    prev = GENESIS
    lines = path.read_bytes().split(b"\n")
    count = 0
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            data = json.loads(raw.decode("utf-8"))
            record = LedgerRecord(**data)
        except (UnicodeDecodeError, json.JSONDecodeError, TypeError) as exc:
            return VerifyResult(False, count, f"record at line {lineno} is unreadable: {exc}")
        if record.seq != count:
            return VerifyResult(
                False, count, f"record at line {lineno} has seq {record.seq}, expected {count}"
            )
        if record.prev_hash != prev:
            return VerifyResult(
                False, count, f"record {record.seq} ({record.step}) does not chain to its predecessor"
            )
        if sha256_json(record.body()) != record.record_hash:
            return VerifyResult(
                False, count, f"record {record.seq} ({record.step}) was modified: hash mismatch"
            )
        for name, ref in record.artifacts.items():
            target = root / ref["path"]
            if not target.exists():
                return VerifyResult(False, count, f"record {record.seq}: artifact {name!r} missing: {target}")
            if file_sha256(target) != ref["sha256"]:
                return VerifyResult(
                    False, count, f"record {record.seq}: artifact {name!r} was modified: {target}"
                )
        prev = record.record_hash
        count += 1
    return VerifyResult(ok=True, records=count)
