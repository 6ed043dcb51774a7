"""Register the batch's model in MLflow as ``candidate``, with lineage: digests of the retain and test sets
(never forget rows), the evaluation report, plots, and tags linking batch, flow run and source version."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.data.http_dataset_source import HTTPDatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities.model_registry import ModelVersion
from prefect import task
from prefect.cache_policies import NO_CACHE
from torch import nn

from hamu.models import save_checkpoint
from tasks.tracking import log_flat_dict, log_model_version, set_alias


def log_dataset_digests(digests: Mapping[str, str], dataset: str, sizes: Mapping[str, int]) -> None:
    """``log_input`` a metadata-only dataset per part: name, digest and size, no rows."""
    for part in ("retain", "test"):
        source = HTTPDatasetSource(url=f"https://hamu.invalid/{dataset}/{part}")
        meta = MetaDataset(
            source=source, name=f"{dataset}-{part}-{sizes.get(part, 0)}", digest=digests[part][:36]
        )
        mlflow.log_input(meta, context=part)


@task(name="register-candidate", cache_policy=NO_CACHE)
def register_candidate(
    *,
    name: str,
    model: nn.Module,
    metadata: Mapping[str, Any],
    example: Any,
    report_path: Path,
    plots: Mapping[str, Path],
    tags: Mapping[str, str],
) -> ModelVersion:
    mlflow.log_artifact(str(report_path), artifact_path="evaluation")
    for path in plots.values():
        mlflow.log_artifact(str(path), artifact_path="plots")
    folder = Path(tempfile.mkdtemp(prefix="hamu-candidate-"))
    save_checkpoint(model, folder / "model.safetensors", dict(metadata))
    version = log_model_version(model, name=name, example=example, checkpoint_dir=folder, tags=tags)
    set_alias(name, "candidate", version.version)
    return version


def log_report_metrics(report: Mapping[str, Any]) -> None:
    for key in ("utility", "attacks", "forget_quality", "gaps", "detection_floor"):
        if key in report:
            log_flat_dict(key, report[key])
