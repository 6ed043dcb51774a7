"""Opening and guarding a deletion batch: what surrounds the stages, so that the flow only lists them.

:func:`open_batch` takes the batch's lock, recovers dead batches, and loads the data and the champion;
:func:`guarded` runs the claimed part of the batch with its lease renewed, Prefect's run logs redacted and
one MLflow run open, and turns any failure into a redacted ``failed`` record with the claim released.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import mlflow

from hamu.governance.audit import KeyedHasher, load_or_create_key
from hamu.governance.requests import RequestQueue
from hamu_pipeline.tasks.audit import BatchAudit, prefect_refs
from hamu_pipeline.tasks.config import BatchConfig
from hamu_pipeline.tasks.env import configure_environment
from hamu_pipeline.tasks.failure import record_failure, redacted_run_logs
from hamu_pipeline.tasks.lease import keep_lease
from hamu_pipeline.tasks.locks import BatchLock
from hamu_pipeline.tasks.models import load_preset_data, require_champion
from hamu_pipeline.tasks.recovery import recover_dead_batches
from hamu_pipeline.tasks.stages.base import BatchContext
from hamu_pipeline.tasks.stages.intake import Claimed
from hamu_pipeline.tasks.tracking import ensure_experiment


def new_batch_id() -> str:
    return datetime.now(UTC).strftime("b%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


@contextmanager
def open_batch(config: BatchConfig, batch_id: str) -> Iterator[BatchContext]:
    """The batch's context, holding its lock until the block ends (however it ends)."""
    start = time.perf_counter()
    paths = configure_environment()
    hasher = KeyedHasher(load_or_create_key(paths.home, ledger=paths.audit / "ledger.jsonl"))
    queue = RequestQueue(paths.requests_url)
    lock = BatchLock(paths.work, batch_id)
    if not lock.acquire():
        queue.close()
        raise RuntimeError(f"batch {batch_id} is already running")
    try:
        audit = BatchAudit(paths.audit, hasher, batch_id)
        summary: dict[str, Any] = {"batch_id": batch_id, "model_name": config.registered_name}
        ensure_experiment(paths)
        recovered = recover_dead_batches(queue, paths.work, paths.audit, hasher, batch_id)
        if recovered:
            summary["recovered"] = {
                "released": recovered.released,
                "abandoned_versions": recovered.abandoned_versions,
                "deleted_work_areas": recovered.deleted_work_areas,
            }
        data = load_preset_data(config.preset)
        champion = require_champion(config.registered_name)
        ctx = BatchContext(
            batch_id=batch_id,
            config=config,
            paths=paths,
            queue=queue,
            audit=audit,
            data=data,
            champion=champion,
            flow_run_id=prefect_refs().get("prefect_flow_run_id", ""),
            summary=summary,
        )
        ctx.timings["setup"] = round(time.perf_counter() - start, 3)
        yield ctx
    finally:
        lock.release()
        queue.close()


@contextmanager
def guarded(ctx: BatchContext, claimed: Claimed) -> Iterator[None]:
    """Run the claimed requests' stages in one MLflow run, with the lease kept and no raw ID logged.

    On any failure (an interruption included) the claim is released, a ``failed`` record with redacted text
    is appended, the working area is cleaned up, and the scrubbed exception goes on up to Prefect.
    """
    # What a failure's text may quote: the claimed IDs, and the manifest's (carried-over erasures).
    raw_ids = claimed.raw_ids() | set(ctx.data.manifest_ids)
    try:
        with (
            keep_lease(ctx.queue, ctx.batch_id),
            redacted_run_logs(raw_ids, ctx.hasher),
            mlflow.start_run(run_name=f"batch-{ctx.batch_id}") as run,
        ):
            ctx.audit.mlflow_run_id = run.info.run_id
            ctx.summary.update(mlflow_run_id=run.info.run_id, prefect_flow_run_id=ctx.flow_run_id)
            mlflow.set_tags(
                {
                    "batch_id": ctx.batch_id,
                    "prefect_flow_run_id": ctx.flow_run_id,
                    "source_version": ctx.champion.version,
                }
            )
            mlflow.log_params({k: v for k, v in ctx.config.model_dump().items() if v is not None})
            yield
    except BaseException as exc:
        record_failure(exc, queue=ctx.queue, audit=ctx.audit, raw_ids=raw_ids, work_dir=ctx.work)
        raise  # scrubbed in place: Prefect logs the redacted message
