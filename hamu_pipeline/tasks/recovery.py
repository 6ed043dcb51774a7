"""Recovery from batches that died (SIGKILL, power loss) before they finished, run at the start of every
batch.

A batch is dead when its ``flock`` can be taken (see :mod:`hamu_pipeline.tasks.locks`), or when the lease on
its claims
expired in the queue (``RequestQueue.release_expired``; a running batch renews it, see
:mod:`hamu_pipeline.tasks.lease`).
The lease is what makes recovery safe across hosts: a batch running on another host or pod leaves no lock
file in this ``work/``, so its ``flock`` proves nothing here, and its claims are left alone while their
lease is live. For each dead batch:

* its still-claimed requests go back to pending (the next claim picks them up again); a crash does not
  count towards quarantine (``release_batch(failed=False)``): it says nothing about the requests;
* a batch that died after the queue closed its requests (they are ``unlearned`` with its version) is
  rolled forward: its version gets ``batch_status=completed`` and the ``candidate`` alias, and a
  ``completed`` record closes it, as the batch itself would have;
* any other model version it registered before dying is tagged ``batch_status=abandoned`` (never
  promotable);
* its working area (forget rows, per-example scores) is deleted, and the deletion is recorded, exactly as
  a finished batch would have done.

Every action is a ledger record under the dead batch's ID, so the trail explains the gap.

Only what a batch leaves in ``work/`` is recovered: a real folder (not a symlink) or a regular
``<batch>.lock`` file whose name is a valid batch ID. Anything else there (``lost+found`` on a mounted
volume, an editor's backup, a stray file) is skipped with a log line: it is neither released nor deleted.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from mlflow import MlflowClient
from prefect import task
from prefect.cache_policies import NO_CACHE

from hamu.governance.audit import KeyedHasher, Ledger
from hamu.governance.requests import RequestQueue, Status, is_valid_batch_id
from hamu_pipeline.tasks.audit import BatchAudit
from hamu_pipeline.tasks.locks import BatchLock


@dataclass
class RecoveryReport:
    released: dict[str, int] = field(default_factory=dict)
    abandoned_versions: dict[str, list[str]] = field(default_factory=dict)
    deleted_work_areas: list[str] = field(default_factory=list)
    completed: dict[str, str] = field(default_factory=dict)  # batch → version rolled forward

    def __bool__(self) -> bool:
        return bool(self.released or self.abandoned_versions or self.deleted_work_areas or self.completed)


_LOCK_SUFFIX = ".lock"


def _batch_of(entry: os.DirEntry[str]) -> str | None:
    """The batch an entry of ``work/`` belongs to (its working area or lock file), or None for anything else.

    A symlink is never a batch's: following it, recovery would delete whatever it points to.
    """
    try:
        if entry.is_dir(follow_symlinks=False):
            name = entry.name
        elif entry.is_file(follow_symlinks=False) and entry.name.endswith(_LOCK_SUFFIX):
            name = entry.name.removesuffix(_LOCK_SUFFIX)
        else:
            return None
    except OSError:  # vanished or unreadable: not ours to judge
        return None
    return name if is_valid_batch_id(name) else None


def _work_batches(work: Path) -> set[str]:
    """Batches that left a working area or a lock file in ``work/``; every other entry is logged, skipped."""
    if not work.is_dir():
        return set()
    found: set[str] = set()
    with os.scandir(work) as entries:
        for entry in entries:
            batch_id = _batch_of(entry)
            if batch_id is None:
                logging.getLogger(__name__).info("recovery skips %s: not a batch's working area", entry.path)
            else:
                found.add(batch_id)
    return found


def _known_batches(queue: RequestQueue, work: Path, current: str) -> set[str]:
    """Every other batch that left a trace: claimed requests, a working area or a lock file."""
    found = {r.batch_id for r in queue.list(Status.CLAIMED) if r.batch_id} | _work_batches(work)
    found.discard(current)
    return found


def _roll_forward(queue: RequestQueue, audit: BatchAudit) -> str | None:
    """Finish a dead batch that had already closed its requests; returns the version it completed.

    Why forward, not back: once the queue holds the batch's requests as ``unlearned`` with its version,
    every stage before the close (evaluation, registration, receipts) is in the ledger, and only the
    version's ``completed`` tag, the ``candidate`` alias and the ``completed`` record are missing.
    Abandoning the version instead would leave those requests pointing at a model that can never be
    promoted, and never claimed again.
    """
    closed = {r.model_version for r in queue.list(Status.UNLEARNED, batch_id=audit.batch_id)}
    if not closed:
        return None
    client = MlflowClient()
    completed = None
    for mv in client.search_model_versions(f"tags.batch_id = '{audit.batch_id}'"):
        if str(mv.version) not in closed:
            continue
        if (mv.tags or {}).get("batch_status") != "completed":
            client.set_model_version_tag(mv.name, mv.version, "batch_status", "completed")
            current = (client.get_registered_model(mv.name).aliases or {}).get("candidate")
            if current is None or int(current) < int(mv.version):  # never move it back to an older one
                client.set_registered_model_alias(mv.name, "candidate", mv.version)
        completed = str(mv.version)
    steps = {r.step for r in audit.ledger.records() if r.batch_id == audit.batch_id}
    if completed is not None and "completed" not in steps:
        audit.record(
            "completed",
            decision="candidate",
            reason="completed by recovery: the batch died after closing its requests",
            outputs={"model_version": completed},
        )
    return completed


def closed_but_unfinished(
    queue: RequestQueue, audit_root: Path, current: str, now: datetime | None = None
) -> list[str]:
    """Batches the queue closed (their requests ``unlearned``) more than one lease ago that the ledger
    never saw complete: they died between closing and completing, on this host or another.

    Why by age: after the close a batch holds no claim, so neither a lease nor a lock file shows whether
    it still runs; a live one completes within seconds of closing, far inside one lease.
    """
    now = now or datetime.now(UTC)
    closed_at: dict[str, datetime] = {}
    for request in queue.list(Status.UNLEARNED):
        if request.batch_id and request.batch_id != current:
            when = request.updated_at if request.updated_at.tzinfo else request.updated_at.replace(tzinfo=UTC)
            closed_at[request.batch_id] = max(closed_at.get(request.batch_id, when), when)
    if not closed_at:
        return []
    done = {r.batch_id for r in Ledger(audit_root).records() if r.step == "completed"}
    return sorted(b for b, when in closed_at.items() if b not in done and when < now - queue.lease)


def _abandon_versions(batch_id: str) -> list[str]:
    """Tag the dead batch's versions (of whichever registered model) ``abandoned``; returns name/version."""
    client = MlflowClient()
    tagged = []
    for mv in client.search_model_versions(f"tags.batch_id = '{batch_id}'"):
        if (mv.tags or {}).get("batch_status") != "completed":
            client.set_model_version_tag(mv.name, mv.version, "batch_status", "abandoned")
            tagged.append(f"{mv.name}/{mv.version}")
    return tagged


def _roll_forward_into(report: RecoveryReport, queue: RequestQueue, audit: BatchAudit) -> None:
    """Roll a dead batch forward (see :func:`_roll_forward`) and note the version it completed."""
    completed = _roll_forward(queue, audit)
    if completed is not None:
        report.completed[audit.batch_id] = completed


@task(name="recover-dead-batches", cache_policy=NO_CACHE)
def recover_dead_batches(
    queue: RequestQueue, work: Path, audit_root: Path, hasher: KeyedHasher, current: str
) -> RecoveryReport:
    report = RecoveryReport()
    expired = queue.release_expired()  # any host's batch that stopped renewing its lease
    for batch_id, released in expired.items():
        audit = BatchAudit(audit_root, hasher, batch_id)
        _roll_forward_into(report, queue, audit)
        abandoned = _abandon_versions(batch_id)
        report.released[batch_id] = released
        report.abandoned_versions[batch_id] = abandoned
        audit.record(
            "recover",
            decision="released",
            reason="the lease on its claims expired: its process died or stopped renewing it, on any host",
            params={"released_requests": released, "abandoned_versions": abandoned},
        )
    for batch_id in closed_but_unfinished(queue, audit_root, current):  # died after closing, any host
        _roll_forward_into(report, queue, BatchAudit(audit_root, hasher, batch_id))
    # Claims still under a lease (claims made by code older than leases carry none: lock files only).
    live = {r.batch_id for r in queue.list(Status.CLAIMED) if r.batch_id and r.lease_expires_at is not None}
    for batch_id in sorted(_known_batches(queue, work, current)):
        if batch_id in live and not (work / f"{batch_id}{_LOCK_SUFFIX}").exists():
            continue  # claimed under a live lease, but never locked here: it runs on another host
        lock = BatchLock(work, batch_id)
        if not lock.acquire():  # a live batch holds it: leave it alone
            continue
        try:
            audit = BatchAudit(audit_root, hasher, batch_id)
            _roll_forward_into(report, queue, audit)
            released = queue.release_batch(batch_id, failed=False)
            abandoned = [] if batch_id in expired else _abandon_versions(batch_id)
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
            if folder.is_dir() and not folder.is_symlink():
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
