"""Exceptions of the request queue, specific enough that a caller can say exactly what went wrong."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: How many problems a :class:`RequestFileError` message spells out before summarising the rest.
MAX_LISTED_PROBLEMS = 5


class RequestQueueError(Exception):
    """Base class of everything the queue raises on purpose."""


@dataclass(frozen=True)
class LineProblem:
    """One problem in a submitted file: where (1-based physical line, field) and what.

    ``line`` is ``None`` for problems of the file as a whole (size, encoding, path); ``field`` is ``None``
    when no single field is at fault (a line that is not JSON, a wrong number of CSV cells).
    """

    line: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = []
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        return f"{', '.join(where)}: {self.message}" if where else self.message


class RequestFileError(RequestQueueError, ValueError):
    """A submitted file was rejected as a whole; nothing from it entered the queue.

    ``problems`` holds every problem found (the message lists the first few), so a caller can show them
    all; ``source`` is the path as given.
    """

    def __init__(self, source: str, problems: Sequence[LineProblem]) -> None:
        if not problems:
            raise ValueError("RequestFileError needs at least one problem")
        self.source = source
        self.problems: tuple[LineProblem, ...] = tuple(problems)
        shown = "; ".join(str(p) for p in self.problems[:MAX_LISTED_PROBLEMS])
        more = len(self.problems) - MAX_LISTED_PROBLEMS
        tail = f"; and {more} more problem(s)" if more > 0 else ""
        n_lines = len({p.line for p in self.problems if p.line is not None})
        head = f"{n_lines} bad line(s), " if n_lines else ""
        super().__init__(f"{source}: file rejected ({head}no request queued): {shown}{tail}")


class QueueStateError(RequestQueueError):
    """A state change was asked for requests that are not in the state it needs (nothing was changed)."""


class QueueBusyError(RequestQueueError):
    """The queue's database stayed locked by another writer for longer than the busy timeout."""
