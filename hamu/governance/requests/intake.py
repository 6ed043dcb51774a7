"""Reading a submitted request file: every check that decides whether a file may enter the queue.

A file is accepted or rejected as a whole. The checks run from cheap to expensive (path, size, binary
content, encoding, structure, fields) and collect every line problem instead of stopping at the first,
so that whoever fixes the file sees the whole list. Nothing here touches the database; duplicate IDs
against the queue are checked by :class:`hamu.governance.requests.RequestQueue` inside its write transaction.

Whether a record ID exists in the training manifest or was already erased is deliberately *not* checked
here: those requests are well formed, enter the queue, and get a verdict at batch time.

Hostile or broken files are bounded, not just rejected:

* **Memory.** At most :data:`~hamu.governance.requests.errors.MAX_KEPT_PROBLEMS` line problems are kept (the
rest are
  counted), quoted values are cut to 40 characters, JSONL lines are visited one at a time, and a JSONL
  line longer than :data:`MAX_LINE_CHARS` is refused unparsed. A 4 MB file of bad lines peaks at a few
  MB instead of hundreds.
* **Nesting.** A JSONL line must start with ``{``; anything else is refused before parsing, and a deeply
  nested value inside an object (which would exhaust the parser's recursion) is a line problem too.
* **Time window.** ``received_at`` must lie in ``[EARLIEST_RECEIVED_AT, now + MAX_CLOCK_SKEW]``. The
  floor, 2000-01-01T00:00Z, is fixed rather than relative ("at most N years old") so that whether a file
  is accepted does not depend on the day it is submitted, and it sits above the placeholder dates that
  broken exports emit (0001-01-01, 1900-01-01, the Unix epoch 1970-01-01) while no genuine erasure
  request predates it. Such a date would otherwise sort first in the FIFO and jump the queue.

Once the queue has committed a file's requests, :func:`remove_accepted_file` deletes the file: the queue
keeps what it needs (each request and the file's SHA-256), and a copy left in an inbox is one more place
that names the records to erase. Rejected files are left where they are, to be fixed and resubmitted.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from hamu.governance.requests.errors import MAX_KEPT_PROBLEMS, LineProblem, RequestFileError
from hamu.governance.requests.schema import (
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
#: The earliest ``received_at`` accepted: older dates are placeholders (see the module docstring).
EARLIEST_RECEIVED_AT = datetime(2000, 1, 1, tzinfo=UTC)
#: The longest JSONL line parsed. A valid request line is a few hundred characters even with every
#: character escaped; the limit bounds what one line can cost the JSON parser.
MAX_LINE_CHARS = 64 * 1024

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
#: What a JSONL line holds, judged by its first character, when that is not ``{`` (Python's type names,
#: as a parsed value would be reported); other first characters are not the start of any JSON value
#: worth naming.
_JSON_KINDS = {"[": "list", '"': "str", "-": "number", **{d: "number" for d in "0123456789"}}
#: How many column names a header problem spells out.
_MAX_LISTED_NAMES = 5
#: One physical CSV line with its ending, as ``io.StringIO(text, newline="")`` yields them (``\r\n``,
#: ``\r`` or ``\n``, kept), but found lazily: StringIO copies the text into 4 bytes per character first.
_CSV_LINE = re.compile(r"[^\r\n]*(?:\r\n?|\n)|[^\r\n]+\Z")


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
    # read(n) allocates n bytes up front, so ask for the size fstat saw (plus one byte, which reveals a
    # file that grew since) rather than for the limit: a 1 kB file must not cost a 16 MiB buffer.
    want = info.st_size + 1
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(want)
        if len(data) == want:  # it grew: read on, up to one byte past the limit
            data += fh.read(max_bytes + 1 - len(data))
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
    if not data or data.isspace():  # not data.strip(): that copies the whole file
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


def _clip(value: str, limit: int = 40) -> str:
    """``value`` cut to ``limit`` characters: a problem must never hold a megabyte of someone's input."""
    return value if len(value) <= limit else value[:limit] + "…"


def _show(value: str, limit: int = 40) -> str:
    return repr(_clip(value, limit))


def _names(names: list[str]) -> str:
    """Quoted, clipped names, the first few of them (a header may hold thousands of bogus columns)."""
    shown = ", ".join(_show(n) for n in names[:_MAX_LISTED_NAMES])
    more = len(names) - _MAX_LISTED_NAMES
    return f"{shown} and {more} more" if more > 0 else shown


def parse_timestamp(value: str, *, now: datetime) -> tuple[datetime | None, str | None]:
    """Parse an ISO 8601 timestamp that carries a UTC offset; return ``(value, None)`` or ``(None, why)``.

    Naive timestamps are rejected rather than assumed UTC: a requester's local time silently read as UTC
    would shift the legal deadline by hours. Timestamps more than :data:`MAX_CLOCK_SKEW` after ``now``
    are rejected too (a request cannot arrive in the future), and so are timestamps before
    :data:`EARLIEST_RECEIVED_AT` (placeholder dates, which would sort first and jump the queue).
    """
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None, f"{_show(value)} is not an ISO 8601 timestamp (e.g. 2026-01-31T12:00:00Z)"
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        return None, (f"{_show(value)} has no UTC offset; naive timestamps are rejected, add 'Z' or '+HH:MM'")
    if parsed > now + MAX_CLOCK_SKEW:
        return None, f"{_show(value)} is in the future (now is {now.isoformat(timespec='seconds')})"
    if parsed < EARLIEST_RECEIVED_AT:
        earliest = EARLIEST_RECEIVED_AT.isoformat().replace("+00:00", "Z")
        return None, (
            f"{_show(value)} is before {earliest}, the earliest accepted received_at "
            "(a placeholder date such as 0001-01-01 or 1970-01-01?)"
        )
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
    reader = csv.reader((m.group() for m in _CSV_LINE.finditer(text)), strict=True)
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
            parts.append("missing column(s) " + _names(missing))
        if extra:
            parts.append("unexpected column(s) " + _names(extra))
        if repeated:
            parts.append("repeated column(s) " + _names(repeated))
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
            raise ValueError(f"repeated key {_show(key)}")
        seen[key] = value
    return seen


# One decoder for every line: json.loads with a hook builds a new decoder (and scanner) per call, which
# is most of the cost of a file of a million short bad lines.
_JSON_DECODER = json.JSONDecoder(object_pairs_hook=_reject_duplicate_keys)


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """Yield ``(number, line)`` for each line, split on ``"\\n"`` only, one line at a time.

    ``str.splitlines()`` also breaks at U+2028, U+0085 and friends, which JSON allows inside strings,
    and would then misnumber every later line; ``str.split`` would hold every line at once, about 50
    bytes per line on top of the text, which a file of a million tiny bad lines turns into 50 MB.
    """
    start, number = 0, 1
    while (end := text.find("\n", start)) >= 0:
        yield number, text[start:end]
        start, number = end + 1, number + 1
    yield number, text[start:]


@functools.lru_cache(maxsize=256)
def _not_an_object(first: str) -> str:
    """Why a line starting with ``first`` is refused (cached: a bad file repeats a few first characters)."""
    kind = _JSON_KINDS.get(first)
    if kind is not None:
        return f"expected a JSON object, got {kind}"
    return f"not a JSON object: a request line starts with '{{', this one with {_show(first)}"


def _json_object(raw: str) -> dict[str, Any] | str:
    """Parse one JSONL line into an object, or say why it is not one.

    Only a line that starts with ``{`` is parsed: an array or scalar line is refused without parsing,
    so ``[[[[…`` a hundred thousand levels deep costs one character's look. An object can still nest
    arrays or objects in its values; the C parser raises ``RecursionError`` for those past the recursion
    limit, which is caught here because a request value is a flat string anyway.
    """
    if len(raw) > MAX_LINE_CHARS:
        return f"line is {len(raw)} characters long, more than the {MAX_LINE_CHARS} a request line may have"
    body = raw.lstrip(" \t\r")  # JSON's own whitespace; "\n" cannot occur inside a line
    if not body.startswith("{"):
        return _not_an_object(body[:1])
    try:
        obj = _JSON_DECODER.decode(body)
    except RecursionError:
        return "not a JSON object: nested too deeply to parse (a request holds four string fields)"
    except ValueError as exc:  # json.JSONDecodeError is a ValueError; so is a repeated key
        return f"not a JSON object: {_clip(str(exc), 200)}"
    if not isinstance(obj, dict):  # unreachable for a line starting with "{"; kept as a safeguard
        return f"expected a JSON object, got {type(obj).__name__}"
    return obj


def _jsonl_rows(text: str) -> Iterator[tuple[int, dict[str, Any]] | LineProblem]:
    """Yield ``(line, fields)`` per JSON object line, or a problem for lines of the wrong shape."""
    for number, raw in _lines(text):
        if not raw.strip():
            continue
        obj = _json_object(raw)
        if isinstance(obj, str):
            yield LineProblem(number, None, obj)
            continue
        missing = [c for c in REQUIRED_COLUMNS if c not in obj]
        extra = sorted(k for k in obj if k not in REQUIRED_COLUMNS)
        if missing or extra:
            for name in missing:
                yield LineProblem(number, name, "missing field")
            for name in extra:
                yield LineProblem(number, _clip(name), "unexpected field")
            continue
        yield number, obj


class _Problems:
    """The line problems of one file: the first :data:`MAX_KEPT_PROBLEMS` kept, the rest only counted.

    Problems arrive in line order, so counting distinct bad lines needs only the last line seen.
    """

    def __init__(self) -> None:
        self.kept: list[LineProblem] = []
        self.omitted = 0
        self.bad_lines = 0
        self._last_line: int | None = None

    def __bool__(self) -> bool:
        return bool(self.kept)

    def add(self, problem: LineProblem) -> None:
        if problem.line is not None and problem.line != self._last_line:
            self.bad_lines += 1
            self._last_line = problem.line
        if len(self.kept) < MAX_KEPT_PROBLEMS:
            self.kept.append(problem)
        else:
            self.omitted += 1

    def error(self, source: str) -> RequestFileError:
        return RequestFileError(source, self.kept, omitted=self.omitted, bad_lines=self.bad_lines)


def parse_requests(data: bytes, *, fmt: FileFormat, now: datetime, source: str) -> list[ParsedRequest]:
    """Parse and check a whole file; return its requests or raise :class:`RequestFileError`.

    Problems of the file as a whole (empty, binary, wrong header) raise at once; line problems are all
    found first (the first :data:`MAX_KEPT_PROBLEMS` kept, the rest counted). Two lines with the same
    ``request_id`` are a problem of the later line. Two requests for the same *record* are fine here:
    they get the ``duplicate`` verdict at batch time. Once a line is bad the file is lost, so the valid
    requests found so far are dropped rather than kept to the end.
    """
    text = _decode(data, source)
    rows = _csv_rows(text, source) if fmt == "csv" else _jsonl_rows(text)
    problems = _Problems()
    parsed: list[ParsedRequest] = []
    first_line: dict[str, int] = {}
    for item in rows:
        if isinstance(item, LineProblem):
            problems.add(item)
            continue
        number, values = item
        request, found = _check_fields(values, number, now)
        for problem in found:
            problems.add(problem)
        rid = values.get("request_id")
        if isinstance(rid, str) and rid:
            if rid in first_line:
                problems.add(
                    LineProblem(
                        number,
                        "request_id",
                        f"duplicate request_id {_show(rid)} (first on line {first_line[rid]})",
                    )
                )
                continue
            first_line[rid] = number
        if problems:
            parsed.clear()
        elif request is not None:
            parsed.append(request)
    if problems:
        raise problems.error(source)
    if not parsed:
        raise _fail(source, "file is empty: no requests" + (" after the header" if fmt == "csv" else ""))
    return parsed


def remove_accepted_file(path: Path | str, sha256: str) -> Literal["removed", "changed", "gone"]:
    """Delete a request file whose requests the queue now holds, if it still holds exactly those bytes.

    Call it only after the queue committed the file (``RequestQueue.submit_file`` returned): until then
    the file is the only copy of its requests, so a crash in between keeps the file, and a resubmission
    is refused as already queued rather than lost. ``path`` is the file that was read
    (``SubmitResult.path``, symlinks resolved) and ``sha256`` its digest (``SubmitResult.sha256``).

    Returns ``"removed"``; ``"changed"`` when the file no longer holds the queued bytes (it was rewritten
    since, e.g. a corrected version under the same name, whose requests are in no queue yet), and it is
    kept; or ``"gone"`` when nothing is there any more. Writers should put files into an inbox by
    renaming a finished file into it, so that no one ever reads a half-written file. Any other
    ``OSError`` (no write permission on the folder) propagates: the requests are queued, only the copy
    stays.
    """
    target = Path(path)
    try:
        fd = os.open(target, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return "gone"
    with os.fdopen(fd, "rb") as fh:
        opened = os.fstat(fh.fileno())
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    if digest != sha256:
        return "changed"
    try:
        now_there = os.stat(target, follow_symlinks=False)
    except FileNotFoundError:
        return "gone"
    if (now_there.st_dev, now_there.st_ino) != (opened.st_dev, opened.st_ino):
        return "changed"  # replaced (renamed over) since it was hashed
    try:
        target.unlink()
    except FileNotFoundError:
        return "gone"
    return "removed"
