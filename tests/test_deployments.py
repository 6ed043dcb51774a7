"""prefect.yaml really deploys: a local Prefect server, process work pools, `prefect deploy --all`, a
deployment run picked up by `prefect worker start --run-once`, and a Completed flow run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import running_prefect_server

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def test_deploy_and_run_through_a_worker(tmp_path: Path) -> None:
    prefect = str(Path(sys.executable).parent / "prefect")
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "true",
        "HAMU_HOME": str(tmp_path / "hamu"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'hamu' / 'mlflow.db'}",
        "HAMU_PROJECT_DIR": str(REPO),
        "COLUMNS": "250",  # rich tables would otherwise truncate names and states
    }
    env.pop("PREFECT_API_URL", None)
    with running_prefect_server(env) as api:
        env["PREFECT_API_URL"] = api

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
            "train-bank/train-bank",
        ):
            assert run("deployment", "inspect", name).returncode == 0, name
        started = run("deployment", "run", "train-original/train-original", "--param", "preset=digits-cpu")
        assert started.returncode == 0, started.stderr[-2000:]
        worker = run("worker", "start", "--pool", "gpu", "--run-once", timeout=400)
        assert worker.returncode == 0, worker.stdout[-2000:] + worker.stderr[-2000:]
        listed = run("flow-run", "ls", "--state", "COMPLETED")
        assert "train-original" in listed.stdout and "COMPLETED" in listed.stdout, listed.stdout
        assert (tmp_path / "hamu" / "models" / "digits-cpu" / "original.safetensors").exists()
