"""Reading a submitted request file: every check that decides whether a file may enter the queue.

A file is accepted or rejected as a whole. The checks run from cheap to expensive (path, size, binary
content, encoding, structure, fields) and collect every line problem instead of stopping at the first,
so that whoever fixes the file sees the whole list. Nothing here touches the database; duplicate IDs
against the queue are checked by :class:`hamu.requests.RequestQueue` inside its write transaction.

Whether a record ID exists in the training manifest or was already erased is deliberately *not* checked
here: those requests are well formed, enter the queue, and get a verdict at batch time.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from hamu.requests.errors import LineProblem, RequestFileError
from hamu.requests.schema import (
    RECORD_ID_PATTERN,
    REQUEST_ID_PATTERN,
    REQUIRED_COLUMNS,
    Reason,
    is_valid_record_id,
    is_valid_request_id,
)

FileFormat = Literal["csv", "jsonl"]

#: Default size limit of one submitted file (about 150k requests of typical length).
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
#: How far in the future a ``received_at`` may lie (clock skew between the requester and us).
MAX_CLOCK_SKEW = timedelta(minutes=5)

_SUFFIXES: dict[str, FileFormat] = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_UTF8_BOM = b"\xef\xbb\xbf"
_WIDE_BOMS = {
    b"\xff\xfe\x00\x00": "UTF-32",
    b"\x00\x00\xfe\xff": "UTF-32",
    b"\xff\xfe": "UTF-16",
    b"\xfe\xff": "UTF-16",
}
# Bytes no text request file contains (C0 controls except tab, LF, VT, FF, CR; and DEL).
_BINARY_BYTES = bytes(b for b in range(32) if b not in (9, 10, 11, 12, 13)) + b"\x7f"
_BINARY_SNIFF = 8192
_BINARY_FRACTION = 0.05
_REASONS = tuple(r.value for r in Reason)


@dataclass(frozen=True)
class LoadedFile:
    """The raw bytes of a file that passed the path and size checks, and how to parse it."""

    path: Path
    data: bytes
    fmt: FileFormat
    sha256: str


@dataclass(frozen=True)
class ParsedRequest:
    """One valid line of a submitted file."""

    line: int
    request_id: str
    record_id: str
    reason: Reason
    received_at: datetime


def _fail(
    source: str, message: str, *, line: int | None = None, field: str | None = None
) -> RequestFileError:
    return RequestFileError(source, [LineProblem(line, field, message)])


def _size(n: int) -> str:
    return f"{n} bytes" if n < 1024 * 1024 else f"{n / (1024 * 1024):.1f} MiB"


def load_request_file(
    path: Path | str,
    *,
    allowed_root: Path | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    fmt: FileFormat | None = None,
) -> LoadedFile:
    """Check where ``path`` points and how large it is, then read it.

    Symlinks are resolved before the ``allowed_root`` check, so a link inside the folder that points
    outside it is refused. The format comes from the suffix of the name as given (``.csv``, ``.jsonl``,
    ``.ndjson``) unless ``fmt`` says otherwise.
    """
    source = str(path)
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    given = Path(path)
    if fmt is None:
        suffix = given.suffix.lower()
        if suffix not in _SUFFIXES:
            allowed = ", ".join(sorted(_SUFFIXES))
            raise _fail(source, f"unsupported file type {suffix or '(none)'!r}; use one of {allowed}")
        fmt = _SUFFIXES[suffix]
    elif fmt not in ("csv", "jsonl"):
        raise ValueError(f"fmt must be 'csv' or 'jsonl', got {fmt!r}")
    try:
        resolved = given.resolve(strict=True)
    except FileNotFoundError:
        raise _fail(source, "file not found") from None
    except (OSError, RuntimeError) as exc:  # a symlink loop raises RuntimeError on some Pythons
        raise _fail(source, f"cannot resolve path: {exc}") from None
    if allowed_root is not None:
        try:
            root = Path(allowed_root).resolve(strict=True)
        except (OSError, RuntimeError) as exc:
            raise ValueError(f"allowed_root {allowed_root} does not exist: {exc}") from None
        if not resolved.is_relative_to(root):
            raise _fail(source, f"path resolves to {resolved}, outside the allowed folder {root}")
    # O_NOFOLLOW: the last component cannot have been swapped for a symlink since it was resolved.
    try:
        fd = os.open(resolved, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise _fail(source, f"cannot open file: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _fail(source, "not a regular file")
        if info.st_size > max_bytes:
            raise _fail(source, f"file is {_size(info.st_size)}, larger than the {_size(max_bytes)} limit")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(max_bytes + 1)  # the file may have grown since fstat
    if len(data) > max_bytes:
        raise _fail(source, f"file is larger than the {_size(max_bytes)} limit")
    return LoadedFile(path=resolved, data=data, fmt=fmt, sha256=hashlib.sha256(data).hexdigest())


def _decode(data: bytes, source: str) -> str:
    """Refuse empty, binary and wide-encoded content, then decode UTF-8 keeping bad bytes visible.

    Invalid UTF-8 bytes become lone surrogates (``surrogateescape``), so the field checks can say which
    line and field hold them instead of reporting a bare byte offset.
    """
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM) :]
    for bom, name in _WIDE_BOMS.items():
        if data.startswith(bom):
            raise _fail(source, f"file is {name}-encoded (byte-order mark); UTF-8 is required")
    if not data.strip():
        raise _fail(source, "file is empty")
    nul = data.find(b"\x00")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise _fail(source, f"binary file: NUL byte at offset {nul}", line=line)
    head = data[:_BINARY_SNIFF]
    controls = sum(head.count(b) for b in _BINARY_BYTES)
    if controls > _BINARY_FRACTION * len(head):
        raise _fail(source, f"binary file: {controls} control bytes in the first {len(head)} bytes")
    return data.decode("utf-8", errors="surrogateescape")


def _bad_char(value: str) -> str | None:
    """Describe the first undecodable byte or control character in ``value``, if any."""
    for ch in value:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            return f"not valid UTF-8 (byte 0x{code - 0xDC00:02X})"
        if code < 32 or code == 0x7F:
            return f"contains control character U+{code:04X}"
    return None


def _show(value: str, limit: int = 40) -> str:
    text = value if len(value) <= limit else value[:limit] + "…"
    return repr(text)


def parse_timestamp(value: str, *, now: datetime) -> tuple[datetime | None, str | None]:
    """Parse an ISO 8601 timestamp that carries a UTC offset; return ``(value, None)`` or ``(None, why)``.

    Naive timestamps are rejected rather than assumed UTC: a requester's local time silently read as UTC
    would shift the legal deadline by hours. Timestamps more than :data:`MAX_CLOCK_SKEW` after ``now``
    are rejected too (a request cannot arrive in the future).
    """
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None, f"{_show(value)} is not an ISO 8601 timestamp (e.g. 2026-01-31T12:00:00Z)"
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        return None, (f"{_show(value)} has no UTC offset; naive timestamps are rejected, add 'Z' or '+HH:MM'")
    if parsed > now + MAX_CLOCK_SKEW:
        return None, f"{_show(value)} is in the future (now is {now.isoformat(timespec='seconds')})"
    return parsed, None


def _check_fields(
    values: dict[str, Any], line: int, now: datetime
) -> tuple[ParsedRequest | None, list[LineProblem]]:
    """Validate the four fields of one line; return the parsed request or the line's problems."""
    problems: list[LineProblem] = []
    text: dict[str, str] = {}
    for name in REQUIRED_COLUMNS:
        value = values[name]
        if not isinstance(value, str):
            kind = "null" if value is None else type(value).__name__
            problems.append(LineProblem(line, name, f"must be a string, got {kind}"))
            continue
        if value == "":
            problems.append(LineProblem(line, name, "is empty"))
            continue
        bad = _bad_char(value)
        if bad is not None:
            problems.append(LineProblem(line, name, bad))
            continue
        text[name] = value
    if "request_id" in text and not is_valid_request_id(text["request_id"]):
        problems.append(
            LineProblem(
                line, "request_id", f"{_show(text['request_id'])} does not match {REQUEST_ID_PATTERN}"
            )
        )
    if "record_id" in text and not is_valid_record_id(text["record_id"]):
        problems.append(
            LineProblem(
                line,
                "record_id",
                f"malformed record ID {_show(text['record_id'])}: must match {RECORD_ID_PATTERN}",
            )
        )
    if "reason" in text and text["reason"] not in _REASONS:
        problems.append(
            LineProblem(
                line, "reason", f"unknown reason {_show(text['reason'])} (allowed: {', '.join(_REASONS)})"
            )
        )
    received: datetime | None = None
    if "received_at" in text:
        received, why = parse_timestamp(text["received_at"], now=now)
        if why is not None:
            problems.append(LineProblem(line, "received_at", why))
    if problems or received is None:
        return None, problems
    return (
        ParsedRequest(
            line=line,
            request_id=text["request_id"],
            record_id=text["record_id"],
            reason=Reason(text["reason"]),
            received_at=received,
        ),
        [],
    )


def _csv_rows(text: str, source: str) -> Iterator[tuple[int, dict[str, Any]] | LineProblem]:
    """Yield ``(line, fields)`` per data row, or a problem for rows with the wrong shape."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except csv.Error as exc:
        raise _fail(source, f"cannot parse the CSV header: {exc}", line=1) from None
    bad = next((b for b in (_bad_char(h) for h in header) if b is not None), None)
    if bad is not None:
        raise _fail(source, f"header is {bad}", line=1)
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    extra = [h for h in header if h not in REQUIRED_COLUMNS]
    repeated = sorted({h for h in header if header.count(h) > 1})
    if missing or extra or repeated:
        parts = []
        if missing:
            parts.append("missing column(s) " + ", ".join(repr(c) for c in missing))
        if extra:
            parts.append("unexpected column(s) " + ", ".join(repr(c) for c in extra))
        if repeated:
            parts.append("repeated column(s) " + ", ".join(repr(c) for c in repeated))
        expected = ",".join(REQUIRED_COLUMNS)
        raise _fail(source, f"wrong header: {'; '.join(parts)} (expected {expected})", line=1)
    last = reader.line_num
    while True:
        start = last + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield LineProblem(start, None, f"cannot parse CSV: {exc}")
            return  # the reader cannot resynchronise after a quoting error
        last = reader.line_num
        if not row:
            continue  # blank line
        if len(row) != len(header):
            yield LineProblem(start, None, f"expected {len(header)} comma-separated fields, got {len(row)}")
            continue
        yield start, dict(zip(header, row, strict=True))


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"repeated key {key!r}")
        seen[key] = value
    return seen


def _jsonl_rows(text: str) -> Iterator[tuple[int, dict[str, Any]] | LineProblem]:
    """Yield ``(line, fields)`` per JSON object line, or a problem for lines of the wrong shape."""
    # Split on "\n" only: str.splitlines() also breaks at U+2028, U+0085 and friends, which JSON allows
    # inside strings, and would then misnumber every later line.
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw, object_pairs_hook=_reject_duplicate_keys)
        except ValueError as exc:  # json.JSONDecodeError is a ValueError; so is a repeated key
            yield LineProblem(number, None, f"not a JSON object: {exc}")
            continue
        if not isinstance(obj, dict):
            yield LineProblem(number, None, f"expected a JSON object, got {type(obj).__name__}")
            continue
        missing = [c for c in REQUIRED_COLUMNS if c not in obj]
        extra = sorted(k for k in obj if k not in REQUIRED_COLUMNS)
        if missing or extra:
            for name in missing:
                yield LineProblem(number, name, "missing field")
            for name in extra:
                yield LineProblem(number, name, "unexpected field")
            continue
        yield number, obj


def parse_requests(data: bytes, *, fmt: FileFormat, now: datetime, source: str) -> list[ParsedRequest]:
    """Parse and check a whole file; return its requests or raise :class:`RequestFileError`.

    Problems of the file as a whole (empty, binary, wrong header) raise at once; line problems are all
    collected first. Two lines with the same ``request_id`` are a problem of the later line. Two requests
    for the same *record* are fine here: they get the ``duplicate`` verdict at batch time.
    """
    text = _decode(data, source)
    rows = _csv_rows(text, source) if fmt == "csv" else _jsonl_rows(text)
    problems: list[LineProblem] = []
    parsed: list[ParsedRequest] = []
    first_line: dict[str, int] = {}
    for item in rows:
        if isinstance(item, LineProblem):
            problems.append(item)
            continue
        number, values = item
        request, found = _check_fields(values, number, now)
        problems.extend(found)
        rid = values.get("request_id")
        if isinstance(rid, str) and rid:
            if rid in first_line:
                problems.append(
                    LineProblem(
                        number,
                        "request_id",
                        f"duplicate request_id {_show(rid)} (first on line {first_line[rid]})",
                    )
                )
                continue
            first_line[rid] = number
        if request is not None:
            parsed.append(request)
    if problems:
        raise RequestFileError(source, problems)
    if not parsed:
        raise _fail(source, "file is empty: no requests" + (" after the header" if fmt == "csv" else ""))
    return parsed
