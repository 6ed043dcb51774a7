"""``unlearned`` versus ``erased``: a batch close only makes a candidate, a promotion serves the erasure.

Real SQLite queues; the clock is injected (never slept on) to age requests past the promotion deadline.
The CLI is driven through typer's runner on a temporary ``HAMU_HOME``. The PostgreSQL case runs on the
throwaway server of ``tests/conftest.py`` (or on ``HAMU_TEST_POSTGRES_URL``), and skips where neither exists.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError
from typer.testing import CliRunner

from hamu.governance.requests import (
    DEFAULT_PROMOTION_DEADLINE,
    PROMOTION_DEADLINE_ENV,
    RequestQueue,
    Status,
    default_queue_url,
    promotion_deadline,
)
from hamu.governance.requests.queue import _status_check_is_current

T0 = datetime(2026, 3, 1, tzinfo=UTC)
HEADER = "request_id,record_id,reason,received_at"


class Clock:
    """A settable clock for the queue: tests move time instead of sleeping."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def write_requests(folder: Path, name: str, rows: list[tuple[str, str]]) -> Path:
    """A CSV of ``(request_id, record_id)`` requests, all received before ``T0``."""
    path = folder / name
    lines = [HEADER, *(f"{req},{rec},privacy,2026-01-01T00:00:00Z" for req, rec in rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_batch(
    queue: RequestQueue, folder: Path, batch_id: str, rows: list[tuple[str, str]], candidate: str
) -> None:
    """What a deletion batch does to the queue: submit, claim, accept everything, close at ``candidate``."""
    queue.submit_file(write_requests(folder, f"{batch_id}.csv", rows))
    claimed = [r.request_id for r in queue.claim_batch(batch_id)]
    queue.record_verdicts(batch_id, {r: ("accepted", "in manifest") for r in claimed})
    assert queue.mark_unlearned(batch_id, claimed, candidate) == len(claimed)


def statuses(queue: RequestQueue) -> dict[str, tuple[str, str | None]]:
    """request_id → (status, model_version)."""
    return {r.request_id: (r.status.value, r.model_version) for r in queue.list()}


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def queue(tmp_path: Path, clock: Clock) -> Iterator[RequestQueue]:
    q = RequestQueue(default_queue_url(tmp_path / "home"), clock=clock)
    yield q
    q.close()


# --------------------------------------------------------------------------- the life cycle


def test_full_life_cycle_erased_only_by_promotion(queue: RequestQueue, tmp_path: Path, clock: Clock) -> None:
    run_batch(queue, tmp_path, "b-1", [("r-1", "rec-1"), ("r-2", "rec-2")], "models:/m/2")
    after_close = queue.get("r-1")
    assert after_close is not None
    assert (after_close.status, after_close.model_version) == (Status.UNLEARNED, "models:/m/2")
    assert after_close.unlearned_at == T0
    assert queue.counts()["erased"] == 0  # a candidate serves nobody
    assert queue.erased_record_ids() == {"rec-1", "rec-2"}
    assert queue.served_erased_record_ids() == set()

    clock.advance(days=3)
    assert queue.mark_served({"rec-1", "rec-2"}, "models:/m/2") == 2
    erased = queue.get("r-1")
    assert erased is not None
    assert (erased.status, erased.model_version, erased.batch_id) == (Status.ERASED, "models:/m/2", "b-1")
    assert erased.unlearned_at is None and erased.pending_promotion(clock.now) is None
    assert queue.served_erased_record_ids() == {"rec-1", "rec-2"}
    assert queue.erased_record_ids() == {"rec-1", "rec-2"}
    assert queue.counts() == {
        "pending": 0,
        "claimed": 0,
        "unlearned": 0,
        "erased": 2,
        "rejected": 0,
        "quarantined": 0,
    }


def test_promotion_serves_requests_carried_over_from_unpromoted_candidates(
    queue: RequestQueue, tmp_path: Path
) -> None:
    run_batch(queue, tmp_path, "b-1", [("r-1", "rec-1")], "models:/m/2")  # v2 is never promoted
    run_batch(queue, tmp_path, "b-2", [("r-2", "rec-2")], "models:/m/3")  # v3 lacks rec-1 and rec-2
    assert statuses(queue) == {"r-1": ("unlearned", "models:/m/2"), "r-2": ("unlearned", "models:/m/3")}
    assert queue.mark_served(["rec-1", "rec-2"], "models:/m/3") == 2
    assert statuses(queue) == {"r-1": ("erased", "models:/m/3"), "r-2": ("erased", "models:/m/3")}


def test_mark_served_touches_only_unlearned_requests_for_the_named_records(
    queue: RequestQueue, tmp_path: Path
) -> None:
    run_batch(queue, tmp_path, "b-1", [("r-1", "rec-1"), ("r-2", "rec-2")], "models:/m/2")
    # A later request for rec-1 is refused as already erased; one for rec-3 is still waiting in a batch,
    # one for rec-4 still pending. None of them may become "erased".
    queue.submit_file(
        write_requests(tmp_path, "later.csv", [("r-3", "rec-1"), ("r-4", "rec-3"), ("r-5", "rec-4")])
    )
    queue.claim_batch("b-2", limit=2)
    queue.record_verdicts("b-2", {"r-3": ("already-erased", "removed by r-1")})
    assert queue.mark_rejected("b-2", ["r-3"]) == 1
    before = statuses(queue)

    moved = queue.mark_served(["rec-1", "rec-3", "rec-4", "rec-never-requested"], "models:/m/5")

    assert moved == 1
    after = statuses(queue)
    assert after["r-1"] == ("erased", "models:/m/5")
    assert after["r-2"] == ("unlearned", "models:/m/2")  # not named: the promoted version still has it
    assert {k: v for k, v in after.items() if k != "r-1"} == {k: v for k, v in before.items() if k != "r-1"}
    assert after["r-3"][0] == "rejected" and after["r-4"][0] == "claimed" and after["r-5"][0] == "pending"


def test_mark_served_is_idempotent_and_keeps_the_first_served_version(
    queue: RequestQueue, tmp_path: Path, clock: Clock
) -> None:
    run_batch(queue, tmp_path, "b-1", [("r-1", "rec-1")], "models:/m/2")
    assert queue.mark_served(["rec-1"], "models:/m/2") == 1
    once = queue.list()
    clock.advance(hours=1)
    assert queue.mark_served(["rec-1"], "models:/m/2") == 0
    assert queue.mark_served(["rec-1"], "models:/m/9") == 0
    assert queue.list() == once  # nothing rewritten, not even updated_at
    assert queue.mark_served([], "models:/m/9") == 0


def test_mark_served_refuses_the_old_batch_close_call_and_bad_arguments(
    queue: RequestQueue, tmp_path: Path
) -> None:
    run_batch(queue, tmp_path, "b-1", [("r-1", "rec-1")], "models:/m/2")
    assert not hasattr(queue, "mark_erased")  # the old name cannot be reached by mistake
    with pytest.raises(TypeError):
        queue.mark_served("b-1", ["r-1"], "models:/m/2")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="not a single string"):
        queue.mark_served("rec-1", "models:/m/2")
    with pytest.raises(TypeError, match="strings"):
        queue.mark_served([1], "models:/m/2")  # type: ignore[list-item]
    with pytest.raises(ValueError, match="model_version"):
        queue.mark_served(["rec-1"], " ")
    assert statuses(queue) == {"r-1": ("unlearned", "models:/m/2")}


def test_mark_served_handles_more_records_than_one_statement_binds(
    queue: RequestQueue, tmp_path: Path
) -> None:
    rows = [(f"r-{i}", f"rec-{i}") for i in range(1200)]
    run_batch(queue, tmp_path, "b-1", rows, "models:/m/2")
    assert queue.mark_served({rec for _, rec in rows}, "models:/m/2") == 1200
    assert queue.counts()["erased"] == 1200


def test_release_batch_leaves_unlearned_requests_alone(queue: RequestQueue, tmp_path: Path) -> None:
    run_batch(queue, tmp_path, "b-1", [("r-1", "rec-1")], "models:/m/2")
    assert queue.release_batch("b-1") == 0
    assert statuses(queue) == {"r-1": ("unlearned", "models:/m/2")}


def test_close_requests_task_reports_unlearned_not_erased(queue: RequestQueue, tmp_path: Path) -> None:
    from hamu_pipeline.tasks.intake import close_requests

    queue.submit_file(write_requests(tmp_path, "b.csv", [("r-1", "rec-1"), ("r-2", "rec-2")]))
    queue.claim_batch("b-1")
    queue.record_verdicts("b-1", {"r-1": ("accepted", "ok"), "r-2": ("unknown", "not in manifest")})
    assert close_requests(queue, "b-1", ["r-1"], "models:/m/2") == {"unlearned": 1, "rejected": 1}
    assert statuses(queue) == {"r-1": ("unlearned", "models:/m/2"), "r-2": ("rejected", None)}


# --------------------------------------------------------------------------- overdue


def test_overdue_is_unlearned_past_the_deadline(queue: RequestQueue, tmp_path: Path, clock: Clock) -> None:
    run_batch(queue, tmp_path, "b-old", [("old", "rec-1"), ("served", "rec-2")], "models:/m/2")
    queue.mark_served(["rec-2"], "models:/m/2")  # erased: never overdue, however old
    clock.advance(days=20)
    run_batch(queue, tmp_path, "b-new", [("new", "rec-3")], "models:/m/3")
    clock.advance(days=11)  # "old" has waited 31 days, "new" 11

    old = queue.get("old")
    assert old is not None and old.pending_promotion(clock.now) == timedelta(days=31)
    assert old.is_overdue(DEFAULT_PROMOTION_DEADLINE, clock.now)
    assert [r.request_id for r in queue.list_overdue()] == ["old"]  # the queue's clock by default
    assert [r.request_id for r in queue.list_overdue(timedelta(days=10))] == ["old", "new"]
    assert queue.list_overdue(timedelta(days=31)) == []  # exactly at the deadline is not yet overdue
    assert queue.list_overdue(now=T0 + timedelta(days=29)) == []
    served = queue.get("served")
    assert served is not None and not served.is_overdue(timedelta(0), clock.now)
    assert queue.list_overdue(timedelta(days=10**8)) == []  # reaching back before year 1 is not an error
    with pytest.raises(ValueError, match="non-negative"):
        queue.list_overdue(timedelta(days=-1))


@pytest.mark.parametrize(
    ("given", "expected"),
    [(None, timedelta(days=30)), ("", timedelta(days=30)), (" 7.5 ", timedelta(days=7.5)), (0, timedelta(0))],
)
def test_promotion_deadline_parses_days(given: Any, expected: timedelta) -> None:
    assert promotion_deadline(given) == expected


@pytest.mark.parametrize("given", ["soon", "-1", "nan", "inf", "1e12", -0.5])
def test_promotion_deadline_refuses_nonsense(given: Any) -> None:
    with pytest.raises(ValueError, match="promotion deadline"):
        promotion_deadline(given)


# --------------------------------------------------------------------------- databases made by older code

# The DDL the queue emitted on SQLite before ``unlearned`` existed (reflowed, otherwise verbatim).
_OLD_SQLITE_DDL = [
    """CREATE TABLE deletion_requests (
    id INTEGER NOT NULL, request_id VARCHAR(128) NOT NULL, record_id VARCHAR(128) NOT NULL,
    reason VARCHAR(16) NOT NULL, received_at DATETIME NOT NULL, submitted_at DATETIME NOT NULL,
    source_sha256 VARCHAR(64) NOT NULL, status VARCHAR(16) NOT NULL, verdict VARCHAR(16),
    verdict_reason TEXT, batch_id VARCHAR(128), claim_token VARCHAR(32), claimed_at DATETIME,
    model_version VARCHAR(256), updated_at DATETIME NOT NULL, PRIMARY KEY (id),
    CONSTRAINT ck_deletion_requests_reason CHECK (reason IN ('privacy', 'copyright', 'bias', 'other')),
    CONSTRAINT ck_deletion_requests_status CHECK (status IN ('pending', 'claimed', 'rejected', 'erased')),
    CONSTRAINT ck_deletion_requests_verdict CHECK (verdict IS NULL OR verdict IN
        ('accepted', 'unknown', 'malformed', 'duplicate', 'already-erased')),
    UNIQUE (request_id))""",
    "CREATE INDEX ix_deletion_requests_batch_id ON deletion_requests (batch_id)",
    "CREATE INDEX ix_deletion_requests_record_id ON deletion_requests (record_id)",
    "CREATE INDEX ix_deletion_requests_claim_token ON deletion_requests (claim_token)",
    "CREATE INDEX ix_deletion_requests_fifo ON deletion_requests (status, received_at, id)",
]
_OLD_ROW = (
    "INSERT INTO deletion_requests (id, request_id, record_id, reason, received_at, submitted_at,"
    " source_sha256, status, verdict, verdict_reason, batch_id, model_version, updated_at) VALUES"
    " (:id, :request_id, :record_id, 'privacy', '2026-01-01 00:00:00.000000', '2026-01-01 00:00:00.000000',"
    " :sha, :status, :verdict, :reason, :batch, :version, '2026-01-02 00:00:00.000000')"
)
_OLD_ROWS = [
    {"id": 7, "request_id": "old-erased", "record_id": "rec-1", "status": "erased", "verdict": "accepted",
     "reason": "ok", "batch": "b-0", "version": "models:/m/1"},
    {"id": 9, "request_id": "old-claimed", "record_id": "rec-2", "status": "claimed", "verdict": "accepted",
     "reason": "ok", "batch": "b-1", "version": None},
    {"id": 12, "request_id": "old-pending", "record_id": "rec-3", "status": "pending", "verdict": None,
     "reason": None, "batch": None, "version": None},
]  # fmt: skip


def _old_sqlite_queue(path: Path) -> None:
    with closing(sqlite3.connect(path)) as db:
        for ddl in _OLD_SQLITE_DDL:
            db.execute(ddl)
        for row in _OLD_ROWS:
            db.execute(_OLD_ROW, {**row, "sha": "0" * 64})
        db.commit()


def _sqlite_schema(path: Path) -> dict[str, str]:
    with closing(sqlite3.connect(path)) as db:
        return dict(db.execute("SELECT name, sql FROM sqlite_master"))


def test_sqlite_table_from_older_code_is_widened_and_keeps_every_row(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "requests.db"
    _old_sqlite_queue(path)
    with closing(sqlite3.connect(path)) as db, pytest.raises(sqlite3.IntegrityError):
        db.execute("UPDATE deletion_requests SET status = 'unlearned' WHERE id = 9")  # the premise

    queue = RequestQueue(f"sqlite:///{path}", clock=clock)
    rows = {r.request_id: r for r in queue.list()}
    assert [r.request_id for r in queue.list()] == ["old-erased", "old-claimed", "old-pending"]
    assert (rows["old-erased"].status, rows["old-erased"].model_version) == (Status.ERASED, "models:/m/1")
    assert rows["old-claimed"].batch_id == "b-1" and rows["old-pending"].status is Status.PENDING
    assert queue.mark_unlearned("b-1", ["old-claimed"], "models:/m/2") == 1
    assert queue.served_erased_record_ids() == {"rec-1"}
    assert queue.erased_record_ids() == {"rec-1", "rec-2"}
    queue.close()

    schema = _sqlite_schema(path)
    assert "'unlearned'" in schema["deletion_requests"]
    assert not any("before_unlearned" in name for name in schema)
    assert {n for n in schema if n.startswith("ix_")} == {
        "ix_deletion_requests_batch_id",
        "ix_deletion_requests_record_id",
        "ix_deletion_requests_claim_token",
        "ix_deletion_requests_fifo",
    }
    with closing(sqlite3.connect(path)) as db:
        assert [i for (i,) in db.execute("SELECT id FROM deletion_requests ORDER BY id")] == [7, 9, 12]
        with pytest.raises(sqlite3.IntegrityError):  # still a CHECK, just a wider one
            db.execute("UPDATE deletion_requests SET status = 'bogus' WHERE id = 12")
    RequestQueue(f"sqlite:///{path}").close()  # a second open finds nothing to do
    assert _sqlite_schema(path) == schema


def test_postgresql_table_from_older_code_is_widened(postgres_url: str, tmp_path: Path, clock: Clock) -> None:
    engine = create_engine(postgres_url)
    with engine.begin() as conn:  # the old status CHECK (other constraints and indexes left out)
        conn.execute(
            text(
                "CREATE TABLE deletion_requests (id SERIAL PRIMARY KEY, request_id VARCHAR(128) NOT NULL"
                " UNIQUE, record_id VARCHAR(128) NOT NULL, reason VARCHAR(16) NOT NULL, received_at"
                " TIMESTAMP WITH TIME ZONE NOT NULL, submitted_at TIMESTAMP WITH TIME ZONE NOT NULL,"
                " source_sha256 VARCHAR(64) NOT NULL, status VARCHAR(16) NOT NULL, verdict VARCHAR(16),"
                " verdict_reason TEXT, batch_id VARCHAR(128), claim_token VARCHAR(32), claimed_at"
                " TIMESTAMP WITH TIME ZONE, model_version VARCHAR(256), updated_at TIMESTAMP WITH TIME ZONE"
                " NOT NULL, CONSTRAINT ck_deletion_requests_status CHECK"
                " (status IN ('pending', 'claimed', 'rejected', 'erased')))"
            )
        )
        conn.execute(
            text(
                "INSERT INTO deletion_requests (request_id, record_id, reason, received_at, submitted_at,"
                " source_sha256, status, verdict, verdict_reason, batch_id, model_version, updated_at)"
                " VALUES ('old-erased', 'rec-0', 'privacy', now(), now(), :sha, 'erased', 'accepted', 'ok',"
                " 'b-0', 'models:/m/1', now())"
            ),
            {"sha": "0" * 64},
        )
    queue = RequestQueue(postgres_url, clock=clock)
    run_batch(queue, tmp_path, "b-1", [("r-1", "rec-1"), ("r-2", "rec-2")], "models:/m/2")
    clock.advance(days=31)
    assert [r.request_id for r in queue.list_overdue()] == ["r-1", "r-2"]
    assert queue.mark_served(["rec-1"], "models:/m/2") == 1
    assert queue.mark_served(["rec-1"], "models:/m/2") == 0
    assert queue.served_erased_record_ids() == {"rec-0", "rec-1"}
    assert queue.erased_record_ids() == {"rec-0", "rec-1", "rec-2"}
    queue.close()
    with engine.connect() as conn:
        assert _status_check_is_current(conn)  # so the next open changes nothing
        checks = inspect(conn).get_check_constraints("deletion_requests")
    assert any("'unlearned'" in c["sqltext"] for c in checks if c["name"] == "ck_deletion_requests_status")
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text("UPDATE deletion_requests SET status = 'bogus'"))
    engine.dispose()


# --------------------------------------------------------------------------- the CLI


@pytest.fixture
def cli_home(tmp_path: Path) -> Iterator[Path]:
    """A temporary ``HAMU_HOME``; the whole environment is restored after (the CLI sets defaults in it)."""
    home = tmp_path / "hamu-home"
    with mock.patch.dict(os.environ):
        os.environ["HAMU_HOME"] = str(home)
        for name in ("HAMU_QUEUE_URL", PROMOTION_DEADLINE_ENV):
            os.environ.pop(name, None)
        yield home


@pytest.fixture
def aged_home(cli_home: Path, tmp_path: Path) -> Path:
    """Requests aged against the real clock (the CLI's): unlearned 45 and 2 days ago, erased, pending."""
    now = datetime.now(UTC)
    clock = Clock(now - timedelta(days=45))
    with RequestQueue(default_queue_url(cli_home), clock=clock) as queue:
        run_batch(queue, tmp_path, "b-1", [("late", "rec-1"), ("served", "rec-2")], "models:/m/2")
        queue.mark_served(["rec-2"], "models:/m/2")
        clock.now = now - timedelta(days=2)
        run_batch(queue, tmp_path, "b-2", [("recent", "rec-3")], "models:/m/3")
        queue.submit_file(write_requests(tmp_path, "waiting.csv", [("waiting", "rec-4")]))
    return cli_home


def _list(*args: str) -> Any:
    from hamu_pipeline.flows.cli import app

    return CliRunner().invoke(app, ["requests", "list", *args])


def _listed(*args: str) -> dict[str, dict[str, Any]]:
    result = _list(*args, "--json")
    assert result.exit_code == 0, result.output
    return {r["request_id"]: r for r in json.loads(result.output)}


def test_cli_lists_overdue_requests_with_their_age(aged_home: Path) -> None:
    overdue = _listed("--status", "overdue")
    assert list(overdue) == ["late"]
    assert overdue["late"]["status"] == "unlearned"
    assert overdue["late"]["pending_promotion_days"] == 45.0
    assert overdue["late"]["overdue"] is True


def test_cli_shows_pending_promotion_days_only_for_unlearned(aged_home: Path) -> None:
    everything = _listed()
    assert {k: (r["pending_promotion_days"], r["overdue"]) for k, r in everything.items()} == {
        "late": (45.0, True),
        "served": (None, False),
        "recent": (2.0, False),
        "waiting": (None, False),
    }
    assert list(_listed("--status", "unlearned")) == ["late", "recent"]
    table = _list()
    assert table.exit_code == 0 and "4 requests" in table.output


def test_cli_deadline_from_option_then_environment(aged_home: Path) -> None:
    assert _listed("--status", "overdue", "--deadline-days", "60") == {}
    os.environ[PROMOTION_DEADLINE_ENV] = "1.5"
    assert list(_listed("--status", "overdue")) == ["late", "recent"]
    assert list(_listed("--status", "overdue", "--deadline-days", "30")) == ["late"]  # the option wins


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (
            ["--status", "bogus"],
            None,
            "unknown status 'bogus'; accepted: pending, claimed, unlearned, erased",
        ),
        (["--status", "overdue", "--deadline-days", "-1"], None, "bad --deadline-days"),
        (["--status", "overdue"], "soon", f"bad {PROMOTION_DEADLINE_ENV}"),
    ],
)
def test_cli_refuses_unknown_status_and_bad_deadlines(
    aged_home: Path, args: list[str], env: str | None, message: str
) -> None:
    if env is not None:
        os.environ[PROMOTION_DEADLINE_ENV] = env
    result = _list(*args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
