"""Cross-check the ledger against everything it describes: MLflow versions, aliases and tags, checkpoints,
erasure manifests, receipts and the request queue.

``hamu audit verify`` runs :func:`hamu.governance.audit.verify_ledger` (the keyed chain and its artifacts)
and then
these checks, and names every disagreement. Each check compares a fact held outside the ledger with what
the ledger recorded when that fact was made:

* a registered batch version must have the ledger's ``register`` record, carry a chain-head anchor that
  is still in the chain, and its checkpoint's weights and ``erasures.json`` must match the digests that
  record holds (a swapped manifest would let a rollback serve erased data again);
* a version whose artifacts ``hamu retention apply`` deleted (named by a ``retention`` record) must have
  none left; any other version's checkpoint must be there;
* the ``champion`` alias must point where the latest ``promote``/``rollback``/``register-original``
  record of that model put it;
* every request the queue calls ``unlearned`` or ``erased`` must have the receipts the ledger references.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from safetensors.torch import load_file

from hamu.governance.audit import (
    ANCHOR_TAG,
    Anchor,
    KeyedHasher,
    Ledger,
    LedgerRecord,
    anchor_problem,
    check_receipts,
)
from hamu.governance.audit.receipts import referenced_receipts
from hamu.governance.lineage import ErasureManifest, LineageError
from hamu.governance.requests import Request, Status
from hamu.models.checkpoint import tensors_digest
from hamu_pipeline.tasks.lineage import MANIFEST_FILE
from hamu_pipeline.tasks.tracking import checkpoint_folder, checkpoint_present

#: Ledger steps that move a model's ``champion`` alias; each names ``outputs.model`` and ``outputs.champion``.
CHAMPION_STEPS = ("register-original", "promote", "rollback")
#: The ledger step of ``hamu retention apply``; ``params.versions`` names each version whose artifacts it
#: deleted (``{"model", "version", ...}``), see :mod:`hamu_pipeline.tasks.retention`.
RETENTION_STEP = "retention"


class ManifestMismatch(ValueError):
    """A version's erasure manifest is not the one the ledger recorded for it."""


def register_record(records: Iterable[LedgerRecord], version: ModelVersion) -> LedgerRecord | None:
    """The ledger record that registered ``version`` (a batch's ``register`` or ``register-original``)."""
    batch = (version.tags or {}).get("batch_id")
    for record in records:
        named = record.outputs.get("model_version") == str(version.version)
        if record.step == "register" and named and record.batch_id == batch:
            return record
        if record.step == "register-original" and named and record.outputs.get("model") == version.name:
            return record
    return None


def verified_manifest(version: ModelVersion, records: list[LedgerRecord]) -> ErasureManifest:
    """``version``'s erasure manifest, refused unless its digest is the one the ledger recorded.

    Why: promotion and rollback decide from this file whether a version still carries erased records.
    The file lives in the MLflow artifact store, outside the chain; the ledger's digest is what makes it
    trustworthy. An original registered before the ledger knew it must carry no manifest at all.
    """
    deleted = retention_deletions(records).get((version.name, str(version.version)))
    if deleted is not None:
        raise ManifestMismatch(
            f"version {version.name}/{version.version} was deleted by retention (ledger record {deleted}): "
            "it carried erased records and can never be served again"
        )
    try:
        with checkpoint_folder(version) as folder:
            path = folder / MANIFEST_FILE
            present = path.exists()
            manifest = ErasureManifest.from_json(path.read_bytes()) if present else ErasureManifest()
    except (LineageError, OSError, MlflowException) as exc:
        raise ManifestMismatch(
            f"version {version.name}/{version.version}: its {MANIFEST_FILE} cannot be read ({exc})"
        ) from None
    record = register_record(records, version)
    expected = record.outputs.get("erasures") if record else None
    if expected is None:
        if present and len(manifest):
            raise ManifestMismatch(
                f"version {version.name}/{version.version} carries an erasure manifest that no ledger "
                "record registered"
            )
        return manifest
    if manifest.digest() != expected:
        raise ManifestMismatch(
            f"version {version.name}/{version.version}: {MANIFEST_FILE} differs from the digest ledger "
            f"record {record.seq if record else '?'} recorded (the manifest was replaced)"
        )
    return manifest


def cross_check(audit_root: Path, hasher: KeyedHasher, requests: list[Request]) -> list[str]:
    """Every disagreement between the ledger and receipts, MLflow, checkpoints and the queue."""
    ledger = Ledger(audit_root)
    records = ledger.records()
    problems = check_receipts(ledger)
    client = MlflowClient()
    for registered in client.search_registered_models():
        versions = client.search_model_versions(f"name = '{registered.name}'")
        serving = {str(v) for v in (registered.aliases or {}).values()}
        for version in versions:
            problems += _version_problems(version, records, serving)
        problems += _alias_problems(registered.name, dict(registered.aliases or {}), records)
    problems += _queue_problems(requests, hasher, ledger)
    return problems


def _version_problems(version: ModelVersion, records: list[LedgerRecord], serving: set[str]) -> list[str]:
    """What is wrong with one version. ``serving``: the version numbers an alias points at.

    Only a version the ledger never registered, that no alias serves, and whose batch failed or is still
    running is exempt: the ``batch_status`` tag alone lives outside the chain, so it cannot exempt anything.
    """
    tags = version.tags or {}
    where = f"version {version.name}/{version.version}"
    record = register_record(records, version)
    if record is None:
        died = tags.get("batch_status") == "abandoned"  # e.g. an original a first run never recorded
        unfinished = died or (bool(tags.get("batch_id")) and tags.get("batch_status") != "completed")
        if unfinished and str(version.version) not in serving:
            return []  # a batch that died before registering it in the ledger; never served
        return [f"{where} has no registering ledger record (registered outside the pipeline, or removed)"]
    problems = []
    if ANCHOR_TAG in tags:
        try:
            problem = anchor_problem(records, Anchor.from_tag(tags[ANCHOR_TAG]), where)
        except ValueError:
            problem = f"{where} has a malformed {ANCHOR_TAG} tag"
        if problem:
            problems.append(problem)
    elif record.step == "register":
        problems.append(f"{where} carries no {ANCHOR_TAG} tag (the chain head at its registration)")
    problems += _weights_problems(version, record, records, where)
    if "erasure_digest" in tags and tags["erasure_digest"] != record.outputs.get(
        "erasures", tags["erasure_digest"]
    ):
        problems.append(f"{where}: its erasure_digest tag differs from ledger record {record.seq}")
    return problems


def _weights_problems(
    version: ModelVersion, record: LedgerRecord, records: list[LedgerRecord], where: str
) -> list[str]:
    """The checkpoint's weights and manifest against ``record``; a checkpoint deleted by retention must be
    gone, and only then; one missing without a ledger ``retention`` record is named."""
    deleted = retention_deletions(records).get((version.name, str(version.version)))
    present = checkpoint_present(version)
    if deleted is not None:
        if present:
            return [
                f"{where}: ledger record {deleted} deleted its checkpoint, but it is still in the artifact "
                "store (an interrupted `hamu retention apply --yes`: run it again)"
            ]
        return []
    if not present:
        return [
            f"{where}: its checkpoint is missing from the artifact store, and no ledger retention record "
            "deleted it (removed outside the pipeline)"
        ]
    problems = []
    with checkpoint_folder(version) as folder:
        files = sorted(folder.glob("*.safetensors"))
        weights = tensors_digest(load_file(str(files[0]))) if len(files) == 1 else ""
    if record.outputs.get("weights") and weights != record.outputs["weights"]:
        problems.append(
            f"{where}: its checkpoint's weights differ from the digest in ledger record {record.seq}"
        )
    try:
        verified_manifest(version, records)
    except ManifestMismatch as exc:
        problems.append(str(exc))
    return problems


def retention_deletions(records: Iterable[LedgerRecord]) -> dict[tuple[str, str], int]:
    """``(model, version)`` → the seq of the latest ``retention`` record that deleted its artifacts."""
    deleted: dict[tuple[str, str], int] = {}
    for record in records:
        if record.step != RETENTION_STEP:
            continue
        for entry in record.params.get("versions", []):
            if isinstance(entry, dict) and "model" in entry and "version" in entry:
                deleted[(str(entry["model"]), str(entry["version"]))] = record.seq
    return deleted


def _alias_problems(name: str, aliases: dict[str, str], records: list[LedgerRecord]) -> list[str]:
    moves = [r for r in records if r.step in CHAMPION_STEPS and r.outputs.get("model") == name]
    served = aliases.get("champion")
    if served is None:
        return []
    if not moves:
        return [f"{name}: champion points at version {served}, but no ledger record put it there"]
    expected = moves[-1].outputs.get("champion")
    if str(served) != str(expected):
        return [
            f"{name}: champion points at version {served}, but the ledger's last move (record "
            f"{moves[-1].seq}, {moves[-1].step}) put it at version {expected}"
        ]
    return []


def _queue_problems(requests: list[Request], hasher: KeyedHasher, ledger: Ledger) -> list[str]:
    referenced = referenced_receipts(ledger)
    served = _served_receipts(referenced, ledger)
    problems = []
    for request in requests:
        if request.status not in (Status.UNLEARNED, Status.ERASED):
            continue
        name = hasher.hash(request.request_id).split(":", 1)[-1][:32]
        label = f"request {name[:16]}"
        if f"receipts/{request.batch_id}/{name}.json" not in referenced:
            problems.append(f"{label} is {request.status} but the ledger references no receipt of its batch")
        if request.status is Status.ERASED and str(request.model_version) not in served.get(name, set()):
            problems.append(f"{label} is erased but the ledger references no served receipt for it")
    return problems


def _served_receipts(referenced: dict[str, tuple[int, str]], ledger: Ledger) -> dict[str, set[str]]:
    """Served receipts the ledger references, by receipt name: the model versions they name.

    Read once for all requests; an unreadable file is skipped here (``check_receipts`` reports it).
    """
    served: dict[str, set[str]] = {}
    for path in referenced:
        stem = path.rsplit("/", 1)[-1]
        if not stem.startswith("served-"):
            continue
        try:
            data = json.loads((ledger.root / path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        served.setdefault(stem.removeprefix("served-").removesuffix(".json"), set()).add(
            str(data.get("model_version"))
        )
    return served
