"""Clean-up after a failed batch (an exception, not a crash): versions abandoned, working area deleted and
recorded, and a broken registry never hides the original error. Real MLflow store (SQLite) and ledger."""

from __future__ import annotations

from pathlib import Path

import pytest

from hamu.governance.audit import KeyedHasher, Ledger, verify_ledger


def test_failed_batch_is_cleaned_up_and_recorded(mlflow_store: Path) -> None:
    import mlflow
    from mlflow import MlflowClient

    from hamu_pipeline.tasks.audit import BatchAudit
    from hamu_pipeline.tasks.recovery import clean_up_failed_batch

    mlflow.set_tracking_uri(f"sqlite:///{mlflow_store / 'mlflow.db'}")
    client = MlflowClient()
    client.create_registered_model("reg")
    for batch in ("b-failed", "b-other"):
        source = (mlflow_store / "src").as_uri()
        version = client.create_model_version("reg", source=source, tags={"batch_id": batch})
    assert version.version in (2, "2")
    work = mlflow_store / "work" / "b-failed"
    (work / "scores").mkdir(parents=True)
    (work / "scores" / "unlearned.npz").write_bytes(b"per-example scores")
    audit = BatchAudit(mlflow_store / "audit", KeyedHasher(b"k" * 32), "b-failed")
    clean_up_failed_batch(audit, work)
    assert not work.exists()
    assert client.get_model_version("reg", "1").tags["batch_status"] == "abandoned"
    assert "batch_status" not in client.get_model_version("reg", "2").tags
    steps = [r.step for r in Ledger(mlflow_store / "audit").records()]
    assert steps == ["abandon-versions", "delete-work-area"]
    assert verify_ledger(mlflow_store / "audit", b"k" * 32).ok


def test_clean_up_never_hides_the_batch_error(mlflow_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry that cannot be reached: the forget-derived files still go, nothing raises, and abandoning
    the versions is left to the next run's recovery."""
    import mlflow

    from hamu_pipeline.tasks.audit import BatchAudit
    from hamu_pipeline.tasks.recovery import clean_up_failed_batch

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    mlflow.set_tracking_uri("http://127.0.0.1:9")  # the discard port: connection refused
    work = mlflow_store / "work" / "b-2"
    work.mkdir(parents=True)
    (work / "forget.npz").write_bytes(b"rows")
    audit = BatchAudit(mlflow_store / "audit", KeyedHasher(b"k" * 32), "b-2")
    clean_up_failed_batch(audit, work)  # must not raise
    assert not work.exists()
    assert [r.step for r in Ledger(mlflow_store / "audit").records()] == ["delete-work-area"]
