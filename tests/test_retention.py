"""Retention of copies that still hold erased data (real MLflow on SQLite, real queue, real ledger).

The trail built here is the pipeline's in miniature: the original (v1, logged with its pt2 model as
``_register_original`` does, plus ``models/<preset>/original.safetensors``) is replaced as champion by v2,
which erased ``rec-1``; v3 is the ``candidate`` but misses ``rec-1``; v4 is neither but lacks ``rec-1``.
Only v1 can never be served again and still holds ``rec-1``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import Result

from hamu.governance.audit import KeyedHasher, Ledger, LedgerRecord, verify_ledger
from hamu_pipeline.tasks.env import StatePaths

KEY = bytes(range(32))
HASHER = KeyedHasher(KEY)
PRESET = "tiny"
FEATURIZER = {"kind": "image", "input_shape": [1, 2, 2], "pixel_scale": 1.0, "mean": [0.0], "std": [1.0]}


@dataclass
class Trail:
    paths: StatePaths
    ckpt: dict[str, Path]  # version → its run's checkpoint folder in the artifact store
    model_dir: Path  # v1's logged (pt2) model artifacts
    references: dict[str, Path]


@pytest.fixture()
def home(tmp_path: Path) -> Iterator[StatePaths]:
    """A private HAMU_HOME configured as the CLI configures it; the environment and umask are restored."""
    import mlflow

    saved_env, saved_uri = dict(os.environ), mlflow.get_tracking_uri()
    saved_umask = os.umask(0o077)
    os.umask(saved_umask)
    os.environ.pop("HAMU_QUEUE_URL", None)
    os.environ["HAMU_AUDIT_KEY"] = KEY.hex()
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'hamu' / 'mlflow.db'}"
    from hamu_pipeline.tasks.env import configure_environment
    from hamu_pipeline.tasks.tracking import ensure_experiment

    paths = configure_environment(tmp_path / "hamu")
    ensure_experiment(paths)
    try:
        yield paths
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.umask(saved_umask)
        mlflow.set_tracking_uri(saved_uri)


def _checkpoint(root: Path, name: str, seed: float, erased: list[str] | None) -> tuple[Path, str]:
    import torch
    from safetensors.torch import save_file

    from hamu.governance.lineage import ErasureManifest
    from hamu.models.checkpoint import tensors_digest
    from hamu_pipeline.tasks.lineage import MANIFEST_FILE

    folder = root / f"staged-{name}"
    folder.mkdir()
    weights = {"w": torch.arange(4, dtype=torch.float32) + seed}
    save_file(weights, str(folder / "model.safetensors"))
    if erased is not None:
        manifest = ErasureManifest(frozenset(HASHER.hash(r) for r in erased))
        (folder / MANIFEST_FILE).write_bytes(manifest.to_json())
    return folder, tensors_digest(weights)


def _artifact_dir(run_uri: str) -> Path:
    return Path(run_uri.removeprefix("file://"))


def _register(root: Path, ledger: Ledger, erased: list[str], batch: str, seed: float) -> tuple[str, Path]:
    """A batch's version as the pipeline registers it (cf. tests/test_trail.py's ``_register``)."""
    import mlflow
    from mlflow import MlflowClient

    from hamu.governance.audit import ANCHOR_TAG
    from hamu.governance.lineage import ErasureManifest

    folder, weights = _checkpoint(root, batch, seed, erased)
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(folder), artifact_path="checkpoint")
    head = ledger.head()
    version = MlflowClient().create_model_version(
        "m",
        source=run.info.artifact_uri,
        run_id=run.info.run_id,
        tags={"batch_id": batch, "batch_status": "completed", ANCHOR_TAG: head.to_tag() if head else ""},
    )
    manifest = ErasureManifest(frozenset(HASHER.hash(r) for r in erased))
    outputs = {"model_version": str(version.version), "weights": weights, "erasures": manifest.digest()}
    ledger.append(LedgerRecord(step="register", batch_id=batch, outputs=outputs))
    return str(version.version), _artifact_dir(run.info.artifact_uri) / "checkpoint"


def _reference(paths: StatePaths, name: str, data_digest: str, mtime: float | None = None) -> Path:
    import torch
    from safetensors.torch import save_file

    from hamu.models.checkpoint import CHECKPOINT_FORMAT

    folder = paths.models / "references"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    meta = {"format": CHECKPOINT_FORMAT, "metadata": json.dumps({"data_digest": data_digest})}
    save_file({"w": torch.ones(2)}, str(path), metadata=meta)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


@pytest.fixture()
def trail(home: StatePaths, tmp_path: Path) -> Trail:
    import mlflow
    import torch
    from mlflow import MlflowClient

    from hamu.governance.audit import ANCHOR_TAG
    from hamu.governance.lineage import ErasureManifest
    from hamu.governance.requests import JudgedRequest, RequestQueue
    from hamu_pipeline.tasks.audit import BatchAudit
    from hamu_pipeline.tasks.tracking import log_model_version

    paths = home
    client = MlflowClient()
    ledger = Ledger(paths.audit, key=KEY)
    # v1: the original, logged as _register_original logs it (checkpoint + pt2 model), its file kept
    folder, weights = _checkpoint(tmp_path, "original", 0.0, None)
    original_file = paths.models / PRESET / "original.safetensors"
    original_file.parent.mkdir(parents=True)
    original_file.write_bytes((folder / "model.safetensors").read_bytes())
    with mlflow.start_run() as run:
        v1 = log_model_version(
            torch.nn.Linear(3, 2),
            name="m",
            example=torch.zeros(2, 3),
            checkpoint_dir=folder,
            tags={"role": "original", "preset": PRESET},
        )
    record = ledger.append(
        LedgerRecord(
            step="register-original",
            batch_id=f"original-{PRESET}",
            decision="champion",
            outputs={
                "model": "m",
                "model_version": str(v1.version),
                "champion": str(v1.version),
                "weights": weights,
                "erasures": ErasureManifest().digest(),
            },
        )
    )
    client.set_model_version_tag("m", str(v1.version), ANCHOR_TAG, f"{record.seq}:{record.record_hash}")
    client.set_registered_model_alias("m", "champion", str(v1.version))
    logged = client.get_logged_model(v1.source.removeprefix("models:/"))
    model_dir = _artifact_dir(logged.artifact_location)
    # b1 erases rec-1 (v2, promoted); b2 started earlier from v1 and misses it (v3, the candidate); b3 (v4)
    ledger.append(LedgerRecord(step="split", batch_id="b1", inputs={"retain": "d" * 64}))
    v2, ck2 = _register(tmp_path, ledger, ["rec-1"], "b1", 1.0)
    ledger.append(LedgerRecord(step="split", batch_id="b2", inputs={"retain": "e" * 64}))
    v3, ck3 = _register(tmp_path, ledger, ["rec-2"], "b2", 2.0)
    v4, ck4 = _register(tmp_path, ledger, ["rec-1", "rec-3"], "b3", 3.0)
    with RequestQueue(paths.requests_url) as queue:
        csv = tmp_path / "b1.csv"
        csv.write_text("request_id,record_id,reason,received_at\nr-1,rec-1,privacy,2026-01-01T00:00:00Z\n")
        queue.submit_file(csv)
        claimed = [r.request_id for r in queue.claim_batch("b1")]
        queue.record_verdicts("b1", {r: ("accepted", "in manifest") for r in claimed})
        queue.mark_unlearned("b1", claimed, v2)
        audit = BatchAudit(paths.audit, HASHER, "b1")
        audit.issue_receipts(
            [JudgedRequest("r-1", "rec-1", "accepted", "")], model_name="m", model_version=v2, evidence={}
        )
        client.set_registered_model_alias("m", "champion", v2)
        client.set_model_version_tag("m", v2, "previous_champion", str(v1.version))
        client.set_registered_model_alias("m", "candidate", v3)
        assert queue.mark_served(["rec-1"], v2) == 1
    audit.record("promote", decision="promoted", outputs={"model": "m", "champion": v2})
    audit.issue_receipts(
        [JudgedRequest("r-1", "rec-1", "erased", "")],
        model_name="m",
        model_version=v2,
        evidence={},
        stage="served",
    )
    promoted = datetime_of(Ledger(paths.audit).records()[-2].time)
    references = {
        "b1": _reference(paths, "b1", "d" * 64),  # v2's retain set: rec-1 excluded -> kept
        "b2": _reference(paths, "b2", "e" * 64),  # v3's retain set: still has rec-1 -> deleted
        "old": _reference(paths, "old", "f" * 64, mtime=promoted - 3600),  # unknown, older -> deleted
        "new": _reference(paths, "new", "f" * 64, mtime=promoted + 3600),  # unknown, newer -> kept
    }
    ckpt = {str(v1.version): _artifact_dir(run.info.artifact_uri) / "checkpoint", v2: ck2, v3: ck3, v4: ck4}
    return Trail(paths, ckpt, model_dir, references)


def datetime_of(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _versions() -> dict[str, tuple[dict[str, str], str]]:
    from mlflow import MlflowClient

    client = MlflowClient()
    return {
        str(v.version): (dict(v.tags or {}), v.status) for v in client.search_model_versions("name = 'm'")
    }


def _invoke(*args: str) -> Result:
    from typer.testing import CliRunner

    from hamu_pipeline.flows.cli import app

    return CliRunner().invoke(app, list(args))


def test_dry_run_lists_the_obsolete_copies_and_changes_nothing(trail: Trail) -> None:
    home = trail.paths.home
    before, versions = _snapshot(home), _versions()
    result = _invoke("retention", "apply")
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "would delete" in out and "version m/1" in out and f"models/{PRESET}/original.safetensors" in out
    assert "references/b2.safetensors" in out and "references/old.safetensors" in out
    assert "dry run: nothing was changed" in out
    assert _snapshot(home) == before  # registry database, artifacts, ledger, files: byte for byte
    assert _versions() == versions


def test_apply_deletes_exactly_the_obsolete_copies_and_records_them(trail: Trail) -> None:
    from hamu.governance.audit import file_sha256
    from hamu_pipeline.tasks.trail import ManifestMismatch, verified_manifest

    assert _invoke("audit", "verify").exit_code == 0
    kept = {v: _snapshot(trail.ckpt[v]) for v in ("2", "3", "4")}
    original_file = trail.paths.models / PRESET / "original.safetensors"
    expected_sha = file_sha256(trail.ckpt["1"] / "model.safetensors")
    before = Ledger(trail.paths.audit).records()

    result = _invoke("retention", "apply", "--yes")
    assert result.exit_code == 0, result.output

    assert not trail.ckpt["1"].exists() or not any(trail.ckpt["1"].iterdir())
    assert not trail.model_dir.exists() or not any(trail.model_dir.iterdir())  # the pt2 model too
    assert not original_file.exists()
    assert {v: _snapshot(trail.ckpt[v]) for v in ("2", "3", "4")} == kept  # champion, candidate, clean v4
    assert not trail.references["b2"].exists() and not trail.references["old"].exists()
    assert trail.references["b1"].exists() and trail.references["new"].exists()
    versions = _versions()
    assert set(versions) == {"1", "2", "3", "4"}  # the registry keeps a tombstone, tagged
    assert versions["1"][0]["retention"] == "deleted"
    assert all("retention" not in versions[v][0] for v in ("2", "3", "4"))

    records = Ledger(trail.paths.audit).records()
    assert len(records) == len(before) + 1
    record = records[-1]
    assert record.step == "retention" and record.batch_id.startswith("retention-")
    assert [(v["model"], v["version"]) for v in record.params["versions"]] == [("m", "1")]
    assert record.outputs["m/1:checkpoint/model.safetensors"] == expected_sha
    assert any(k.startswith("m/1:model/") for k in record.outputs)
    assert f"file:models/{PRESET}/original.safetensors" in record.outputs
    assert {"file:models/references/b2.safetensors", "file:models/references/old.safetensors"} <= set(
        record.outputs
    )
    assert all(len(v) == 64 and int(v, 16) >= 0 for v in record.outputs.values())  # digests, no contents

    verify = _invoke("audit", "verify")
    assert verify.exit_code == 0, verify.output
    assert verify_ledger(trail.paths.audit, KEY).ok
    from mlflow import MlflowClient

    with pytest.raises(ManifestMismatch, match="deleted by retention"):  # rollback refuses, cleanly
        verified_manifest(MlflowClient().get_model_version("m", "1"), records)
    again = _invoke("retention", "apply", "--yes")
    assert again.exit_code == 0 and "nothing to delete" in again.output
    assert len(Ledger(trail.paths.audit).records()) == len(records)


def test_artifacts_deleted_without_a_retention_record_are_reported(trail: Trail) -> None:
    import shutil

    from hamu_pipeline.tasks.trail import cross_check

    assert cross_check(trail.paths.audit, HASHER, []) == []
    shutil.rmtree(trail.ckpt["4"])
    problems = cross_check(trail.paths.audit, HASHER, [])
    assert any(
        "version m/4" in p and "missing from the artifact store" in p and "no ledger retention record" in p
        for p in problems
    ), problems
    verify = _invoke("audit", "verify")
    assert verify.exit_code == 1 and "version m/4" in verify.output


def test_a_retention_record_whose_artifacts_remain_is_reported(trail: Trail) -> None:
    """A run cut short after its record: the ledger says deleted, the store still holds the weights."""
    from hamu_pipeline.tasks.audit import BatchAudit
    from hamu_pipeline.tasks.trail import cross_check

    BatchAudit(trail.paths.audit, HASHER, "retention-x").record(
        "retention", decision="deleted", params={"versions": [{"model": "m", "version": "4"}], "files": []}
    )
    problems = cross_check(trail.paths.audit, HASHER, [])
    assert any("version m/4" in p and "still in the artifact store" in p for p in problems), problems


def test_no_checkpoint_copy_is_left_in_the_system_temp_dir(
    trail: Trail, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    import torch

    from hamu.governance.lineage import ErasureManifest
    from hamu.models.registry import build_model
    from hamu_pipeline.tasks.lineage import still_carried
    from hamu_pipeline.tasks.models import load_version
    from hamu_pipeline.tasks.registration import register_candidate
    from hamu_pipeline.tasks.trail import cross_check

    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    report = tmp_path / "evaluation.json"
    report.write_text("{}")
    with mlflow.start_run():
        version = register_candidate(
            name="m",
            model=build_model("mlp", in_features=4, hidden=[3], num_classes=2),
            metadata={"data_digest": "x", "featurizer": FEATURIZER},
            example=torch.zeros(2, 4),
            report_path=report,
            manifest=ErasureManifest(frozenset({HASHER.hash("rec-1")})),
            tags={"batch_id": "b9"},
        )
    assert list(system_tmp.iterdir()) == []  # the staged candidate checkpoint is gone
    served = load_version("m", str(version.version))
    assert len(served.manifest) == 1 and served.checkpoint is None
    assert still_carried(version, {"rec-1", "rec-2"}, HASHER) == 1
    cross_check(trail.paths.audit, HASHER, [])
    assert list(system_tmp.iterdir()) == []  # every download was removed after reading
