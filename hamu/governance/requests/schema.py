"""Vocabulary of the deletion-request queue: identifiers, reasons, states, verdicts, and the table.

Everything that another layer must agree with (the record-ID pattern the GX suites repeat, the verdict
names the validation task writes, the status names an auditor reads) is defined once here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.types import TypeDecorator

# A training record's ID is defined with the data (hamu.data.digest) and re-exported here; the GX suites
# in ``expectations/`` repeat that exact string.
from hamu.data.digest import RECORD_ID_PATTERN as RECORD_ID_PATTERN
from hamu.data.digest import is_valid_record_id as is_valid_record_id

#: A request ID (chosen by whoever files the request) and a batch ID: case kept, ``:`` also allowed,
#: at most 128 characters, no whitespace or control characters.
REQUEST_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
BATCH_ID_PATTERN = REQUEST_ID_PATTERN

# ``$`` also matches before a trailing newline, so the compiled forms are used with ``fullmatch``.
_REQUEST_ID_RE = re.compile(REQUEST_ID_PATTERN[1:-1])
_BATCH_ID_RE = re.compile(BATCH_ID_PATTERN[1:-1])


def is_valid_request_id(value: object) -> bool:
    """True if ``value`` is a string matching :data:`REQUEST_ID_PATTERN` (whole string, no newline)."""
    return isinstance(value, str) and _REQUEST_ID_RE.fullmatch(value) is not None


def is_valid_batch_id(value: object) -> bool:
    """True if ``value`` is a string matching :data:`BATCH_ID_PATTERN` (whole string, no newline).

    Recovery uses it to tell a batch's working area from anything else found in ``work/``
    (``lost+found``, a stray file), which it must leave alone.
    """
    return isinstance(value, str) and _BATCH_ID_RE.fullmatch(value) is not None


class Reason(StrEnum):
    """Why erasure was requested (the legal basis or category an auditor groups by)."""

    PRIVACY = "privacy"
    COPYRIGHT = "copyright"
    BIAS = "bias"
    OTHER = "other"


class Status(StrEnum):
    """Where a request is in its life: ``pending → claimed → unlearned → erased`` or ``claimed → rejected``.

    ``unlearned`` and ``erased`` are kept apart because a requester is owed the second: ``unlearned`` means a
    *candidate* model version without the record exists, ``erased`` that the *served* model (``champion``)
    no longer carries it, which only a promotion can make true. A claim can go back to ``pending``.

    ``quarantined`` takes a request out of the nightly loop (``claimed → quarantined``) when its batches keep
    failing on it: it is never claimed again until an operator requeues it, and its row says why.
    """

    PENDING = "pending"
    CLAIMED = "claimed"
    UNLEARNED = "unlearned"
    ERASED = "erased"
    REJECTED = "rejected"
    QUARANTINED = "quarantined"


#: The most requests one batch claims unless told otherwise. Far above a night's volume at the demo's
#: scale (500), so an ordinary night is one batch; yet it bounds what one batch holds: the forget set it
#: loads and evaluates, its memory and run time, and how many requests a single failure sends back. A
#: larger backlog drains oldest first over the following batches.
DEFAULT_MAX_REQUESTS = 10_000
#: A request released by this many failed batches is quarantined instead of released again. Two failures
#: in a row can be bad luck (a registry restart, a full disk); a third on the same requests is treated as
#: deterministic, and at a nightly cadence it stops the loop within three days, well inside the 30-day
#: promotion deadline, so an operator still has time to act.
DEFAULT_QUARANTINE_AFTER = 3


#: How long a claim stays valid without a heartbeat
#: (:meth:`~hamu.governance.requests.RequestQueue.heartbeat`). A
#: running batch renews it every third of that (5 minutes), so two missed heartbeats in a row (a database
#: failover, a stalled NFS mount, a long GC pause) are survived; a batch whose host died is recovered by the
#: next run that starts 15 minutes or more later, which at a nightly cadence is every run. Shorter leases buy
#: nothing at that cadence and only add writes; much longer ones let a dead pod hold its requests past the
#: following night's run.
DEFAULT_LEASE = timedelta(minutes=15)

#: How long an ``unlearned`` request may wait for a promotion before it is reported ``overdue``.
DEFAULT_PROMOTION_DEADLINE = timedelta(days=30)
#: The environment variable (in days, may be fractional) that overrides :data:`DEFAULT_PROMOTION_DEADLINE`.
PROMOTION_DEADLINE_ENV = "HAMU_PROMOTION_DEADLINE_DAYS"


def promotion_deadline(days: str | float | None) -> timedelta:
    """The deadline for ``days`` (a number, or its text as an environment variable holds it).

    ``None`` or blank text gives :data:`DEFAULT_PROMOTION_DEADLINE`. Anything else that is not a finite,
    non-negative number raises ``ValueError``: a mistyped setting must not silently hide overdue requests.
    """
    if days is None or (isinstance(days, str) and not days.strip()):
        return DEFAULT_PROMOTION_DEADLINE
    try:
        value = float(days)
    except ValueError:
        raise ValueError(f"promotion deadline {days!r} is not a number of days") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"promotion deadline must be a finite, non-negative number of days, got {days!r}")
    try:
        return timedelta(days=value)
    except OverflowError:
        raise ValueError(f"promotion deadline of {days!r} days is out of range") from None


class Verdict(StrEnum):
    """The validation outcome of one request in one batch; only ``accepted`` requests are unlearned."""

    ACCEPTED = "accepted"
    UNKNOWN = "unknown"
    MALFORMED = "malformed"
    DUPLICATE = "duplicate"
    ALREADY_ERASED = "already-erased"


REQUIRED_COLUMNS: tuple[str, ...] = ("request_id", "record_id", "reason", "received_at")


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python, whatever the database keeps.

    SQLite has no timezone type and would hand back naive values; storing naive UTC there and
    re-attaching UTC on read keeps every ``datetime`` the queue returns comparable and unambiguous.
    Binding a naive value is refused rather than guessed.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert to UTC; SQLite gets the naive UTC wall time (its text format ignores offsets)."""
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        """Attach UTC to what the database returns."""
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime from the database, got {type(value).__name__}")
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _in(column: str, values: type[StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


metadata = MetaData()

#: One row per deletion request. ``id`` is only a stable arrival order; ``request_id`` is the key users see.
requests_table = Table(
    "deletion_requests",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(128), nullable=False, unique=True),
    Column("record_id", String(128), nullable=False, index=True),
    Column("reason", String(16), nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("submitted_at", UTCDateTime, nullable=False),
    Column("source_sha256", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("verdict", String(16), nullable=True),
    Column("verdict_reason", Text, nullable=True),
    Column("batch_id", String(128), nullable=True, index=True),
    Column("claim_token", String(32), nullable=True, index=True),
    Column("claimed_at", UTCDateTime, nullable=True),
    Column("model_version", String(256), nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
    # Failed batches (an exception, not a crash) that released this request; see ``release_batch``.
    Column("failures", Integer, nullable=False, default=0, server_default=text("0")),
    Column("quarantine_reason", Text, nullable=True),
    # When a claim lapses unless its batch heartbeats; NULL for unclaimed rows (and claims made by code
    # older than leases). See ``RequestQueue.heartbeat`` and ``RequestQueue.release_expired``.
    Column("lease_expires_at", UTCDateTime, nullable=True),
    CheckConstraint(_in("reason", Reason), name="ck_deletion_requests_reason"),
    CheckConstraint(_in("status", Status), name="ck_deletion_requests_status"),
    CheckConstraint(f"verdict IS NULL OR {_in('verdict', Verdict)}", name="ck_deletion_requests_verdict"),
    Index("ix_deletion_requests_fifo", "status", "received_at", "id"),
)


@dataclass(frozen=True, slots=True)
class JudgedRequest:
    """A request with its verdict: the one form a request keeps from validation to its receipts.

    Validation makes it; the queue records its verdict, the batch report and the receipts read it, and
    promotion issues the *served* receipts from it (verdict ``erased``). Raw IDs live only here and in the
    queue; everything written for the trail carries their keyed hashes.
    """

    request_id: str
    record_id: str
    verdict: str
    reason: str

    @property
    def accepted(self) -> bool:
        """Whether the request names a record a model version no longer carries (or soon won't)."""
        return self.verdict in (Verdict.ACCEPTED.value, Status.ERASED.value)


@dataclass(frozen=True, slots=True)
class Request:
    """One deletion request as read from the queue (a detached snapshot, safe to pass between layers).

    ``received_at`` is when the requester filed it (from the submitted file); ``submitted_at`` is when it
    entered this queue; ``source_sha256`` is the digest of the file it came from, for lineage.
    ``failures`` counts the failed batches that released it, and ``quarantine_reason`` says why a
    ``quarantined`` request was taken out of the queue (``None`` otherwise). A ``claimed`` request carries
    its claim's ``claim_token`` (what :meth:`~hamu.governance.requests.RequestQueue.heartbeat` takes) and
    ``lease_expires_at``, after which recovery may release it.
    """

    request_id: str
    record_id: str
    reason: Reason
    received_at: datetime
    status: Status
    verdict: Verdict | None
    verdict_reason: str | None
    batch_id: str | None
    claimed_at: datetime | None
    updated_at: datetime
    submitted_at: datetime
    source_sha256: str
    model_version: str | None
    failures: int = 0
    quarantine_reason: str | None = None
    claim_token: str | None = None
    lease_expires_at: datetime | None = None

    @property
    def unlearned_at(self) -> datetime | None:
        """When a candidate without the record appeared, for an ``unlearned`` request; otherwise ``None``.

        This is ``updated_at``: the batch close sets it, and nothing writes an unlearned row again until
        promotion makes it ``erased``, so no extra column (and no migration) is needed to keep it.
        """
        return self.updated_at if self.status is Status.UNLEARNED else None

    def pending_promotion(self, now: datetime) -> timedelta | None:
        """How long an ``unlearned`` request has waited for the served model to drop its record, else None."""
        since = self.unlearned_at
        return None if since is None else now - since

    def is_overdue(self, deadline: timedelta, now: datetime) -> bool:
        """True for an ``unlearned`` request that has waited longer than ``deadline`` (a derived state)."""
        waited = self.pending_promotion(now)
        return waited is not None and waited > deadline

    @classmethod
    def from_row(cls, row: Any) -> Request:
        """Build from a SQLAlchemy row of :data:`requests_table`."""
        m = row._mapping
        return cls(
            request_id=m["request_id"],
            record_id=m["record_id"],
            reason=Reason(m["reason"]),
            received_at=m["received_at"],
            status=Status(m["status"]),
            verdict=None if m["verdict"] is None else Verdict(m["verdict"]),
            verdict_reason=m["verdict_reason"],
            batch_id=m["batch_id"],
            claimed_at=m["claimed_at"],
            updated_at=m["updated_at"],
            submitted_at=m["submitted_at"],
            source_sha256=m["source_sha256"],
            model_version=m["model_version"],
            failures=m["failures"],
            quarantine_reason=m["quarantine_reason"],
            claim_token=m["claim_token"],
            lease_expires_at=m["lease_expires_at"],
        )
