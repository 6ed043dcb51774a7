"""A whole deletion batch with all three stores on PostgreSQL (a throwaway PostgreSQL 15 server): the
request queue (`HAMU_QUEUE_URL`), MLflow's backend store (`MLFLOW_TRACKING_URI`) and a Prefect server
started on its own database (`PREFECT_SERVER_DATABASE_CONNECTION_URL`, reached through `PREFECT_API_URL`).
Driven through the `hamu` command line as a user would: submit, exact batch, `hamu audit verify`. Nothing
is written to the SQLite defaults under HAMU_HOME.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pg_server as pg
from conftest import running_prefect_server

PRESET = "digits-cpu"


def _hamu(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hamu_pipeline.flows.cli", *args],
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=900,
    )


def _prefect_env(database_url: str, home: Path) -> dict[str, str]:
    """A Prefect server's environment whose database is ``database_url`` (asyncpg)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url.replace("+psycopg", "+asyncpg")
    return env


def test_a_batch_on_postgresql_queue_and_mlflow_store(
    postgres_server: pg.PostgresServer, tmp_path: Path
) -> None:
    from sqlalchemy import create_engine, text

    from hamu_pipeline.tasks.models import load_preset_data

    queue_url, mlflow_url = postgres_server.create_database(), postgres_server.create_database()
    prefect_url = postgres_server.create_database()
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "HAMU_", "MLFLOW_"))}
    env |= {"HAMU_HOME": str(home), "HAMU_QUEUE_URL": queue_url, "MLFLOW_TRACKING_URI": mlflow_url}
    env |= {"OMP_NUM_THREADS": "1"}
    ids = load_preset_data(PRESET).manifest_ids[:30]
    requests = tmp_path / "requests.csv"
    rows = [f"pg-{i:03d},{r},privacy,2026-11-01T00:00:00Z" for i, r in enumerate(ids)]
    requests.write_text("request_id,record_id,reason,received_at\n" + "\n".join(rows) + "\n")

    with running_prefect_server(_prefect_env(prefect_url, tmp_path / "prefect-server")) as api:
        env["PREFECT_API_URL"] = api
        first = _hamu(["init", "--preset", PRESET], env)
        assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
        submitted = _hamu(["requests", "submit", str(requests)], env)
        assert submitted.returncode == 0, submitted.stderr[-2000:]
        batch = _hamu(["batch", "run", "--preset", PRESET, "--shadow-models", "0", "--exact"], env)
        assert batch.returncode == 0, (batch.stdout + batch.stderr)[-3000:]
        verify = _hamu(["audit", "verify"], env)
        assert verify.returncode == 0, (verify.stdout + verify.stderr)[-3000:]

    engine = create_engine(queue_url)
    with engine.connect() as conn:
        statuses = dict(
            conn.execute(text("SELECT status, count(*) FROM deletion_requests GROUP BY status")).all()
        )
    engine.dispose()
    assert statuses == {"unlearned": 30}
    engine = create_engine(mlflow_url)
    with engine.connect() as conn:
        versions = conn.execute(text("SELECT count(*) FROM model_versions")).scalar_one()
        aliases = conn.execute(text("SELECT alias FROM registered_model_aliases")).scalars().all()
    engine.dispose()
    assert versions == 2 and sorted(aliases) == ["candidate", "champion"]  # the original and the retrain
    assert not (home / "requests.db").exists() and not (home / "mlflow.db").exists()
    engine = create_engine(prefect_url)
    with engine.connect() as conn:
        runs = conn.execute(
            text("SELECT f.name, r.state_type FROM flow_run r JOIN flow f ON f.id = r.flow_id")
        ).all()
    engine.dispose()
    assert ("deletion-batch", "COMPLETED") in [(name, str(state)) for name, state in runs], runs
