"""Erasure lineage and drift of registered versions: read a version's erasure manifest and drift state,
and plan what a batch must forget from its source model (see :mod:`hamu.governance.lineage`,
:mod:`hamu.governance.drift`)."""

from __future__ import annotations

from pathlib import Path

from mlflow.entities.model_registry import ModelVersion

from hamu.governance.audit import KeyedHasher
from hamu.governance.drift import DriftState
from hamu.governance.lineage import ErasureManifest
from hamu_pipeline.tasks.models import ServedModel
from hamu_pipeline.tasks.tracking import MANIFEST_FILE, checkpoint_folder


def manifest_in(folder: Path) -> ErasureManifest:
    """The manifest in a version's checkpoint folder; an original has none (nothing erased)."""
    path = folder / MANIFEST_FILE
    return ErasureManifest.from_json(path.read_bytes()) if path.exists() else ErasureManifest()


def still_carried(version: ModelVersion, erased_record_ids: set[str], hasher: KeyedHasher) -> int:
    """How many erased records (per the queue) a registry version does not list as erased."""
    with checkpoint_folder(version) as folder:
        manifest = manifest_in(folder)
    return len(manifest.missing(hasher.hash(r) for r in erased_record_ids))


def drift_of(model: ServedModel) -> DriftState:
    return DriftState.from_tags(model.tags)
