"""Where the pipeline keeps its state, and the environment every process needs before importing Prefect
or MLflow.

Everything lives under ``HAMU_HOME`` (default ``./.hamu``): MLflow's SQLite store and artifacts, Prefect's
home, the request queue, the audit ledger, model checkpoints, and the deletable working area. Nothing is
written to ``$HOME`` or the current directory implicitly. The home is private to its owner (0700, the
databases 0600, process umask 0o077). This module imports neither Prefect nor MLflow,
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


PRIVATE_UMASK = 0o077
DATABASES = ("mlflow.db", "requests.db")


def make_private(paths: StatePaths) -> None:
    """Make ``HAMU_HOME`` 0700 and its SQLite databases 0600, and keep what the process creates private.

    Why the process umask (only ever tightened, to at least 0o077): the files under the home are created
    by many hands (SQLite and its journals, MLflow's artifact store, Prefect, the ledger, checkpoints,
    temporary checkpoint folders), most of which take no mode argument; a umask covers them all, including
    files created later, with no chance of one being missed. It is process-wide, so a file a command
    writes elsewhere (an export) is private too; widen it with ``chmod`` when sharing is meant. The home's
    mode is set even when it exists, so a home from an earlier version is closed too; the databases are
    chmodded for the same reason.
    """
    os.umask(os.umask(PRIVATE_UMASK) | PRIVATE_UMASK)
    paths.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        paths.home.chmod(0o700)
        for name in DATABASES:
            for suffix in ("", "-journal", "-wal", "-shm"):  # SQLite's side files hold rows too
                db = paths.home / f"{name}{suffix}"
                if db.exists():
                    db.chmod(0o600)
    except PermissionError as exc:
        raise PermissionError(
            f"cannot make HAMU_HOME {paths.home} private (0700, databases 0600): {exc.strerror}; "
            "run as the folder's owner or point HAMU_HOME at a folder you own"
        ) from exc


def configure_environment(home: Path | None = None) -> StatePaths:
    """Create the private state folder and set the variables Prefect, MLflow, datasets and GX read at import.

    Existing settings win (``setdefault``), so a deployment can point MLflow or Prefect at a server.
    Privacy comes first (:func:`make_private`): the home holds the queue (raw request and record IDs), the
    MLflow store and ``work/`` (forget rows), so nobody but its owner may read it.
    """
    paths = StatePaths((home or hamu_home()).resolve())
    make_private(paths)
    for folder in (paths.mlartifacts, paths.prefect, paths.audit, paths.models, paths.work):
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
