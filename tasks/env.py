"""Where the pipeline keeps its state, and the environment every process needs before importing Prefect
or MLflow.

Everything lives under ``HAMU_HOME`` (default ``./.hamu``): MLflow's SQLite store and artifacts, Prefect's
home, the request queue, the audit ledger, model checkpoints, and the deletable working area. Nothing is
written to ``$HOME`` or the current directory implicitly. This module imports neither Prefect nor MLflow,
so it can run first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StatePaths:
    home: Path

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def mlartifacts(self) -> Path:
        return self.home / "mlartifacts"

    @property
    def prefect(self) -> Path:
        return self.home / "prefect"

    @property
    def requests_url(self) -> str:
        return os.environ.get("HAMU_QUEUE_URL") or f"sqlite:///{self.home / 'requests.db'}"

    @property
    def audit(self) -> Path:
        return self.home / "audit"

    @property
    def models(self) -> Path:
        return self.home / "models"

    @property
    def work(self) -> Path:
        return self.home / "work"

    def work_dir(self, batch_id: str) -> Path:
        return self.work / batch_id


def hamu_home() -> Path:
    return Path(os.environ.get("HAMU_HOME", ".hamu")).resolve()


def configure_environment(home: Path | None = None) -> StatePaths:
    """Create the state folder and set the variables Prefect, MLflow, datasets and GX read at import time.

    Existing settings win (``setdefault``), so a deployment can point MLflow or Prefect at a server.
    """
    paths = StatePaths((home or hamu_home()).resolve())
    for folder in (paths.home, paths.mlartifacts, paths.prefect, paths.audit, paths.models, paths.work):
        folder.mkdir(parents=True, exist_ok=True)
    os.environ["HAMU_HOME"] = str(paths.home)
    defaults = {
        "PREFECT_HOME": str(paths.prefect),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_TRACKING_URI": paths.mlflow_uri,
        "HF_HOME": str(paths.home / "hf"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "GX_ANALYTICS_ENABLED": "false",
        "TQDM_MININTERVAL": "1",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    import logging

    for noisy in ("distributed", "mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return paths
