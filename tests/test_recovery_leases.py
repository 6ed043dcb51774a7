"""Recovery across hosts: a batch running on another host (or a pod with its own ``work/``) leaves no lock
file here, so only its lease in the queue says whether it is alive. Live: left alone. Expired: released (not
as a failure), its versions abandoned, and the release recorded in the ledger.

Real queue (SQLite), MLflow store (SQLite) and ledger; the queue's clock is injected, nothing sleeps.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from hamu.governance.audit import KeyedHasher, Ledger
from hamu.governance.requests import RequestQueue, Status

HEADER = "request_id,record_id,reason,received_at"
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def test_recovery_spares_a_live_remote_batch_and_releases_an_expired_one(mlflow_store: Path) -> None:
    from mlflow import MlflowClient

    from hamu_pipeline.tasks.recovery import recover_dead_batches

    now = [T0]
    queue = RequestQueue(f"sqlite:///{mlflow_store / 'requests.db'}", clock=lambda: now[0])
    inbox = mlflow_store / "r.csv"
    inbox.write_text(
        f"{HEADER}\nr-1,rec-1,privacy,2026-01-01T00:00:00Z\nr-2,rec-2,privacy,2026-01-01T00:00:01Z\n"
    )
    queue.submit_file(inbox)
    assert len(queue.claim_batch("b-gone", limit=1)) == 1  # on a host that died
    now[0] += timedelta(minutes=10)
    assert len(queue.claim_batch("b-elsewhere", limit=1)) == 1  # running on another host, renewing its lease
    client = MlflowClient()
    client.create_registered_model("reg")
    client.create_model_version("reg", source=(mlflow_store / "src").as_uri(), tags={"batch_id": "b-gone"})
    now[0] += timedelta(minutes=6)  # b-gone's lease expired a minute ago; b-elsewhere's runs 9 more

    work = mlflow_store / "work"  # this host's: neither batch ever ran here
    hasher = KeyedHasher(b"k" * 32)
    report = recover_dead_batches.fn(queue, work, mlflow_store / "audit", hasher, "b-now")

    assert report.released == {"b-gone": 1}
    assert report.abandoned_versions == {"b-gone": ["reg/1"]}
    assert client.get_model_version("reg", "1").tags["batch_status"] == "abandoned"
    gone, elsewhere = queue.list()
    assert (gone.status, gone.failures) == (Status.PENDING, 0)  # a lost host is not the requests' failure
    assert (elsewhere.status, elsewhere.batch_id) == (Status.CLAIMED, "b-elsewhere")
    assert not work.exists() or not list(work.glob("*.lock"))  # no lock file made for a remote batch
    (record,) = Ledger(mlflow_store / "audit").records()
    assert (record.batch_id, record.step, record.decision) == ("b-gone", "recover", "released")
    assert queue.heartbeat("b-elsewhere", elsewhere.claim_token) is not None  # still its claims
    queue.close()


def test_a_batch_that_died_after_closing_its_requests_on_another_host_is_rolled_forward(
    mlflow_store: Path,
) -> None:
    """After its close a batch holds no claim, so no lease or lock file shows it died; a close older than
    one lease with no ``completed`` record does, and recovery finishes the batch instead of leaving its
    requests pointing at a version that can never be promoted."""
    from mlflow import MlflowClient

    from hamu_pipeline.tasks.recovery import closed_but_unfinished, recover_dead_batches

    now = [T0]
    queue = RequestQueue(f"sqlite:///{mlflow_store / 'requests.db'}", clock=lambda: now[0])
    inbox = mlflow_store / "r.csv"
    inbox.write_text(f"{HEADER}\nr-1,rec-1,privacy,2026-01-01T00:00:00Z\n")
    queue.submit_file(inbox)
    (claimed,) = queue.claim_batch("b-remote", limit=1)
    client = MlflowClient()
    client.create_registered_model("reg")
    client.create_model_version("reg", source=(mlflow_store / "src").as_uri(), tags={"batch_id": "b-remote"})
    queue.record_verdicts("b-remote", {claimed.request_id: ("accepted", "record found")})
    assert queue.mark_unlearned("b-remote", [claimed.request_id], "1") == 1  # then its host died
    audit_root = mlflow_store / "audit"

    assert closed_but_unfinished(queue, audit_root, "b-now", now=T0 + timedelta(minutes=1)) == []  # may run
    assert closed_but_unfinished(queue, audit_root, "b-now", now=T0 + timedelta(hours=1)) == ["b-remote"]
    hasher = KeyedHasher(b"k" * 32)
    report = recover_dead_batches.fn(queue, mlflow_store / "work", audit_root, hasher, "b-now")

    assert report.completed == {"b-remote": "1"}
    version = client.get_model_version("reg", "1")
    assert version.tags["batch_status"] == "completed"
    assert str(client.get_registered_model("reg").aliases["candidate"]) == "1"
    steps = [(r.batch_id, r.step) for r in Ledger(audit_root).records()]
    assert steps == [("b-remote", "completed")]
    again = recover_dead_batches.fn(queue, mlflow_store / "work", audit_root, hasher, "b-now")
    assert again.completed == {}  # completed once, by one record
    queue.close()
