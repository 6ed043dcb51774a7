"""Erasure receipts: one per request, keyed by the request's keyed hash, never by the raw ID."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from hamu.audit.ledger import Ledger


@dataclass(frozen=True)
class ErasureReceipt:
    """What a reviewer gets for one request: verdict, batch, evidence summary, and the model version that
    no longer carries the record (empty when the request was rejected or the batch was not promoted)."""

    request_hash: str
    record_hash: str
    verdict: str
    reason: str
    batch_id: str
    issued_at: str
    model_name: str = ""
    model_version: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, indent=2, ensure_ascii=False).encode()


class ReceiptStore:
    """Receipts live under ``<audit root>/receipts/<batch>/``; each is referenced by a ledger record."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def write(self, receipt: ErasureReceipt, *, stage: str = "candidate") -> dict[str, str]:
        """Candidate-time receipts keep their historical name; later stages get a prefixed file, so no
        receipt already referenced by the ledger is ever overwritten."""
        name = receipt.request_hash.split(":", 1)[-1][:32]
        file = f"{name}.json" if stage == "candidate" else f"{stage}-{name}.json"
        return self.ledger.add_artifact(
            f"receipt:{name}", f"receipts/{receipt.batch_id}/{file}", receipt.to_json()
        )

    def find(self, request_hash: str) -> list[ErasureReceipt]:
        name = request_hash.split(":", 1)[-1][:32]
        found = []
        paths = (self.ledger.root / "receipts").glob(f"*/*{name}.json")
        for path in sorted(paths, key=lambda p: p.stat().st_mtime_ns):
            found.append(ErasureReceipt(**json.loads(path.read_text(encoding="utf-8"))))
        return found
