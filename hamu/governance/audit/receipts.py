"""Erasure receipts: one per request, keyed by the request's keyed hash, never by the raw ID."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from hamu.governance.audit.ledger import Ledger
from hamu.governance.audit.provenance import sha256_bytes


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
    #: The ledger's chain head when the receipt was issued (:class:`hamu.governance.audit.ledger.Anchor`): a
    #: ledger
    #: cut back to before it no longer holds this anchor, which verification reports.
    ledger_anchor: dict[str, Any] = field(default_factory=dict)

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
        """The request's receipts that a ledger record references with their current digest.

        Why only those: a receipt file anyone could drop into the folder proves nothing; one the chained
        ledger names, byte for byte, does. Unreferenced or altered files are reported by verification.
        """
        name = request_hash.split(":", 1)[-1][:32]
        referenced = referenced_receipts(self.ledger)
        found = []
        for path in (self.ledger.root / "receipts").glob(f"*/*{name}.json"):
            seq, digest = referenced.get(str(path.relative_to(self.ledger.root)), (-1, ""))
            data = path.read_bytes()  # checked and parsed from the same bytes: no swap in between
            if seq >= 0 and digest == sha256_bytes(data):
                found.append((seq, ErasureReceipt(**json.loads(data.decode("utf-8")))))
        return [receipt for _, receipt in sorted(found, key=lambda item: item[0])]


def referenced_receipts(ledger: Ledger) -> dict[str, tuple[int, str]]:
    """Every receipt path the ledger references: the referencing record's seq and the recorded digest."""
    return {
        ref["path"]: (record.seq, ref["sha256"])
        for record in ledger.records()
        for ref in record.artifacts.values()
        if ref["path"].startswith("receipts/")
    }
