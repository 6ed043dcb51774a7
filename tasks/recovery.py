"""Recovery from batches that died (SIGKILL, power loss) before they finished, run at the start of every
batch.

A batch is dead when its ``flock`` can be taken (see :mod:`tasks.locks`). For each dead batch:

* its still-claimed requests go back to pending (the next claim picks them up again);
* a model version it registered before dying is tagged ``batch_status=abandoned`` (never promotable);
* its working area (forget rows, per-example scores) is deleted, and the deletion is recorded, exactly as
  a finished batch would have done.

Every action is a ledger record under the dead batch's ID, so the trail explains the gap.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient
from prefect import task
from prefect.cache_policies import NO_CACHE

from hamu.audit import KeyedHasher
from hamu.requests import RequestQueue, Status
from tasks.audit import BatchAudit
from tasks.locks import BatchLock


@dataclass
class RecoveryReport:
    released: dict[str, int] = field(default_factory=dict)
    abandoned_versions: dict[str, list[str]] = field(default_factory=dict)
    deleted_work_areas: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.released or self.abandoned_versions or self.deleted_work_areas)


def _known_batches(queue: RequestQueue, work: Path, current: str) -> set[str]:
    """Every other batch that left a trace: claimed requests, a working area or a lock file."""
    found = {r.batch_id for r in queue.list(Status.CLAIMED) if r.batch_id}
    if work.exists():
        found |= {p.name for p in work.iterdir() if p.is_dir()} | {p.stem for p in work.glob("*.lock")}
    found.discard(current)
    return found


def _abandon_versions(batch_id: str) -> list[str]:
    """Tag the dead batch's versions (of whichever registered model) ``abandoned``; returns name/version."""
    client = MlflowClient()
    tagged = []
    for mv in client.search_model_versions(f"tags.batch_id = '{batch_id}'"):
        if (mv.tags or {}).get("batch_status") != "completed":
            client.set_model_version_tag(mv.name, mv.version, "batch_status", "abandoned")
            tagged.append(f"{mv.name}/{mv.version}")
    return tagged


@task(name="recover-dead-batches", cache_policy=NO_CACHE)
def recover_dead_batches(
    queue: RequestQueue, work: Path, audit_root: Path, hasher: KeyedHasher, current: str
) -> RecoveryReport:
    report = RecoveryReport()
    for batch_id in sorted(_known_batches(queue, work, current)):
        lock = BatchLock(work, batch_id)
        if not lock.acquire():  # a live batch holds it: leave it alone
            continue
        try:
            audit = BatchAudit(audit_root, hasher, batch_id)
            released = queue.release_batch(batch_id)
            abandoned = _abandon_versions(batch_id)
            if released or abandoned:
                report.released[batch_id] = released
                report.abandoned_versions[batch_id] = abandoned
                audit.record(
                    "recover",
                    decision="released",
                    reason="the batch's process died before it finished",
                    params={"released_requests": released, "abandoned_versions": abandoned},
                )
            folder = work / batch_id
            if folder.exists():
                audit.delete_work_area(folder)
                report.deleted_work_areas.append(batch_id)
        finally:
            lock.release()
    return report


def clean_up_failed_batch(audit: BatchAudit, folder: Path) -> None:
    """After an exception (not a crash): abandon the batch's versions and delete its working area now.

    Best effort, each step on its own: the forget-derived files go even when the registry is down, and an
    error is logged rather than allowed to hide the exception that ended the batch (the next run's
    recovery repeats whatever did not happen).
    """
    log = logging.getLogger(__name__)
    try:
        abandoned = _abandon_versions(audit.batch_id)
        if abandoned:
            audit.record("abandon-versions", decision="abandoned", params={"versions": abandoned})
    except Exception:
        log.exception("abandoning the versions of failed batch %s is left to recovery", audit.batch_id)
    try:
        if folder.exists():
            audit.delete_work_area(folder)
    except Exception:
        log.exception("deleting the working area of failed batch %s is left to recovery", audit.batch_id)
