"""prefect.yaml really deploys: a local Prefect server, process work pools, `prefect deploy --all`, a
deployment run picked up by `prefect worker start --run-once`, and a Completed flow run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_deploy_and_run_through_a_worker(tmp_path: Path) -> None:
    prefect = str(Path(sys.executable).parent / "prefect")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "true",
        "HAMU_HOME": str(tmp_path / "hamu"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'hamu' / 'mlflow.db'}",
        "HAMU_PROJECT_DIR": str(REPO),
        "COLUMNS": "250",  # rich tables would otherwise truncate names and states
    }
    server = subprocess.Popen(
        [
            prefect,
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--analytics-off",
            "--no-ui",
        ],
        env={k: v for k, v in env.items() if k != "PREFECT_API_URL"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{api}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("prefect server did not become healthy in 120 s")

        def run(*args: str, timeout: int = 240) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [prefect, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
            )

        for pool in ("cpu", "gpu"):
            assert run("work-pool", "create", pool, "--type", "process").returncode == 0
        deployed = run("--no-prompt", "deploy", "--all")
        assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr[-2000:]
        for name in (
            "deletion-batch/deletion-batch",
            "deletion-batch/unlearn",
            "train-original/train-original",
        ):
            assert run("deployment", "inspect", name).returncode == 0, name
        started = run("deployment", "run", "train-original/train-original", "--param", "preset=digits-cpu")
        assert started.returncode == 0, started.stderr[-2000:]
        worker = run("worker", "start", "--pool", "gpu", "--run-once", timeout=400)
        assert worker.returncode == 0, worker.stdout[-2000:] + worker.stderr[-2000:]
        listed = run("flow-run", "ls", "--state", "COMPLETED")
        assert "train-original" in listed.stdout and "COMPLETED" in listed.stdout, listed.stdout
        assert (tmp_path / "hamu" / "models" / "digits-cpu" / "original.safetensors").exists()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
