"""One failure must not block the queue: a batch claims at most ``max_requests``, and requests whose batches
keep failing are quarantined with a reason instead of being released to fail again every night.

Real SQLite queues with an injected clock; the CLI runs through typer's runner on a temporary HAMU_HOME.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

import pytest
from typer.testing import CliRunner

from hamu.governance.requests import (
    DEFAULT_MAX_REQUESTS,
    DEFAULT_QUARANTINE_AFTER,
    QueueStateError,
    RequestQueue,
    Status,
    default_queue_url,
)

NOW = datetime(2026, 3, 1, tzinfo=UTC)
HEADER = "request_id,record_id,reason,received_at"


def submit(queue: RequestQueue, folder: Path, name: str, count: int, *, shuffle: bool = False) -> list[str]:
    """Queue ``count`` requests ``<name>-<i>`` received one second apart (i = 0 oldest); returns their IDs.

    ``shuffle`` writes the lines in random order, so arrival order in the file is not the FIFO order.
    """
    start = NOW - timedelta(days=1)
    rows = [
        (f"{name}-{i:05d}", f"rec-{name}-{i}", (start + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%SZ"))
        for i in range(count)
    ]
    lines = [f"{req},{rec},privacy,{when}" for req, rec, when in rows]
    if shuffle:
        random.Random(0).shuffle(lines)
    path = folder / f"{name}.csv"
    path.write_text("\n".join([HEADER, *lines]) + "\n")
    queue.submit_file(path)
    return [req for req, _, _ in rows]


def ids(requests: list) -> list[str]:
    return [r.request_id for r in requests]


def fail_batch(queue: RequestQueue, batch_id: str, limit: int) -> list[str]:
    """A batch that claims, validates and then raises: the flow's except path releases it."""
    claimed = ids(queue.claim_batch(batch_id, limit=limit))
    queue.record_verdicts(batch_id, {r: ("accepted", "in manifest") for r in claimed})
    queue.release_batch(batch_id)
    return claimed


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[RequestQueue]:
    q = RequestQueue(default_queue_url(tmp_path / "home"), clock=lambda: NOW)
    yield q
    q.close()


# --------------------------------------------------------------------------- the claim cap


def test_a_claim_takes_at_most_the_default_cap_oldest_first(queue: RequestQueue, tmp_path: Path) -> None:
    """More pending requests than the cap: one claim takes exactly the cap, the oldest; the rest wait."""
    from hamu_pipeline.flows.config import BatchConfig

    assert DEFAULT_MAX_REQUESTS == BatchConfig().max_requests == 10_000
    everything = submit(queue, tmp_path, "r", DEFAULT_MAX_REQUESTS + 5, shuffle=True)

    first = queue.claim_batch("b-1")
    assert len(first) == DEFAULT_MAX_REQUESTS
    assert ids(first) == everything[:DEFAULT_MAX_REQUESTS]  # oldest received_at first, in FIFO order
    assert ids(queue.list(Status.PENDING)) == everything[DEFAULT_MAX_REQUESTS:]

    second = queue.claim_batch("b-2", limit=BatchConfig().max_requests)  # what the claim stage calls
    assert ids(second) == everything[DEFAULT_MAX_REQUESTS:]
    assert queue.counts()["pending"] == 0


def test_the_batch_config_always_has_a_cap() -> None:
    from pydantic import ValidationError

    from hamu_pipeline.flows.config import BatchConfig

    assert BatchConfig(max_requests=5).max_requests == 5
    for bad in (None, 0, -1):  # None used to mean "claim everything"
        with pytest.raises(ValidationError, match="max_requests"):
            BatchConfig(max_requests=bad)


# --------------------------------------------------------------------------- quarantine


def test_a_request_failing_k_batches_is_quarantined_with_its_reason(
    queue: RequestQueue, tmp_path: Path
) -> None:
    assert DEFAULT_QUARANTINE_AFTER == 3
    everything = submit(queue, tmp_path, "r", 4)
    poisoned, others = everything[:2], everything[2:]

    for n in (1, 2):
        assert fail_batch(queue, f"b-{n}", limit=2) == poisoned
        rows = {r.request_id: r for r in queue.list()}
        assert all(rows[r].status is Status.PENDING and rows[r].failures == n for r in poisoned)
        assert all(rows[r].verdict is None and rows[r].quarantine_reason is None for r in poisoned)

    assert fail_batch(queue, "b-3", limit=2) == poisoned
    quarantined = queue.list(Status.QUARANTINED)
    assert ids(quarantined) == poisoned
    for r in quarantined:
        assert r.failures == 3 and r.batch_id == "b-3" and r.claimed_at is None
        assert r.quarantine_reason is not None
        assert "failed in 3 batches" in r.quarantine_reason and "b-3" in r.quarantine_reason
    assert queue.counts()["quarantined"] == 2

    # the others were never in a failed batch: untouched, and the next claim gets them, not the poisoned
    untouched = {r.request_id: r for r in queue.list(Status.PENDING)}
    assert list(untouched) == others
    assert all(r.failures == 0 and r.quarantine_reason is None for r in untouched.values())
    assert ids(queue.claim_batch("b-4")) == others
    assert ids(queue.list(Status.QUARANTINED)) == poisoned


def test_only_the_requests_of_failed_batches_count(queue: RequestQueue, tmp_path: Path) -> None:
    """Failures count per request: one in a single failed batch is not quarantined with one in three."""
    old = submit(queue, tmp_path, "old", 1)
    fail_batch(queue, "b-1", limit=10)
    fail_batch(queue, "b-2", limit=10)
    new = submit(queue, tmp_path, "new", 1)  # arrives in time for the third failing batch only
    assert fail_batch(queue, "b-3", limit=10) == old + new
    assert ids(queue.list(Status.QUARANTINED)) == old
    (waiting,) = queue.list(Status.PENDING)
    assert waiting.request_id == new[0] and waiting.failures == 1


def test_a_crashed_batch_never_counts_towards_quarantine(queue: RequestQueue, tmp_path: Path) -> None:
    """Recovery releases a dead process's claims with ``failed=False``: a SIGKILL says nothing about them."""
    everything = submit(queue, tmp_path, "r", 2)
    for n in range(DEFAULT_QUARANTINE_AFTER + 2):
        queue.claim_batch(f"b-{n}")
        assert queue.release_batch(f"b-{n}", failed=False) == 2
    assert ids(queue.list(Status.PENDING)) == everything
    assert all(r.failures == 0 for r in queue.list())


def test_quarantine_after_is_configurable_and_checked(tmp_path: Path) -> None:
    url = default_queue_url(tmp_path / "home")
    with RequestQueue(url, clock=lambda: NOW, quarantine_after=1) as strict:
        submit(strict, tmp_path, "r", 2)
        strict.claim_batch("b-1")
        assert strict.release_batch("b-1") == 0  # released nothing: both quarantined at once
        assert strict.counts()["quarantined"] == 2
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="quarantine_after"):
            RequestQueue(url, quarantine_after=bad)  # type: ignore[arg-type]


def test_a_batch_quarantines_the_requests_it_can_blame(queue: RequestQueue, tmp_path: Path) -> None:
    everything = submit(queue, tmp_path, "r", 3)
    queue.claim_batch("b-1")
    queue.record_verdicts("b-1", {r: ("accepted", "in manifest") for r in everything})
    with pytest.raises(ValueError, match="reason"):
        queue.quarantine("b-1", everything[:1], " ")
    with pytest.raises(TypeError):
        queue.quarantine("b-1", everything[0], "why")
    with pytest.raises(QueueStateError, match="not claimed by batch 'b-2'"):
        queue.quarantine("b-2", everything[:1], "a batch cannot quarantine what it does not hold")
    with pytest.raises(QueueStateError, match="unknown"):
        queue.quarantine("b-1", [everything[0], "nope"], "why")
    assert queue.counts()["quarantined"] == 0  # all or nothing

    assert queue.quarantine("b-1", everything[:1], "record's rows crash the loader") == 1
    blamed = queue.get(everything[0])
    assert blamed is not None and blamed.status is Status.QUARANTINED
    assert blamed.quarantine_reason == "record's rows crash the loader"
    assert blamed.batch_id == "b-1" and blamed.verdict is not None  # which batch, what it had found
    assert queue.release_batch("b-1") == 2  # the rest of the batch goes back, the blamed one stays out
    assert ids(queue.list(Status.PENDING)) == everything[1:]
    assert ids(queue.claim_batch("b-2")) == everything[1:]


def test_requeue_puts_quarantined_requests_back_with_a_clean_slate(
    queue: RequestQueue, tmp_path: Path
) -> None:
    everything = submit(queue, tmp_path, "r", 2)
    for n in range(DEFAULT_QUARANTINE_AFTER):
        fail_batch(queue, f"b-{n}", limit=10)
    assert ids(queue.list(Status.QUARANTINED)) == everything
    with pytest.raises(QueueStateError, match="unknown"):
        queue.requeue([everything[0], "nope"])
    assert queue.requeue(everything[:1]) == 1
    back = queue.get(everything[0])
    assert back is not None and back.status is Status.PENDING
    assert (back.failures, back.quarantine_reason, back.batch_id, back.verdict) == (0, None, None, None)
    with pytest.raises(QueueStateError, match="not quarantined"):
        queue.requeue(everything)  # the first is pending now: nothing changes
    assert ids(queue.list(Status.QUARANTINED)) == everything[1:]
    assert ids(queue.claim_batch("b-9")) == everything[:1]


# --------------------------------------------------------------------------- a table made by older code

# The DDL the queue emitted on SQLite before quarantine existed (``unlearned`` already allowed).
_PREVIOUS_DDL = [
    """CREATE TABLE deletion_requests (
    id INTEGER NOT NULL, request_id VARCHAR(128) NOT NULL, record_id VARCHAR(128) NOT NULL,
    reason VARCHAR(16) NOT NULL, received_at DATETIME NOT NULL, submitted_at DATETIME NOT NULL,
    source_sha256 VARCHAR(64) NOT NULL, status VARCHAR(16) NOT NULL, verdict VARCHAR(16),
    verdict_reason TEXT, batch_id VARCHAR(128), claim_token VARCHAR(32), claimed_at DATETIME,
    model_version VARCHAR(256), updated_at DATETIME NOT NULL, PRIMARY KEY (id),
    CONSTRAINT ck_deletion_requests_reason CHECK (reason IN ('privacy', 'copyright', 'bias', 'other')),
    CONSTRAINT ck_deletion_requests_status CHECK
        (status IN ('pending', 'claimed', 'unlearned', 'erased', 'rejected')),
    CONSTRAINT ck_deletion_requests_verdict CHECK (verdict IS NULL OR verdict IN
        ('accepted', 'unknown', 'malformed', 'duplicate', 'already-erased')),
    UNIQUE (request_id))""",
    "CREATE INDEX ix_deletion_requests_fifo ON deletion_requests (status, received_at, id)",
]


def test_a_table_from_before_quarantine_gains_its_columns_and_keeps_every_row(tmp_path: Path) -> None:
    path = tmp_path / "requests.db"
    with closing(sqlite3.connect(path)) as db:
        for ddl in _PREVIOUS_DDL:
            db.execute(ddl)
        for i, status in enumerate(("unlearned", "claimed", "claimed", "pending")):
            db.execute(
                "INSERT INTO deletion_requests (id, request_id, record_id, reason, received_at, submitted_at,"
                " source_sha256, status, batch_id, model_version, updated_at) VALUES (?, ?, ?, 'privacy',"
                " '2026-01-01 00:00:00.000000', '2026-01-01 00:00:00.000000', ?, ?, ?, ?,"
                " '2026-01-02 00:00:00.000000')",
                (i * 3 + 1, f"old-{i}", f"rec-{i}", "0" * 64, status, None if status == "pending" else "b-0",
                 "m:1" if status == "unlearned" else None),
            )  # fmt: skip
        db.commit()

    with RequestQueue(f"sqlite:///{path}", clock=lambda: NOW, quarantine_after=1) as queue:
        rows = queue.list()
        assert [(r.request_id, r.status.value) for r in rows] == [
            ("old-0", "unlearned"),
            ("old-1", "claimed"),
            ("old-2", "claimed"),
            ("old-3", "pending"),
        ]
        assert all(r.failures == 0 and r.quarantine_reason is None for r in rows)
        assert queue.quarantine("b-0", ["old-1"], "blamed") == 1
        assert queue.release_batch("b-0") == 0  # quarantine_after=1: old-2 is quarantined too
        assert ids(queue.list(Status.QUARANTINED)) == ["old-1", "old-2"]
    with closing(sqlite3.connect(path)) as db:
        assert [i for (i,) in db.execute("SELECT id FROM deletion_requests ORDER BY id")] == [1, 4, 7, 10]
        schema = dict(db.execute("SELECT name, sql FROM sqlite_master"))
        with pytest.raises(sqlite3.IntegrityError):  # the CHECK is still there, just wider
            db.execute("UPDATE deletion_requests SET status = 'bogus' WHERE id = 10")
    assert "'quarantined'" in schema["deletion_requests"] and "failures" in schema["deletion_requests"]
    RequestQueue(f"sqlite:///{path}").close()  # a second open finds nothing to do
    with closing(sqlite3.connect(path)) as db:
        assert dict(db.execute("SELECT name, sql FROM sqlite_master")) == schema


def test_widening_on_postgresql_leaves_the_declared_table_intact() -> None:
    """Widening the CHECK on PostgreSQL once used SQLAlchemy's AddConstraint, whose construction marks the
    shared Table's constraint as added later: every table this process created afterwards (a fresh SQLite
    queue, say) had no status CHECK at all."""
    from sqlalchemy.dialects import sqlite
    from sqlalchemy.schema import CreateTable

    from hamu.governance.requests.queue import _T, _widen_status_check

    conn = mock.MagicMock()
    conn.dialect.name = "postgresql"
    _widen_status_check(conn)
    ddl = [call.args[0] for call in conn.exec_driver_sql.call_args_list]
    assert ddl[0] == 'ALTER TABLE "deletion_requests" DROP CONSTRAINT "ck_deletion_requests_status"'
    assert ddl[1].startswith('ALTER TABLE "deletion_requests" ADD CONSTRAINT "ck_deletion_requests_status"')
    assert "'quarantined'" in ddl[1]
    assert "ck_deletion_requests_status" in str(CreateTable(_T).compile(dialect=sqlite.dialect()))


# --------------------------------------------------------------------------- the CLI


@pytest.fixture
def cli_home(tmp_path: Path) -> Iterator[Path]:
    """A temporary ``HAMU_HOME``; the whole environment is restored after (the CLI sets defaults in it)."""
    home = tmp_path / "hamu-home"
    with mock.patch.dict(os.environ):
        os.environ["HAMU_HOME"] = str(home)
        os.environ.pop("HAMU_QUEUE_URL", None)
        yield home


def test_cli_lists_quarantined_requests_with_their_reason(cli_home: Path, tmp_path: Path) -> None:
    from hamu_pipeline.flows.cli import app

    with RequestQueue(default_queue_url(cli_home)) as queue:
        everything = submit(queue, tmp_path, "r", 3)
        for n in range(DEFAULT_QUARANTINE_AFTER):
            fail_batch(queue, f"b-{n}", limit=2)

    result = CliRunner().invoke(app, ["requests", "list", "--status", "quarantined", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert [r["request_id"] for r in listed] == everything[:2]
    assert all(r["status"] == "quarantined" and r["failures"] == 3 for r in listed)
    assert all("failed in 3 batches" in r["quarantine_reason"] for r in listed)

    table = CliRunner().invoke(app, ["requests", "list", "--status", "quarantined"])
    assert table.exit_code == 0 and "2 requests" in table.output and "quarantine_reason" in table.output
    pending = CliRunner().invoke(app, ["requests", "list", "--status", "pending", "--json"])
    assert [r["request_id"] for r in json.loads(pending.output)] == everything[2:]


# --------------------------------------------------------------------------- PostgreSQL


def test_the_postgresql_claim_picks_its_rows_once() -> None:
    """As a plain ``IN (… LIMIT n FOR UPDATE SKIP LOCKED)`` PostgreSQL may rescan the pick once per row of a
    nested-loop semi-join, each rescan yielding more rows: the claim took every pending request. A
    MATERIALIZED CTE is evaluated once. (SQLite evaluates the sub-select once and gets no hint.)"""
    from sqlalchemy.dialects import postgresql, sqlite

    from hamu.governance.requests.queue import _claim_statement

    stmt = _claim_statement("b", "t", NOW, 10)
    pg = " ".join(str(stmt.compile(dialect=postgresql.dialect())).split())
    assert pg.startswith("WITH picked AS MATERIALIZED (SELECT deletion_requests.id")
    assert "FOR UPDATE SKIP LOCKED) UPDATE deletion_requests" in pg
    assert "MATERIALIZED" not in str(stmt.compile(dialect=sqlite.dialect()))


def test_postgresql_table_before_quarantine_is_migrated_and_quarantines(
    postgres_url: str, tmp_path: Path
) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(postgres_url)
    with engine.begin() as conn:  # the previous code's table: no failures / quarantine_reason, narrower CHECK
        conn.execute(
            text(
                "CREATE TABLE deletion_requests (id SERIAL PRIMARY KEY, request_id VARCHAR(128) NOT NULL"
                " UNIQUE, record_id VARCHAR(128) NOT NULL, reason VARCHAR(16) NOT NULL, received_at"
                " TIMESTAMP WITH TIME ZONE NOT NULL, submitted_at TIMESTAMP WITH TIME ZONE NOT NULL,"
                " source_sha256 VARCHAR(64) NOT NULL, status VARCHAR(16) NOT NULL, verdict VARCHAR(16),"
                " verdict_reason TEXT, batch_id VARCHAR(128), claim_token VARCHAR(32), claimed_at"
                " TIMESTAMP WITH TIME ZONE, model_version VARCHAR(256), updated_at TIMESTAMP WITH TIME ZONE"
                " NOT NULL, CONSTRAINT ck_deletion_requests_status CHECK"
                " (status IN ('pending', 'claimed', 'unlearned', 'erased', 'rejected')))"
            )
        )
        conn.execute(
            text(
                "INSERT INTO deletion_requests (request_id, record_id, reason, received_at, submitted_at,"
                " source_sha256, status, updated_at) VALUES ('old-0', 'rec-0', 'privacy',"
                " '2026-01-01T00:00:00Z', now(), :sha, 'pending', now())"
            ),
            {"sha": "0" * 64},
        )
    with RequestQueue(postgres_url, clock=lambda: NOW) as queue:
        everything = ["old-0", *submit(queue, tmp_path, "r", 3)]
        assert ids(queue.claim_batch("b-0", limit=2)) == everything[:2]  # the cap, oldest first
        queue.release_batch("b-0")
        for n in (1, 2):
            assert fail_batch(queue, f"b-{n}", limit=2) == everything[:2]
        assert ids(queue.list(Status.QUARANTINED)) == everything[:2]
        assert [r.failures for r in queue.list()] == [3, 3, 0, 0]
        assert ids(queue.claim_batch("b-3")) == everything[2:]
    RequestQueue(postgres_url).close()  # a second open finds nothing to do
    engine.dispose()
