"""A failed batch, recorded without raw IDs: the ledger's ``failed`` record, the exception Prefect logs, and
every Prefect run log line written while the batch runs.

Exception text is written by whatever raised it, and it often quotes the record or request it was handling
(``KeyError('digits-train-000007')``, "record_id 'x' does not match"). The ledger is kept forever and the
Prefect logs go to its database, so both get the text with every known raw ID replaced by the first 16
hex digits of its keyed hash (the form receipts and reports use).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Collection, Iterator
from pathlib import Path

from hamu.governance.audit import KeyedHasher
from hamu.governance.requests import RequestQueue
from hamu_pipeline.tasks.audit import BatchAudit, redact_ids
from hamu_pipeline.tasks.recovery import clean_up_failed_batch

# Text scanned for IDs per message; longer text is cut first (the substring pass costs one scan of the text
# per known ID). ``_ID_TAIL`` is what either ID grammar allows: a cut never leaves part of an ID behind.
_SCAN_CHARS = 10_000
_REASON_CHARS = 500
_ID_TAIL = re.compile(r"[A-Za-z0-9._:-]*\Z")


def _cut(text: str) -> str:
    if len(text) <= _SCAN_CHARS:
        return text
    head = _ID_TAIL.sub("", text[:_SCAN_CHARS])
    return f"{head}[... {len(text) - len(head)} characters cut]"


def redact_failure_text(text: str, raw_ids: Collection[str], hasher: KeyedHasher) -> str:
    """``text`` with every ID of ``raw_ids`` replaced by its keyed form (text past 10,000 characters is cut).

    :func:`hamu_pipeline.tasks.audit.redact_ids` matches whole tokens; exception text also glues IDs to
    punctuation
    (``rec-1:``, ``id=rec-1``, ``rec-1.``), so any ID still present as a substring is replaced too, longest
    first (an ID inside a longer one must not leave the longer one's tail behind).
    """
    out = redact_ids(_cut(text), raw_ids, hasher)
    for rid in sorted((i for i in raw_ids if i and i in out), key=len, reverse=True):
        out = out.replace(rid, f"<{hasher.hex(rid)[:16]}>")
    return out


def scrub_exception(exc: BaseException, raw_ids: Collection[str], hasher: KeyedHasher) -> None:
    """Redact the string arguments of ``exc`` and of every exception chained to it, in place.

    Why in place: re-raising the same object keeps its type and traceback for callers and Prefect, while
    the message Prefect logs (``repr`` and the traceback's last line, both built from ``args`` for nearly
    every exception) names no raw ID. Exceptions that build their text from other attributes (``OSError``'s
    ``filename``, a custom ``__str__``) keep it; the ledger text is redacted separately for that reason.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        args = tuple(
            redact_failure_text(a, raw_ids, hasher) if isinstance(a, str) else a for a in current.args
        )
        with contextlib.suppress(AttributeError, TypeError):  # best effort: never hide the original error
            current.args = args
        current = current.__cause__ or current.__context__


def record_failure(
    exc: BaseException,
    *,
    queue: RequestQueue,
    audit: BatchAudit,
    raw_ids: Collection[str],
    work_dir: Path,
) -> None:
    """Release the batch's claim, append its ``failed`` record (redacted) and clean up after it.

    ``raw_ids`` are the IDs the failure text may quote: the claimed requests' request and record IDs and the
    training manifest's record IDs (which include earlier erasures carried over into this batch). ``exc`` is
    scrubbed in place so that the caller can re-raise it.
    """
    scrub_exception(exc, raw_ids, audit.hasher)
    # An interruption (Ctrl-C, cancellation) is not the requests' fault: it must not count towards their
    # quarantine. An exception does.
    failed = isinstance(exc, Exception)
    released = queue.release_batch(audit.batch_id, failed=failed)
    reason = redact_failure_text(f"{type(exc).__name__}: {exc}", raw_ids, audit.hasher)
    audit.record(
        "failed",
        decision="released",
        reason=reason[:_REASON_CHARS],
        params={"counted_as_failure": failed, "released": released},
    )
    clean_up_failed_batch(audit, work_dir)


_ID_RUN = re.compile(r"[A-Za-z0-9._:-]+")
_SEPARATOR = re.compile(r"[._:-]")

#: Prefect's loggers for flow- and task-run messages (its engine logs a failing task's exception there,
#: before the flow sees it, and ships the record to its database).
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class RedactingFilter(logging.Filter):
    """Rewrites a log record's message (and scrubs its exception) so that no known raw ID is logged.

    A filter on the logger that creates the record runs before any handler sees it, Prefect's API handler
    included, so the redacted text is the only text that leaves the process.
    """

    def __init__(self, raw_ids: Collection[str], hasher: KeyedHasher) -> None:
        super().__init__()
        self.raw_ids = frozenset(raw_ids)
        self.hasher = hasher

    def mentions_an_id(self, text: str) -> bool:
        """Whether ``text`` may quote a known ID: cheap in the number of IDs (most lines quote none).

        Every run of ID characters is cut at its separators (``._:-``); a known ID that starts at the run's
        start or after a separator and ends at its end or before one is found. The full redaction runs
        only then (its substring pass costs one scan of the text per known ID).
        """
        for run in _ID_RUN.findall(text):
            cuts = [0, *(m.end() for m in _SEPARATOR.finditer(run))]
            ends = [m.start() for m in _SEPARATOR.finditer(run)] + [len(run)]
            if any(run[i:j] in self.raw_ids for i in cuts for j in ends if j > i):
                return True
        return False

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to logging's own error handling
            return True
        if self.mentions_an_id(message):
            record.msg, record.args = redact_failure_text(message, self.raw_ids, self.hasher), ()
        if record.exc_info and record.exc_info[1] is not None:
            scrub_exception(record.exc_info[1], self.raw_ids, self.hasher)
            record.exc_text = None
        return True


@contextlib.contextmanager
def redacted_run_logs(raw_ids: Collection[str], hasher: KeyedHasher) -> Iterator[RedactingFilter]:
    """While the block runs, Prefect's flow- and task-run log lines carry no raw ID of ``raw_ids``."""
    redacting = RedactingFilter(frozenset(raw_ids), hasher)
    loggers = [logging.getLogger(name) for name in RUN_LOGGERS]
    for logger in loggers:
        logger.addFilter(redacting)
    try:
        yield redacting
    finally:
        for logger in loggers:
            logger.removeFilter(redacting)
