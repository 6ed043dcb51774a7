"""Cross-checks between the ledger and what lives outside it: receipts and chain-head anchors.

The keyed chain (:mod:`hamu.governance.audit.ledger`) makes rewriting records impossible without the key, but
a
valid chain can still be *cut short*, and files next to it can be added. These checks close both gaps
with facts the ledger cannot rewrite on its own:

* every receipt file must be referenced by a ledger record with its current digest (a forged or
  left-over receipt is named);
* every anchor (the chain head stored in a receipt, or in a registered model version's tags) must still
  be in the chain with the same MAC (a truncated or re-written ledger is named).
"""

from __future__ import annotations

import json
from pathlib import Path

from hamu.governance.audit.ledger import Anchor, Ledger, LedgerRecord
from hamu.governance.audit.provenance import file_sha256
from hamu.governance.audit.receipts import referenced_receipts


def anchor_problem(records: list[LedgerRecord], anchor: Anchor, holder: str) -> str | None:
    """Why ``anchor`` (held by ``holder``) is not in the chain ``records``, or None when it is."""
    if anchor.seq >= len(records):
        return (
            f"{holder} anchors ledger record {anchor.seq}, but the ledger ends at record "
            f"{len(records) - 1}: records were removed from its end"
        )
    if records[anchor.seq].record_hash != anchor.record_hash:
        return f"{holder} anchors ledger record {anchor.seq} with a different MAC: the ledger was rewritten"
    return None


def check_receipts(ledger: Ledger) -> list[str]:
    """Problems with the receipt files: unreferenced or altered files, and anchors missing from the chain."""
    records = ledger.records()
    referenced = referenced_receipts(ledger)
    problems: list[str] = []
    folder = ledger.root / "receipts"
    files = sorted(folder.glob("*/*.json")) if folder.exists() else []
    for path in files:
        relative = str(path.relative_to(ledger.root))
        if relative not in referenced:
            problems.append(f"receipt {relative} is not referenced by any ledger record (forged or stray)")
            continue
        seq, digest = referenced[relative]
        if file_sha256(path) != digest:
            problems.append(f"receipt {relative} differs from the digest ledger record {seq} recorded")
            continue
        problem = _receipt_anchor_problem(records, path, relative)
        if problem:
            problems.append(problem)
    return problems


def _receipt_anchor_problem(records: list[LedgerRecord], path: Path, relative: str) -> str | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"receipt {relative} is unreadable: {exc}"
    anchor = data.get("ledger_anchor") or {}
    if not anchor:
        return None  # issued into an empty ledger: nothing to anchor to
    try:
        parsed = Anchor.from_dict(anchor)
    except (KeyError, TypeError, ValueError):
        return f"receipt {relative} has a malformed ledger anchor"
    return anchor_problem(records, parsed, f"receipt {relative}")
