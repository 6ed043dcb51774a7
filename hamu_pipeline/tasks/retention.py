"""Retention: delete the copies that still hold erased data once nothing may serve them again.

``hamu retention apply`` plans, prints, and (with ``--yes``) deletes. What is obsolete:

* **a registered version** (the original included) that holds neither the ``champion`` nor the
  ``candidate`` alias and still carries at least one record the queue calls ``erased``: a rollback
  refuses it and a promotion's erasure-coverage gate refuses it, so it can never be served again, yet its
  weights still hold the erased rows. Its run's ``checkpoint/`` (safetensors and erasure manifest) and its
  pt2 ``model`` (the MLflow logged model's artifacts) are deleted; the registry version stays, tagged
  ``retention=deleted``, as a tombstone (docs/audit.md, "Retention", says why);
* **the original's checkpoint file** ``HAMU_HOME/models/<preset>/original.safetensors``, once the original
  version is obsolete (or already deleted);
* **a cached exact reference** (``HAMU_HOME/models/references/``) trained on a record erased since. Its
  checkpoint records the retain digest it was trained on; the ledger's ``split`` record with that digest
  names the batch, and that batch's version excluded exactly the rows the reference did, so the reference
  carries an erased record exactly when that version does. When this cannot be decided (no such ledger
  record, or the version's manifest cannot be read), a reference older than the latest promotion is deleted,
  and the plan says so.

Left alone, with a note: versions of batches still running (no ``batch_status``: recovery decides), and
versions whose erasure manifest the ledger does not vouch for (evidence for ``hamu audit verify``).

Applying writes one ledger record (step ``retention``) naming every deleted version and file with the
SHA-256 of each deleted file (never contents), *before* deleting: a run cut short leaves a record whose
versions still have artifacts, which ``hamu audit verify`` reports and the next run finishes; the reverse
order would leave a deletion no record explains, which nothing could repair.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from hamu.governance.audit import KeyedHasher, LedgerRecord, file_sha256
from hamu_pipeline.tasks.audit import BatchAudit
from hamu_pipeline.tasks.env import StatePaths
from hamu_pipeline.tasks.promotion import removed_by
from hamu_pipeline.tasks.tracking import CHECKPOINT_ARTIFACT
from hamu_pipeline.tasks.trail import RETENTION_STEP, ManifestMismatch, register_record, retention_deletions

#: Aliases whose holder may be served (champion) or promoted (candidate): never deleted, however old.
SERVING_ALIASES = ("champion", "candidate")
RETENTION_TAG = "retention"
_LOGGED_MODEL = re.compile(r"^models:/(m-[0-9a-f]+)$")


@dataclass(frozen=True)
class Deletion:
    """One thing to delete: a version's artifacts (``model``/``version`` set) or a file under the home."""

    what: str
    reason: str
    model: str = ""
    version: str = ""
    path: Path | None = None


@dataclass
class RetentionPlan:
    deletions: list[Deletion] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)  # (what, why) worth telling the operator


def retention_batch_id(now: datetime | None = None) -> str:
    """``retention-<UTC timestamp>``: the ledger batch of one applied run."""
    return f"retention-{(now or datetime.now(UTC)).strftime('%Y%m%dT%H%M%S%fZ')}"


def plan_retention(
    paths: StatePaths, hasher: KeyedHasher, erased: set[str], records: list[LedgerRecord]
) -> RetentionPlan:
    """What holds records the queue calls ``erased`` and can never be served again; changes nothing."""
    plan = RetentionPlan()
    if not erased:
        return plan  # nothing erased yet: no copy holds erased data
    client = MlflowClient()
    carries = _Carriers(erased, hasher, records)
    already = retention_deletions(records)
    by_batch: dict[str, list[ModelVersion]] = {}
    for registered in client.search_registered_models():
        holders = {str(v): a for a, v in (registered.aliases or {}).items() if a in SERVING_ALIASES}
        for version in client.search_model_versions(f"name = '{registered.name}'"):
            tags = version.tags or {}
            key = (version.name, str(version.version))
            where = f"{version.name}/{version.version}"
            if tags.get("batch_id"):
                by_batch.setdefault(tags["batch_id"], []).append(version)
            if key in already and tags.get(RETENTION_TAG) == "deleted":
                carries.known[key] = 1  # at least one: retention deletes only versions that carry some
                _plan_original_file(plan, paths, version, f"version {where} was deleted by retention")
                continue
            if str(version.version) in holders:
                carried = carries(version)
                if carried:
                    alias = holders[str(version.version)]
                    plan.kept.append((where, f"holds `{alias}`; carries {carried} erased records"))
                continue
            if tags.get("batch_id") and not tags.get("batch_status"):
                plan.kept.append((where, "its batch has not finished (recovery decides its fate)"))
                continue
            carried = carries(version)
            if carried is None:
                plan.kept.append((where, carries.why.get(key, "cannot tell what it carries")))
                continue
            if carried:
                reason = (
                    f"carries {carried} of {len(erased)} erased records and holds no serving alias "
                    "(rollback and promotion refuse it)"
                )
                plan.deletions.append(
                    Deletion(f"version {where}", reason, model=version.name, version=str(version.version))
                )
                _plan_original_file(plan, paths, version, f"the original version {where} is deleted")
    _plan_references(plan, paths, records, by_batch, carries)
    return plan


def apply_retention(plan: RetentionPlan, audit: BatchAudit) -> LedgerRecord:
    """Record every deletion (names and SHA-256), then delete, then tag the versions ``retention=deleted``."""
    client = MlflowClient()
    digests: dict[str, str] = {}
    versions: list[dict[str, Any]] = []
    files: list[dict[str, str]] = []
    for item in plan.deletions:
        if item.version:
            version = client.get_model_version(item.model, item.version)
            held = _version_files(version)
            digests.update({f"{item.model}/{item.version}:{name}": sha for name, sha in held.items()})
            versions.append(
                {"model": item.model, "version": item.version, "reason": item.reason, "files": len(held)}
            )
        elif item.path is not None and item.path.exists():
            digests[f"file:{item.what}"] = file_sha256(item.path)
            files.append({"path": item.what, "reason": item.reason})
    record = audit.record(
        RETENTION_STEP,
        decision="deleted",
        reason=f"{len(versions)} versions' artifacts and {len(files)} files held erased records",
        params={"versions": versions, "files": files},
        outputs=digests,
    )
    for item in plan.deletions:
        if item.version:
            version = client.get_model_version(item.model, item.version)
            _delete_version_artifacts(version)
            client.set_model_version_tag(item.model, item.version, RETENTION_TAG, "deleted")
            client.set_model_version_tag(item.model, item.version, "retention_batch", audit.batch_id)
        elif item.path is not None:
            item.path.unlink(missing_ok=True)
    return record


# ------------------------------------------------------------------------------------------------- helpers
class _Carriers:
    """How many erased records a version still carries (per its ledger-verified manifest), cached;
    ``None`` when that cannot be told (a manifest the ledger does not vouch for, missing artifacts)."""

    def __init__(self, erased: set[str], hasher: KeyedHasher, records: list[LedgerRecord]) -> None:
        self.erased, self.hasher, self.records = erased, hasher, records
        self.known: dict[tuple[str, str], int | None] = {}
        self.why: dict[tuple[str, str], str] = {}

    def __call__(self, version: ModelVersion) -> int | None:
        key = (version.name, str(version.version))
        if key not in self.known:
            try:
                removed = removed_by(version, self.erased, self.hasher, self.records)
                self.known[key] = len(self.erased - removed)
            except ManifestMismatch as exc:
                self.known[key], self.why[key] = None, f"left for the audit: {exc}"
            except (MlflowException, OSError) as exc:
                self.known[key], self.why[key] = None, f"its checkpoint cannot be read ({type(exc).__name__})"
        return self.known[key]


def _plan_original_file(plan: RetentionPlan, paths: StatePaths, version: ModelVersion, why: str) -> None:
    tags = version.tags or {}
    if tags.get("role") != "original" or not tags.get("preset"):
        return
    path = paths.models / tags["preset"] / "original.safetensors"
    if path.is_file():
        plan.deletions.append(Deletion(str(path.relative_to(paths.home)), why, path=path))


def _plan_references(
    plan: RetentionPlan,
    paths: StatePaths,
    records: list[LedgerRecord],
    by_batch: dict[str, list[ModelVersion]],
    carries: _Carriers,
) -> None:
    folder = paths.models / "references"
    if not folder.is_dir():
        return
    promotions = [r for r in records if r.step == "promote"]
    for path in sorted(folder.glob("*.safetensors")):
        what = str(path.relative_to(paths.home))
        carried, how = _reference_carries(path, records, by_batch, carries)
        if carried:
            plan.deletions.append(Deletion(what, f"trained on records erased since ({how})", path=path))
        elif carried is None and promotions:
            latest = promotions[-1]
            made = datetime.fromtimestamp(path.stat().st_mtime, UTC)
            if made < datetime.fromisoformat(latest.time):
                reason = (
                    f"cannot tell which rows it was trained on ({how}); older than the latest promotion "
                    f"(ledger record {latest.seq})"
                )
                plan.deletions.append(Deletion(what, reason, path=path))
            else:
                why = f"cannot tell which rows it was trained on ({how}); newer than the latest promotion"
                plan.kept.append((what, why))


def _reference_carries(
    path: Path,
    records: list[LedgerRecord],
    by_batch: dict[str, list[ModelVersion]],
    carries: _Carriers,
) -> tuple[int | None, str]:
    """Erased records a cached reference was trained on, through the batch whose retain set it is."""
    digest = _data_digest(path)
    if not digest:
        return None, "its checkpoint records no training-data digest"
    batches = [r.batch_id for r in records if r.step == "split" and r.inputs.get("retain") == digest]
    for batch in batches:
        for version in by_batch.get(batch, []):
            if register_record(records, version) is None:
                continue
            carried = carries(version)
            if carried is not None:
                return carried, f"the retain set of batch {batch}, version {version.name}/{version.version}"
    if batches:
        return None, f"no readable version of batch {batches[-1]}"
    return None, "no ledger split record names its retain digest"


def _data_digest(path: Path) -> str:
    """The training-data digest in a hamu checkpoint's header (reads the header only)."""
    try:
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(size)) if 0 < size < 100 * 1024 * 1024 else {}
        meta = json.loads(header.get("__metadata__", {}).get("metadata", "{}"))
    except (OSError, ValueError, AttributeError):
        return ""
    return str(meta.get("data_digest", "")) if isinstance(meta, dict) else ""


def _logged_model_uri(version: ModelVersion) -> str:
    """Where ``version``'s pt2 model lives: its MLflow logged model's artifacts, or ``""``."""
    model_id = getattr(version, "model_id", None)
    if not model_id:
        match = _LOGGED_MODEL.match(version.source or "")
        model_id = match.group(1) if match else None
    if not model_id:
        return ""
    try:
        return str(MlflowClient().get_logged_model(model_id).artifact_location)
    except MlflowException:
        return ""


def _run_uri(version: ModelVersion) -> str:
    return str(MlflowClient().get_run(version.run_id).info.artifact_uri) if version.run_id else ""


def _version_files(version: ModelVersion) -> dict[str, str]:
    """SHA-256 of every file retention deletes for ``version``: ``checkpoint/…`` and ``model/…``."""
    found: dict[str, str] = {}
    for prefix, uri in _version_stores(version):
        with _download(uri) as folder:
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                found[f"{prefix}/{path.relative_to(folder)}"] = file_sha256(path)
    return found


def _version_stores(version: ModelVersion) -> list[tuple[str, str]]:
    """``(label, artifact URI)`` of what holds ``version``'s weights: the run's checkpoint, the pt2 model."""
    stores = []
    run_uri = _run_uri(version)
    if run_uri and version.run_id and MlflowClient().list_artifacts(version.run_id, CHECKPOINT_ARTIFACT):
        stores.append(("checkpoint", f"{run_uri.rstrip('/')}/{CHECKPOINT_ARTIFACT}"))
    model_uri = _logged_model_uri(version)
    if model_uri and get_artifact_repository(model_uri).list_artifacts():
        stores.append(("model", model_uri))
    return stores


def _delete_version_artifacts(version: ModelVersion) -> None:
    for _, uri in _version_stores(version):
        get_artifact_repository(uri).delete_artifacts()


@contextmanager
def _download(uri: str) -> Iterator[Path]:
    """The artifacts under ``uri`` in a private temp folder, removed on exit (hashing needs the bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="hamu-retention-"))
    try:
        yield Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(folder)))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
