"""Register the batch's model in MLflow, with lineage: digests of the retain and test sets (never forget
rows), the erasure manifest (keyed hashes) next to the checkpoint, the evaluation report, plots, and tags
linking batch, flow run and source version.

Registration and completion are two steps on purpose. A version is registered before the batch closes its
requests; only after the queue marks the requests unlearned does it get ``batch_status=completed`` and the
``candidate`` alias. A batch that dies in between leaves an un-aliased version that recovery tags
``abandoned``, and the next batch never starts from it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.data.http_dataset_source import HTTPDatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities.model_registry import ModelVersion
from prefect import task
from prefect.cache_policies import NO_CACHE
from torch import nn

from hamu.audit.model_card import VersionEntry, with_erasure_history
from hamu.lineage import ErasureManifest
from hamu.models import save_checkpoint
from tasks.lineage import MANIFEST_FILE
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
    manifest: ErasureManifest,
    tags: Mapping[str, str],
) -> ModelVersion:
    mlflow.log_artifact(str(report_path), artifact_path="evaluation")
    folder = Path(tempfile.mkdtemp(prefix="hamu-candidate-"))
    save_checkpoint(model, folder / "model.safetensors", dict(metadata))
    (folder / MANIFEST_FILE).write_bytes(manifest.to_json())
    lineage = {"erased_records": str(len(manifest)), "erasure_digest": manifest.digest()}
    return log_model_version(
        model, name=name, example=example, checkpoint_dir=folder, tags={**tags, **lineage}
    )


@task(name="complete-candidate", cache_policy=NO_CACHE)
def complete_candidate(name: str, version: str) -> None:
    """The batch's requests are closed: mark the version completed and point ``candidate`` at it."""
    MlflowClient().set_model_version_tag(name, version, "batch_status", "completed")
    set_alias(name, "candidate", version)


def refresh_model_card(name: str) -> str:
    """Re-render the registered model's description with its erasure history (from the version tags)."""
    client = MlflowClient()
    registered = client.get_registered_model(name)
    aliases: dict[str, list[str]] = {}
    for alias, version in (registered.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    entries = []
    for mv in client.search_model_versions(f"name = '{name}'"):
        created = datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).strftime("%Y-%m-%d %H:%M")
        entries.append(
            VersionEntry.from_tags(str(mv.version), created, mv.tags or {}, aliases.get(str(mv.version), []))
        )
    intro = (
        f"`{name}`: a model served under deletion requests. Versions are produced by deletion batches "
        "(HAMU unlearning or exact retraining) and become `champion` only through `hamu promote`."
    )
    description = with_erasure_history(registered.description or intro, entries)
    client.update_registered_model(name, description=description)
    return description


def log_report_metrics(report: Mapping[str, Any]) -> None:
    for key in ("utility", "attacks", "forget_quality", "gaps", "detection_floor"):
        if key in report:
            log_flat_dict(key, report[key])
