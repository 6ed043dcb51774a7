"""Queue tasks: claim a batch, record verdicts, close requests, release a dead batch's claim."""

from __future__ import annotations

from collections.abc import Mapping

from prefect import task
from prefect.cache_policies import NO_CACHE

from hamu.requests import Request, RequestQueue


@task(name="claim-batch", cache_policy=NO_CACHE)
def claim_batch(queue: RequestQueue, batch_id: str, limit: int | None) -> list[Request]:
    return queue.claim_batch(batch_id, limit=limit)


@task(name="record-verdicts", cache_policy=NO_CACHE)
def record_verdicts(queue: RequestQueue, batch_id: str, verdicts: Mapping[str, tuple[str, str]]) -> int:
    return queue.record_verdicts(batch_id, dict(verdicts))


@task(name="close-requests", cache_policy=NO_CACHE)
def close_requests(
    queue: RequestQueue, batch_id: str, accepted: list[str], model_version: str
) -> dict[str, int]:
    """Accepted → erased (with the model version that no longer carries them); rejections → rejected."""
    erased = queue.mark_erased(batch_id, accepted, model_version) if accepted else 0
    rejected = queue.mark_rejected(batch_id)
    return {"erased": erased, "rejected": rejected}
