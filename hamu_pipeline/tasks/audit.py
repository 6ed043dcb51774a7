"""Audit tasks: append one ledger record per step (hashes, decision, run links), issue erasure receipts,
and delete the batch's working area with a record of the deletion."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect.context import get_run_context

from hamu.governance.audit import ErasureReceipt, KeyedHasher, Ledger, LedgerRecord, ReceiptStore, file_sha256
from hamu.governance.requests import JudgedRequest

_TOKEN = re.compile(r"[^\s'\"`,;()]+")


def redact_ids(text: str, raw_ids: Iterable[str], hasher: KeyedHasher) -> str:
    """Replace every raw request or record ID in ``text`` by the first 16 hex digits of its keyed hash.

    Validation reasons quote IDs ("record also requested by earlier request r-17", "record_id 'x' does not
    match"); receipts and reports must carry only keyed hashes. Tokens are looked up in a set, so the cost
    is linear in the text, not in the number of IDs.
    """
    wanted = {i for i in raw_ids if i}
    for odd in (i for i in wanted if _TOKEN.fullmatch(i) is None):  # IDs with separators: rare, malformed
        text = text.replace(odd, f"<{hasher.hex(odd)[:16]}>")

    def swap(match: re.Match[str]) -> str:
        token = match.group(0)
        return f"<{hasher.hex(token)[:16]}>" if token in wanted else token

    return _TOKEN.sub(swap, text)


def prefect_refs() -> dict[str, str]:
    try:
        ctx = get_run_context()
    except Exception:
        return {}
    refs: dict[str, str] = {}
    flow_run = getattr(ctx, "flow_run", None)
    if flow_run is not None:
        refs["prefect_flow_run_id"] = str(flow_run.id)
    task_run = getattr(ctx, "task_run", None)
    if task_run is not None:
        refs["prefect_task_run_id"] = str(task_run.id)
        task = getattr(ctx, "task", None)
        if task is not None:  # a stage's record names the stage's task run
            refs[f"prefect_task_run:{task.name}"] = str(task_run.id)
        if task_run.flow_run_id is not None:  # inside a task the context carries the task run, not the flow
            refs.setdefault("prefect_flow_run_id", str(task_run.flow_run_id))
    return refs


class BatchAudit:
    """The ledger view of one batch; every call appends one chained record."""

    def __init__(self, root: Path, hasher: KeyedHasher, batch_id: str, mlflow_run_id: str = "") -> None:
        self.ledger = Ledger(root, key=hasher.key())
        self.receipts = ReceiptStore(self.ledger)
        self.hasher = hasher
        self.batch_id = batch_id
        self.mlflow_run_id = mlflow_run_id

    def record(
        self,
        step: str,
        *,
        decision: str = "",
        reason: str = "",
        params: Mapping[str, Any] | None = None,
        inputs: Mapping[str, str] | None = None,
        outputs: Mapping[str, str] | None = None,
        artifacts: Mapping[str, tuple[str, bytes]] | None = None,
    ) -> LedgerRecord:
        refs = prefect_refs()
        if self.mlflow_run_id:
            refs["mlflow_run_id"] = self.mlflow_run_id
        stored = {
            name: self.ledger.add_artifact(name, f"batches/{self.batch_id}/{rel}", data)
            for name, (rel, data) in (artifacts or {}).items()
        }
        return self.ledger.append(
            LedgerRecord(
                step=step,
                batch_id=self.batch_id,
                decision=decision,
                reason=reason,
                params=dict(params or {}),
                inputs=dict(inputs or {}),
                outputs=dict(outputs or {}),
                artifacts=stored,
                refs=refs,
            )
        )

    def issue_receipts(
        self,
        judged: Sequence[JudgedRequest],
        *,
        model_name: str,
        model_version: str,
        evidence: Mapping[str, Any],
        stage: str = "candidate",
    ) -> LedgerRecord:
        """One receipt per request (keyed hashes only); accepted requests name the model version.

        ``stage`` ``candidate``: issued when the batch closes (its model is a candidate, pending
        promotion); ``served``: issued by promotion for requests whose records the champion no longer
        carries. Both receipts are kept, so a reviewer sees when each became true.
        """
        now = datetime.now(UTC).isoformat()
        head = self.ledger.head()
        anchor = head.to_dict() if head else {}
        refs = {}
        raw = {i for r in judged for i in (r.request_id, r.record_id)}
        for request in judged:
            accepted = request.accepted
            receipt = ErasureReceipt(
                request_hash=self.hasher.hash(request.request_id),
                record_hash=self.hasher.hash(request.record_id),
                verdict=request.verdict,
                reason=redact_ids(request.reason, raw, self.hasher),
                batch_id=self.batch_id,
                issued_at=now,
                model_name=model_name if accepted else "",
                model_version=model_version if accepted else "",
                evidence=dict(evidence) if accepted else {},
                ledger_anchor=anchor,
            )
            ref = self.receipts.write(receipt, stage=stage)
            refs[f"receipt:{receipt.request_hash[-16:]}"] = ref
        return self.ledger.append(
            LedgerRecord(
                step="receipts",
                batch_id=self.batch_id,
                decision=f"{len(judged)} receipts",
                reason=stage,
                artifacts=refs,
                refs=prefect_refs(),
            )
        )

    def delete_work_area(self, folder: Path) -> LedgerRecord:
        """Delete the forget rows and per-example scores; record what was deleted (names and hashes)."""
        deleted: dict[str, str] = {}
        if folder.exists():
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                deleted[str(path.relative_to(folder))] = file_sha256(path)
            shutil.rmtree(folder)
        return self.record(
            "delete-work-area",
            decision="deleted",
            reason="forget rows and per-example scores live only in the batch's working area",
            outputs=deleted,
            params={"exists_after": folder.exists()},
        )
