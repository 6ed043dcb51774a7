"""Clean-up after a failed batch (an exception, not a crash): versions abandoned, working area deleted and
recorded, and a broken registry never hides the original error. Real MLflow store (SQLite) and ledger."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hamu.audit import KeyedHasher, Ledger, verify_ledger


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private MLflow store; the process-wide tracking URI is restored afterwards."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield tmp_path
    mlflow.set_tracking_uri(previous)


def test_failed_batch_is_cleaned_up_and_recorded(store: Path) -> None:
    import mlflow
    from mlflow import MlflowClient

    from tasks.audit import BatchAudit
    from tasks.recovery import clean_up_failed_batch

    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    client = MlflowClient()
    client.create_registered_model("reg")
    for batch in ("b-failed", "b-other"):
        source = (store / "src").as_uri()
        version = client.create_model_version("reg", source=source, tags={"batch_id": batch})
    assert version.version in (2, "2")
    work = store / "work" / "b-failed"
    (work / "scores").mkdir(parents=True)
    (work / "scores" / "unlearned.npz").write_bytes(b"per-example scores")
    audit = BatchAudit(store / "audit", KeyedHasher(b"k" * 32), "b-failed")
    clean_up_failed_batch(audit, work)
    assert not work.exists()
    assert client.get_model_version("reg", "1").tags["batch_status"] == "abandoned"
    assert "batch_status" not in client.get_model_version("reg", "2").tags
    steps = [r.step for r in Ledger(store / "audit").records()]
    assert steps == ["abandon-versions", "delete-work-area"]
    assert verify_ledger(store / "audit", b"k" * 32).ok


def test_clean_up_never_hides_the_batch_error(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry that cannot be reached: the forget-derived files still go, nothing raises, and abandoning
    the versions is left to the next run's recovery."""
    import mlflow

    from tasks.audit import BatchAudit
    from tasks.recovery import clean_up_failed_batch

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    mlflow.set_tracking_uri("http://127.0.0.1:9")  # the discard port: connection refused
    work = store / "work" / "b-2"
    work.mkdir(parents=True)
    (work / "forget.npz").write_bytes(b"rows")
    audit = BatchAudit(store / "audit", KeyedHasher(b"k" * 32), "b-2")
    clean_up_failed_batch(audit, work)  # must not raise
    assert not work.exists()
    assert [r.step for r in Ledger(store / "audit").records()] == ["delete-work-area"]
