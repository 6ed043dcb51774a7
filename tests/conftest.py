"""Shared fixtures for the core-library tests: a numerical oracle for the HAMU block problem, and a
single-threaded torch for the tiny tensors these tests use.

``postgres_url`` is a fresh PostgreSQL database for the queue tests: on a throwaway server that this
session starts (``pg_server.py`` beside this file), or the database named by ``HAMU_TEST_POSTGRES_URL``
(its queue table is dropped before and after each test). Without either, those tests skip and say why.

The oracle knows nothing about HAMU's closed form. It solves, in float64 with scipy's SLSQP,

    minimise  o·x   subject to   c·x ≥ B,   ‖x‖ ≤ R

(HAMU-Q: o = g_r, c = g_f; HAMU-U: o = −g_f, c = −g_r), and decides feasibility by numerically maximising
c·x over the ball.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pg_server as pg
import pytest
import torch
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits


@dataclass(frozen=True)
class OracleSolution:
    feasible: bool
    reach: float  # max c·x over the ball: the problem is feasible iff reach ≥ B
    value: float  # optimal o·x (NaN when infeasible)
    x: np.ndarray  # an optimal point (NaN when infeasible)


def _slsqp(objective: np.ndarray, constraints: list[dict], x0: np.ndarray) -> np.ndarray:
    res = minimize(
        lambda x: float(objective @ x),
        x0,
        jac=lambda x: objective,
        constraints=constraints,
        method="SLSQP",
        options={"ftol": 1e-12, "maxiter": 1000},
    )
    # Status 8 ("positive directional derivative in linesearch") is SLSQP giving up once it is at the optimum
    # to machine precision; the callers verify feasibility of the point themselves.
    if res.status not in (0, 8):
        raise RuntimeError(f"SLSQP failed: {res.message}")
    return np.asarray(res.x, dtype=np.float64)


def solve_numerically(
    objective: np.ndarray, constraint: np.ndarray, radius: float, bound: float
) -> OracleSolution:
    """Numerically solve min o·x s.t. c·x ≥ B, ‖x‖ ≤ R (all float64); see the module docstring."""
    o = np.asarray(objective, dtype=np.float64).ravel()
    c = np.asarray(constraint, dtype=np.float64).ravel()
    R, B = float(radius), float(bound)
    dim = o.size
    # Work in u = x/R (unit ball) with unit-norm vectors so SLSQP sees O(1) numbers.
    ball = {"type": "ineq", "fun": lambda u: 1.0 - u @ u, "jac": lambda u: -2.0 * u}
    c_norm = float(np.linalg.norm(c))
    if c_norm > 0:
        c_hat = c / c_norm
        reach_u = _slsqp(-c_hat, [ball], np.zeros(dim))
        reach = R * c_norm * float(c_hat @ reach_u) if R > 0 else 0.0
    else:
        reach = 0.0
    feasible = reach >= B
    if not feasible:
        nan = np.full(dim, np.nan)
        return OracleSolution(False, reach, float("nan"), nan)
    if R == 0:
        return OracleSolution(True, reach, 0.0, np.zeros(dim))
    o_norm = float(np.linalg.norm(o))
    constraints = [ball]
    if c_norm > 0:
        b = B / (R * c_norm)
        constraints.append({"type": "ineq", "fun": lambda u: c_hat @ u - b, "jac": lambda u: c_hat})
        x0 = c_hat * (b + 1.0) / 2  # strictly inside the feasible set (b < 1)
    else:
        x0 = np.zeros(dim)
    if o_norm == 0:
        return OracleSolution(True, reach, 0.0, R * x0)
    u = _slsqp(o / o_norm, constraints, x0)
    # The returned point must be feasible up to SLSQP's tolerance (~1e-8 here), otherwise it proves nothing;
    # the tests compare values at 1e-6 of the problem's scale.
    assert u @ u <= 1.0 + 1e-7, "oracle point leaves the ball"
    if c_norm > 0:
        assert c_hat @ u >= b - 1e-7, "oracle point misses the constraint"
    x = R * u / max(1.0, float(np.linalg.norm(u)))
    return OracleSolution(True, reach, float(o @ x), x)


@pytest.fixture(scope="session")
def qp_oracle() -> Callable[[np.ndarray, np.ndarray, float, float], OracleSolution]:
    return solve_numerically


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """One torch and one BLAS thread for the tiny problems here.

    With the default thread pools, a loaded 2-core machine (other test runs in parallel) makes torch's
    OpenMP and OpenBLAS threads spin against each other: measured 15-50x slower for these tests.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits_data() -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """scikit-learn digits (features scaled to [0, 1], labels) and one fixed permutation (seed 0) that the
    evaluation tests cut their forget / retain / test index sets from."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32)
    y = torch.tensor(data.target)
    return x, y, np.random.default_rng(0).permutation(len(y))


@pytest.fixture()
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private MLflow store (SQLite under ``tmp_path``, which it yields); the process-wide tracking URI
    is restored afterwards."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield tmp_path
    mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[pg.PostgresServer]:
    """One throwaway PostgreSQL server for the session (per xdist worker), stopped and deleted after."""
    why = pg.unavailable()
    if why is not None:
        pytest.skip(why)
    server = pg.PostgresServer()
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A SQLAlchemy URL of an empty PostgreSQL database: ``HAMU_TEST_POSTGRES_URL``, else a new database."""
    url = os.environ.get("HAMU_TEST_POSTGRES_URL")
    if not url:
        server: pg.PostgresServer = request.getfixturevalue("postgres_server")
        yield server.create_database()
        return
    pytest.importorskip("psycopg", reason="HAMU_TEST_POSTGRES_URL is set, but the psycopg driver is missing")
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS deletion_requests"))
    yield url
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS deletion_requests"))
    engine.dispose()


@contextmanager
def pipeline_home(root: Path) -> Iterator[Path]:
    """``root`` as HAMU_HOME with its own MLflow store and a Prefect test harness; every setting (the
    environment and MLflow's process-wide tracking URI, which another test file may have set) is restored
    afterwards. For module-scoped ``home`` fixtures of the end-to-end tests."""
    import mlflow
    from prefect.testing.utilities import prefect_test_harness

    uri = f"sqlite:///{root / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HAMU_HOME", str(root))
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv("HAMU_AUDIT_KEY", raising=False)
        from hamu_pipeline.tasks.env import configure_environment

        configure_environment(root)
        mlflow.set_tracking_uri(uri)
        try:
            with prefect_test_harness(server_startup_timeout=120):
                yield root
        finally:
            mlflow.set_tracking_uri(previous)


def hamu_cli(*args: str) -> Any:
    """Run the ``hamu`` CLI in this process (Typer's runner) and return its result."""
    from typer.testing import CliRunner

    from hamu_pipeline.flows.cli import app

    return CliRunner().invoke(app, list(args))


def submit_requests(home: Path, records: list[str], prefix: str = "req") -> None:
    """Submit one privacy request per record through ``hamu requests submit``, received two minutes ago
    (request IDs ``<prefix>-000``, ``<prefix>-001``, …); the submission must succeed."""
    import csv
    from datetime import UTC, datetime, timedelta

    received = (datetime.now(UTC) - timedelta(minutes=2)).isoformat()
    path = home / f"{prefix}.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["request_id", "record_id", "reason", "received_at"])
        writer.writerows((f"{prefix}-{i:03d}", rec, "privacy", received) for i, rec in enumerate(records))
    result = hamu_cli("requests", "submit", str(path))
    assert result.exit_code == 0, result.output


def bench_module(name: str) -> Any:
    """``bench/<name>.py`` as a module: bench/ is a folder of scripts, not a package, so the file is loaded
    under its own name (once; its ``from common import ...`` lines then resolve)."""
    import importlib.util
    import sys

    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@contextmanager
def running_prefect_server(env: dict[str, str]) -> Iterator[str]:
    """A real ``prefect server`` on a free local port, started with ``env``; yields its API URL once its
    health endpoint answers, and stops it afterwards (killed if it does not stop within 20 s)."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    prefect = str(Path(sys.executable).parent / "prefect")
    args = [
        prefect,
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--analytics-off",
        "--no-ui",
    ]
    server = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    api = f"http://127.0.0.1:{port}/api"
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"{api}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(1)
        else:
            raise RuntimeError("the Prefect server did not become healthy in 120 s")
        yield api
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
