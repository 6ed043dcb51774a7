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
from conftest import pipeline_home
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
    with pipeline_home(tmp_path_factory.mktemp("hamu-home")) as root:
        yield root


@pytest.fixture(scope="module")
def record_ids() -> list[str]:
    from hamu_pipeline.tasks.models import load_preset_data

    return load_preset_data(PRESET).manifest_ids


@pytest.fixture(scope="module")
def batch_run(home: Path, record_ids: list[str]) -> dict:
    """Submit a batch through the CLI (60 known records, one unknown, one repeat) and run the flow once."""
    from hamu_pipeline.flows.cli import app
    from hamu_pipeline.flows.config import BatchConfig
    from hamu_pipeline.flows.deletion_batch import deletion_batch

    forget = record_ids[5:65]
    rows = [(f"req-{i:03d}", rec, "privacy") for i, rec in enumerate(forget)]
    rows += [("req-unknown", "digits-train-999999", "privacy"), ("req-repeat", forget[0], "copyright")]
    path = _write_requests(home / "batch1.csv", rows)
    first = CliRunner().invoke(app, ["init", "--preset", PRESET])  # the champion: a batch never creates one
    assert first.exit_code == 0, first.output
    result = CliRunner().invoke(app, ["requests", "submit", str(path)])
    assert result.exit_code == 0, result.output
    config = BatchConfig(
        preset=PRESET,
        max_steps=15,
        batch_size=128,
        gate_policy="warn",
        cost_aware=False,
        shadow_models=2,
        to_target=False,  # a plain fixed-budget run: the target controller has its own test below
    )
    summary = deletion_batch(config)
    return {"summary": summary, "forget": forget, "config": config}


def test_batch_completes_and_closes_every_request(batch_run: dict, home: Path) -> None:
    from hamu.governance.requests import RequestQueue

    summary = batch_run["summary"]
    assert summary["status"] == "completed"
    assert summary["action"] == "unlearn"
    assert summary["verdicts"]["accepted"] == 60
    assert summary["verdicts"]["unknown"] == 1 and summary["verdicts"]["duplicate"] == 1
    with RequestQueue(f"sqlite:///{home / 'requests.db'}") as queue:
        # a candidate without the records exists; none is served yet, so nothing is "erased"
        unlearned = queue.list("unlearned")
        rejected = {r.request_id: r for r in queue.list("rejected")}
        assert len(unlearned) == 60 and all(r.model_version == summary["model_version"] for r in unlearned)
        assert queue.list("erased") == []
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
    assert mv.tags["batch_status"] == "completed"
    assert mv.tags["erased_records"] == "60" and mv.tags["erased_in_batch"] == "60"
    assert mv.tags["drift_batches"] == "1"


def test_report_is_filed_in_audit_mlflow_and_model_card(batch_run: dict, home: Path) -> None:
    """The per-batch report (Markdown + standalone HTML) is in the ledger and the MLflow run, and the
    registered model's description carries the erasure history with this batch."""
    import mlflow
    from mlflow import MlflowClient

    from hamu.governance.audit import Ledger

    summary = batch_run["summary"]
    batch_id = summary["batch_id"]
    report = home / "audit" / "batches" / batch_id / "report.md"
    text = report.read_text()
    for heading in ("## Requests", "## Hardness and decision", "## Forgetting evidence", "## Utility"):
        assert heading in text
    assert "| accepted | 60 |" in text and "| unknown | 1 |" in text
    assert "## Cumulative drift" in text and "| mia-loss |" in text and "original (control)" in text
    records = [r for r in Ledger(home / "audit").records() if r.batch_id == batch_id]
    steps = [r.step for r in records]
    assert steps.index("report") < steps.index("receipts") < steps.index("completed")
    by_step = {r.step: r.refs for r in records}
    flow_run = by_step["claim"]["prefect_flow_run_id"]
    assert all(refs.get("prefect_flow_run_id") == flow_run for refs in by_step.values())
    assert by_step["validate"]["mlflow_run_id"] == summary["mlflow_run_id"]
    # every stage's record names the task run of the stage that wrote it (one Prefect task per stage)
    for step in ("claim", "validate", "split", "hardness", "reference", "unlearn", "evaluate", "register",
                 "report"):  # fmt: skip
        assert by_step[step].get(f"prefect_task_run:{step}"), (step, by_step[step])
        assert by_step[step]["prefect_task_run_id"] == by_step[step][f"prefect_task_run:{step}"]
    run_files = {
        f.path for f in MlflowClient().list_artifacts(summary["mlflow_run_id"], "report") if not f.is_dir
    }
    assert run_files == {"report/report.md", "report/report.html"}
    local = mlflow.artifacts.download_artifacts(
        run_id=summary["mlflow_run_id"], artifact_path="report/report.html"
    )
    page = Path(local).read_text()
    assert page.startswith("<!doctype html>") and "data:image/png;base64," in page
    name = batch_run["config"].registered_name
    card = MlflowClient().get_registered_model(name).description
    assert "## Erasure history" in card and batch_id in card
    assert card.count("## Erasure history") == 1


def test_audit_verifies_traces_and_detects_tampering(batch_run: dict, home: Path) -> None:
    from hamu_pipeline.flows.cli import app

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
    key = home / "secrets" / "audit.key"
    key.rename(key.with_name("moved"))
    try:
        for command in (["audit", "verify"], ["audit", "trace", "req-001"]):
            missing = runner.invoke(app, command)
            assert missing.exit_code == 2 and "no audit key" in missing.output, missing.output
        assert not key.exists()  # read commands never create a key
    finally:
        key.with_name("moved").rename(key)


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
    from hamu.governance.requests import RequestQueue
    from hamu_pipeline.flows.cli import app
    from hamu_pipeline.flows.deletion_batch import deletion_batch

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
    listed = CliRunner().invoke(app, ["requests", "list", "--status", "unlearned", "--json"])
    assert listed.exit_code == 0 and listed.output.count('"unlearned"') == 60


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


def _cli_env() -> dict[str, str]:
    """The CLI's environment: the harness's Prefect server (as a worker reports to its server; starting an
    ephemeral server per process would cost ~10 s each), one torch thread, no fault."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    env.pop("HAMU_FAULT", None)
    return env


BATCH_CMD = [
    sys.executable,
    "-m",
    "hamu_pipeline.flows.cli",
    "batch",
    "run",
    "--preset",
    PRESET,
    "--max-steps",
    "5",
]
BATCH_CMD += ["--shadow-models", "0", "--gate-policy", "warn"]
CRASH_STAGES = ("claim", "validate", "hardness", "reference", "unlearn", "evaluate", "register", "receipts")
# close-requests last: the queue has closed the requests, the version is not completed yet; the next
# run's recovery must roll the batch forward (a later crash stage would then find nothing to claim)
CRASH_STAGES += ("close-requests",)


def _mine(home: Path, prefix: str) -> list:
    from hamu.governance.requests import RequestQueue

    with RequestQueue(f"sqlite:///{home / 'requests.db'}") as queue:
        return [r for r in queue.list() if r.request_id.startswith(prefix)]


def test_crash_at_every_stage_keeps_queue_champion_and_audit(
    batch_run: dict, home: Path, record_ids: list[str]
) -> None:
    """SIGKILL after each stage in turn (each run recovers the previous crash and dies one stage later);
    after every crash the queue holds every request, champion is unchanged and the chain verifies; the
    final run leaves each request erased exactly once, by one completed batch, and no working area."""
    from mlflow import MlflowClient

    from hamu_pipeline.flows.cli import app

    name = batch_run["config"].registered_name
    client = MlflowClient()
    champion_before = str(client.get_registered_model(name).aliases["champion"])
    rows = [(f"crash-{i:03d}", rec, "bias") for i, rec in enumerate(record_ids[200:230])]
    submitted = CliRunner().invoke(app, ["requests", "submit", str(_write_requests(home / "b2.csv", rows))])
    assert submitted.exit_code == 0, submitted.output
    for stage in CRASH_STAGES:
        log = home / f"crash-{stage}.log"
        rc = _run_in_own_group(BATCH_CMD, {**_cli_env(), "HAMU_FAULT": f"after:{stage}"}, log)
        assert rc == -9, f"expected SIGKILL after {stage}: " + log.read_text()[-2000:]
        mine = _mine(home, "crash-")
        assert len(mine) == 30, f"requests lost after a crash at {stage}"
        statuses = {r.status.value for r in mine}
        closed = stage == "close-requests"
        assert statuses == {"unlearned"} if closed else statuses <= {"pending", "claimed"}, stage
        assert str(client.get_registered_model(name).aliases["champion"]) == champion_before, stage
        verify = CliRunner().invoke(app, ["audit", "verify"])
        assert verify.exit_code == 0, f"after a crash at {stage}: {verify.output}"
    final = _run_in_own_group(BATCH_CMD, _cli_env(), home / "crash-final.log")
    assert final == 0, (home / "crash-final.log").read_text()[-2000:]

    mine = _mine(home, "crash-")
    assert all(r.status.value == "unlearned" for r in mine)
    assert len({r.batch_id for r in mine}) == 1 and len({r.model_version for r in mine}) == 1
    version = client.get_model_version(name, mine[0].model_version)
    assert version.tags["batch_status"] == "completed"  # rolled forward by the final run's recovery
    assert str(client.get_registered_model(name).aliases["candidate"]) == str(version.version)
    from hamu_pipeline.tasks.promotion import read_batch

    assert read_batch(home / "audit", mine[0].batch_id).status == "completed"  # promotable, not "running"
    # batch 1's candidate was never promoted: its 60 records are forgotten again from the champion
    assert version.tags["carried_over"] == "60" and version.tags["erased_records"] == "90"
    died = [v for v in client.search_model_versions(f"name = '{name}'") if v.tags.get("batch_id") != (
        mine[0].batch_id) and v.tags.get("batch_status") not in (None, "completed")]  # fmt: skip
    assert len(died) == 2 and all(v.tags["batch_status"] == "abandoned" for v in died)  # register, receipts
    assert not [p for p in (home / "work").iterdir() if p.is_dir()], "a dead batch's working area survived"
    assert str(client.get_registered_model(name).aliases["champion"]) == champion_before
    assert CliRunner().invoke(app, ["audit", "verify"]).exit_code == 0
    trace = CliRunner().invoke(app, ["audit", "trace", "crash-000"])
    assert trace.exit_code == 0 and "superseded" in trace.output and mine[0].batch_id in trace.output


def test_two_concurrent_batch_runs_handle_each_request_once(home: Path, record_ids: list[str]) -> None:
    """Two `hamu batch run` processes started together: one claims the work, the other says so."""
    from hamu_pipeline.flows.cli import app

    rows = [(f"conc-{i:03d}", rec, "privacy") for i, rec in enumerate(record_ids[300:320])]
    submitted = CliRunner().invoke(app, ["requests", "submit", str(_write_requests(home / "b3.csv", rows))])
    assert submitted.exit_code == 0, submitted.output
    logs = [home / f"concurrent-{i}.log" for i in range(2)]
    handles = [open(log, "w") for log in logs]  # noqa: SIM115 (closed below)
    procs = [
        subprocess.Popen(
            BATCH_CMD, cwd=REPO, env=_cli_env(), stdout=h, stderr=subprocess.STDOUT, start_new_session=True
        )
        for h in handles
    ]
    try:
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        for p, h in zip(procs, handles, strict=True):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            h.close()
    outputs = [log.read_text() for log in logs]
    assert codes == [0, 0], "\n---\n".join(o[-2000:] for o in outputs)
    losers = [o for o in outputs if "nothing left to claim" in o]
    assert len(losers) == 1, "\n---\n".join(o[-2000:] for o in outputs)
    assert "no request is handled twice" in losers[0]
    mine = _mine(home, "conc-")
    assert len(mine) == 20 and all(r.status.value == "unlearned" for r in mine)
    assert len({r.batch_id for r in mine}) == 1
    assert CliRunner().invoke(app, ["audit", "verify"]).exit_code == 0


def test_a_target_not_reached_makes_the_exact_retrain_the_outcome(
    batch_run: dict, home: Path, record_ids: list[str]
) -> None:
    """One controller step cannot reach the reference's forget loss: the batch registers the exact retrain,
    and the ledger, the tags and the report say why."""
    from mlflow import MlflowClient

    from hamu.governance.audit import Ledger
    from hamu_pipeline.flows.cli import app
    from hamu_pipeline.flows.deletion_batch import deletion_batch

    rows = [(f"tgt-{i:03d}", rec, "privacy") for i, rec in enumerate(record_ids[700:710])]
    submitted = CliRunner().invoke(app, ["requests", "submit", str(_write_requests(home / "tgt.csv", rows))])
    assert submitted.exit_code == 0, submitted.output
    config = batch_run["config"].model_copy(
        update={"to_target": True, "max_steps": 1, "check_every": 1, "shadow_models": 0}
    )
    summary = deletion_batch(config)
    assert summary["status"] == "completed" and summary["action"] == "retrain", summary
    assert summary["fallback"].startswith("exact retrain: ")
    record = next(r for r in Ledger(home / "audit").records() if r.batch_id == summary["batch_id"]
                  and r.step == "unlearn")  # fmt: skip
    assert record.decision == "retrain" and record.params["target_tolerance"] > 0
    # either the single step did not reach the target, or the original already sat inside it
    assert record.params["reached"] is False or record.params["steps"] == 0
    version = MlflowClient().get_model_version(config.registered_name, summary["model_version"])
    assert version.tags["action"] == "retrain"
    report = (home / "audit" / "batches" / summary["batch_id"] / "report.md").read_text()
    assert "**Decision: retrain**" in report and "exact retrain: " in report


def _state(home: Path, name: str) -> tuple[bytes, dict[str, str], list[tuple[str, str, str | None]]]:
    """Everything a refused promotion must leave exactly as it was: ledger bytes, aliases, queue."""
    from mlflow import MlflowClient

    from hamu.governance.requests import RequestQueue

    aliases = {k: str(v) for k, v in MlflowClient().get_registered_model(name).aliases.items()}
    with RequestQueue(f"sqlite:///{home / 'requests.db'}") as queue:
        rows = [(r.request_id, r.status.value, r.model_version) for r in queue.list()]
    return (home / "audit" / "ledger.jsonl").read_bytes(), aliases, rows


def _exact_batch(home: Path, batch_run: dict, rows: list[tuple[str, str, str]], path: str) -> dict:
    from hamu_pipeline.flows.cli import app
    from hamu_pipeline.flows.deletion_batch import deletion_batch

    submitted = CliRunner().invoke(app, ["requests", "submit", str(_write_requests(home / path, rows))])
    assert submitted.exit_code == 0, submitted.output
    config = batch_run["config"].model_copy(update={"exact": True, "shadow_models": 0})
    summary = deletion_batch(config)
    assert summary["status"] == "completed" and summary["action"] == "retrain", summary
    return summary


def test_promotion_is_gated_by_one_verdict_and_erased_means_served(
    batch_run: dict, home: Path, record_ids: list[str]
) -> None:
    """Refusals change nothing and name their reason; an exact retrain passes and its promotion turns every
    request it no longer carries into ``erased`` with a served receipt; weak evidence needs a recorded
    override; rollback to a model that carries erased records is refused with no way around it."""
    from mlflow import MlflowClient

    from hamu.governance.audit import Ledger
    from hamu.governance.requests import RequestQueue
    from hamu_pipeline.flows.cli import app

    name = batch_run["config"].registered_name
    client = MlflowClient()
    runner = CliRunner()
    first = batch_run["summary"]["batch_id"]
    before = _state(home, name)
    unknown = runner.invoke(app, ["promote", "--batch", "b-no-such-batch"])
    assert unknown.exit_code == 2 and "status unknown" in unknown.output
    empty = runner.invoke(
        app, ["promote", "--batch", first, "--accept-insufficient-evidence", "--reason", " "]
    )
    assert empty.exit_code == 2 and "--reason" in empty.output
    # batch 1's candidate does not cover what later batches removed: never promotable
    old = runner.invoke(app, ["promote", "--batch", first])
    assert old.exit_code == 1 and "erasure-coverage" in old.output and "not promotable" in old.output
    assert _state(home, name) == before

    exact = _exact_batch(home, batch_run, [(f"ex-{i:03d}", r, "privacy") for i, r in
                                           enumerate(record_ids[500:520])], "exact.csv")  # fmt: skip
    # an exact retrain passes every gate; whether the evidence is adequate depends on how far the attacks
    # see the digits original from its reference over these 130 rows, and promotion must follow it
    assert exact["verdict"] == "pass", exact["verdict_reason"]
    assert exact["gates_passed"] is (exact["evidence"] == "adequate")
    override = ["--accept-insufficient-evidence", "--reason", "digits: exact retrain, weak attacks"]
    override = [] if exact["evidence"] == "adequate" else override
    report = home / "audit" / "batches" / exact["batch_id"] / "evaluation.json"
    original = report.read_bytes()
    before = _state(home, name)
    report.write_bytes(original.replace(b'"schema"', b'"schema" ', 1))
    try:
        tampered = runner.invoke(app, ["promote", "--batch", exact["batch_id"]])
        assert tampered.exit_code == 1 and "report-integrity" in tampered.output
    finally:
        report.write_bytes(original)
    assert _state(home, name) == before

    with RequestQueue(f"sqlite:///{home / 'requests.db'}") as queue:
        pending_promotion = {r.request_id for r in queue.list("unlearned")}
    assert len(pending_promotion) >= 80  # batch 1's 60 carried over, and this batch's 20
    if override:
        plain = runner.invoke(app, ["promote", "--batch", exact["batch_id"]])
        assert plain.exit_code == 1 and "--accept-insufficient-evidence" in plain.output
        assert _state(home, name) == before
    promoted = runner.invoke(app, ["promote", "--batch", exact["batch_id"], *override])
    assert promoted.exit_code == 0, promoted.output
    version = exact["model_version"]
    assert str(client.get_registered_model(name).aliases["champion"]) == version
    with RequestQueue(f"sqlite:///{home / 'requests.db'}") as queue:
        erased = queue.list("erased")
        assert queue.list("unlearned") == []
    # the batch's own 20 requests and every carried-over one: the champion carries none of them now
    assert {r.request_id for r in erased} == pending_promotion and {r.model_version for r in erased} == {
        version
    }
    assert f"{len(erased)} requests erased" in promoted.output
    steps = [r.step for r in Ledger(home / "audit").records()[-2:]]
    assert steps == ["promote", "receipts"]
    trace = runner.invoke(app, ["audit", "trace", "req-001"])
    assert trace.exit_code == 0 and "erased" in trace.output and f"version {version}" in trace.output

    weak = _exact_batch(home, batch_run, [("weak-000", record_ids[600], "privacy"),
                                          ("weak-001", record_ids[601], "privacy")], "weak.csv")  # fmt: skip
    assert weak["evidence"] == "insufficient" and weak["gates_passed"] is False
    before = _state(home, name)
    refused = runner.invoke(app, ["promote", "--batch", weak["batch_id"]])
    assert refused.exit_code == 1 and "--accept-insufficient-evidence" in refused.output
    assert _state(home, name) == before
    reason = "two-record batch; the attacks cannot resolve it and the model is an exact retrain"
    accepted = runner.invoke(
        app, ["promote", "--batch", weak["batch_id"], "--accept-insufficient-evidence", "--reason", reason]
    )
    assert accepted.exit_code == 0, accepted.output
    record = next(r for r in reversed(Ledger(home / "audit").records()) if r.step == "promote")
    assert "OVERRIDE" in record.reason and record.params["override"] == reason
    assert reason in (client.get_registered_model(name).description or "")

    before = _state(home, name)
    rollback = runner.invoke(app, ["rollback", "--model", name])  # the previous champion carries 2 erased
    assert rollback.exit_code == 1 and "still carries 2" in rollback.output
    assert runner.invoke(app, ["rollback", "--model", name, "--force"]).exit_code == 2  # no override exists
    assert _state(home, name) == before
    assert runner.invoke(app, ["audit", "verify"]).exit_code == 0
