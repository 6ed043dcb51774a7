"""The deletion-request queue on real SQLite files: intake checks, state changes, concurrent claims."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.dialects import postgresql, sqlite

from hamu.governance.requests import (
    QueueBusyError,
    QueueStateError,
    Reason,
    RequestFileError,
    RequestQueue,
    Status,
    Verdict,
    default_queue_url,
)
from hamu.governance.requests.queue import _claim_statement

REPO = Path(__file__).resolve().parent.parent
HEADER = "request_id,record_id,reason,received_at"
SEED = [
    "seed-1,rec-1,privacy,2026-01-01T00:00:00Z",
    "seed-2,rec-2,copyright,2026-01-02T00:00:00Z",
    "seed-3,rec-3,bias,2026-01-03T00:00:00Z",
]


def csv_bytes(*rows: str, header: str = HEADER) -> bytes:
    """A CSV file's bytes: the header line, then ``rows``, LF-terminated."""
    return ("\n".join([header, *rows]) + "\n").encode()


def jsonl_bytes(*objects: Any) -> bytes:
    """A JSONL file's bytes from Python objects (strings are written verbatim)."""
    return "".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objects).encode()


def req(
    request_id: str, record_id: str, reason: str = "privacy", received_at: str = "2026-02-01T00:00:00Z"
) -> dict:
    """One JSONL request object."""
    return {"request_id": request_id, "record_id": record_id, "reason": reason, "received_at": received_at}


def snapshot(queue: RequestQueue) -> tuple[dict[str, int], list[tuple[Any, ...]]]:
    """Everything observable about the queue: status counts and every row, field by field."""
    return queue.counts(), [dataclasses.astuple(r) for r in queue.list()]


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    """The folder files may be submitted from."""
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


@pytest.fixture
def queue(tmp_path: Path, inbox: Path) -> Iterator[RequestQueue]:
    """A queue in ``tmp_path/home/requests.db`` already holding the three SEED requests."""
    q = RequestQueue(default_queue_url(tmp_path / "home"))
    seed = inbox / "seed.csv"
    seed.write_bytes(csv_bytes(*SEED))
    q.submit_file(seed, allowed_root=inbox)
    yield q
    q.close()


# --------------------------------------------------------------------------- the bad-input catalogue

# Each case: (id, file name, content, submit kwargs, substrings the message must contain).
# Content may be a callable (inbox, outside folder) -> path, for cases about the path itself.
Builder = Callable[[Path, Path], Path]


def _outside(inbox: Path, outside: Path) -> Path:
    path = outside / "req.csv"
    path.write_bytes(csv_bytes("o-1,rec-9,privacy,2026-01-01T00:00:00Z"))
    return path


def _symlink_out(inbox: Path, outside: Path) -> Path:
    target = _outside(inbox, outside)
    link = inbox / "link.csv"
    link.symlink_to(target)
    return link


def _dotdot(inbox: Path, outside: Path) -> Path:
    _outside(inbox, outside)
    return inbox / ".." / "outside" / "req.csv"


def _directory(inbox: Path, outside: Path) -> Path:
    path = inbox / "folder.csv"
    path.mkdir()
    return path


def _mixed_rows() -> bytes:
    rows = [
        "ok-1,rec-10,privacy,2026-01-01T00:00:00Z",
        "bad-1,REC-11,privacy,2026-01-01T00:00:00Z",
        "ok-2,rec-12,bias,2026-01-01T00:00:00Z",
        "bad-2,rec-13,gdpr,2026-01-01T00:00:00Z",
        "bad-3,rec-14,privacy,tomorrow",
        "ok-3,rec-15,other,2026-01-01T00:00:00Z",
        "bad-4,rec 16,privacy,2026-01-01T00:00:00Z",
        "bad-5,rec-17,privacy,2026-01-01T00:00:00",
        "bad-6,rec-18,,2026-01-01T00:00:00Z",
        "bad-7,rec-19/x,privacy,2026-01-01T00:00:00Z",
    ]
    return csv_bytes(*rows)


BAD_FILES: list[tuple[str, str, bytes | Builder, dict[str, Any], list[str]]] = [
    ("empty", "r.csv", b"", {}, ["file is empty"]),
    ("whitespace-only", "r.csv", b"  \n\n \r\n", {}, ["file is empty"]),
    ("header-only", "r.csv", csv_bytes(), {}, ["file is empty: no requests after the header"]),
    ("jsonl-blank-lines", "r.jsonl", b"\n\n", {}, ["file is empty"]),
    (
        "missing-column",
        "r.csv",
        csv_bytes("r-1,rec-1,2026-01-01T00:00:00Z", header="request_id,record_id,received_at"),
        {},
        ["line 1: wrong header: missing column(s) 'reason'"],
    ),
    (
        "extra-column",
        "r.csv",
        csv_bytes("r-1,rec-1,privacy,2026-01-01T00:00:00Z,a@b.c", header=HEADER + ",email"),
        {},
        ["line 1: wrong header: unexpected column(s) 'email'"],
    ),
    (
        "misspelt-column",
        "r.csv",
        csv_bytes("r-1,rec-1,privacy,2026-01-01T00:00:00Z", header="request_id,recordid,reason,received_at"),
        {},
        ["missing column(s) 'record_id'", "unexpected column(s) 'recordid'"],
    ),
    (
        "repeated-column",
        "r.csv",
        csv_bytes("r-1,rec-1,privacy,2026-01-01T00:00:00Z,x", header=HEADER + ",reason"),
        {},
        ["repeated column(s) 'reason'"],
    ),
    (
        "latin-1-bytes",
        "r.csv",
        csv_bytes("r-1,rec-1,privacy,2026-01-01T00:00:00Z")
        + "r-2,café,privacy,2026-01-01T00:00:00Z\n".encode("latin-1"),
        {},
        ["line 3, field 'record_id': not valid UTF-8 (byte 0xE9)"],
    ),
    (
        "utf-16",
        "r.csv",
        csv_bytes("r-1,rec-1,privacy,2026-01-01T00:00:00Z").decode().encode("utf-16"),
        {},
        ["UTF-16-encoded", "UTF-8 is required"],
    ),
    (
        "png",
        "r.csv",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)),
        {},
        ["binary file: NUL byte at offset 8"],
    ),
    (
        "control-bytes",
        "r.jsonl",
        bytes([1, 2, 3, 4, 5, 6, 7, 8]) * 50,
        {},
        ["binary file: 400 control bytes"],
    ),
    (
        "duplicate-request-in-file",
        "r.csv",
        csv_bytes("r-dup,rec-1,privacy,2026-01-01T00:00:00Z", "r-dup,rec-2,privacy,2026-01-01T00:00:00Z"),
        {},
        ["line 3, field 'request_id': duplicate request_id 'r-dup' (first on line 2)"],
    ),
    (
        "duplicate-request-across-files",
        "r.csv",
        csv_bytes("new-1,rec-5,privacy,2026-01-01T00:00:00Z", "seed-2,rec-6,privacy,2026-01-01T00:00:00Z"),
        {},
        ["line 3, field 'request_id': request_id 'seed-2' is already in the queue (status pending)"],
    ),
    (
        "uppercase-record-id",
        "r.csv",
        csv_bytes("r-1,Rec-1,privacy,2026-01-01T00:00:00Z"),
        {},
        ["line 2, field 'record_id': malformed record ID 'Rec-1': must match ^[a-z0-9][a-z0-9._-]{0,127}$"],
    ),
    (
        "path-like-record-id",
        "r.csv",
        csv_bytes("r-1,../etc/passwd,privacy,2026-01-01T00:00:00Z"),
        {},
        ["line 2, field 'record_id': malformed record ID '../etc/passwd'"],
    ),
    (
        "too-long-record-id",
        "r.csv",
        csv_bytes("r-1," + "a" * 129 + ",privacy,2026-01-01T00:00:00Z"),
        {},
        ["line 2, field 'record_id': malformed record ID 'aaaa"],
    ),
    (
        "record-id-with-trailing-newline",
        "r.csv",
        csv_bytes('r-1,"rec-1\n",privacy,2026-01-01T00:00:00Z'),
        {},
        ["line 2, field 'record_id': contains control character U+000A"],
    ),
    (
        "bad-request-id",
        "r.csv",
        csv_bytes("r 1,rec-1,privacy,2026-01-01T00:00:00Z"),
        {},
        ["line 2, field 'request_id': 'r 1' does not match"],
    ),
    (
        "not-a-timestamp",
        "r.csv",
        csv_bytes("r-1,rec-1,privacy,yesterday"),
        {},
        ["line 2, field 'received_at': 'yesterday' is not an ISO 8601 timestamp"],
    ),
    (
        "impossible-date",
        "r.csv",
        csv_bytes("r-1,rec-1,privacy,2026-02-30T00:00:00Z"),
        {},
        ["line 2, field 'received_at': '2026-02-30T00:00:00Z' is not an ISO 8601 timestamp"],
    ),
    (
        "naive-timestamp",
        "r.csv",
        csv_bytes("r-1,rec-1,privacy,2026-01-01T10:00:00"),
        {},
        [
            "line 2, field 'received_at': '2026-01-01T10:00:00' has no UTC offset",
            "naive timestamps are rejected",
        ],
    ),
    (
        "future-timestamp",
        "r.csv",
        csv_bytes("r-1,rec-1,privacy,2999-01-01T00:00:00Z"),
        {},
        ["line 2, field 'received_at': '2999-01-01T00:00:00Z' is in the future"],
    ),
    (
        "unknown-reason",
        "r.csv",
        csv_bytes("r-1,rec-1,gdpr,2026-01-01T00:00:00Z"),
        {},
        ["line 2, field 'reason': unknown reason 'gdpr' (allowed: privacy, copyright, bias, other)"],
    ),
    (
        "reason-wrong-case",
        "r.csv",
        csv_bytes("r-1,rec-1,Privacy,2026-01-01T00:00:00Z"),
        {},
        ["line 2, field 'reason': unknown reason 'Privacy'"],
    ),
    (
        "empty-field",
        "r.csv",
        csv_bytes("r-1,rec-1,,2026-01-01T00:00:00Z"),
        {},
        ["line 2, field 'reason': is empty"],
    ),
    (
        "wrong-cell-count",
        "r.csv",
        csv_bytes("r-1,rec-1,privacy,2026-01-01T00:00:00Z", "r-2,rec-2,privacy"),
        {},
        ["line 3: expected 4 comma-separated fields, got 3"],
    ),
    (
        "unterminated-quote",
        "r.csv",
        csv_bytes('r-1,"rec-1,privacy,2026-01-01T00:00:00Z'),
        {},
        ["line 2: cannot parse CSV"],
    ),
    (
        "mixed-valid-and-invalid",
        "r.csv",
        _mixed_rows(),
        {},
        [
            "7 bad line(s), no request queued",
            "line 3, field 'record_id'",
            "line 5, field 'reason'",
            "line 6, field 'received_at'",
            "line 8, field 'record_id'",
            "line 9, field 'received_at'",
            "and 2 more problem(s)",
        ],
    ),
    (
        "oversized",
        "r.csv",
        csv_bytes(*[f"r-{i},rec-{i},privacy,2026-01-01T00:00:00Z" for i in range(10)]),
        {"max_bytes": 200},
        ["file is 430 bytes, larger than the 200 bytes limit"],
    ),
    ("outside-allowed-folder", "", _outside, {}, ["outside the allowed folder"]),
    ("symlink-leaving-folder", "", _symlink_out, {}, ["outside the allowed folder"]),
    ("dotdot-leaving-folder", "", _dotdot, {}, ["outside the allowed folder"]),
    ("directory", "", _directory, {}, ["not a regular file"]),
    (
        "unsupported-suffix",
        "r.txt",
        csv_bytes("r-1,rec-1,privacy,2026-01-01T00:00:00Z"),
        {},
        ["unsupported file type '.txt'"],
    ),
    (
        "jsonl-raw-line-separator-in-string",  # JSON allows a raw U+2028 in a string; lines stay numbered
        "r.jsonl",
        jsonl_bytes(
            req("r-1", "rec-1"),
            '{"request_id": "r\u20282", "record_id": "rec-2", "reason": "bias", '
            '"received_at": "2026-01-01T00:00:00Z"}',
            "{not json",
        ),
        {},
        ["line 2, field 'request_id': 'r\\u20282' does not match", "line 3: not a JSON object"],
    ),
    (
        "jsonl-not-json",
        "r.jsonl",
        jsonl_bytes(req("r-1", "rec-1"), "{not json"),
        {},
        ["line 2: not a JSON object"],
    ),
    (
        "jsonl-array",
        "r.jsonl",
        jsonl_bytes(["r-1", "rec-1", "privacy", "x"]),
        {},
        ["line 1: expected a JSON object, got list"],
    ),
    (
        "jsonl-missing-field",
        "r.jsonl",
        jsonl_bytes({k: v for k, v in req("r-1", "rec-1").items() if k != "reason"}),
        {},
        ["line 1, field 'reason': missing field"],
    ),
    (
        "jsonl-extra-field",
        "r.jsonl",
        jsonl_bytes({**req("r-1", "rec-1"), "email": "a@b.c"}),
        {},
        ["line 1, field 'email': unexpected field"],
    ),
    (
        "jsonl-number",
        "r.jsonl",
        jsonl_bytes({**req("r-1", "rec-1"), "record_id": 17}),
        {},
        ["line 1, field 'record_id': must be a string, got int"],
    ),
    (
        "jsonl-null",
        "r.jsonl",
        jsonl_bytes({**req("r-1", "rec-1"), "reason": None}),
        {},
        ["line 1, field 'reason': must be a string, got null"],
    ),
    (
        "jsonl-repeated-key",
        "r.jsonl",
        jsonl_bytes(
            '{"request_id": "r-1", "record_id": "rec-1", "record_id": "rec-2", '
            '"reason": "bias", "received_at": "2026-01-01T00:00:00Z"}'
        ),
        {},
        ["line 1: not a JSON object: repeated key 'record_id'"],
    ),
]


def test_catalogue_is_large_enough() -> None:
    assert len(BAD_FILES) >= 20
    assert len({case[0] for case in BAD_FILES}) == len(BAD_FILES)


@pytest.mark.parametrize(
    ("name", "content", "kwargs", "expected"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES]
)
def test_bad_file_is_rejected_whole_and_queue_unchanged(
    queue: RequestQueue,
    inbox: Path,
    tmp_path: Path,
    name: str,
    content: bytes | Builder,
    kwargs: dict[str, Any],
    expected: list[str],
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    if callable(content):
        path = content(inbox, outside)
    else:
        path = inbox / name
        path.write_bytes(content)
    before = snapshot(queue)
    with pytest.raises(RequestFileError) as caught:
        queue.submit_file(path, allowed_root=inbox, **kwargs)
    message = str(caught.value)
    assert message.startswith(f"{path}: file rejected")
    for part in expected:
        assert part in message
    assert caught.value.problems
    assert snapshot(queue) == before
    assert before[0] == {
        "pending": 3,
        "claimed": 0,
        "unlearned": 0,
        "erased": 0,
        "rejected": 0,
        "quarantined": 0,
    }


def test_problems_carry_line_and_field(queue: RequestQueue, inbox: Path) -> None:
    path = inbox / "mixed.csv"
    path.write_bytes(_mixed_rows())
    with pytest.raises(RequestFileError) as caught:
        queue.submit_file(path)
    where = [(p.line, p.field) for p in caught.value.problems]
    assert where == [
        (3, "record_id"),
        (5, "reason"),
        (6, "received_at"),
        (8, "record_id"),
        (9, "received_at"),
        (10, "reason"),
        (11, "record_id"),
    ]
    assert queue.get("ok-1") is None


def test_missing_file_and_bad_options(queue: RequestQueue, inbox: Path) -> None:
    with pytest.raises(RequestFileError, match="file not found"):
        queue.submit_file(inbox / "nope.csv")
    with pytest.raises(ValueError, match="max_bytes must be positive"):
        queue.submit_file(inbox / "nope.csv", max_bytes=0)
    with pytest.raises(ValueError, match="allowed_root"):
        queue.submit_file(inbox / "seed.csv", allowed_root=inbox / "missing")


# --------------------------------------------------------------------------- good files


def test_default_queue_url_is_absolute_sqlite_under_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert default_queue_url(tmp_path / "h") == f"sqlite:///{tmp_path / 'h' / 'requests.db'}"
    monkeypatch.chdir(tmp_path)
    assert default_queue_url(Path(".hamu")) == f"sqlite:///{tmp_path / '.hamu' / 'requests.db'}"


def test_csv_variants_are_accepted_and_normalised_to_utc(queue: RequestQueue, inbox: Path) -> None:
    text = (
        "\ufeffreceived_at,reason,record_id,request_id\r\n"
        "2026-03-01T12:00:00+02:00,privacy,rec-20,a-1\r\n"
        "\r\n"
        '"2026-03-01T09:30:00-05:00",copyright,"rec-21",a-2\r\n'
        "2026-03-01 08:00:00.5Z,bias,rec-22,a-3\r\n"
    )
    path = inbox / "variants.CSV"
    path.write_bytes(text.encode())
    result = queue.submit_file(path, allowed_root=inbox)
    assert result.request_ids == ("a-1", "a-2", "a-3")
    assert result.count == 3
    assert result.fmt == "csv"
    assert result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    got = {r.request_id: r for r in queue.list(Status.PENDING)}
    assert got["a-1"].received_at == datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    assert got["a-2"].received_at == datetime(2026, 3, 1, 14, 30, tzinfo=UTC)
    assert got["a-3"].received_at == datetime(2026, 3, 1, 8, 0, 0, 500000, tzinfo=UTC)
    assert got["a-2"].reason is Reason.COPYRIGHT
    assert all(r.source_sha256 == result.sha256 for r in got.values() if r.request_id.startswith("a-"))
    assert got["a-1"].received_at.tzinfo is UTC
    assert got["a-1"].submitted_at.tzinfo is UTC


def test_jsonl_file_accepted(queue: RequestQueue, inbox: Path) -> None:
    path = inbox / "r.ndjson"
    path.write_bytes(
        jsonl_bytes(req("j-1", "rec-30", "other"), req("j-2", "rec-31", received_at="2026-01-05T00:00Z"))
    )
    result = queue.submit_file(path)
    assert result.fmt == "jsonl"
    assert queue.counts()["pending"] == 5
    assert queue.get("j-2").received_at == datetime(2026, 1, 5, tzinfo=UTC)


def test_unknown_erased_and_repeated_records_are_queued_not_dropped(queue: RequestQueue, inbox: Path) -> None:
    """Not file-format errors: these requests must enter the queue and get a verdict at batch time."""
    queue.claim_batch("b-0")
    queue.record_verdicts(
        "b-0", {"seed-1": ("accepted", "ok"), "seed-2": ("accepted", "ok"), "seed-3": ("accepted", "ok")}
    )
    queue.mark_unlearned("b-0", ["seed-1", "seed-2", "seed-3"], "model:1")
    path = inbox / "more.csv"
    path.write_bytes(
        csv_bytes(
            "u-1,never-trained-on,privacy,2026-01-01T00:00:00Z",
            "u-2,rec-1,privacy,2026-01-01T00:00:00Z",
            "u-3,rec-7,privacy,2026-01-01T00:00:00Z",
            "u-4,rec-7,bias,2026-01-02T00:00:00Z",
        )
    )
    queue.submit_file(path)
    assert [r.request_id for r in queue.list(Status.PENDING)] == ["u-1", "u-2", "u-3", "u-4"]
    assert queue.erased_record_ids() == {"rec-1", "rec-2", "rec-3"}


def test_symlink_inside_allowed_folder_is_fine(queue: RequestQueue, inbox: Path) -> None:
    real = inbox / "real.csv"
    real.write_bytes(csv_bytes("s-1,rec-40,privacy,2026-01-01T00:00:00Z"))
    (inbox / "alias.csv").symlink_to(real)
    assert queue.submit_file(inbox / "alias.csv", allowed_root=inbox).path == real.resolve()


def test_file_rejected_for_existing_id_can_be_fixed_and_resubmitted(queue: RequestQueue, inbox: Path) -> None:
    path = inbox / "r.csv"
    path.write_bytes(
        csv_bytes("n-1,rec-50,privacy,2026-01-01T00:00:00Z", "seed-1,rec-51,privacy,2026-01-01T00:00:00Z")
    )
    with pytest.raises(RequestFileError):
        queue.submit_file(path)
    path.write_bytes(
        csv_bytes("n-1,rec-50,privacy,2026-01-01T00:00:00Z", "n-2,rec-51,privacy,2026-01-01T00:00:00Z")
    )
    assert queue.submit_file(path).request_ids == ("n-1", "n-2")


# --------------------------------------------------------------------------- claims and state changes


def test_claim_is_fifo_limited_and_exclusive(queue: RequestQueue) -> None:
    first = queue.claim_batch("b-1", limit=2)
    assert [r.request_id for r in first] == ["seed-1", "seed-2"]
    assert all(r.status is Status.CLAIMED and r.batch_id == "b-1" and r.claimed_at is not None for r in first)
    second = queue.claim_batch("b-2")
    assert [r.request_id for r in second] == ["seed-3"]
    assert queue.claim_batch("b-3") == []
    assert queue.counts() == {
        "pending": 0,
        "claimed": 3,
        "unlearned": 0,
        "erased": 0,
        "rejected": 0,
        "quarantined": 0,
    }
    assert [r.request_id for r in queue.list(batch_id="b-1")] == ["seed-1", "seed-2"]


def test_claim_arguments_are_checked(queue: RequestQueue) -> None:
    with pytest.raises(ValueError, match="batch_id"):
        queue.claim_batch("bad batch")
    with pytest.raises(ValueError, match="limit"):
        queue.claim_batch("b-1", limit=0)
    assert queue.counts()["pending"] == 3


def test_release_batch_puts_claims_back_and_clears_verdicts(queue: RequestQueue) -> None:
    queue.claim_batch("b-1", limit=2)
    queue.record_verdicts(
        "b-1", {"seed-1": (Verdict.ACCEPTED, "ok"), "seed-2": ("unknown", "not in manifest")}
    )
    queue.mark_rejected("b-1", ["seed-2"])
    assert queue.release_batch("b-1") == 1  # seed-2 is final; only seed-1 goes back
    back = queue.get("seed-1")
    assert back.status is Status.PENDING
    assert (back.batch_id, back.claimed_at, back.verdict, back.verdict_reason) == (None, None, None, None)
    assert queue.get("seed-2").status is Status.REJECTED
    assert [r.request_id for r in queue.claim_batch("b-2")] == ["seed-1", "seed-3"]
    assert queue.release_batch("b-unknown") == 0


def test_all_verdicts_recorded_and_closed(tmp_path: Path, inbox: Path) -> None:
    q = RequestQueue(default_queue_url(tmp_path / "h3"))
    path = inbox / "v.csv"
    path.write_bytes(csv_bytes(*[f"v-{i},rec-{i},privacy,2026-01-0{i + 1}T00:00:00Z" for i in range(5)]))
    q.submit_file(path)
    q.claim_batch("b-1")
    verdicts = {
        "v-0": ("accepted", "in manifest"),
        "v-1": ("unknown", "not in manifest"),
        "v-2": ("malformed", "bad"),
        "v-3": ("duplicate", "also requested by v-0"),
        "v-4": ("already-erased", "erased before"),
    }
    assert q.record_verdicts("b-1", verdicts) == 5
    assert {r.request_id: (r.verdict.value, r.verdict_reason) for r in q.list()} == verdicts
    assert q.mark_rejected("b-1") == 4
    assert q.mark_unlearned("b-1", ["v-0"], "models:/digits/7") == 1
    assert q.counts() == {
        "pending": 0,
        "claimed": 0,
        "unlearned": 1,
        "erased": 0,
        "rejected": 4,
        "quarantined": 0,
    }
    unlearned = q.get("v-0")
    assert unlearned.status is Status.UNLEARNED
    assert unlearned.model_version == "models:/digits/7" and unlearned.batch_id == "b-1"
    assert q.get("v-4").verdict is Verdict.ALREADY_ERASED and q.get("v-4").status is Status.REJECTED
    assert q.erased_record_ids() == {"rec-0"}
    assert q.served_erased_record_ids() == set()
    q.close()


def test_state_changes_refuse_requests_the_batch_does_not_hold(queue: RequestQueue) -> None:
    queue.claim_batch("b-1", limit=2)
    queue.claim_batch("b-2")
    before = snapshot(queue)
    with pytest.raises(QueueStateError, match=r"not claimed by batch 'b-1': seed-3 \(claimed, batch b-2\)"):
        queue.record_verdicts("b-1", {"seed-1": ("accepted", "ok"), "seed-3": ("accepted", "ok")})
    with pytest.raises(QueueStateError, match="unknown request_id"):
        queue.record_verdicts("b-1", {"ghost": ("accepted", "ok")})
    with pytest.raises(QueueStateError, match=r"seed-1 \(verdict None, not accepted\)"):
        queue.mark_unlearned("b-1", ["seed-1"], "m:1")
    with pytest.raises(QueueStateError, match=r"seed-1 \(no verdict recorded\)"):
        queue.mark_rejected("b-1", ["seed-1"])
    with pytest.raises(ValueError, match="unknown verdict 'maybe'"):
        queue.record_verdicts("b-1", {"seed-1": ("maybe", "?")})
    with pytest.raises(ValueError, match="non-empty reason"):
        queue.record_verdicts("b-1", {"seed-1": ("accepted", " ")})
    assert snapshot(queue) == before
    queue.record_verdicts("b-1", {"seed-1": ("accepted", "ok"), "seed-2": ("unknown", "no")})
    with pytest.raises(QueueStateError, match=r"seed-1 \(verdict accepted\)"):
        queue.mark_rejected("b-1", ["seed-1", "seed-2"])
    with pytest.raises(QueueStateError, match=r"seed-2 \(verdict unknown, not accepted\)"):
        queue.mark_unlearned("b-1", ["seed-1", "seed-2"], "m:1")
    with pytest.raises(ValueError, match="model_version"):
        queue.mark_unlearned("b-1", ["seed-1"], "")
    assert queue.counts() == {
        "pending": 0,
        "claimed": 3,
        "unlearned": 0,
        "erased": 0,
        "rejected": 0,
        "quarantined": 0,
    }


def test_timezones_survive_a_reopen(queue: RequestQueue, tmp_path: Path) -> None:
    reopened = RequestQueue(default_queue_url(tmp_path / "home"))
    got = reopened.get("seed-2")
    assert got.received_at == datetime(2026, 1, 2, tzinfo=UTC)
    assert got.received_at.utcoffset() == timedelta(0)
    assert snapshot(reopened) == snapshot(queue)
    reopened.close()


def test_naive_clock_is_refused(tmp_path: Path) -> None:
    naive = RequestQueue(default_queue_url(tmp_path / "h4"), clock=lambda: datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="naive"):
        naive.claim_batch("b-1")
    assert RequestQueue(
        "sqlite://", clock=lambda: datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=3)))
    ).counts()


def test_claim_statement_locks_rows_on_postgresql() -> None:
    stmt = _claim_statement("b", "t", datetime(2026, 1, 1, tzinfo=UTC), 10)
    pg = str(stmt.compile(dialect=postgresql.dialect()))
    assert "FOR UPDATE SKIP LOCKED" in pg
    assert "LIMIT" in pg
    assert pg.count("deletion_requests.status = ") == 2
    assert "FOR UPDATE" not in str(stmt.compile(dialect=sqlite.dialect()))


# --------------------------------------------------------------------------- concurrency

_WORKER = """
import json, sys
from hamu.governance.requests import RequestQueue
url, name = sys.argv[1], sys.argv[2]
q = RequestQueue(url)
print("ready", flush=True)
for command in sys.stdin:  # each line: a claim limit ("all" = one claim of everything)
    limit = command.strip()
    got = []
    while True:
        batch = q.claim_batch(name, limit=None if limit == "all" else int(limit))
        got.extend(r.request_id for r in batch)
        if not batch or limit == "all":
            break
    print(json.dumps(got), flush=True)
"""


class _Claimers:
    """Worker processes, each with its own RequestQueue on one database, claiming on command."""

    def __init__(self, url: str, n: int) -> None:
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-c", _WORKER, url, f"w{i}"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=REPO,
            )
            for i in range(n)
        ]
        for p in self.procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready", p.communicate()

    def claim(self, limit: str) -> list[list[str]]:
        """Tell every worker to claim at the same moment; return what each one got."""
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write(limit + "\n")
            p.stdin.flush()
        return [json.loads(p.stdout.readline()) for p in self.procs if p.stdout is not None]

    def close(self) -> None:
        for p in self.procs:
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, err


def test_processes_claiming_at_once_get_disjoint_claims_covering_all(tmp_path: Path, inbox: Path) -> None:
    url = default_queue_url(tmp_path / "shared")
    q = RequestQueue(url)
    path = inbox / "many.csv"
    path.write_bytes(
        csv_bytes(*[f"m-{i:03d},rec-{i},privacy,2026-01-01T00:00:{i % 60:02d}Z" for i in range(300)])
    )
    q.submit_file(path)
    pending = {r.request_id for r in q.list(Status.PENDING)}
    workers = _Claimers(url, 2)
    try:
        # Many small claims racing each other.
        results = workers.claim("7")
        claimed = [set(r) for r in results]
        assert sum(len(r) for r in results) == len(pending) == 300  # nothing claimed twice...
        assert claimed[0] | claimed[1] == pending  # ...and nothing left behind
        for i, ids in enumerate(results):
            assert {r.request_id for r in q.list(batch_id=f"w{i}")} == set(ids)
        assert q.counts() == {
            "pending": 0,
            "claimed": 300,
            "unlearned": 0,
            "erased": 0,
            "rejected": 0,
            "quarantined": 0,
        }

        # One claim of everything each: one process gets it all, the other only what is left (nothing).
        assert q.release_batch("w0") + q.release_batch("w1") == 300
        whole = workers.claim("all")
        assert sorted(len(r) for r in whole) == [0, 300]
        assert set(whole[0]) | set(whole[1]) == pending
    finally:
        workers.close()
        q.close()


def test_second_writer_waits_for_the_lock_or_fails_cleanly(queue: RequestQueue, tmp_path: Path) -> None:
    db = tmp_path / "home" / "requests.db"
    impatient = RequestQueue(default_queue_url(tmp_path / "home"), busy_timeout_s=0.2)
    patient = RequestQueue(default_queue_url(tmp_path / "home"), busy_timeout_s=30)
    before = snapshot(queue)
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another process's write transaction
    start = time.monotonic()
    with pytest.raises(QueueBusyError, match="locked by another writer"):
        impatient.claim_batch("b-1")
    assert time.monotonic() - start >= 0.15

    assert snapshot(queue) == before  # readers are not blocked (WAL)
    timer = threading.Timer(0.5, holder.execute, args=("COMMIT",))
    timer.start()
    start = time.monotonic()
    got = patient.claim_batch("b-2")
    waited = time.monotonic() - start
    timer.join()
    holder.close()
    assert waited >= 0.4
    assert [r.request_id for r in got] == ["seed-1", "seed-2", "seed-3"]
    assert before[0]["pending"] == 3 and queue.counts()["claimed"] == 3
    impatient.close()
    patient.close()


def test_submit_checks_existing_ids_under_the_write_lock(
    queue: RequestQueue, inbox: Path, tmp_path: Path
) -> None:
    """Another writer inserts the same request ID while we wait: we must see it, not a stale snapshot."""
    path = inbox / "race.csv"
    path.write_bytes(csv_bytes("race-1,rec-60,privacy,2026-01-01T00:00:00Z"))
    holder = sqlite3.connect(tmp_path / "home" / "requests.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute(
        "INSERT INTO deletion_requests (request_id, record_id, reason, received_at, submitted_at,"
        " source_sha256, status, updated_at) VALUES ('race-1', 'rec-61', 'bias', ?, ?, ?, 'pending', ?)",
        ("2026-01-01 00:00:00.000000", "2026-01-01 00:00:00.000000", "0" * 64, "2026-01-01 00:00:00.000000"),
    )
    outcome: list[BaseException | None] = []

    def submit() -> None:
        try:
            queue.submit_file(path)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=submit)
    worker.start()
    time.sleep(0.5)  # the submitter is now waiting for the lock (or, if slow, has not started)
    holder.execute("COMMIT")
    worker.join(timeout=30)
    holder.close()
    assert len(outcome) == 1
    assert isinstance(outcome[0], RequestFileError)
    assert "line 2, field 'request_id': request_id 'race-1' is already in the queue" in str(outcome[0])
    assert queue.get("race-1").record_id == "rec-61"
    assert queue.counts()["pending"] == 4
