"""What every stage of a deletion batch shares: the batch's context, and the one decorator that makes a
function a stage.

A stage is a Prefect task named after its step in ``docs/pipeline.md``. The decorator gives each one, in one
place, what the flow used to repeat around every call: the task's name, its wall time in the batch summary,
the stage's result merged into that summary, and the crash-test fault point after it (``HAMU_FAULT``,
:mod:`hamu_pipeline.tasks.faults`). Stages whose re-run is safe (they write nothing outside the batch's
working area
before their ledger record) also get the batch's retries and timeout.

The undecorated function stays reachable as ``stage.fn``: the flow's decisions are tested through it without
starting Prefect.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE

from hamu.governance.audit import KeyedHasher
from hamu.governance.requests import RequestQueue
from hamu_pipeline.tasks.audit import BatchAudit
from hamu_pipeline.tasks.config import BatchConfig
from hamu_pipeline.tasks.env import StatePaths
from hamu_pipeline.tasks.faults import maybe_fault
from hamu_pipeline.tasks.models import PresetData, ServedModel


class StageResult(Protocol):
    """A stage's frozen result; ``summary()`` is its part of the batch summary the flow returns."""

    def summary(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class BatchContext:
    """Everything a stage reads about the batch it belongs to. Built once by the flow, never replaced.

    ``summary`` and ``timings`` are the only mutable parts: stages add to them through the decorator.
    """

    batch_id: str
    config: BatchConfig
    paths: StatePaths
    queue: RequestQueue
    audit: BatchAudit
    data: PresetData
    champion: ServedModel
    flow_run_id: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def hasher(self) -> KeyedHasher:
        return self.audit.hasher

    @property
    def work(self) -> Path:
        """The batch's deletable working area (forget rows and per-example scores live only here)."""
        return self.paths.work_dir(self.batch_id)


P = ParamSpec("P")
R = TypeVar("R", bound=StageResult)


class Stage(Generic[P, R]):
    """One stage: call it with the context and its typed inputs; it returns its frozen result."""

    def __init__(self, name: str, fn: Callable[Concatenate[BatchContext, P], R], *, rerunnable: bool) -> None:
        self.name = name
        self.fn = fn
        self.rerunnable = rerunnable
        self._task = task(name=name, cache_policy=NO_CACHE)(fn)
        self.__doc__ = fn.__doc__

    def __call__(self, ctx: BatchContext, *args: P.args, **kwargs: P.kwargs) -> R:
        runner = self._task
        if self.rerunnable:
            runner = runner.with_options(
                retries=ctx.config.stage_retries,
                retry_delay_seconds=ctx.config.stage_retry_delay_s,
                timeout_seconds=ctx.config.stage_timeout_s,
                retry_condition_fn=_transient,
            )
        start = time.perf_counter()
        result: R = runner(ctx, *args, **kwargs)
        ctx.timings[self.name] = round(time.perf_counter() - start, 3)
        ctx.summary.update(result.summary())
        maybe_fault(self.name)
        return result


#: MLflow's error codes for a server that may answer on the next attempt.
_UNAVAILABLE = frozenset({"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"})


def is_transient(exc: BaseException) -> bool:
    """Whether a second attempt could succeed: a lost connection, a timeout, a locked or unreachable
    database, a tracking server asking to come back later. A bug or bad data fails the same way twice, and
    a retry would only double the batch's time (a reference retrained twice, say)."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import OperationalError

    if isinstance(exc, ConnectionError | TimeoutError | OperationalError):
        return True
    return isinstance(exc, MlflowException) and exc.error_code in _UNAVAILABLE


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's retry condition: retry only what :func:`is_transient` calls transient."""
    exc = state.data
    return isinstance(exc, BaseException) and is_transient(exc)


def stage(
    name: str, *, rerunnable: bool = False
) -> Callable[[Callable[Concatenate[BatchContext, P], R]], Stage[P, R]]:
    """Make ``fn(ctx, ...)`` the batch stage ``name`` (a fault point of
    :data:`hamu_pipeline.tasks.faults.STAGES`).

    ``rerunnable``: a failed attempt left nothing behind that a second attempt would duplicate (no ledger
    record, queue change or registry write before the stage's last step), so Prefect may retry it after a
    transient failure (:func:`is_transient`) and time it out (``BatchConfig.stage_retries``,
    ``stage_timeout_s``).
    """

    def wrap(fn: Callable[Concatenate[BatchContext, P], R]) -> Stage[P, R]:
        return Stage(name, fn, rerunnable=rerunnable)

    return wrap
