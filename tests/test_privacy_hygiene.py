"""Erased data must not stay behind in the pipeline's own stores (issue 15, "Erased data that stays").

* the forget-set digest is keyed, so a one-record batch cannot be found by digesting each manifest row;
* the MLflow input example is synthetic, never a training row;
* ``HAMU_HOME`` is private to its owner (0700, databases 0600, umask 0o077);
* a failed batch's ``failed`` record and the exception Prefect logs carry keyed IDs, not raw ones.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import traceback
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import datasets
import numpy as np
import pytest
import torch

from hamu.data import load_train_test, manifest, manifest_digest, record_ids, split_by_ids
from hamu.governance.audit import KeyedHasher, Ledger

KEY = b"k" * 32


@pytest.fixture(scope="module")
def digits() -> tuple[datasets.Dataset, datasets.Dataset]:
    return load_train_test("digits")


@pytest.fixture()
def private_env(tmp_path: Path) -> Iterator[Path]:
    """A temporary ``HAMU_HOME`` under a permissive umask; environment and umask are restored after."""
    old = os.umask(0o022)
    try:
        with mock.patch.dict(os.environ):
            os.environ.pop("HAMU_QUEUE_URL", None)
            yield tmp_path / "hamu-home"
    finally:
        os.umask(old)


# ------------------------------------------------------------------------------------ forget digest
def test_forget_digest_of_one_record_is_not_found_by_enumerating_the_manifest(
    digits: tuple[datasets.Dataset, datasets.Dataset],
) -> None:
    train, test = digits
    erased = record_ids(train)[123]
    # What anyone holding the training manifest can compute: the plain digest of every one-row set.
    guesses = {manifest_digest([pair]) for pair in manifest(train)}

    plain = split_by_ids(train, test, [erased])
    assert plain.forget_digest in guesses  # the attack the key defeats (experiments only)

    keyed = split_by_ids(train, test, [erased], keyed_hash=KeyedHasher(KEY).hash)
    assert keyed.forget_digest.startswith("hmac-sha256:")
    assert keyed.forget_digest not in guesses
    assert keyed.forget_digest.removeprefix("hmac-sha256:") not in guesses
    again = split_by_ids(train.shuffle(seed=3), test, [erased], keyed_hash=KeyedHasher(KEY).hash)
    assert again.forget_digest == keyed.forget_digest  # same batch, same key: same digest
    other = split_by_ids(train, test, [erased], keyed_hash=KeyedHasher(b"o" * 32).hash)
    assert other.forget_digest != keyed.forget_digest
    # Retain and test digests are not derived from the forget rows alone: they stay plain and unchanged.
    assert (keyed.retain_digest, keyed.test_digest) == (plain.retain_digest, plain.test_digest)
    assert keyed.describe()["digests"]["forget"] == keyed.forget_digest


def test_an_unlabelled_keyed_hash_is_refused(digits: tuple[datasets.Dataset, datasets.Dataset]) -> None:
    train, test = digits
    with pytest.raises(ValueError, match="labelled digest"):
        split_by_ids(train, test, record_ids(train)[:1], keyed_hash=lambda s: KeyedHasher(KEY).hex(s))


# ------------------------------------------------------------------------------------ MLflow example
def _tiny(kind: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """A small model and two 'training rows' for it, with no zero anywhere (a real row is never all zeros)."""
    gen = torch.Generator().manual_seed(0)
    if kind == "image":
        model: torch.nn.Module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 3))
        return model, torch.rand(2, 3, 4, 4, generator=gen) + 0.5
    from hamu.models.nets import TextClassifier

    return TextClassifier(vocab_size=20, embed_dim=4, hidden=4), torch.randint(2, 20, (2, 6), generator=gen)


@pytest.mark.parametrize("kind", ["image", "text"])
def test_registered_model_stores_no_training_row_as_input_example(kind: str, mlflow_store: Path) -> None:
    import mlflow

    from hamu_pipeline.tasks.tracking import log_model_version

    exp = mlflow.create_experiment("privacy", artifact_location=(mlflow_store / "art").as_uri())
    model, rows = _tiny(kind)
    ckpt = mlflow_store / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"placeholder")
    with mlflow.start_run(experiment_id=exp):
        version = log_model_version(model, name=f"reg-{kind}", example=rows, checkpoint_dir=ckpt, tags={})
    folder = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(mlflow_store))
    )
    stored = np.asarray(mlflow.models.Model.load(str(folder)).load_input_example(str(folder)))
    assert stored.shape == tuple(rows.shape)
    flat_rows = rows.numpy().astype(np.float32).reshape(len(rows), -1)
    for got in stored.reshape(len(stored), -1):
        assert not any(np.allclose(got, row) for row in flat_rows)
    assert not np.any(stored)  # synthetic: zeros, which the text model reads as padding
    # The model traced on zeros still serves real rows, at any batch size.
    served = mlflow.pytorch.load_model(version.source)
    batch = torch.cat([rows, rows, rows[:1]]).float()
    torch.testing.assert_close(served(batch), model(batch))


# ------------------------------------------------------------------------------------ permissions
def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_home_is_private_and_databases_are_owner_only(private_env: Path) -> None:
    from hamu_pipeline.tasks.env import configure_environment

    private_env.mkdir(mode=0o755)
    old_db = private_env / "mlflow.db"
    with closing(sqlite3.connect(old_db)) as db:  # from before this change: created world-readable
        db.execute("CREATE TABLE t (x)")
    old_db.chmod(0o644)

    paths = configure_environment(private_env)
    assert _mode(paths.home) == 0o700
    assert _mode(old_db) == 0o600
    queue_db = paths.home / "requests.db"
    with closing(sqlite3.connect(queue_db)) as db:
        db.execute("CREATE TABLE t (x)")
    assert _mode(queue_db) & 0o077 == 0
    for folder in (paths.work, paths.audit, paths.mlartifacts):
        assert _mode(folder) & 0o077 == 0, folder
    ledger_like = paths.audit / "ledger.jsonl"
    ledger_like.write_text("{}\n")
    assert _mode(ledger_like) & 0o077 == 0


# ------------------------------------------------------------------------------------ failure text
def test_failed_batch_records_and_reraises_no_raw_id(
    private_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flow's own failure path: a stage after the claim raises with record and request IDs in its text
    (and in the exception it was raised from); the ``failed`` record and the re-raised exception, which
    Prefect logs, carry keyed forms only. Real queue, ledger and MLflow store; the stages are stubbed."""
    import hamu_pipeline.flows.deletion_batch as batch
    import hamu_pipeline.tasks.stages.session as session
    from hamu.governance.requests import RequestQueue, Status
    from hamu_pipeline.tasks.recovery import RecoveryReport

    rows = [("req-alpha", "digits-train-000007"), ("req-beta", "digits-train-000042")]
    carried = "digits-train-000099"  # an earlier erasure: in the manifest, not in this batch's requests
    manifest_ids = [f"digits-train-{i:06d}" for i in range(200)]
    os.environ["HAMU_HOME"] = str(private_env)
    for name in ("MLFLOW_TRACKING_URI", "HAMU_FAULT"):
        os.environ.pop(name, None)
    inbox = private_env.parent / "requests.csv"
    inbox.write_text(
        "request_id,record_id,reason,received_at\n"
        + "".join(f"{q},{r},privacy,2026-01-01T00:00:00Z\n" for q, r in rows)
    )
    queue_url = f"sqlite:///{private_env / 'requests.db'}"
    private_env.mkdir()
    with RequestQueue(queue_url) as queue:
        queue.submit_file(inbox)

    def failing_stage(*args: object) -> None:  # the IDs come from variables: tracebacks print source lines
        (first_req, first_rec), (second_req, _) = rows
        try:
            raise KeyError(second_req)
        except KeyError as inner:
            raise ValueError(
                f"bad row {first_rec}: shape mismatch (also {carried}.) [{first_req}]"
            ) from inner

    monkeypatch.setattr(session, "recover_dead_batches", lambda *a: RecoveryReport())
    data = SimpleNamespace(manifest_ids=manifest_ids)
    monkeypatch.setattr(session, "load_preset_data", lambda preset: data)
    monkeypatch.setattr(session, "require_champion", lambda *a: SimpleNamespace(version="1"))
    monkeypatch.setattr(batch, "claim", batch.claim.fn)  # the claim stage's own function: no Prefect server
    monkeypatch.setattr(batch, "validate", failing_stage)
    import mlflow

    previous = mlflow.get_tracking_uri()
    try:
        with pytest.raises(ValueError) as info:
            batch.deletion_batch.fn(batch_id="b-fail")
    finally:
        mlflow.set_tracking_uri(previous)

    failed = [r for r in Ledger(private_env / "audit").records() if r.step == "failed"]
    assert len(failed) == 1 and failed[0].reason.startswith("ValueError: bad row <")
    logged = "".join(traceback.format_exception(info.value)) + repr(info.value)
    ledger_text = "".join(p.read_text() for p in (private_env / "audit").rglob("*") if p.is_file())
    for rid in [*(i for row in rows for i in row), carried]:
        assert rid not in failed[0].reason, rid
        assert rid not in ledger_text, rid
        assert rid not in logged, rid  # what Prefect logs when the flow fails
    assert isinstance(info.value.__cause__, KeyError)  # type and chain kept for callers
    with RequestQueue(queue_url) as queue:
        assert {r.status for r in queue.list()} == {Status.PENDING}  # the claim was released


def test_failure_text_is_cut_without_leaving_part_of_an_id() -> None:
    """Text past 10,000 characters is cut before redaction; a cut inside an ID drops the whole token."""
    from hamu_pipeline.tasks.failure import redact_failure_text

    rid = "digits-train-000007"
    text = " " * 9_993 + rid + " tail"  # the cut at 10,000 falls after "digits-"
    out = redact_failure_text(text, [rid], KeyedHasher(KEY))
    assert "digits" not in out
    assert out.endswith("characters cut]")


def test_prefect_run_log_lines_carry_no_raw_id_while_the_batch_runs() -> None:
    """Prefect's engine logs a failing task's exception on ``prefect.task_runs`` before the flow sees it;
    every handler (Prefect's API handler included) must get the redacted line and traceback."""
    import logging

    from hamu_pipeline.tasks.failure import RUN_LOGGERS, redacted_run_logs

    hasher = KeyedHasher(b"k" * 32)
    raw = "digits-train-000007"
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(self.format(record))

    handler = Keep()
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        with redacted_run_logs({raw}, hasher):
            for name in RUN_LOGGERS:
                try:
                    raise KeyError(f"no row for {raw}")
                except KeyError:
                    logging.getLogger(name).exception("Task run failed with exception: %r", KeyError(raw))
        logging.getLogger(RUN_LOGGERS[1]).info("after the batch: %s", raw)  # filter removed again
    finally:
        for name in RUN_LOGGERS:
            logging.getLogger(name).removeHandler(handler)
    assert len(seen) == 3
    assert all(raw not in line for line in seen[:2]), seen
    assert all(hasher.hex(raw)[:16] in line for line in seen[:2])
    assert raw in seen[2]
