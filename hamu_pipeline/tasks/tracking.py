"""MLflow: one experiment under HAMU_HOME, registered model versions with lineage tags, aliases.

Models are logged twice, both without pickle: MLflow's ``pt2`` (torch.export) flavour for serving, and the
project's safetensors checkpoint (with its JSON metadata) as run artifacts, which is what the pipeline
reloads. ``pip_requirements`` is passed explicitly (inferring it costs seconds per model).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from hamu_pipeline.tasks.env import StatePaths

EXPERIMENT = "hamu-unlearning"
PIP_REQUIREMENTS = ["torch==2.13.0", "numpy", "safetensors"]
CHECKPOINT_ARTIFACT = "checkpoint"
#: The erasure manifest stored beside each version's checkpoint (keyed hashes of the records it lacks).
MANIFEST_FILE = "erasures.json"


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


def synthetic_example(template: torch.Tensor) -> np.ndarray:
    """Zeros of ``template``'s shape, as the float32 array MLflow stores as the input example and pt2 traces.

    Why not the template itself: MLflow keeps the input example as a run artifact for as long as the
    version exists, so a training row there would outlive its erasure. Only the shape of ``template`` is
    read, never its values. Zeros are valid for every model here: an all-zero image is just an input, and
    token ID 0 is the text featurizer's padding, which ``EmbeddingBag`` ignores (the text model casts the
    float32 to token IDs itself, so the logged signature stays what it was). pt2 specialises a batch of 1
    to a constant, hence at least 2 rows.
    """
    if template.ndim < 1 or template.shape[0] < 2:
        shape = tuple(template.shape)
        raise ValueError(f"the input example needs >= 2 rows (pt2 specialises a batch of 1), got {shape}")
    return np.zeros(tuple(template.shape), dtype=np.float32)


def log_model_version(
    model: torch.nn.Module,
    *,
    name: str,
    example: torch.Tensor,
    checkpoint_dir: Path,
    tags: Mapping[str, str],
) -> ModelVersion:
    """Log the model (pt2 + safetensors checkpoint) in the active run and register a new version.

    ``example`` gives the input's shape only: MLflow gets :func:`synthetic_example` of it, never its rows.
    The version is created with its ``tags`` (one registry call), so no crash leaves it untagged.
    """
    if mlflow.active_run() is None:
        raise RuntimeError("log_model_version must run inside an MLflow run")
    input_example = synthetic_example(example)
    mlflow.log_artifacts(str(checkpoint_dir), artifact_path=CHECKPOINT_ARTIFACT)
    model = model.eval().cpu()
    info = mlflow.pytorch.log_model(
        model,
        name="model",
        serialization_format="pt2",
        input_example=input_example,
        pip_requirements=PIP_REQUIREMENTS,
    )
    # Register with the tags in the same call: set one by one afterwards, a crash in between would leave
    # a version without its ``batch_id``, which recovery could never find and abandon.
    return mlflow.register_model(info.model_uri, name, tags={k: str(v) for k, v in tags.items()})


class RegistryUnreadable(RuntimeError):
    """The registry could not say which version holds an alias (it did not say that none does)."""


def alias_version(name: str, alias: str) -> ModelVersion | None:
    """The version holding ``alias``, or None when the registry says there is no such model or alias.

    Any other failure (the store is unreachable, locked, or unreadable) is raised: read as "no champion",
    it once made a batch train a fresh original on the full manifest, erased records included.
    """
    try:
        return MlflowClient().get_model_version_by_alias(name, alias)
    except Exception as exc:  # MLflow's own errors, and the store's (sqlalchemy, OS) raised through it
        if isinstance(exc, MlflowException) and _says_not_found(exc):
            return None
        raise RegistryUnreadable(
            f"could not read alias {alias!r} of registered model {name!r} from MLflow "
            f"({mlflow.get_tracking_uri()}): {type(exc).__name__}: {exc}"
        ) from exc


def _says_not_found(exc: MlflowException) -> bool:
    """MLflow's answers for "no such registered model" and "no such alias on it" (measured on 3.17)."""
    if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
        return True
    text = str(exc)
    return exc.error_code == "INVALID_PARAMETER_VALUE" and "alias" in text and "not found" in text


def set_alias(name: str, alias: str, version: str) -> None:
    MlflowClient().set_registered_model_alias(name, alias, version)


def download_checkpoint(version: ModelVersion, destination: Path) -> Path:
    """Fetch the safetensors checkpoint logged with ``version``'s run into ``destination``.

    There is no default destination: a copy of the weights left in the system temp dir would outlive the
    erasure of the rows they were trained on. Use :func:`checkpoint_folder` for a copy that is removed.
    """
    if not version.run_id:
        raise ValueError(f"model version {version.name}/{version.version} has no source run")
    path = mlflow.artifacts.download_artifacts(
        run_id=version.run_id, artifact_path=CHECKPOINT_ARTIFACT, dst_path=str(destination)
    )
    return Path(path)


@contextmanager
def checkpoint_folder(version: ModelVersion) -> Iterator[Path]:
    """``version``'s checkpoint folder, downloaded into a private (0700) temporary folder removed on exit.

    Why: every reader (verification, lineage, loading the champion) needs the files only while it reads
    them; a download left behind is one more copy of weights that may hold erased rows.
    """
    folder = Path(tempfile.mkdtemp(prefix="hamu-ckpt-"))
    try:
        yield download_checkpoint(version, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def checkpoint_present(version: ModelVersion) -> bool:
    """Whether ``version``'s run still holds a checkpoint in the artifact store (lists; downloads nothing)."""
    if not version.run_id:
        return False
    return bool(MlflowClient().list_artifacts(version.run_id, CHECKPOINT_ARTIFACT))


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
