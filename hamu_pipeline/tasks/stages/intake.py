"""The batch's first two stages: claim pending requests from the queue, and validate them.

Both write their ledger record themselves. Neither is re-runnable: a claim moves rows in the queue, and
validation records every request's verdict there.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from hamu.governance.audit import sha256_json
from hamu.governance.requests import JudgedRequest, Request, RequestQueue, Status
from hamu_pipeline.tasks.stages.base import BatchContext, stage
from hamu_pipeline.tasks.validation import requests_frame, validate_requests


@dataclass(frozen=True)
class Claimed:
    """The requests this batch holds, oldest first (at most ``max_requests``)."""

    requests: tuple[Request, ...]

    def raw_ids(self) -> set[str]:
        """The request and record IDs a failure's text may quote (and must not, once written down)."""
        return {i for r in self.requests for i in (r.request_id, r.record_id)}

    def summary(self) -> dict[str, Any]:
        return {"requests": len(self.requests)}


@stage("claim")
def claim(ctx: BatchContext) -> Claimed:
    """Claim at most ``max_requests`` pending requests atomically; record how many, as keyed hashes."""
    requests = tuple(ctx.queue.claim_batch(ctx.batch_id, limit=ctx.config.max_requests))
    if requests:
        hashes = sorted(ctx.hasher.hash(r.request_id) for r in requests)
        try:
            ctx.audit.record(
                "claim",
                decision=f"{len(requests)} claimed",
                params={"requests": len(requests), "champion_version": ctx.champion.version},
                inputs={"request_hashes": sha256_json(hashes)},
            )
        except BaseException:  # not yet under the batch's failure guard: give the claim back at once
            ctx.queue.release_batch(ctx.batch_id, failed=False)
            raise
    return Claimed(requests)


def nothing_claimed(queue: RequestQueue, batch_id: str) -> dict[str, str]:
    """Why a run claimed nothing: an empty queue, or another running batch holds the pending work."""
    held = Counter(r.batch_id for r in queue.list(Status.CLAIMED) if r.batch_id and r.batch_id != batch_id)
    if not held:
        return {"status": "empty", "message": "no pending requests to handle"}
    owners = ", ".join(f"{b} ({n})" for b, n in sorted(held.items()))
    return {
        "status": "busy",
        "message": f"nothing left to claim: {sum(held.values())} request(s) are being handled by running "
        f"batch {owners}; this run handles none of them (no request is handled twice)",
    }


@dataclass(frozen=True)
class Validated:
    """Every claimed request with its verdict, and what the queue said was erased before this batch."""

    judged: tuple[JudgedRequest, ...]
    erased_before: frozenset[str]
    #: Requests per verdict, every verdict named (zero included)
    counts: dict[str, int]

    @property
    def accepted(self) -> tuple[JudgedRequest, ...]:
        return tuple(r for r in self.judged if r.accepted)

    def summary(self) -> dict[str, Any]:
        return {"verdicts": dict(self.counts)}


@stage("validate")
def validate(ctx: BatchContext, claimed: Claimed) -> Validated:
    """The GX suite and the manifest check give every request a verdict; the queue records each one."""
    erased_before = frozenset(ctx.queue.erased_record_ids())
    outcome = validate_requests(requests_frame(claimed.requests), ctx.data.manifest_ids, erased_before)
    ctx.queue.record_verdicts(ctx.batch_id, outcome.verdict_map())
    counts = outcome.counts()
    gx = json.dumps(outcome.gx_result, sort_keys=True, default=str).encode()
    ctx.audit.record(
        "validate",
        decision=f"{counts.get('accepted', 0)} accepted",
        params={
            "counts": counts,
            "suite": outcome.suite.suite_name,
            "suite_sha256": outcome.suite.suite_sha256,
        },
        artifacts={"gx_result": ("gx_result.json", gx)},
    )
    return Validated(outcome.judged(), erased_before, counts)
