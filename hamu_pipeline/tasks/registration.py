"""Register the batch's model in MLflow, with lineage: digests of the retain and test sets (never forget
rows), the erasure manifest (keyed hashes) next to the checkpoint, the evaluation report, plots, and tags
linking batch, flow run and source version.

Registration and completion are two steps on purpose. A version is registered before the batch closes its
requests; only after the queue marks the requests unlearned does it get ``batch_status=completed`` and the
``candidate`` alias. A batch that dies in between leaves an un-aliased version that recovery tags
``abandoned``, and the next batch never starts from it.
"""

from __future__ import annotations

import shutil
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
from torch import nn

from hamu.governance.audit.model_card import (
    VersionEntry,
    card_description,
    history_document,
    history_markdown,
)
from hamu.governance.lineage import ErasureManifest
from hamu.models import save_checkpoint
from hamu_pipeline.tasks.lineage import MANIFEST_FILE
from hamu_pipeline.tasks.tracking import log_flat_dict, log_model_version, set_alias


def log_dataset_digests(digests: Mapping[str, str], dataset: str, sizes: Mapping[str, int]) -> None:
    """``log_input`` a metadata-only dataset per part: name, digest and size, no rows."""
    for part in ("retain", "test"):
        source = HTTPDatasetSource(url=f"https://hamu.invalid/{dataset}/{part}")
        # mlflow declares Dataset.profile abstract and MetaDataset does not define it, but Dataset is no ABC:
        # MetaDataset is documented and instantiable (its profile is the base class's None)
        meta = MetaDataset(  # type: ignore[abstract]
            source=source, name=f"{dataset}-{part}-{sizes.get(part, 0)}", digest=digests[part][:36]
        )
        mlflow.log_input(meta, context=part)


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
    # The checkpoint is staged in a private temp folder only until MLflow has copied it: left behind, it
    # would be a copy of the weights that no retention policy knows about.
    folder = Path(tempfile.mkdtemp(prefix="hamu-candidate-"))
    try:
        save_checkpoint(model, folder / "model.safetensors", dict(metadata))
        (folder / MANIFEST_FILE).write_bytes(manifest.to_json())
        lineage = {"erased_records": str(len(manifest)), "erasure_digest": manifest.digest()}
        return log_model_version(
            model, name=name, example=example, checkpoint_dir=folder, tags={**tags, **lineage}
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def complete_candidate(name: str, version: str) -> None:
    """The batch's requests are closed: mark the version completed and point ``candidate`` at it."""
    MlflowClient().set_model_version_tag(name, version, "batch_status", "completed")
    set_alias(name, "candidate", version)


#: Where the full erasure history goes in a run's artifacts; the registered model's tag of that name holds
#: the ``runs:/`` URI of the latest copy.
HISTORY_ARTIFACT = "model_card/erasure_history.md"
HISTORY_JSON_ARTIFACT = "model_card/erasure_history.json"
HISTORY_TAG = "erasure_history"


def refresh_model_card(name: str) -> str:
    """Re-render the model card from the version tags: the full history as artifacts, a bounded description.

    The full erasure history (every version, Markdown and JSON) is written to the run of the newest version
    that has a run: at a batch's close that is the batch's own run; promotion and rollback write to the
    same run, so each run keeps the history as of its version's last change, and no active run is needed.
    It is written before the description that points at it (and the ``erasure_history`` tag holds the
    same ``runs:/`` URI). The description stays bounded (``card_description``): MLflow's SQL stores hold
    at most 5,000 characters, and a history that outgrew them failed every batch on PostgreSQL.
    """
    client = MlflowClient()
    registered = client.get_registered_model(name)
    aliases: dict[str, list[str]] = {}
    for alias, version in (registered.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    entries = []
    runs: dict[int, str] = {}
    for mv in client.search_model_versions(f"name = '{name}'"):
        created = datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).strftime("%Y-%m-%d %H:%M")
        entries.append(
            VersionEntry.from_tags(str(mv.version), created, mv.tags or {}, aliases.get(str(mv.version), []))
        )
        if mv.run_id:
            runs[int(mv.version)] = mv.run_id
    where = "not stored: no registered version has an MLflow run"
    if runs:
        run_id = runs[max(runs)]
        client.log_text(run_id, history_markdown(name, entries), HISTORY_ARTIFACT)
        client.log_dict(run_id, history_document(name, entries), HISTORY_JSON_ARTIFACT)
        uri = f"runs:/{run_id}/{HISTORY_ARTIFACT}"
        client.set_registered_model_tag(name, HISTORY_TAG, uri)
        where = f"`{uri}` (and `{HISTORY_JSON_ARTIFACT}` beside it)"
    intro = (
        f"`{name}`: a model served under deletion requests. Versions are produced by deletion batches "
        "(HAMU unlearning or exact retraining) and become `champion` only through `hamu promote`."
    )
    description = card_description(registered.description or intro, entries, full_history=where)
    client.update_registered_model(name, description=description)
    return description


def log_report_metrics(report: Mapping[str, Any]) -> None:
    for key in (
        "utility",
        "attacks",
        "forget_quality",
        "gaps",
        "detection_floor",
        "bank",
        "test_accuracy_change",
    ):
        if key in report:
            log_flat_dict(key, report[key])
