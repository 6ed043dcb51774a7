"""Adopting an existing registered model version as the first ``champion`` (``hamu init --from-version``).

A lineage of erasures can only start from a model whose training data the pipeline knows: the version must
carry a hamu checkpoint that rebuilds the preset's architecture with its weights (strictly), record the
digest of exactly this preset's training manifest, and list no erasures. The model's other versions
predate the lineage: they are tagged ``abandoned`` and listed in one ledger record. Adoption then writes
the same ``register-original`` ledger record (weights digest, manifest digest, empty erasure manifest)
that training an original writes, anchors the version to the chain, and sets ``champion``. Every refusal
changes nothing: no tag, no alias, no ledger record.
"""

from __future__ import annotations

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from hamu.data.digest import dataset_digest
from hamu.governance.audit import ANCHOR_TAG
from hamu.models.checkpoint import CheckpointError
from hamu.workloads import get_workload
from hamu_pipeline.tasks.env import StatePaths
from hamu_pipeline.tasks.models import (
    PresetData,
    ServedModel,
    abandon_versions,
    champion_lock,
    load_version,
    record_original,
    refuse_if_erasures,
)
from hamu_pipeline.tasks.tracking import alias_version, set_alias


class AdoptionRefused(ValueError):
    """The version cannot start this preset's lineage; the message says which check it failed."""


def adopt_version(paths: StatePaths, data: PresetData, name: str, version: str) -> ServedModel:
    """Make ``name`` version ``version`` the champion, after checking that it is this preset's model
    trained on this preset's manifest and that it is the first champion of an erasure-free store."""
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
            MlflowClient().get_model_version(name, version)
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


def _refuse_other_aliases(name: str, adopted: str) -> None:
    """Another version an alias serves cannot be set aside: verification would find a served version the
    ledger never registered. The operator moves or deletes that alias first."""
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
