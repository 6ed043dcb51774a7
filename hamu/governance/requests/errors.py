"""Exceptions of the request queue, specific enough that a caller can say exactly what went wrong."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: How many problems a :class:`RequestFileError` message spells out before summarising the rest.
MAX_LISTED_PROBLEMS = 5
#: How many problems a :class:`RequestFileError` keeps; the rest are only counted (``omitted``). Why: a
#: file of a million bad lines would otherwise hold a million problems in memory (hundreds of MB), and
#: whoever fixes the file acts on the first screenful anyway, then resubmits.
MAX_KEPT_PROBLEMS = 100


class RequestQueueError(Exception):
    """Base class of everything the queue raises on purpose."""


@dataclass(frozen=True, slots=True)
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

    ``problems`` holds the first :data:`MAX_KEPT_PROBLEMS` problems in file order (the message lists the
    first few), ``omitted`` counts the rest and ``bad_lines`` the distinct lines at fault, so a caller can
    report the true extent without the error holding every problem; ``source`` is the path as given.
    A caller that stopped collecting early passes what it only counted as ``omitted`` and ``bad_lines``.
    """

    def __init__(
        self,
        source: str,
        problems: Sequence[LineProblem],
        *,
        omitted: int = 0,
        bad_lines: int | None = None,
    ) -> None:
        if not problems:
            raise ValueError("RequestFileError needs at least one problem")
        if omitted < 0:
            raise ValueError(f"omitted must be non-negative, got {omitted}")
        self.source = source
        self.problems: tuple[LineProblem, ...] = tuple(problems[:MAX_KEPT_PROBLEMS])
        self.omitted = omitted + len(problems) - len(self.problems)
        if bad_lines is None:
            bad_lines = len({p.line for p in problems if p.line is not None})
        self.bad_lines = bad_lines
        shown = "; ".join(str(p) for p in self.problems[:MAX_LISTED_PROBLEMS])
        more = len(self.problems) + self.omitted - MAX_LISTED_PROBLEMS
        tail = f"; and {more} more problem(s)" if more > 0 else ""
        head = f"{bad_lines} bad line(s), " if bad_lines else ""
        super().__init__(f"{source}: file rejected ({head}no request queued): {shown}{tail}")


class QueueStateError(RequestQueueError):
    """A state change was asked for requests that are not in the state it needs (nothing was changed)."""


class LeaseLostError(QueueStateError):
    """A batch no longer owns its claims: their lease expired, or they were released or claimed again.

    Raised by a heartbeat and by a close; the close changed nothing, and the batch must stop (another run
    will handle, or already handles, the requests).
    """


class QueueBusyError(RequestQueueError):
    """The queue's database stayed locked by another writer for longer than the busy timeout."""
