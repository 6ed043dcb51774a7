"""The ``stage`` decorator: what every batch stage gets from it, checked on real Prefect tasks.

A re-runnable stage is retried after a transient failure and timed out when it hangs; a stage that is not
re-runnable (it writes to the queue, the registry or the ledger) is never run twice. Every stage leaves its
wall time and its part of the summary in the batch context.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hamu_pipeline.tasks.config import BatchConfig
from hamu_pipeline.tasks.env import StatePaths
from hamu_pipeline.tasks.stages import BatchContext, stage


@dataclass(frozen=True)
class Counted:
    attempts: int

    def summary(self) -> dict[str, Any]:
        return {"attempts": self.attempts}


@stage("split", rerunnable=True)
def flaky_rerunnable(ctx: BatchContext, calls: list[int], failures: int) -> Counted:
    calls.append(1)
    if len(calls) <= failures:
        raise ConnectionError("tracking server unavailable")
    return Counted(len(calls))


@stage("reference", rerunnable=True)
def broken(ctx: BatchContext, calls: list[int]) -> Counted:
    calls.append(1)
    raise ValueError("the reference's training data digest is not the retain set's")


@stage("register")
def flaky_once_only(ctx: BatchContext, calls: list[int]) -> Counted:
    calls.append(1)
    raise ConnectionError("registry unavailable")


@stage("hardness", rerunnable=True)
def hangs(ctx: BatchContext, seconds: float) -> Counted:
    time.sleep(seconds)
    return Counted(1)


@pytest.fixture(scope="module", autouse=True)
def prefect() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _ctx(tmp_path: Path, **config: Any) -> BatchContext:
    """A context with only what the decorator reads (the configuration, summary and timings)."""
    cfg = BatchConfig(stage_retry_delay_s=0, **config)
    return BatchContext(
        batch_id="b-stage",
        config=cfg,
        paths=StatePaths(tmp_path),
        queue=None,  # type: ignore[arg-type]  # none of these stages touches the queue
        audit=None,  # type: ignore[arg-type]
        data=None,  # type: ignore[arg-type]
        champion=None,  # type: ignore[arg-type]
    )


def test_a_rerunnable_stage_is_retried_and_reports_into_the_context(tmp_path: Path) -> None:
    ctx, calls = _ctx(tmp_path, stage_retries=2), []
    result = flaky_rerunnable(ctx, calls, failures=2)
    assert result == Counted(3) and len(calls) == 3
    assert ctx.summary == {"attempts": 3}
    assert ctx.timings["split"] >= 0


def test_retries_are_bounded_by_the_configuration(tmp_path: Path) -> None:
    ctx, calls = _ctx(tmp_path, stage_retries=1), []
    with pytest.raises(ConnectionError):
        flaky_rerunnable(ctx, calls, failures=5)
    assert len(calls) == 2 and "attempts" not in ctx.summary


def test_a_deterministic_failure_is_not_retried(tmp_path: Path) -> None:
    """A bug or bad data fails the same way twice: only transient errors earn a second attempt."""
    ctx, calls = _ctx(tmp_path, stage_retries=3), []
    with pytest.raises(ValueError, match="digest"):
        broken(ctx, calls)
    assert len(calls) == 1


def test_a_stage_that_writes_is_never_run_twice(tmp_path: Path) -> None:
    ctx, calls = _ctx(tmp_path, stage_retries=3), []
    with pytest.raises(ConnectionError):
        flaky_once_only(ctx, calls)
    assert len(calls) == 1


def test_a_hanging_rerunnable_stage_times_out(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, stage_retries=0, stage_timeout_s=0.5)
    with pytest.raises(TimeoutError):
        hangs(ctx, 5.0)
    assert hangs(_ctx(tmp_path, stage_retries=0, stage_timeout_s=30), 0.0) == Counted(1)


def test_the_undecorated_stage_runs_without_prefect(tmp_path: Path) -> None:
    ctx, calls = _ctx(tmp_path), []
    assert flaky_rerunnable.fn(ctx, calls, 0) == Counted(1)
    assert ctx.summary == {} and ctx.timings == {}  # the decorator's bookkeeping is Prefect-side only
