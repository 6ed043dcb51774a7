"""Closing a batch's requests in the queue (the claim and the verdicts are the queue's own calls)."""

from __future__ import annotations

from hamu.governance.requests import RequestQueue


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
