"""Recovery only touches what batches leave in ``work/``: ``lost+found``, stray files, symlinks and other
names that are not batch IDs are skipped, neither released nor deleted, and never crash the next batch.

Real queue (SQLite), MLflow store (SQLite) and ledger.
"""

from __future__ import annotations

from pathlib import Path

from hamu.governance.audit import KeyedHasher
from hamu.governance.requests import RequestQueue, Status, default_queue_url

HEADER = "request_id,record_id,reason,received_at"


def _file(path: Path, text: str = "keep me") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_recovery_skips_entries_that_are_not_batches(mlflow_store: Path) -> None:
    from hamu_pipeline.tasks.audit import BatchAudit
    from hamu_pipeline.tasks.locks import BatchLock
    from hamu_pipeline.tasks.recovery import recover_dead_batches

    work = mlflow_store / "work"
    strays = [
        _file(work / "lost+found" / "#1234"),  # fsck's folder on a mounted volume: '+' is no batch ID
        _file(work / "notes.txt"),
        _file(work / "b-file"),  # a batch-like name, but a plain file
        _file(work / "not a batch.lock"),  # a lock-like name, but no batch ID
        _file(work / ".cache" / "x"),
    ]
    target = _file(mlflow_store / "elsewhere" / "precious.bin")
    (work / "b-link").symlink_to(target.parent, target_is_directory=True)  # following it would delete it
    (work / "b-dangling.lock").symlink_to(mlflow_store / "missing")
    dead = _file(work / "b-dead" / "forget.npz", "forget rows")
    _file(work / "b-dead.lock", "")
    live = BatchLock(work, "b-live")
    assert live.acquire()
    _file(work / "b-live" / "scores.npz")

    queue = RequestQueue(default_queue_url(mlflow_store / "home"))
    inbox = _file(mlflow_store / "r.csv", f"{HEADER}\nr-1,rec-1,privacy,2026-01-01T00:00:00Z\n")
    queue.submit_file(inbox)
    assert len(queue.claim_batch("b-dead")) == 1  # the dead batch's claim

    hasher = KeyedHasher(b"k" * 32)
    try:
        report = recover_dead_batches.fn(queue, work, mlflow_store / "audit", hasher, "b-now")
    finally:
        live.release()

    assert report.released == {"b-dead": 1}
    assert report.deleted_work_areas == ["b-dead"]
    assert not dead.parent.exists()
    assert all(p.exists() for p in strays) and target.exists() and (work / "b-link").is_symlink()
    assert (work / "b-dangling.lock").is_symlink()
    assert (work / "b-live" / "scores.npz").exists()  # a live batch is never touched
    assert not (work / "lost+found.lock").exists() and not (work / "b-link.lock").exists()
    (request,) = queue.list()
    assert request.status is Status.PENDING and request.failures == 0  # a crash is not a failure
    batches = {r.batch_id for r in BatchAudit(mlflow_store / "audit", hasher, "b-now").ledger.records()}
    assert batches == {"b-dead"}
    queue.close()


def test_recovery_of_a_missing_or_empty_work_folder_finds_nothing(mlflow_store: Path) -> None:
    from hamu_pipeline.tasks.recovery import recover_dead_batches

    queue = RequestQueue(default_queue_url(mlflow_store / "home"))
    hasher = KeyedHasher(b"k" * 32)
    assert not recover_dead_batches.fn(queue, mlflow_store / "work", mlflow_store / "audit", hasher, "b-now")
    _file(mlflow_store / "work" / "lost+found" / "x")
    assert not recover_dead_batches.fn(queue, mlflow_store / "work", mlflow_store / "audit", hasher, "b-now")
    queue.close()
