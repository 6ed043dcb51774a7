"""Adopting an existing registered model version as the first ``champion`` (``hamu init --from-version``).

A lineage of erasures can only start from a model whose training data the pipeline knows: the version must
carry a hamu checkpoint that rebuilds the preset's architecture with its weights (strictly), record the
digest of exactly this preset's training manifest, and list no erasures. The model's other versions
predate the lineage: they are tagged ``abandoned`` and listed in one ledger record. Adoption then writes
the same ``register-original`` ledger record (weights digest, manifest digest, empty erasure manifest)
that training an original writes, anchors the version to the chain, and sets ``champion``. Every refusal
changes nothing: no tag, no alias, no ledger record.

A version logged by the team's own code (``mlflow.pytorch.log_model``, no hamu checkpoint) is adopted by
conversion: its module is loaded, its weights are loaded strictly into the workload's registered
architecture (built for the manifest as hamu would train it), and the model must beat the majority class on
the test set through hamu's featurizer (weights trained on other preprocessing fail here, not in the first
batch). The result is registered as a new version with a hamu checkpoint, tagged ``adopted_from``; that
version becomes champion and the foreign one is set aside with the others. The weights cannot prove which
rows they saw, so the ledger record says the manifest is the operator's declaration, and the operator gives
the training time (``--train-seconds``) the unlearn-or-retrain gate compares against.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from torch import nn

from hamu.data.digest import dataset_digest
from hamu.governance.audit import ANCHOR_TAG
from hamu.models.checkpoint import CheckpointError
from hamu.train import TrainedModel
from hamu.train.trainer import WeightsMismatchError, adopt_weights
from hamu.workloads import get_workload
from hamu_pipeline.tasks.env import StatePaths
from hamu_pipeline.tasks.models import (
    PresetData,
    ServedModel,
    _example,
    abandon_versions,
    champion_lock,
    load_version,
    record_original,
    refuse_if_erasures,
)
from hamu_pipeline.tasks.tracking import alias_version, checkpoint_present, log_model_version, set_alias


class AdoptionRefused(ValueError):
    """The version cannot start this preset's lineage; the message says which check it failed."""


class AdoptionIncomplete(RuntimeError):
    """A converted version was registered but did not become champion; the message names it."""


def adopt_version(
    paths: StatePaths, data: PresetData, name: str, version: str, *, train_seconds: float | None = None
) -> ServedModel:
    """Make ``name`` version ``version`` the champion, after checking that it is this preset's model
    trained on this preset's manifest and that it is the first champion of an erasure-free store.

    A version without a hamu checkpoint is converted first (module docstring); ``train_seconds`` is then
    required."""
    preset = data.preset
    with champion_lock(paths, name):
        current = alias_version(name, "champion")
        if current is not None:
            raise AdoptionRefused(
                f"{name} already has champion version {current.version}; adoption only starts a lineage "
                "(move champion with `hamu promote` or `hamu rollback`)"
            )
        refuse_if_erasures(paths, data, f"adopt {name} version {version}")
        try:
            mv = MlflowClient().get_model_version(name, version)
            foreign = not checkpoint_present(mv)
        except MlflowException as exc:
            raise AdoptionRefused(
                f"{name} version {version} cannot be read from the registry: {exc}"
            ) from exc
        if foreign:
            # Every check before anything is written; a failure after registration is not a refusal.
            _refuse_other_aliases(name, adopted=None)
            converted = _convert_foreign(data, name, version, train_seconds)
            return _register_converted(paths, data, name, version, converted)
        try:
            served = load_version(name, version)
        except MlflowException as exc:
            raise AdoptionRefused(
                f"{name} version {version} cannot be read from the registry: {exc}"
            ) from exc
        except (FileNotFoundError, CheckpointError, ValueError, KeyError) as exc:
            raise AdoptionRefused(
                f"{name} version {version} holds no loadable hamu checkpoint for preset {preset!r}: {exc}"
            ) from exc
        _check_fits(served, data)
        _refuse_other_aliases(name, version)
        _set_aside_other_versions(paths, name, version)
        record = record_original(
            paths,
            name,
            version,
            served.model,
            preset,
            manifest_digest=str(served.metadata["data_digest"]),
            reason=f"adopted existing version {version} (trained on preset {preset!r}'s full manifest)",
        )
        client = MlflowClient()
        tags = {"role": "original", "preset": preset, "data_digest": str(served.metadata["data_digest"])}
        for key, value in {**tags, ANCHOR_TAG: f"{record.seq}:{record.record_hash}"}.items():
            client.set_model_version_tag(name, version, key, value)
        if "batch_status" in (served.tags or {}):  # set aside by an earlier adoption: it serves now
            client.delete_model_version_tag(name, version, "batch_status")
        set_alias(name, "champion", version)
    return load_version(name, version)


def _convert_foreign(data: PresetData, name: str, version: str, train_seconds: float | None) -> TrainedModel:
    """The foreign version as a hamu model, checked; nothing is written."""
    where = f"{name} version {version}"
    if train_seconds is None or not train_seconds > 0:
        raise AdoptionRefused(
            f"{where} holds no hamu checkpoint; to adopt it by conversion give --train-seconds (how long "
            "training it took: the unlearn-or-retrain gate compares unlearning with that cost)"
        )
    try:
        foreign = mlflow.pytorch.load_model(f"models:/{name}/{version}", map_location="cpu")
    except Exception as exc:  # any flavour or deserialisation failure: the version is not a torch module
        raise AdoptionRefused(
            f"{where} holds no hamu checkpoint and does not load with mlflow.pytorch: {exc}"
        ) from exc
    if not isinstance(foreign, nn.Module):
        raise AdoptionRefused(f"{where} loads as {type(foreign).__name__}, not a torch module")
    workload = get_workload(data.preset)
    try:
        converted = adopt_weights(
            data.train,
            workload.recipe,
            foreign.state_dict(),
            eval_sets={"test": data.test},
            extra_metadata={
                "train_seconds": float(train_seconds),
                "adopted_from": f"{name}/{version}",
                "data_digest_source": "declared by the operator at adoption",
            },
        )
    except WeightsMismatchError as exc:
        raise AdoptionRefused(f"{where}: {exc} (workload {data.preset!r})") from exc
    labels = np.asarray(data.test["label"])
    majority = float(np.bincount(labels).max() / len(labels)) if len(labels) else 0.0
    accuracy = float(converted.metadata["metrics"]["test"]["accuracy"])
    if not accuracy > majority:
        raise AdoptionRefused(
            f"{where} scores {accuracy:.3f} on workload {data.preset!r}'s test set through hamu's "
            f"featurizer, no better than the majority class ({majority:.3f}): its weights were trained on "
            "other inputs"
        )
    return converted


def _register_converted(
    paths: StatePaths, data: PresetData, name: str, foreign: str, converted: TrainedModel
) -> ServedModel:
    """Register the converted model as a new version and make it the first champion."""
    preset = data.preset
    digest = str(converted.metadata["data_digest"])
    folder = Path(tempfile.mkdtemp(prefix="hamu-adopt-"))
    try:
        converted.save(folder / "original.safetensors")
        with mlflow.start_run(run_name=f"adopt-{name}-v{foreign}"):
            mlflow.log_params({"preset": preset, "role": "original", "adopted_from": f"{name}/{foreign}"})
            new = log_model_version(
                converted.model,
                name=name,
                example=_example(converted.featurizer, data.train),
                checkpoint_dir=folder,
                tags={"role": "original", "preset": preset, "data_digest": digest, "adopted_from": foreign},
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    version = str(new.version)
    try:
        return _make_converted_champion(paths, data, name, foreign, version, converted)
    except Exception as exc:
        raise AdoptionIncomplete(
            f"{name} version {foreign} was converted and registered as version {version}, but making it "
            f"champion failed: {exc}. Check version {version}'s tags and the champion alias before retrying"
        ) from exc


def _make_converted_champion(
    paths: StatePaths, data: PresetData, name: str, foreign: str, version: str, converted: TrainedModel
) -> ServedModel:
    preset = data.preset
    digest = str(converted.metadata["data_digest"])
    _set_aside_other_versions(paths, name, version)
    record = record_original(
        paths,
        name,
        version,
        converted.model,
        preset,
        manifest_digest=digest,
        reason=(
            f"adopted version {foreign} by conversion into version {version}: weights loaded strictly into "
            f"{converted.metadata['architecture']!r}; training on preset {preset!r}'s full manifest is the "
            "operator's declaration"
        ),
    )
    MlflowClient().set_model_version_tag(name, version, ANCHOR_TAG, f"{record.seq}:{record.record_hash}")
    set_alias(name, "champion", version)
    return load_version(name, version)


def _refuse_other_aliases(name: str, adopted: str | None) -> None:
    """Another version an alias serves cannot be set aside: verification would find a served version the
    ledger never registered. The operator moves or deletes that alias first. ``adopted=None`` (conversion:
    the adopted version itself is set aside too) refuses every alias."""
    aliases = MlflowClient().get_registered_model(name).aliases or {}
    held = sorted(
        f"{alias} → version {number}" for alias, number in aliases.items() if str(number) != adopted
    )
    if held:
        raise AdoptionRefused(
            f"other versions of {name} hold aliases ({', '.join(held)}): delete or move them first, so that "
            "only the adopted version is served"
        )


def _set_aside_other_versions(paths: StatePaths, name: str, adopted: str) -> None:
    """The registered model's other versions predate the lineage: none was judged, and none may be served
    by it, so they are abandoned as a dead batch's version is."""
    versions = MlflowClient().search_model_versions(f"name = '{name}'")
    others = sorted((str(v.version) for v in versions if str(v.version) != adopted), key=int)
    reason = f"registered before version {adopted} was adopted as the first champion: outside the lineage"
    abandon_versions(paths, name, others, reason)


def _check_fits(served: ServedModel, data: PresetData) -> None:
    """The version is the preset's architecture, trained on exactly this manifest, with nothing erased."""
    where = f"{served.name} version {served.version}"
    expected = get_workload(data.preset).recipe.model
    architecture = served.metadata.get("architecture")
    if architecture != expected:
        raise AdoptionRefused(
            f"{where} is a {architecture!r} model; workload {data.preset!r} trains {expected!r}"
        )
    missing = [key for key in ("recipe", "featurizer", "data_digest") if key not in served.metadata]
    if missing:
        raise AdoptionRefused(
            f"{where}'s checkpoint metadata lacks {', '.join(missing)}: exact retrains and references could "
            "not be trained or read like it"
        )
    manifest = dataset_digest(data.train)
    recorded = served.metadata.get("data_digest")
    if recorded != manifest:
        raise AdoptionRefused(
            f"{where} was trained on other data (its checkpoint records data digest {recorded}, preset "
            f"{data.preset!r}'s training manifest is {manifest}): erasures could not be traced to it"
        )
    if len(served.manifest):
        raise AdoptionRefused(
            f"{where} already lists {len(served.manifest)} erased record(s): "
            "only an original starts a lineage"
        )
