"""The deletion-request queue: a table behind SQLAlchemy, with atomic batch claims.

States and who moves them::

    submit_file ──► pending ──claim_batch──► claimed ──mark_unlearned──► unlearned ──mark_served──► erased
                     ▲ ▲                      │ │ │    (batch close: a      (promotion: the served
                     │ └───release_batch──────┘ │ │    candidate lacks it)   model lacks it)
                     │   (or release_expired)   │ │
                     │                          │ └──mark_rejected──► rejected
                     │                          └──quarantine, or release_batch after
                     │                             quarantine_after failed batches──► quarantined
                     └──────────────────────────requeue (an operator, once the cause is fixed)──┘

A claim carries a lease (``lease_expires_at``, :data:`~hamu.governance.requests.schema.DEFAULT_LEASE` from
the claim
unless told): the batch renews it with :meth:`RequestQueue.heartbeat` while it runs, and
:meth:`RequestQueue.release_expired` puts the claims of a batch that stopped renewing back to pending, on
whichever host it ran. An expired lease is final: it cannot be renewed, and the batch can no longer close
its requests, because every close re-checks ownership (batch, claim token, unexpired lease) in the
``WHERE`` of its own ``UPDATE``.

``overdue`` is derived, not stored: an ``unlearned`` request that has waited longer than a deadline for a
promotion (:meth:`RequestQueue.list_overdue`).

One failure must not block the queue: a claim takes at most ``limit`` requests
(:data:`~hamu.governance.requests.schema.DEFAULT_MAX_REQUESTS` unless told), and a request that keeps failing
its
batches is quarantined with a reason instead of being released to fail again every night.

Every method is one database transaction, so a failure leaves the queue as it was. On SQLite every
write transaction starts with ``BEGIN IMMEDIATE``: the write lock is taken before anything is read, so
two processes claiming at once are serialised (the second waits up to the busy timeout, then gets only
what is left, or :class:`QueueBusyError`). On PostgreSQL the claim's sub-select uses
``FOR UPDATE SKIP LOCKED`` and the ``status = 'pending'`` guard is re-checked by the UPDATE itself.

A table created before ``unlearned`` existed has a status CHECK constraint that refuses it; opening the
queue widens that constraint once, under the write lock, keeping every row (see :func:`_widen_status_check`).
"""

from __future__ import annotations

import builtins
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Connection,
    Engine,
    Update,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    inspect,
    or_,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.schema import Column, CreateColumn

from hamu.governance.requests.errors import (
    LeaseLostError,
    LineProblem,
    QueueBusyError,
    QueueStateError,
    RequestFileError,
)
from hamu.governance.requests.intake import DEFAULT_MAX_BYTES, FileFormat, load_request_file, parse_requests
from hamu.governance.requests.schema import (
    BATCH_ID_PATTERN,
    DEFAULT_LEASE,
    DEFAULT_MAX_REQUESTS,
    DEFAULT_PROMOTION_DEADLINE,
    DEFAULT_QUARANTINE_AFTER,
    Request,
    Status,
    Verdict,
    metadata,
    requests_table,
)

_T = requests_table
_BATCH_ID_RE = re.compile(BATCH_ID_PATTERN[1:-1])
# Stay far below SQLite's bound-variable limit when filtering by many request IDs.
_CHUNK = 500
_MAX_LISTED = 5


def default_queue_url(home: Path) -> str:
    """The embedded default: ``sqlite:///<HAMU_HOME>/requests.db`` (absolute, so the CWD never matters)."""
    return f"sqlite:///{(Path(home).resolve() / 'requests.db').as_posix()}"


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class SubmitResult:
    """What one accepted file put into the queue (the digest links the queue rows to the file)."""

    path: Path
    sha256: str
    fmt: FileFormat
    request_ids: tuple[str, ...]
    submitted_at: datetime

    @property
    def count(self) -> int:
        """Number of requests queued from the file."""
        return len(self.request_ids)


def _chunks(items: Sequence[str], size: int = _CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _is_locked(exc: OperationalError) -> bool:
    text = str(exc.orig).lower()
    return "database is locked" in text or "database table is locked" in text


def _check_batch_id(batch_id: str) -> None:
    if not isinstance(batch_id, str) or _BATCH_ID_RE.fullmatch(batch_id) is None:
        raise ValueError(f"batch_id {batch_id!r} does not match {BATCH_ID_PATTERN}")


def _check_model_version(model_version: str) -> None:
    if not isinstance(model_version, str) or not model_version.strip():
        raise ValueError("model_version must be a non-empty string")


def _status_check() -> CheckConstraint:
    """The table's status CHECK constraint, as this code declares it (every :class:`Status` value)."""
    for constraint in _T.constraints:
        if isinstance(constraint, CheckConstraint) and constraint.name == "ck_deletion_requests_status":
            return constraint
    raise LookupError("deletion_requests declares no status CHECK constraint")  # pragma: no cover


def _status_check_is_current(conn: Connection) -> bool:
    """False if the stored table's status CHECK omits a status this code writes (a table made by older code).

    A table without that constraint accepts every status, so it needs nothing.
    """
    name = _status_check().name
    for found in inspect(conn).get_check_constraints(_T.name):
        if found["name"] == name:
            return all(f"'{s.value}'" in found["sqltext"] for s in Status)
    return True


def _missing_columns(conn: Connection) -> list[Column[Any]]:
    """Columns this code declares that the stored table lacks (a table made by older code), in order."""
    present = {c["name"] for c in inspect(conn).get_columns(_T.name)}
    return [c for c in _T.columns if c.name not in present]


def _add_columns(conn: Connection, columns: Sequence[Column[Any]]) -> None:
    """``ALTER TABLE … ADD COLUMN`` each one, in the caller's transaction (SQLite and PostgreSQL alike).

    Every column added since the first release is nullable or has a server default, so the rows already
    there are filled in by the database and no copy is needed.
    """
    for column in columns:
        ddl = CreateColumn(column).compile(dialect=conn.dialect)
        conn.exec_driver_sql(f'ALTER TABLE "{_T.name}" ADD COLUMN {ddl}')


def _table_is_current(conn: Connection) -> bool:
    """True if the stored table has every column and status this code writes (nothing to migrate)."""
    return not _missing_columns(conn) and _status_check_is_current(conn)


def _widen_status_check(conn: Connection) -> None:
    """Replace an older status CHECK with the current one, keeping every row (in the caller's transaction).

    The new constraint only admits more values, so every existing row satisfies it. PostgreSQL (and any
    database with ``ALTER TABLE … DROP CONSTRAINT``) swaps the constraint in place; SQLite cannot alter a
    constraint, so the table is rebuilt as its documented procedure says: move the old table aside, create
    the current one with its indexes, copy every row (``id`` included, so arrival order is kept), drop the
    old one. Either way the change commits with the caller's transaction or not at all.
    """
    if conn.dialect.name != "sqlite":
        # Plain DDL, not SQLAlchemy's AddConstraint: constructing that marks the shared Table's constraint
        # as "added later", and every CREATE TABLE in this process would then leave the status CHECK out.
        check = _status_check()
        conn.exec_driver_sql(f'ALTER TABLE "{_T.name}" DROP CONSTRAINT "{check.name}"')
        conn.exec_driver_sql(f'ALTER TABLE "{_T.name}" ADD CONSTRAINT "{check.name}" CHECK ({check.sqltext})')
        return
    old = f"{_T.name}_before_widening"
    for index in inspect(conn).get_indexes(_T.name):
        if index["name"]:
            conn.exec_driver_sql(f'DROP INDEX "{index["name"]}"')
    conn.exec_driver_sql(f'ALTER TABLE "{_T.name}" RENAME TO "{old}"')
    _T.create(conn)
    columns = ", ".join(f'"{c.name}"' for c in _T.columns)
    conn.exec_driver_sql(f'INSERT INTO "{_T.name}" ({columns}) SELECT {columns} FROM "{old}"')
    conn.exec_driver_sql(f'DROP TABLE "{old}"')


def _listed(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def _claim_statement(
    batch_id: str, token: str, now: datetime, limit: int | None, lease_expires_at: datetime | None = None
) -> Update:
    """``WITH picked AS (oldest pending, locked) UPDATE … SET status='claimed' WHERE id IN picked, pending``.

    The pick's ``FOR UPDATE SKIP LOCKED`` makes concurrent PostgreSQL claimers take disjoint rows without
    waiting; SQLite renders no locking clause and is serialised by ``BEGIN IMMEDIATE`` instead. The outer
    ``status = 'pending'`` guard is re-evaluated on the row actually updated.

    On PostgreSQL the pick is a ``MATERIALIZED`` CTE, evaluated exactly once. As a plain ``IN (sub-select)``
    the planner may choose a nested-loop semi-join that rescans the sub-select for every outer row, and
    each rescan's ``LIMIT … SKIP LOCKED`` yields further rows: the claim then took every pending request,
    whatever ``limit`` said.
    """
    pick = select(_T.c.id).where(_T.c.status == Status.PENDING.value).order_by(_T.c.received_at, _T.c.id)
    if limit is not None:
        pick = pick.limit(limit)
    picked = (
        pick.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED", dialect="postgresql")
    )
    return (
        update(_T)
        .where(_T.c.id.in_(select(picked.c.id)), _T.c.status == Status.PENDING.value)
        .values(
            status=Status.CLAIMED.value,
            batch_id=batch_id,
            claim_token=token,
            claimed_at=now,
            lease_expires_at=lease_expires_at,
            updated_at=now,
            verdict=None,
            verdict_reason=None,
        )
    )


#: The columns a request drops with its claim (released, quarantined): no owner, no claim time, no lease.
_NO_CLAIM: dict[str, None] = {"claim_token": None, "claimed_at": None, "lease_expires_at": None}


class RequestQueue:
    """Deletion requests in any SQLAlchemy database (SQLite file by default).

    The queue is the only writer of request state; the pipeline reads snapshots (:class:`Request`) and
    reports back through :meth:`record_verdicts`, :meth:`mark_unlearned` and :meth:`mark_rejected`, which
    refuse to touch requests the calling batch does not hold. Promotion reports through
    :meth:`mark_served`, which names records, not a batch: a promoted version may serve the erasure of
    requests closed by older, never-promoted batches.
    """

    def __init__(
        self,
        url: str,
        *,
        busy_timeout_s: float = 30.0,
        clock: Callable[[], datetime] = _utcnow,
        quarantine_after: int = DEFAULT_QUARANTINE_AFTER,
        lease: timedelta = DEFAULT_LEASE,
        echo: bool = False,
    ) -> None:
        """Open (and create if needed) the queue at ``url``.

        ``busy_timeout_s`` bounds how long a writer waits for another writer's lock on SQLite;
        ``clock`` must return timezone-aware datetimes (tests inject one to age claims);
        ``quarantine_after`` is the number of failed batches after which a request is quarantined rather
        than released (the default 3: released after the first two, quarantined by the third; see
        :meth:`release_batch`); ``lease`` is how long a claim or a heartbeat keeps a batch's claims
        (:data:`~hamu.governance.requests.schema.DEFAULT_LEASE`; see :meth:`heartbeat`).
        """
        if type(quarantine_after) is not int or quarantine_after < 1:
            raise ValueError(f"quarantine_after must be a positive integer, got {quarantine_after!r}")
        if not isinstance(lease, timedelta) or lease <= timedelta(0):
            raise ValueError(f"lease must be a positive timedelta, got {lease!r}")
        self._quarantine_after = quarantine_after
        self._lease = lease
        # The claim tokens this object took, per batch: a batch's own heartbeat, close, quarantine and
        # release then act on its own claims only, never on a later claim made under the same batch ID.
        # Replaced, never mutated, so the heartbeat thread always reads a consistent set.
        self._tokens: dict[str, frozenset[str]] = {}
        self._clock = clock
        parsed = make_url(url)
        self._sqlite = parsed.get_backend_name() == "sqlite"
        connect_args: dict[str, Any] = {}
        if self._sqlite:
            database = parsed.database or ""
            if database and database != ":memory:" and not database.startswith("file:"):
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            connect_args["timeout"] = busy_timeout_s
        self._engine: Engine = create_engine(url, echo=echo, connect_args=connect_args)
        if self._sqlite:
            self._install_sqlite_locking(file_backed=bool(database) and database != ":memory:")
        self._create_schema()

    def _create_schema(self) -> None:
        """Create the table if missing, or bring an older one up to date: its columns, then its status CHECK.

        Columns come first, so that SQLite's rebuild for the CHECK copies every column the new table has.
        The write lock is only taken when something must change, and everything is checked again under
        it: another process opening the same database may have done the work already.
        """
        with self._transaction(write=False) as conn:
            if inspect(conn).has_table(_T.name) and _table_is_current(conn):
                return
        with self._transaction(write=True) as conn:
            if not inspect(conn).has_table(_T.name):
                metadata.create_all(conn)
                return
            missing = _missing_columns(conn)
            if missing:
                _add_columns(conn, missing)
            if not _status_check_is_current(conn):
                _widen_status_check(conn)

    def _install_sqlite_locking(self, *, file_backed: bool) -> None:
        """Take transaction control away from pysqlite so writes can start with BEGIN IMMEDIATE.

        pysqlite's own implicit BEGIN is deferred: two writers that read before they write (the
        duplicate-ID check of ``submit_file``, the state checks before verdicts and closes) could both
        read, then one fails on its stale snapshot with "database is locked" instead of waiting and
        seeing the other's rows. (A lone UPDATE, like the claim, takes SQLite's write lock when the
        statement starts, so it is atomic either way.) WAL lets readers proceed while a write is open.
        """

        @event.listens_for(self._engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None
            if file_backed:
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.close()

        @event.listens_for(self._engine, "begin")
        def _on_begin(conn: Connection) -> None:
            write = conn.get_execution_options().get("hamu_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    @property
    def lease(self) -> timedelta:
        """How long a claim, or its last heartbeat, keeps a batch's requests."""
        return self._lease

    @property
    def url(self) -> str:
        """The database URL with any password masked."""
        return self._engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        """Release pooled connections (file handles on SQLite)."""
        self._engine.dispose()

    def __enter__(self) -> RequestQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("the queue's clock returned a naive datetime")
        return now.astimezone(UTC)

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Connection]:
        """One transaction; a lock timeout becomes :class:`QueueBusyError`, anything else rolls back."""
        try:
            with self._engine.connect() as conn:
                if write:
                    conn.execution_options(hamu_write=True)
                with conn.begin():
                    yield conn
        except OperationalError as exc:
            if _is_locked(exc):
                raise QueueBusyError(
                    f"request queue {self.url} is locked by another writer: {exc.orig}"
                ) from exc
            raise

    def _rows_by_request_id(self, conn: Connection, request_ids: Sequence[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for part in _chunks(request_ids):
            for row in conn.execute(select(_T).where(_T.c.request_id.in_(part))):
                found[row.request_id] = row
        return found

    # ------------------------------------------------------------------ intake

    def submit_file(
        self,
        path: Path | str,
        *,
        allowed_root: Path | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        fmt: FileFormat | None = None,
    ) -> SubmitResult:
        """Queue every request of a CSV or JSONL file, or none of them.

        The file needs exactly the columns ``request_id, record_id, reason, received_at`` (see
        ``docs/requests.md``). Any problem raises :class:`RequestFileError` naming the line and field,
        and the queue is left unchanged; a request ID already in the queue (from an earlier file) is such
        a problem, checked under the write lock so that two submitters cannot both insert it.
        """
        loaded = load_request_file(path, allowed_root=allowed_root, max_bytes=max_bytes, fmt=fmt)
        now = self._now()
        parsed = parse_requests(loaded.data, fmt=loaded.fmt, now=now, source=str(path))
        ids = [p.request_id for p in parsed]
        rows = [
            {
                "request_id": p.request_id,
                "record_id": p.record_id,
                "reason": p.reason.value,
                "received_at": p.received_at,
                "submitted_at": now,
                "source_sha256": loaded.sha256,
                "status": Status.PENDING.value,
                "updated_at": now,
            }
            for p in parsed
        ]
        try:
            with self._transaction(write=True) as conn:
                existing = self._rows_by_request_id(conn, ids)
                if existing:
                    raise RequestFileError(
                        str(path),
                        [
                            LineProblem(
                                p.line,
                                "request_id",
                                f"request_id {p.request_id!r} is already in the queue "
                                f"(status {existing[p.request_id].status})",
                            )
                            for p in parsed
                            if p.request_id in existing
                        ],
                    )
                conn.execute(insert(_T), rows)
        except IntegrityError as exc:  # a concurrent submitter won a race the lock could not prevent
            raise RequestFileError(
                str(path),
                [LineProblem(None, "request_id", f"a request_id is already in the queue ({exc.orig})")],
            ) from exc
        return SubmitResult(
            path=loaded.path, sha256=loaded.sha256, fmt=loaded.fmt, request_ids=tuple(ids), submitted_at=now
        )

    # ------------------------------------------------------------------ claims

    def claim_batch(
        self, batch_id: str, *, limit: int | None = DEFAULT_MAX_REQUESTS
    ) -> builtins.list[Request]:
        """Claim up to ``limit`` pending requests (oldest ``received_at`` first) for ``batch_id``.

        One UPDATE guarded by ``status = 'pending'`` inside one write transaction: no request can be
        claimed by two batches, and a claimer that waited for another gets only what is left. A fresh
        claim token marks exactly the rows this call took, which are then read back in FIFO order.
        ``limit`` defaults to :data:`~hamu.governance.requests.schema.DEFAULT_MAX_REQUESTS`, so a backlog is
        worked
        off over several batches instead of all at once; ``None`` lifts the cap (tools and tests only).
        Quarantined requests are never claimed.
        """
        _check_batch_id(batch_id)
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
        token = uuid.uuid4().hex
        now = self._now()
        stmt = _claim_statement(batch_id, token, now, limit, now + self._lease)
        with self._transaction(write=True) as conn:
            conn.execute(stmt)
            claimed = conn.execute(
                select(_T).where(_T.c.claim_token == token).order_by(_T.c.received_at, _T.c.id)
            ).all()
        if claimed:
            self._tokens[batch_id] = self._tokens.get(batch_id, frozenset()) | {token}
        return [Request.from_row(r) for r in claimed]

    def _own(self, batch_id: str) -> tuple[Any, ...]:
        """WHERE terms for rows of ``batch_id`` this object claimed (its tokens), or the batch's rows at all.

        A queue object that never claimed for the batch (recovery, an operator's tool) acts on the batch.
        """
        tokens = self._tokens.get(batch_id)
        held = (_T.c.status == Status.CLAIMED.value, _T.c.batch_id == batch_id)
        return (*held, _T.c.claim_token.in_(sorted(tokens))) if tokens else held

    def heartbeat(self, batch_id: str, token: str | None = None) -> datetime | None:
        """Extend the lease of the batch's claims to ``now + lease``; return the new expiry.

        ``token`` is the claim's token (:attr:`Request.claim_token`); ``None`` means the tokens this object's
        :meth:`claim_batch` took for the batch. Returns ``None`` when the claim is over because the batch
        closed or quarantined every request it took (nothing left to hold). Raises
        :class:`LeaseLostError` when the batch no longer owns its claims: the lease expired (an expired
        lease is never renewed: recovery may already be releasing it), or the requests were released
        (by recovery, or by the batch itself) and perhaps claimed again by another batch.
        """
        _check_batch_id(batch_id)
        if token is not None:
            tokens: frozenset[str] = frozenset({token})
        else:
            tokens = self._tokens.get(batch_id, frozenset())
            if not tokens:
                raise ValueError(f"this queue claimed nothing for batch {batch_id!r}: pass the claim token")
        now = self._now()
        expires = now + self._lease
        ours = (_T.c.batch_id == batch_id, _T.c.claim_token.in_(sorted(tokens)))
        with self._transaction(write=True) as conn:
            renewed = conn.execute(
                update(_T)
                .where(*ours, _T.c.status == Status.CLAIMED.value, _T.c.lease_expires_at > now)
                .values(lease_expires_at=expires)
            ).rowcount
            if renewed:
                return expires
            expired = conn.scalar(
                select(func.max(_T.c.lease_expires_at)).where(*ours, _T.c.status == Status.CLAIMED.value)
            )
            if expired is not None:
                raise LeaseLostError(
                    f"batch {batch_id!r}: its lease expired at {expired.isoformat()} (now {now.isoformat()});"
                    " an expired lease is not renewed, the claims will be released"
                )
            if conn.scalar(select(func.count()).where(*ours)):
                return None  # every request it took is closed or quarantined: nothing to hold any more
        raise LeaseLostError(
            f"batch {batch_id!r} holds no claims under its token: they were released (lease expired, or"
            " recovery) and may have been claimed again"
        )

    def release_expired(self, *, now: datetime | None = None) -> dict[str, int]:
        """Put every claim whose lease expired back to pending, in one transaction; return counts per batch.

        What recovery calls for batches it cannot see: one that died on another host (or pod) leaves no
        lock file here, only its lease in the database. Like a crash (``release_batch(failed=False)``) this
        does not count towards quarantine, and verdicts are cleared. ``now`` defaults to the queue's clock.
        Claims without a lease (made by code older than leases) are left to the lock-file recovery.
        """
        now = self._now() if now is None else now.astimezone(UTC)
        lapsed = (
            _T.c.status == Status.CLAIMED.value,
            _T.c.lease_expires_at.is_not(None),
            _T.c.lease_expires_at <= now,
        )
        released: dict[str, int] = {}
        with self._transaction(write=True) as conn:
            # Read (and on PostgreSQL lock) first: RETURNING would give the batch ID after the release, None.
            rows = conn.execute(select(_T.c.id, _T.c.batch_id).where(*lapsed).with_for_update()).all()
            for part in _chunks([row.id for row in rows]):
                conn.execute(
                    update(_T)
                    .where(_T.c.id.in_(part), *lapsed)
                    .values(
                        status=Status.PENDING.value,
                        batch_id=None,
                        **_NO_CLAIM,
                        verdict=None,
                        verdict_reason=None,
                        updated_at=now,
                    )
                )
            for row in rows:
                released[row.batch_id] = released.get(row.batch_id, 0) + 1
        return dict(sorted(released.items()))

    def release_batch(self, batch_id: str, *, failed: bool = True) -> int:
        """Put a batch's still-claimed requests back to pending (verdicts cleared); return how many went back.

        ``failed`` (the default: the batch raised) adds one to each request's ``failures``, and a request
        that reaches ``quarantine_after`` failed batches is quarantined instead of released, with the
        reason on its row, so a deterministic failure stops recurring every night. Recovery of a batch
        whose *process died* passes ``failed=False``: a SIGKILL, power cut or OOM kill says nothing about
        the requests, and counting it would quarantine sound requests after a few unlucky nights.
        Requests the batch already unlearned or rejected stay so: only unfinished work moves. Both moves
        are one transaction.
        """
        _check_batch_id(batch_id)
        now = self._now()
        held = self._own(batch_id)
        with self._transaction(write=True) as conn:
            if failed:
                conn.execute(
                    update(_T)
                    .where(*held, _T.c.failures + 1 >= self._quarantine_after)
                    .values(
                        status=Status.QUARANTINED.value,
                        failures=_T.c.failures + 1,
                        quarantine_reason=self._quarantine_reason(batch_id),
                        **_NO_CLAIM,
                        updated_at=now,
                    )
                )
            released = conn.execute(
                update(_T)
                .where(*held)
                .values(
                    status=Status.PENDING.value,
                    failures=_T.c.failures + int(failed),
                    batch_id=None,
                    **_NO_CLAIM,
                    verdict=None,
                    verdict_reason=None,
                    updated_at=now,
                )
            )
            return released.rowcount

    def _quarantine_reason(self, batch_id: str) -> str:
        """Why :meth:`release_batch` quarantined a request: counts and batch IDs only, never record IDs."""
        return (
            f"failed in {self._quarantine_after} batches, the last {batch_id}; "
            "their `failed` ledger records say why"
        )

    def quarantine(self, batch_id: str, request_ids: Iterable[str], reason: str) -> int:
        """Quarantine requests ``batch_id`` holds, with ``reason`` (all or nothing); return how many.

        For a failure the batch can pin on particular requests: only they leave the nightly loop, and the
        rest of the batch carries on or is released. A quarantined request keeps its ``batch_id`` (the batch
        that quarantined it) and verdict, and is never claimed again until :meth:`requeue`. Every request
        named must be claimed by ``batch_id``; otherwise :class:`QueueStateError` and nothing changes.
        """
        _check_batch_id(batch_id)
        if isinstance(request_ids, str):
            raise TypeError("request_ids must be a collection of request IDs, not a single string")
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("quarantine needs a non-empty reason: the row must say why")
        ids = list(dict.fromkeys(request_ids))
        stmt = (
            update(_T)
            .where(_T.c.request_id == bindparam("b_request_id"), *self._own(batch_id))
            .values(
                status=Status.QUARANTINED.value,
                quarantine_reason=reason,
                **_NO_CLAIM,
                updated_at=self._now(),
            )
        )
        with self._transaction(write=True) as conn:
            self._require_held(conn, batch_id, ids, allowed=lambda _row: None)
            if ids:
                conn.execute(stmt, [{"b_request_id": r} for r in ids])
        return len(ids)

    def requeue(self, request_ids: Iterable[str]) -> int:
        """Quarantined → pending, failure count and reason cleared (all or nothing); return how many.

        An operator's call once the cause is fixed, or to give the sound requests of a quarantined batch
        another go. A request that is unknown or not quarantined raises :class:`QueueStateError`, and
        nothing changes.
        """
        if isinstance(request_ids, str):
            raise TypeError("request_ids must be a collection of request IDs, not a single string")
        ids = list(dict.fromkeys(request_ids))
        stmt = (
            update(_T)
            .where(_T.c.request_id == bindparam("b_request_id"), _T.c.status == Status.QUARANTINED.value)
            .values(
                status=Status.PENDING.value,
                failures=0,
                quarantine_reason=None,
                batch_id=None,
                verdict=None,
                verdict_reason=None,
                updated_at=self._now(),
            )
        )
        with self._transaction(write=True) as conn:
            rows = self._rows_by_request_id(conn, ids)
            missing = [r for r in ids if r not in rows]
            if missing:
                raise QueueStateError(f"unknown request_id(s): {_listed(missing)}; nothing changed")
            other = [f"{r} ({rows[r].status})" for r in ids if rows[r].status != Status.QUARANTINED.value]
            if other:
                raise QueueStateError(f"not quarantined: {_listed(other)}; nothing changed")
            if ids:
                conn.execute(stmt, [{"b_request_id": r} for r in ids])
        return len(ids)

    # ------------------------------------------------------------------ outcomes

    def _require_held(
        self,
        conn: Connection,
        batch_id: str,
        request_ids: Sequence[str],
        *,
        allowed: Callable[[Any], str | None],
        lease_at: datetime | None = None,
    ) -> None:
        """Raise :class:`QueueStateError` unless every request is claimed by ``batch_id`` and allowed.

        With ``lease_at`` (a close), also :class:`LeaseLostError` unless the batch still owns the claims at
        that time: under this object's claim token (when it claimed them) and with a lease not yet expired.
        """
        rows = self._rows_by_request_id(conn, request_ids)
        missing = [r for r in request_ids if r not in rows]
        if missing:
            raise QueueStateError(f"unknown request_id(s): {_listed(missing)}; nothing changed")
        foreign = [
            f"{r} ({rows[r].status}, batch {rows[r].batch_id})"
            for r in request_ids
            if rows[r].status != Status.CLAIMED.value or rows[r].batch_id != batch_id
        ]
        if foreign:
            raise QueueStateError(f"not claimed by batch {batch_id!r}: {_listed(foreign)}; nothing changed")
        if lease_at is not None:
            self._require_lease(batch_id, [rows[r] for r in request_ids], lease_at)
        refused = [f"{r} ({why})" for r in request_ids if (why := allowed(rows[r])) is not None]
        if refused:
            raise QueueStateError(f"refused for batch {batch_id!r}: {_listed(refused)}; nothing changed")

    def _require_lease(self, batch_id: str, rows: Sequence[Any], now: datetime) -> None:
        """Raise :class:`LeaseLostError` unless these claimed rows are still the batch's (token, lease)."""
        tokens = self._tokens.get(batch_id)
        if tokens:
            foreign = [r.request_id for r in rows if r.claim_token not in tokens]
            if foreign:
                raise LeaseLostError(
                    f"batch {batch_id!r}: {_listed(foreign)} claimed again under the same batch ID by another"
                    " run (its claim token differs); nothing changed"
                )
        lapsed = [r for r in rows if r.lease_expires_at is not None and r.lease_expires_at <= now]
        if lapsed:
            expiry = max(r.lease_expires_at for r in lapsed)
            raise LeaseLostError(
                f"batch {batch_id!r}: the lease on {_listed([r.request_id for r in lapsed])} expired at"
                f" {expiry.isoformat()}"
                f" (now {now.isoformat()}): the claims are no longer this batch's to close; nothing changed"
            )

    def record_verdicts(self, batch_id: str, verdicts: Mapping[str, tuple[Verdict | str, str]]) -> int:
        """Store each claimed request's validation verdict and its reason (all or nothing).

        A verdict can be recorded again while the request is still claimed (re-validation); every
        request named must be claimed by ``batch_id``.
        """
        _check_batch_id(batch_id)
        params = []
        for request_id, (verdict, reason) in verdicts.items():
            try:
                value = Verdict(verdict)
            except ValueError:
                allowed = ", ".join(v.value for v in Verdict)
                raise ValueError(f"{request_id}: unknown verdict {verdict!r} (allowed: {allowed})") from None
            if not isinstance(reason, str) or not reason.strip():
                raise ValueError(f"{request_id}: verdict {value.value} needs a non-empty reason")
            params.append({"b_request_id": request_id, "b_verdict": value.value, "b_reason": reason})
        if not params:
            return 0
        stmt = (
            update(_T)
            .where(_T.c.request_id == bindparam("b_request_id"))
            .values(
                verdict=bindparam("b_verdict"), verdict_reason=bindparam("b_reason"), updated_at=self._now()
            )
        )
        with self._transaction(write=True) as conn:
            self._require_held(conn, batch_id, list(verdicts), allowed=lambda _row: None)
            conn.execute(stmt, params)
        return len(params)

    def _close(self, batch_id: str, request_ids: Sequence[str] | None, status: Status, **values: Any) -> int:
        """Close held requests as unlearned or rejected, in one transaction (``None``: all its rejections).

        Ownership is checked twice: first by reading the rows (for an error that names them), then again
        by the ``UPDATE`` itself, whose ``WHERE`` repeats it: claimed by this batch, under this object's
        claim token when it has one, lease not expired (a claim older than leases has none). A release or
        re-claim that commits in between (PostgreSQL re-evaluates the ``WHERE`` on the newest row version)
        leaves the close changing fewer rows; it then raises :class:`LeaseLostError` and the whole
        transaction rolls back.
        """
        now = self._now()
        # A claim without a lease was made by code older than leases (before the column existed): it is
        # owned by its batch ID alone, as it was then, and only the lock-file recovery releases it.
        owned = (*self._own(batch_id), or_(_T.c.lease_expires_at.is_(None), _T.c.lease_expires_at > now))
        if status is Status.UNLEARNED:

            def allowed(row: Any) -> str | None:
                return (
                    None if row.verdict == Verdict.ACCEPTED.value else f"verdict {row.verdict}, not accepted"
                )

        else:

            def allowed(row: Any) -> str | None:
                if row.verdict is None:
                    return "no verdict recorded"
                return "verdict accepted" if row.verdict == Verdict.ACCEPTED.value else None

        with self._transaction(write=True) as conn:
            if request_ids is None:
                request_ids = list(
                    conn.scalars(
                        select(_T.c.request_id).where(
                            _T.c.batch_id == batch_id,
                            _T.c.status == Status.CLAIMED.value,
                            _T.c.verdict.is_not(None),
                            _T.c.verdict != Verdict.ACCEPTED.value,
                        )
                    )
                )
            self._require_held(conn, batch_id, request_ids, allowed=allowed, lease_at=now)
            closed = 0
            for part in _chunks(request_ids):
                stmt = (
                    update(_T)
                    .where(_T.c.request_id.in_(part), *owned)
                    .values(status=status.value, updated_at=now, lease_expires_at=None, **values)
                )
                closed += conn.execute(stmt).rowcount
            if closed != len(request_ids):
                raise LeaseLostError(
                    f"batch {batch_id!r} lost {len(request_ids) - closed} of {len(request_ids)} claim(s)"
                    " while closing them (lease expired, or released and claimed again); nothing changed"
                )
        return len(request_ids)

    def mark_unlearned(self, batch_id: str, request_ids: Iterable[str], model_version: str) -> int:
        """Close accepted requests as unlearned, naming the candidate version that no longer carries them.

        Only requests this batch holds with an ``accepted`` verdict can be closed so, and an unvalidated or
        rejected request can never be reported as unlearned. Not ``erased``: the candidate is not served
        until it is promoted (:meth:`mark_served`). The close time (``updated_at``) starts the promotion
        deadline.
        """
        _check_batch_id(batch_id)
        _check_model_version(model_version)
        ids = list(dict.fromkeys(request_ids))
        return self._close(batch_id, ids, Status.UNLEARNED, model_version=model_version)

    def mark_served(self, record_ids: Iterable[str], model_version: str) -> int:
        """Unlearned → erased for every request whose record the now-served ``model_version`` lacks.

        Promotion calls this with the raw record IDs the promoted version no longer carries; that covers
        its own batch's requests and those carried over from older candidates that were never promoted,
        which is why it takes records, not a batch. ``model_version`` becomes the served version. Requests
        in any other status are untouched, so a second call changes nothing (idempotent) and an erased
        request keeps the version that first served its erasure. One transaction; returns how many moved.
        """
        if isinstance(record_ids, str):
            raise TypeError("record_ids must be a collection of record IDs, not a single string")
        ids = sorted(set(record_ids))
        if not all(isinstance(r, str) for r in ids):
            raise TypeError("record_ids must be strings")
        _check_model_version(model_version)
        values = {"status": Status.ERASED.value, "model_version": model_version, "updated_at": self._now()}
        moved = 0
        with self._transaction(write=True) as conn:
            for part in _chunks(ids):
                stmt = (
                    update(_T)
                    .where(_T.c.status == Status.UNLEARNED.value, _T.c.record_id.in_(part))
                    .values(**values)
                )
                moved += conn.execute(stmt).rowcount
        return moved

    def mark_rejected(self, batch_id: str, request_ids: Iterable[str] | None = None) -> int:
        """Close requests whose recorded verdict is a rejection (all of the batch's, if none are named).

        The verdict and its reason stay on the row, so a rejected request remains visible with why.
        """
        _check_batch_id(batch_id)
        ids = None if request_ids is None else list(dict.fromkeys(request_ids))
        return self._close(batch_id, ids, Status.REJECTED)

    # ------------------------------------------------------------------ reads

    def get(self, request_id: str) -> Request | None:
        """One request by its ID (what a compliance reviewer starts from), or ``None``."""
        with self._transaction(write=False) as conn:
            row = conn.execute(select(_T).where(_T.c.request_id == request_id)).first()
        return None if row is None else Request.from_row(row)

    def list(
        self, status: Status | str | None = None, *, batch_id: str | None = None
    ) -> builtins.list[Request]:
        """Requests in arrival order, optionally only those with ``status`` and/or of ``batch_id``."""
        stmt = select(_T).order_by(_T.c.received_at, _T.c.id)
        if status is not None:
            stmt = stmt.where(_T.c.status == Status(status).value)
        if batch_id is not None:
            stmt = stmt.where(_T.c.batch_id == batch_id)
        with self._transaction(write=False) as conn:
            return [Request.from_row(r) for r in conn.execute(stmt)]

    def list_overdue(
        self, deadline: timedelta = DEFAULT_PROMOTION_DEADLINE, *, now: datetime | None = None
    ) -> builtins.list[Request]:
        """Unlearned requests that have waited longer than ``deadline`` for a promotion, oldest first.

        ``overdue`` is derived, not stored, so a changed deadline applies at once and no job has to flip
        rows. ``now`` defaults to the queue's clock; the rule is :meth:`Request.is_overdue`'s.
        """
        if not isinstance(deadline, timedelta) or deadline < timedelta(0):
            raise ValueError(f"deadline must be a non-negative timedelta, got {deadline!r}")
        now = self._now() if now is None else now.astimezone(UTC)
        try:
            cutoff = now - deadline
        except OverflowError:  # a deadline reaching back before year 1: nothing can be that old
            return []
        stmt = (
            select(_T)
            .where(_T.c.status == Status.UNLEARNED.value, _T.c.updated_at < cutoff)
            .order_by(_T.c.updated_at, _T.c.id)
        )
        with self._transaction(write=False) as conn:
            return [Request.from_row(r) for r in conn.execute(stmt)]

    def counts(self) -> dict[str, int]:
        """Number of requests per status (every status present, zeros included)."""
        result = {s.value: 0 for s in Status}
        with self._transaction(write=False) as conn:
            for status, n in conn.execute(select(_T.c.status, func.count()).group_by(_T.c.status)):
                result[status] = n
        return result

    def erased_record_ids(self) -> set[str]:
        """Record IDs removed from some model version: requests ``unlearned`` or ``erased``.

        Input to the ``already-erased`` verdict (a record is not unlearned twice) and to erasure lineage:
        every later candidate must carry these removals over, whether or not a promotion has served them.
        """
        return self._record_ids(Status.UNLEARNED, Status.ERASED)

    def served_erased_record_ids(self) -> set[str]:
        """Record IDs whose erasure a promotion served (``erased`` only): what a rollback must not undo."""
        return self._record_ids(Status.ERASED)

    def _record_ids(self, *statuses: Status) -> set[str]:
        stmt = select(_T.c.record_id).where(_T.c.status.in_([s.value for s in statuses])).distinct()
        with self._transaction(write=False) as conn:
            return set(conn.scalars(stmt))
