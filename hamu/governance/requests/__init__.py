"""Deletion-request queue: file intake with all-or-nothing checks, atomic batch claims, verdicts.

Plain SQLAlchemy (SQLite under ``HAMU_HOME`` by default, any URL by configuration); no orchestration
imports, so the library stays usable on its own. The file format, ID patterns, verdicts and states are
described in ``docs/requests.md``.
"""

from hamu.governance.requests.errors import (
    LeaseLostError,
    LineProblem,
    QueueBusyError,
    QueueStateError,
    RequestFileError,
    RequestQueueError,
)
from hamu.governance.requests.intake import DEFAULT_MAX_BYTES, MAX_CLOCK_SKEW
from hamu.governance.requests.queue import RequestQueue, SubmitResult, default_queue_url
from hamu.governance.requests.schema import (
    BATCH_ID_PATTERN,
    DEFAULT_LEASE,
    DEFAULT_MAX_REQUESTS,
    DEFAULT_PROMOTION_DEADLINE,
    DEFAULT_QUARANTINE_AFTER,
    PROMOTION_DEADLINE_ENV,
    RECORD_ID_PATTERN,
    REQUEST_ID_PATTERN,
    REQUIRED_COLUMNS,
    JudgedRequest,
    Reason,
    Request,
    Status,
    Verdict,
    is_valid_batch_id,
    is_valid_record_id,
    is_valid_request_id,
    promotion_deadline,
)

__all__ = [
    "BATCH_ID_PATTERN",
    "DEFAULT_LEASE",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_REQUESTS",
    "DEFAULT_PROMOTION_DEADLINE",
    "DEFAULT_QUARANTINE_AFTER",
    "MAX_CLOCK_SKEW",
    "PROMOTION_DEADLINE_ENV",
    "RECORD_ID_PATTERN",
    "REQUEST_ID_PATTERN",
    "REQUIRED_COLUMNS",
    "JudgedRequest",
    "LeaseLostError",
    "LineProblem",
    "QueueBusyError",
    "QueueStateError",
    "Reason",
    "Request",
    "RequestFileError",
    "RequestQueue",
    "RequestQueueError",
    "Status",
    "SubmitResult",
    "Verdict",
    "default_queue_url",
    "is_valid_batch_id",
    "is_valid_record_id",
    "is_valid_request_id",
    "promotion_deadline",
]
