"""The served model and its data: the preset's training set, the champion, the retrained reference."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import mlflow
import torch
import torch.nn.functional as F
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from prefect import task
from prefect.cache_policies import NO_CACHE
from torch import nn

from hamu.data import Split, record_ids
from hamu.data.digest import dataset_digest, order_digest
from hamu.data.tensors import Featurizer
from hamu.governance.audit import ANCHOR_TAG, Ledger, LedgerRecord, load_or_create_key
from hamu.governance.lineage import ErasureManifest
from hamu.models import load_checkpoint
from hamu.models.checkpoint import model_digest
from hamu.train import Recipe, TrainedModel, train_model
from hamu.train.losses import LossFn, recipe_loss
from hamu.train.trainer import TrainingLoopError, featurizer_from_metadata
from hamu.workloads import get_workload
from hamu_pipeline.tasks.env import StatePaths
from hamu_pipeline.tasks.tracking import (
    MANIFEST_FILE,
    alias_version,
    checkpoint_folder,
    log_model_version,
    set_alias,
)


@dataclass
class PresetData:
    """The preset's full training set (the manifest) and its test set."""

    preset: str
    train: Any
    test: Any

    @cached_property
    def manifest_ids(self) -> list[str]:
        """The manifest's record IDs, read from the table once: the session, validation and the split each
        need them. One shared list: callers read it and never change it."""
        return record_ids(self.train)

    @cached_property
    def manifest_digest(self) -> str:
        """The training manifest's content digest: what a reference bank is bound to."""
        return dataset_digest(self.train)

    @cached_property
    def manifest_order(self) -> str:
        """The training manifest's row order: a reference bank's membership is by position."""
        return order_digest(self.train)

    @cached_property
    def positions(self) -> dict[str, int]:
        """Each record ID's row in the manifest (the bank's membership is indexed by it)."""
        return {rid: i for i, rid in enumerate(self.manifest_ids)}


@dataclass
class ServedModel:
    name: str
    version: str
    model: nn.Module
    metadata: dict[str, Any]
    featurizer: Featurizer
    #: A local checkpoint file, when the model came from one; a registry version loaded by
    #: :func:`load_version` keeps none (its download is removed once read).
    checkpoint: Path | None = None
    tags: dict[str, str] = field(default_factory=dict)
    #: The erasure manifest stored next to the version's checkpoint (empty for an original).
    manifest: ErasureManifest = field(default_factory=ErasureManifest)


def objective(champion: ServedModel) -> LossFn:
    """The loss the champion's recipe names (cross-entropy by default): what unlearning differentiates and
    the hardness assessment measures gradients of. A recipe's ``train_loop`` may minimise something else
    inside; only ``recipe.loss`` is visible here, so a workload with its own loop names its loss too. A
    model whose metadata names no recipe declares no loss of its own: cross-entropy."""
    recipe = champion.metadata.get("recipe")
    if recipe is None:
        return F.cross_entropy
    return recipe_loss(Recipe.from_dict(recipe), len(champion.metadata.get("class_names", ())))


def load_preset_data(preset: str) -> PresetData:
    """The workload's training manifest and test set (a built-in preset, or one the project file names)."""
    train, test = get_workload(preset).data()
    return PresetData(preset=preset, train=train, test=test)


def _example(featurizer: Featurizer, ds: Any) -> torch.Tensor:
    return featurizer.encode(ds.select(range(min(2, len(ds)))))


@contextmanager
def champion_lock(paths: StatePaths, name: str) -> Iterator[None]:
    """A blocking ``flock`` per registered model: concurrent first runs or adoptions must not both create
    a champion."""
    fd = os.open(paths.home / f"champion-{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@task(name="ensure-champion", cache_policy=NO_CACHE)
def ensure_champion(paths: StatePaths, data: PresetData, name: str, *, progress: bool = False) -> ServedModel:
    """Return the registry's ``champion``; on a fresh store, train the preset's original and register it."""
    with champion_lock(paths, name):
        version = alias_version(name, "champion") or _register_original(paths, data, name, progress)
    return load_version(name, str(version.version))


class NoChampionError(RuntimeError):
    """The registered model has no ``champion``: there is no served model to unlearn from."""


def require_champion(name: str) -> ServedModel:
    """The served model a batch starts from. A batch never creates one: training an original there would
    put every erased record back into a model; only ``hamu init`` (or the demo's first run) does."""
    version = alias_version(name, "champion")
    if version is None:
        raise NoChampionError(
            f"registered model {name!r} has no `champion` alias, so no deletion batch can run: train the "
            f"preset's original with `hamu init --preset P`, or adopt an existing version with "
            f"`hamu init --preset P --from-version N` (a batch never creates a champion)"
        )
    return load_version(name, str(version.version))


def refuse_if_erasures(paths: StatePaths, data: PresetData, what: str) -> None:
    """A new lineage may start only where none of its manifest's records was erased yet: an original of the
    full manifest would carry every erased record again, and nothing in its lineage would say so. (The
    queue serves every model of the store; another preset's erasures do not count.)"""
    from hamu.governance.requests import RequestQueue

    with RequestQueue(paths.requests_url) as queue:
        erased = queue.erased_record_ids() & set(data.manifest_ids)
    if erased:
        raise RuntimeError(
            f"refusing to {what}: the request queue lists {len(erased)} record(s) already unlearned or "
            "erased, and a model of the full manifest would carry them again; restore the champion alias "
            "of the version that does not carry them (`hamu rollback`, or MLflow) instead"
        )


def _register_original(paths: StatePaths, data: PresetData, name: str, progress: bool) -> Any:
    """Train the preset's original on the full manifest and register it as champion."""
    refuse_if_erasures(paths, data, f"train a new original for {name!r}")
    _abandon_unrecorded_originals(paths, name)
    recipe = get_workload(data.preset).recipe
    try:
        trained = train_model(data.train, recipe, role="original", progress=progress)
    except TrainingLoopError as exc:  # nothing is saved or registered before training returns
        raise TrainingLoopError(f"workload {data.preset!r}: {exc}") from exc
    ckpt_dir = paths.models / data.preset
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = trained.save(ckpt_dir / "original.safetensors")
    with (
        mlflow.start_run(run_name=f"train-original-{data.preset}"),
        _single_file_dir(path) as checkpoint_dir,
    ):
        mlflow.log_params({"preset": data.preset, "role": "original", **_flat(recipe.to_dict())})
        mlflow.log_metric("train_seconds", float(trained.metadata["train_seconds"]))
        version = log_model_version(
            trained.model,
            name=name,
            example=_example(trained.featurizer, data.train),
            checkpoint_dir=checkpoint_dir,
            tags={
                "role": "original",
                "preset": data.preset,
                "data_digest": trained.metadata["data_digest"],
            },
        )
    record = record_original(
        paths,
        name,
        str(version.version),
        trained.model,
        data.preset,
        manifest_digest=str(trained.metadata["data_digest"]),
    )
    MlflowClient().set_model_version_tag(
        name, str(version.version), ANCHOR_TAG, f"{record.seq}:{record.record_hash}"
    )
    set_alias(name, "champion", version.version)
    return version


def _abandon_unrecorded_originals(paths: StatePaths, name: str) -> None:
    """Tag ``abandoned`` (and record) the originals an earlier first run registered but died before
    recording: without a ledger record they are never champion, and verification names why they exist.
    """
    from hamu_pipeline.tasks.trail import register_record

    ledger_file = paths.audit / "ledger.jsonl"
    records = Ledger(paths.audit).records() if ledger_file.exists() else []
    client = MlflowClient()
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return  # no registered model yet
    orphans = [
        str(v.version)
        for v in versions
        if (v.tags or {}).get("role") == "original"
        and (v.tags or {}).get("batch_status") != "abandoned"
        and register_record(records, v) is None
    ]
    abandon_versions(
        paths, name, orphans, "originals registered by a first run that died before recording them"
    )


def abandon_versions(paths: StatePaths, name: str, numbers: list[str], reason: str) -> None:
    """Tag ``numbers`` of ``name`` ``batch_status=abandoned`` and list them in one ``abandon-versions``
    record, so that verification knows why they exist and promotion or rollback never picks one."""
    if not numbers:
        return
    client = MlflowClient()
    for number in numbers:
        client.set_model_version_tag(name, number, "batch_status", "abandoned")
    key = load_or_create_key(paths.home, ledger=paths.audit / "ledger.jsonl")
    Ledger(paths.audit, key=key).append(
        LedgerRecord(
            step="abandon-versions",
            batch_id=f"original-{name}",
            decision="abandoned",
            reason=reason,
            params={"versions": [f"{name}/{n}" for n in numbers]},
        )
    )


def record_original(
    paths: StatePaths,
    name: str,
    version: str,
    model: nn.Module,
    preset: str,
    *,
    manifest_digest: str,
    reason: str = "trained on the full manifest on a fresh store",
) -> LedgerRecord:
    """The ledger's record of the first champion: its weights, its (empty) erasure manifest, the alias.

    Why: verification accepts a ``champion`` alias only where a ledger record put it, and a version's
    weights and manifest only when they match what the ledger recorded at registration.
    """
    key = load_or_create_key(paths.home, ledger=paths.audit / "ledger.jsonl")
    weights = model_digest(model)
    return Ledger(paths.audit, key=key).append(
        LedgerRecord(
            step="register-original",
            batch_id=f"original-{preset}",
            decision="champion",
            reason=reason,
            inputs={"manifest": manifest_digest},
            outputs={
                "model": name,
                "model_version": version,
                "champion": version,
                "weights": weights,
                "erasures": ErasureManifest().digest(),
            },
        )
    )


def load_version(name: str, version: str) -> ServedModel:
    from mlflow import MlflowClient

    mv = MlflowClient().get_model_version(name, version)
    with checkpoint_folder(mv) as folder:  # read into memory, then the download is removed
        files = sorted(folder.glob("*.safetensors"))
        if len(files) != 1:
            raise FileNotFoundError(f"model version {name}/{version} has no single safetensors checkpoint")
        model, metadata = load_checkpoint(files[0])
        stored = folder / MANIFEST_FILE
        manifest = ErasureManifest.from_json(stored.read_bytes()) if stored.exists() else ErasureManifest()
    featurizer = featurizer_from_metadata(metadata)
    return ServedModel(
        name, str(version), model, metadata, featurizer, None, dict(mv.tags or {}), manifest=manifest
    )


def retrained_reference(
    paths: StatePaths, split: Split, champion: ServedModel, *, train: bool, progress: bool = False
) -> tuple[TrainedModel | None, str, float]:
    """The exact reference for this retain set (cached by its digest), trained when absent and allowed.

    Returns (model or None, kind, seconds): kind is ``retrained`` for an exact reference, ``proxy`` when
    the newest reference of another retain set stands in (labelled, never silently), ``missing`` otherwise.
    """
    folder = paths.models / "references"
    path = folder / f"{split.retain_digest[:24]}.safetensors"
    if path.exists():
        model, metadata = load_checkpoint(path, expected_data_digest=split.retain_digest)
        return TrainedModel(model, featurizer_from_metadata(metadata), metadata), "retrained", 0.0
    if train:
        from hamu.train import Recipe

        recipe = Recipe.from_dict(champion.metadata["recipe"])
        start = time.perf_counter()
        trained = train_model(split.retain, recipe, spec=split.spec, role="reference", progress=progress)
        seconds = time.perf_counter() - start
        if trained.metadata["data_digest"] != split.retain_digest:
            raise RuntimeError("the reference's training data digest is not the retain set's")
        folder.mkdir(parents=True, exist_ok=True)
        trained.save(path)
        return trained, "retrained", seconds
    others = sorted(folder.glob("*.safetensors"), key=lambda p: p.stat().st_mtime)
    if others:
        model, metadata = load_checkpoint(others[-1])
        return TrainedModel(model, featurizer_from_metadata(metadata), metadata), "proxy", 0.0
    return None, "missing", 0.0


def candidate_source(
    champion: ServedModel, reference: TrainedModel | None, action: str
) -> ServedModel | TrainedModel:
    """The model whose featurizer and training metadata the batch's candidate carries.

    Unlearning edits the champion's weights in place, so the candidate reads the champion's inputs; a retrain
    *is* the reference, whose featurizer (for text: the vocabulary fitted on the retain rows) and model
    config (its vocabulary size) differ from the champion's. Registered with the champion's, a text retrain
    would be served with the wrong vocabulary and its checkpoint would not even rebuild.
    """
    if action == "unlearn":
        return champion
    if reference is None:
        raise ValueError(f"action {action!r} registers the retrained reference, but there is none")
    return reference


@contextmanager
def _single_file_dir(path: Path) -> Iterator[Path]:
    """A private temp folder holding a copy of ``path`` alone (what MLflow logs), removed on exit."""
    folder = Path(tempfile.mkdtemp(prefix="hamu-ckpt-"))
    try:
        (folder / path.name).write_bytes(path.read_bytes())
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _flat(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, dict | list) else v) for k, v in d.items()}
