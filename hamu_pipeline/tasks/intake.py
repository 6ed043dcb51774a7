"""Queue tasks: claim a batch, record verdicts, close requests, release a dead batch's claim."""

from __future__ import annotations

from collections.abc import Mapping

from hamu.governance.requests import Request, RequestQueue


def claim_batch(queue: RequestQueue, batch_id: str, limit: int | None) -> list[Request]:
    return queue.claim_batch(batch_id, limit=limit)


def record_verdicts(queue: RequestQueue, batch_id: str, verdicts: Mapping[str, tuple[str, str]]) -> int:
    return queue.record_verdicts(batch_id, dict(verdicts))


def close_requests(
    queue: RequestQueue, batch_id: str, accepted: list[str], model_version: str
) -> dict[str, int]:
    """Accepted → unlearned (with the candidate version that no longer carries them); rejections → rejected.

    Not erased: the candidate serves nobody until ``hamu promote`` makes it champion, and only then does
    the queue move these requests on to ``erased`` (``RequestQueue.mark_served``).
    """
    unlearned = queue.mark_unlearned(batch_id, accepted, model_version) if accepted else 0
    rejected = queue.mark_rejected(batch_id)
    return {"unlearned": unlearned, "rejected": rejected}
