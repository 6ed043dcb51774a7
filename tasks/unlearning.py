"""Run the unlearner on the champion, streaming step diagnostics to MLflow (CUDA when present)."""

from __future__ import annotations

import copy
import time
from typing import Any

import torch.nn.functional as F
from mlflow import MlflowClient
from mlflow.entities import Metric
from prefect import task
from prefect.cache_policies import NO_CACHE

from hamu import StepRecord, UnlearnConfig, UnlearnResult, unlearn
from tasks.loaders import batches
from tasks.models import ServedModel


class MlflowStepLogger:
    """Callback: buffer each step's scalars and flush them to MLflow in batches."""

    def __init__(self, run_id: str, every: int = 20) -> None:
        self.client = MlflowClient()
        self.run_id = run_id
        self.every = every
        self.buffer: list[Metric] = []

    def __call__(self, record: StepRecord) -> bool:
        now = int(time.time() * 1000)
        values = {"step.retain_loss": record.retain_loss, "step.forget_loss": record.forget_loss}
        values.update({f"step.{k}": v for k, v in record.diagnostics.items()})
        for key, value in values.items():
            if value is not None:
                self.buffer.append(Metric(key, float(value), now, record.step))
        if len(self.buffer) >= self.every * len(values):
            self.flush()
        return False

    def flush(self) -> None:
        for i in range(0, len(self.buffer), 900):
            self.client.log_batch(self.run_id, metrics=self.buffer[i : i + 900])
        self.buffer.clear()


@task(name="unlearn", cache_policy=NO_CACHE)
def run_unlearning(
    champion: ServedModel, retain: tuple[Any, Any], forget: tuple[Any, Any], config: Any, run_id: str
) -> tuple[UnlearnResult, float]:
    options: dict[str, Any] = {}
    if config.method in ("hamu-q", "hamu-u"):
        options = {
            "constraint_ratio": config.constraint_ratio,
            "stop_on_degradation": config.stop_on_degradation,
        }
    cfg = UnlearnConfig(
        method=config.method,
        lr=config.lr,
        max_steps=config.max_steps,
        max_grad_norm=config.max_grad_norm,
        seed=config.seed,
        device="auto",
        method_options=options,
    )
    logger = MlflowStepLogger(run_id)
    start = time.perf_counter()
    result = unlearn(
        copy.deepcopy(champion.model),
        F.cross_entropy,
        batches(retain, config.batch_size, seed=config.seed),
        batches(forget, config.batch_size, seed=config.seed + 1),
        cfg,
        callbacks=[logger],
        progress=True,
    )
    seconds = time.perf_counter() - start
    logger.flush()
    result.model.cpu().eval()
    return result, seconds
