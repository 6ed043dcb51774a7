"""Intake under hostile or broken files: nesting, memory, the time window, and the inbox after acceptance.

Each test names what the code before these limits did: crash with ``RecursionError``, hold every problem
of a million-line file (hundreds of MB), accept year 1 (which sorts first and jumps the queue), or leave
an accepted file in the inbox.
"""

from __future__ import annotations

import hashlib
import json
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from typer.testing import CliRunner

import hamu.governance.requests.queue as queue_module
from hamu.governance.requests import RequestFileError, RequestQueue, default_queue_url
from hamu.governance.requests.errors import MAX_KEPT_PROBLEMS
from hamu.governance.requests.intake import MAX_LINE_CHARS, remove_accepted_file

HEADER = "request_id,record_id,reason,received_at"
GOOD_TIME = "2026-01-01T00:00:00Z"


def req(request_id: str, record_id: str, received_at: str = GOOD_TIME) -> dict[str, str]:
    """One JSONL request object."""
    return {"request_id": request_id, "record_id": record_id, "reason": "privacy", "received_at": received_at}


def jsonl(*lines: Any) -> bytes:
    """A JSONL file's bytes; strings are written verbatim, anything else as JSON."""
    return "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines).encode()


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[RequestQueue]:
    with RequestQueue(default_queue_url(tmp_path / "home")) as q:
        yield q


def rejected(queue: RequestQueue, path: Path) -> RequestFileError:
    """Submit ``path``, expect a rejection, check the queue stayed empty, and return the error."""
    with pytest.raises(RequestFileError) as caught:
        queue.submit_file(path)
    assert sum(queue.counts().values()) == 0
    return caught.value


# ------------------------------------------------------------------------------------------------ nesting

# Each needs the parser to recurse far past Python's limit; the old code let its RecursionError escape.
DEEP = 30_000  # levels; 2 characters each, so the line stays under MAX_LINE_CHARS
NESTED = [
    pytest.param("[" * DEEP + "]" * DEEP, "expected a JSON object, got list", id="array"),
    pytest.param(
        '{"request_id": ' + "[" * DEEP + "]" * DEEP + "}", "nested too deeply to parse", id="array-in-object"
    ),
    pytest.param('{"a":' * 10_000 + '"x"' + "}" * 10_000, "nested too deeply to parse", id="objects"),
    pytest.param("[" * 100_000 + "]" * 100_000, f"more than the {MAX_LINE_CHARS}", id="array-100k-levels"),
]


@pytest.mark.parametrize(("line", "message"), NESTED)
def test_deeply_nested_line_is_a_line_problem(
    queue: RequestQueue, inbox: Path, line: str, message: str
) -> None:
    """A line nested thousands of levels deep rejects the file naming that line; nothing crashes."""
    path = inbox / "deep.jsonl"
    path.write_bytes(jsonl(req("r-1", "rec-1"), line, req("r-3", "rec-3")))
    error = rejected(queue, path)
    assert [(p.line, p.field) for p in error.problems] == [(2, None)]
    assert message in str(error.problems[0])
    assert "line 2" in str(error)


# ------------------------------------------------------------------------------------------------- memory


def _bad_lines_file(path: Path, size: int) -> None:
    """About ``size`` bytes of short lines that are not JSON objects, the shape that cost the most."""
    block = b'x\n-\nnot json\n[1]\n1\n"s"\n'
    path.write_bytes(block * (size // len(block)))


def test_a_file_of_bad_lines_takes_bounded_memory(queue: RequestQueue, inbox: Path) -> None:
    """2 MiB of bad lines peaks far below 64 MiB; the old code kept every problem (about 150 MiB here)."""
    path = inbox / "bad.jsonl"
    _bad_lines_file(path, 2 * 1024 * 1024)
    lines = path.read_bytes().count(b"\n")
    tracemalloc.start()
    try:
        with pytest.raises(RequestFileError) as caught:
            queue.submit_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024 * 1024, f"intake of 2 MiB of bad lines peaked at {peak / 2**20:.0f} MiB"
    assert caught.value.bad_lines == lines


def test_a_small_file_is_read_into_a_small_buffer(queue: RequestQueue, inbox: Path) -> None:
    """Reading asked for the 16 MiB limit, and ``read(n)`` allocates n bytes up front, whatever the file."""
    path = inbox / "small.jsonl"
    path.write_bytes(jsonl(req("r-1", "rec-1", received_at="1970-01-01T00:00:00Z")))
    tracemalloc.start()
    try:
        with pytest.raises(RequestFileError):
            queue.submit_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024, (
        f"intake of a {path.stat().st_size}-byte file peaked at {peak / 2**20:.0f} MiB"
    )


def test_problems_are_capped_and_the_rest_counted(queue: RequestQueue, inbox: Path) -> None:
    """The error keeps the first MAX_KEPT_PROBLEMS problems in file order and counts every other one."""
    path = inbox / "many.jsonl"
    path.write_bytes(jsonl(*(["{not json"] * 1000), *([{}] * 10)))  # 1000 + 10 × 4 missing fields
    error = rejected(queue, path)
    assert len(error.problems) == MAX_KEPT_PROBLEMS
    assert [p.line for p in error.problems] == list(range(1, MAX_KEPT_PROBLEMS + 1))
    assert error.omitted == 1000 + 40 - MAX_KEPT_PROBLEMS
    assert error.bad_lines == 1010
    assert "1010 bad line(s)" in str(error) and f"and {1040 - 5} more problem(s)" in str(error)


def test_csv_problems_are_capped_too(queue: RequestQueue, inbox: Path) -> None:
    path = inbox / "many.csv"
    path.write_text(HEADER + "\n" + "a,b\n" * 500)
    error = rejected(queue, path)
    assert len(error.problems) == MAX_KEPT_PROBLEMS and error.omitted == 500 - MAX_KEPT_PROBLEMS
    assert error.bad_lines == 500


HUGE = "k" * 50_000
LARGE_VALUES = [
    pytest.param("r.jsonl", jsonl({**req("r-1", "rec-1"), HUGE: "x"}), id="unexpected-key"),
    pytest.param("r.jsonl", jsonl(f'{{"{HUGE}": 1, "{HUGE}": 2}}'), id="repeated-key"),
    pytest.param("r.csv", f"{HEADER},{HUGE}\nr-1,rec-1,privacy,{GOOD_TIME},x\n".encode(), id="csv-column"),
    pytest.param(
        "r.csv",
        (",".join([HEADER, *(f"extra{i}" for i in range(2000))]) + "\n").encode(),
        id="csv-many-columns",
    ),
]


@pytest.mark.parametrize(("name", "content"), LARGE_VALUES)
def test_no_problem_quotes_a_large_value(queue: RequestQueue, inbox: Path, name: str, content: bytes) -> None:
    """Quoted input is cut short, so neither the error nor its problems hold a 50 kB value."""
    path = inbox / name
    path.write_bytes(content)
    error = rejected(queue, path)
    assert all(len(str(p)) < 500 for p in error.problems), [str(p)[:80] for p in error.problems]
    assert len(str(error)) < 2000


# ------------------------------------------------------------------------------------------- time window

TOO_OLD = [
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+01:00",
    "1970-01-01T00:00:00Z",
    "1999-12-31T23:59:59Z",
]


@pytest.mark.parametrize("received_at", [*TOO_OLD, "2000-01-01T00:59:59+01:00"])
def test_implausibly_old_timestamps_are_rejected(queue: RequestQueue, inbox: Path, received_at: str) -> None:
    """Before 2000-01-01T00:00Z is a placeholder date (accepted, it would sort first in the FIFO); the
    floor itself, on line 1, is accepted."""
    path = inbox / "old.jsonl"
    floor = req("r-1", "rec-1", received_at="2000-01-01T00:00:00Z")
    path.write_bytes(jsonl(floor, req("r-2", "rec-2", received_at=received_at), req("r-3", "rec-3")))
    error = rejected(queue, path)
    assert [(p.line, p.field) for p in error.problems] == [(2, "received_at")]
    assert "before 2000-01-01T00:00:00Z" in str(error)


# ------------------------------------------------------------------------------------------------ removal


def test_remove_accepted_file_keeps_a_file_that_changed(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("queued content\n")
    queued = hashlib.sha256(b"queued content\n").hexdigest()
    path.write_text("corrected content\n")
    assert remove_accepted_file(path, queued) == "changed"
    assert path.read_text() == "corrected content\n"
    path.write_text("queued content\n")
    assert remove_accepted_file(path, queued) == "removed"
    assert not path.exists()
    assert remove_accepted_file(path, queued) == "gone"


@pytest.fixture
def cli_home(tmp_path: Path) -> Iterator[Path]:
    """A temporary ``HAMU_HOME``; the environment the CLI sets is restored after."""
    home = tmp_path / "hamu-home"
    with mock.patch.dict(os.environ):
        os.environ["HAMU_HOME"] = str(home)
        os.environ.pop("HAMU_QUEUE_URL", None)
        yield home


def _submit(*args: str) -> Any:
    from hamu_pipeline.flows.cli import app

    return CliRunner().invoke(app, ["requests", "submit", *args])


def _queued(home: Path) -> list[str]:
    with RequestQueue(default_queue_url(home)) as q:
        return [r.request_id for r in q.list()]


def test_cli_removes_an_accepted_file_only_after_the_queue_committed(
    cli_home: Path, inbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash inside the queue's transaction keeps the file; a committed submission removes it."""
    path = inbox / "r.jsonl"
    path.write_bytes(jsonl(req("r-1", "rec-1"), req("r-2", "rec-2")))

    def crash(*_: object) -> None:
        raise RuntimeError("simulated crash before commit")

    with monkeypatch.context() as patched:
        patched.setattr(queue_module, "insert", crash)
        crashed = _submit(str(path))
    assert isinstance(crashed.exception, RuntimeError)
    assert path.exists() and _queued(cli_home) == []

    result = _submit(str(path), "--allowed-root", str(inbox))
    assert result.exit_code == 0, result.output
    assert not path.exists(), "an accepted file must leave the inbox"
    assert _queued(cli_home) == ["r-1", "r-2"]
    assert "removed" in result.output


def test_cli_keeps_rejected_files_and_files_asked_to_keep(cli_home: Path, inbox: Path) -> None:
    bad = inbox / "bad.jsonl"
    bad.write_bytes(jsonl(req("r-1", "rec-1", received_at="0001-01-01T00:00:00Z")))
    result = _submit(str(bad))
    assert result.exit_code == 2 and "before 2000-01-01" in result.output
    assert bad.exists()

    kept = inbox / "kept.jsonl"
    kept.write_bytes(jsonl(req("r-2", "rec-2")))
    result = _submit(str(kept), "--keep")
    assert result.exit_code == 0, result.output
    assert kept.exists() and _queued(cli_home) == ["r-2"]
