"""The deletion-batch pipeline end to end: real Prefect (one test harness), a real MLflow SQLite store and
registry, real GX suites, real data (scikit-learn digits preset) and real training; the CLI through typer's
runner. No component is mocked."""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytestmark = pytest.mark.slow

PRESET = "digits-cpu"
REPO = Path(__file__).resolve().parents[1]


def _write_requests(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    received = (datetime.now(UTC) - timedelta(minutes=2)).isoformat()
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["request_id", "record_id", "reason", "received_at"])
        writer.writerows((rid, rec, reason, received) for rid, rec, reason in rows)
    return path


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("hamu-home")
    saved = {k: os.environ.get(k) for k in ("HAMU_HOME", "MLFLOW_TRACKING_URI", "HAMU_AUDIT_KEY")}
    os.environ["HAMU_HOME"] = str(root)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    os.environ.pop("HAMU_AUDIT_KEY", None)
    from tasks.env import configure_environment

    configure_environment(root)
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield root
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def record_ids() -> list[str]:
    from tasks.models import load_preset_data

    return load_preset_data(PRESET).manifest_ids


@pytest.fixture(scope="module")
def batch_run(home: Path, record_ids: list[str]) -> dict:
    """Submit a batch through the CLI (60 known records, one unknown, one repeat) and run the flow once."""
    from flows.cli import app
    from flows.config import BatchConfig
    from flows.deletion_batch import deletion_batch

    forget = record_ids[5:65]
    rows = [(f"req-{i:03d}", rec, "privacy") for i, rec in enumerate(forget)]
    rows += [("req-unknown", "digits-train-999999", "privacy"), ("req-repeat", forget[0], "copyright")]
    path = _write_requests(home / "batch1.csv", rows)
    result = CliRunner().invoke(app, ["requests", "submit", str(path)])
    assert result.exit_code == 0, result.output
    config = BatchConfig(
        preset=PRESET, max_steps=15, batch_size=128, gate_policy="warn", cost_aware=False, shadow_models=2
    )
    summary = deletion_batch(config)
    return {"summary": summary, "forget": forget, "config": config}


def test_batch_completes_and_closes_every_request(batch_run: dict, home: Path) -> None:
    from hamu.requests import RequestQueue

    summary = batch_run["summary"]
    assert summary["status"] == "completed"
    assert summary["action"] == "unlearn"
    assert summary["verdicts"]["accepted"] == 60
    assert summary["verdicts"]["unknown"] == 1 and summary["verdicts"]["duplicate"] == 1
    with RequestQueue(f"sqlite:///{home / 'requests.db'}") as queue:
        erased = queue.list("erased")
        rejected = {r.request_id: r for r in queue.list("rejected")}
        assert len(erased) == 60 and all(r.model_version == summary["model_version"] for r in erased)
        assert set(rejected) == {"req-unknown", "req-repeat"}
        assert "not in the training manifest" in (rejected["req-unknown"].verdict_reason or "").lower() or (
            rejected["req-unknown"].verdict == "unknown"
        )
        assert queue.counts().get("pending", 0) == 0 and queue.counts().get("claimed", 0) == 0


def test_registry_candidate_and_champion_untouched(batch_run: dict) -> None:
    from mlflow import MlflowClient

    name = batch_run["config"].registered_name
    aliases = {k: str(v) for k, v in MlflowClient().get_registered_model(name).aliases.items()}
    assert aliases["candidate"] == batch_run["summary"]["model_version"]
    assert aliases["champion"] != aliases["candidate"]
    mv = MlflowClient().get_model_version(name, aliases["candidate"])
    assert mv.tags["batch_id"] == batch_run["summary"]["batch_id"]
    assert mv.tags["source_version"] == aliases["champion"]
    assert mv.tags["prefect_flow_run_id"]


def test_audit_verifies_traces_and_detects_tampering(batch_run: dict, home: Path) -> None:
    from flows.cli import app

    runner = CliRunner()
    ok = runner.invoke(app, ["audit", "verify"])
    assert ok.exit_code == 0, ok.output
    trace = runner.invoke(app, ["audit", "trace", "req-001"])
    assert trace.exit_code == 0 and batch_run["summary"]["batch_id"] in trace.output
    assert "accepted" in trace.output and batch_run["summary"]["model_version"] in trace.output
    unknown = runner.invoke(app, ["audit", "trace", "req-unknown"])
    assert unknown.exit_code == 0 and "unknown" in unknown.output
    ledger = home / "audit" / "ledger.jsonl"
    original = ledger.read_bytes()
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0x01
    ledger.write_bytes(bytes(tampered))
    try:
        broken = runner.invoke(app, ["audit", "verify"])
        assert broken.exit_code == 1 and "record" in broken.output
    finally:
        ledger.write_bytes(original)


def test_no_raw_forget_id_in_any_store(batch_run: dict, home: Path) -> None:
    """Privacy scan: MLflow's database and artifacts, the audit folder and Prefect's home hold no raw
    forget record ID (they may appear only in the request queue, which is the input)."""
    needles = [rid.encode() for rid in batch_run["forget"]]
    places = [home / "mlflow.db", home / "mlartifacts", home / "audit", home / "prefect", home / "models"]
    scanned = 0
    for place in places:
        files = [place] if place.is_file() else [p for p in place.rglob("*") if p.is_file()]
        for path in files:
            data = path.read_bytes()
            scanned += 1
            found = [n.decode() for n in needles if n in data]
            assert not found, f"{path} contains raw forget IDs {found[:3]}"
    assert scanned > 10
    assert not (home / "work" / batch_run["summary"]["batch_id"]).exists(), "the working area must be deleted"


def test_second_run_finds_nothing_and_malformed_file_changes_nothing(batch_run: dict, home: Path) -> None:
    from flows.cli import app
    from flows.deletion_batch import deletion_batch
    from hamu.requests import RequestQueue

    again = deletion_batch(batch_run["config"])
    assert again["status"] == "empty"
    url = f"sqlite:///{home / 'requests.db'}"
    with RequestQueue(url) as queue:
        before = [r.request_id for r in queue.list()]
    bad = _write_requests(home / "bad.csv", [("req-new", "digits-train-000001", "privacy")])
    bad.write_text(bad.read_text() + "req-x,digits-train-000002,privacy,not-a-time\n")
    result = CliRunner().invoke(app, ["requests", "submit", str(bad)])
    assert result.exit_code == 2
    assert "line 3" in result.output and "received_at" in result.output
    with RequestQueue(url) as queue:
        assert [r.request_id for r in queue.list()] == before
    listed = CliRunner().invoke(app, ["requests", "list", "--status", "erased", "--json"])
    assert listed.exit_code == 0 and listed.output.count('"erased"') == 60


def _run_in_own_group(cmd: list[str], env: dict[str, str], log: Path) -> int:
    """Run in a new session with output to a file, then kill the whole group: a SIGKILLed flow leaves its
    ephemeral Prefect server orphaned, and that server must neither hold our pipes nor outlive the test."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            return proc.wait(timeout=600)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


def test_crash_after_a_stage_keeps_queue_champion_and_audit(
    batch_run: dict, home: Path, record_ids: list[str]
) -> None:
    """SIGKILL right after the hardness stage (fault injection); then a rerun erases each request once."""
    from mlflow import MlflowClient

    from flows.cli import app
    from hamu.requests import RequestQueue

    name = batch_run["config"].registered_name
    champion_before = MlflowClient().get_registered_model(name).aliases["champion"]
    rows = [(f"crash-{i:03d}", rec, "bias") for i, rec in enumerate(record_ids[200:230])]
    assert (
        CliRunner().invoke(app, ["requests", "submit", str(_write_requests(home / "b2.csv", rows))]).exit_code
        == 0
    )
    env = {**os.environ, "HAMU_FAULT": "after:hardness", "PREFECT_API_URL": "", "OMP_NUM_THREADS": "1"}
    env.pop("PREFECT_API_URL")
    cmd = [sys.executable, "-m", "flows.cli", "batch", "run", "--preset", PRESET, "--max-steps", "5"]
    cmd += ["--shadow-models", "0", "--gate-policy", "warn"]
    crashed = _run_in_own_group(cmd, env, home / "crash.log")
    assert crashed == -9, (home / "crash.log").read_text()[-2000:]
    url = f"sqlite:///{home / 'requests.db'}"
    with RequestQueue(url) as queue:
        mine = [r for r in queue.list() if r.request_id.startswith("crash-")]
        assert len(mine) == 30 and {r.status.value for r in mine} <= {"pending", "claimed"}
    assert MlflowClient().get_registered_model(name).aliases["champion"] == champion_before
    assert CliRunner().invoke(app, ["audit", "verify"]).exit_code == 0
    env.pop("HAMU_FAULT")
    rerun = _run_in_own_group(cmd, env, home / "rerun.log")
    assert rerun == 0, (home / "rerun.log").read_text()[-2000:]
    with RequestQueue(url) as queue:
        mine = [r for r in queue.list() if r.request_id.startswith("crash-")]
        assert all(r.status.value == "erased" for r in mine)
        assert len({r.batch_id for r in mine}) == 1
    assert MlflowClient().get_registered_model(name).aliases["champion"] == champion_before
    assert CliRunner().invoke(app, ["audit", "verify"]).exit_code == 0


def test_promotion_is_gated_and_rollback_restores(batch_run: dict, home: Path) -> None:
    import json

    from mlflow import MlflowClient

    from flows.cli import app
    from hamu.audit import Ledger
    from hamu.promotion import promotion_gates

    name = batch_run["config"].registered_name
    batch_id = batch_run["summary"]["batch_id"]
    before = str(MlflowClient().get_registered_model(name).aliases["champion"])
    report = json.loads((home / "audit" / "batches" / batch_id / "evaluation.json").read_text())
    gates = promotion_gates(report, utility_budget=1.0, ks_max=1.0)
    runner = CliRunner()
    result = runner.invoke(
        app, ["promote", "--batch", batch_id, "--utility-budget", "1.0", "--ks-max", "1.0"]
    )
    after = str(MlflowClient().get_registered_model(name).aliases["champion"])
    last = Ledger(home / "audit").records()[-1]
    assert last.step == "promote"
    if all(g.passed for g in gates):
        assert result.exit_code == 0 and after == batch_run["summary"]["model_version"]
        assert last.decision == "promoted"
        back = runner.invoke(app, ["rollback", "--model", name])
        assert back.exit_code == 0
        assert str(MlflowClient().get_registered_model(name).aliases["champion"]) == before
        assert Ledger(home / "audit").records()[-1].step == "rollback"
    else:
        assert result.exit_code == 1 and after == before and last.decision == "refused"
        assert all(g.name in result.output for g in gates if not g.passed)
    strict = runner.invoke(app, ["promote", "--batch", batch_id, "--utility-budget", "0", "--ks-max", "0"])
    assert strict.exit_code == 1 and "ks" in strict.output
    assert runner.invoke(app, ["audit", "verify"]).exit_code == 0
