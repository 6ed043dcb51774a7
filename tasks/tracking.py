"""MLflow: one experiment under HAMU_HOME, registered model versions with lineage tags, aliases.

Models are logged twice, both without pickle: MLflow's ``pt2`` (torch.export) flavour for serving, and the
project's safetensors checkpoint (with its JSON metadata) as run artifacts, which is what the pipeline
reloads. ``pip_requirements`` is passed explicitly (inferring it costs seconds per model).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from tasks.env import StatePaths

EXPERIMENT = "hamu-unlearning"
PIP_REQUIREMENTS = ["torch==2.13.0", "numpy", "safetensors"]
CHECKPOINT_ARTIFACT = "checkpoint"


def ensure_experiment(paths: StatePaths, name: str = EXPERIMENT) -> str:
    """Create (once) the experiment with its artifacts under HAMU_HOME, and make it current."""
    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", paths.mlflow_uri))
    existing = mlflow.get_experiment_by_name(name)
    if existing is None:
        exp_id = mlflow.create_experiment(name, artifact_location=paths.mlartifacts.as_uri())
    else:
        exp_id = existing.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return str(exp_id)


def log_model_version(
    model: torch.nn.Module,
    *,
    name: str,
    example: torch.Tensor,
    checkpoint_dir: Path,
    tags: Mapping[str, str],
) -> ModelVersion:
    """Log the model (pt2 + safetensors checkpoint) in the active run and register a new version."""
    if mlflow.active_run() is None:
        raise RuntimeError("log_model_version must run inside an MLflow run")
    if example.shape[0] < 2:
        raise ValueError("the input example needs >= 2 rows (pt2 specialises a batch of 1)")
    mlflow.log_artifacts(str(checkpoint_dir), artifact_path=CHECKPOINT_ARTIFACT)
    model = model.eval().cpu()
    info = mlflow.pytorch.log_model(
        model,
        name="model",
        serialization_format="pt2",
        input_example=example.cpu().numpy().astype(np.float32),
        pip_requirements=PIP_REQUIREMENTS,
        registered_model_name=name,
    )
    client = MlflowClient()
    version = str(info.registered_model_version)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    return client.get_model_version(name, version)


def alias_version(name: str, alias: str) -> ModelVersion | None:
    try:
        return MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def set_alias(name: str, alias: str, version: str) -> None:
    MlflowClient().set_registered_model_alias(name, alias, version)


def download_checkpoint(version: ModelVersion, destination: Path | None = None) -> Path:
    """Fetch the safetensors checkpoint logged with ``version``'s run."""
    if not version.run_id:
        raise ValueError(f"model version {version.name}/{version.version} has no source run")
    dst = destination or Path(tempfile.mkdtemp(prefix="hamu-ckpt-"))
    path = mlflow.artifacts.download_artifacts(
        run_id=version.run_id, artifact_path=CHECKPOINT_ARTIFACT, dst_path=str(dst)
    )
    return Path(path)


def log_flat_dict(prefix: str, values: Mapping[str, Any]) -> None:
    """Log the numeric leaves of a nested dict as metrics (``prefix.key.sub``)."""
    metrics: dict[str, float] = {}

    def walk(key: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{key}.{k}" if key else str(k), v)
        elif isinstance(value, bool) or (isinstance(value, int | float) and np.isfinite(value)):
            metrics[key] = float(value)

    walk(prefix, values)
    if metrics:
        mlflow.log_metrics({_metric_name(k): v for k, v in metrics.items()})


def _metric_name(key: str) -> str:
    """MLflow accepts alphanumerics and ``_-. :/`` only: ``tpr@0.01`` becomes ``tpr_at_0.01``."""
    key = key.replace("@", "_at_")
    return "".join(c if c.isalnum() or c in "_-.:/" else "_" for c in key)[:250]
