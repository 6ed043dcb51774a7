"""A throwaway PostgreSQL server for the tests: ``initdb`` into a temporary folder, ``pg_ctl start``, stop.

Trust authentication, no TCP listener (a Unix socket in the same temporary folder, under a free port number
so that two servers never share a socket name), fsync off: nothing outlives the test session, and the start
takes about a second. Run as root (CI is), PostgreSQL refuses to start, so the server then runs as the
``postgres`` system user that the Debian package creates, and the folder is handed to it.

:func:`unavailable` says why no server can be started here (binaries, driver or user missing), so a fixture
can skip with that reason instead of failing.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from sqlalchemy import URL

_BINARIES = ("initdb", "pg_ctl")
_SERVER_USER = "postgres"


def _bin_dir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are: on ``PATH``, else the newest ``/usr/lib/postgresql/*/bin``."""
    found = [shutil.which(b) for b in _BINARIES]
    if all(found):
        return Path(str(found[0])).resolve().parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if all((Path(folder) / b).is_file() for b in _BINARIES):
            return Path(folder)
    return None


def _server_user() -> pwd.struct_passwd | None:
    """The user the server runs as: ``postgres`` when we are root (PostgreSQL refuses root), else nobody."""
    if os.geteuid() != 0:
        return None
    return pwd.getpwnam(_SERVER_USER)


def unavailable() -> str | None:
    """Why no throwaway server can run here, or ``None`` when one can."""
    if _bin_dir() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) not found: install postgresql-15"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the psycopg driver is not installed (requirements-dev.txt pins psycopg[binary])"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(_SERVER_USER)
        except KeyError:
            return f"running as root, and there is no {_SERVER_USER!r} user to run PostgreSQL as"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One server in a temporary folder; :meth:`create_database` adds a database and returns its URL."""

    def __init__(self) -> None:
        bin_dir = _bin_dir()
        if bin_dir is None:
            raise RuntimeError(unavailable() or "no PostgreSQL binaries")
        self._bin = bin_dir
        self._user = _server_user()
        # Short and outside pytest's root-only tmp tree: a socket path is limited to 107 bytes, and the
        # server user must be able to reach the folder.
        self.root = Path(tempfile.mkdtemp(prefix="hamu-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._databases = 0
        if self._user is not None:
            os.chown(self.root, self._user.pw_uid, self._user.pw_gid)

    def _run(self, *args: str) -> None:
        kwargs = {} if self._user is None else {"user": self._user.pw_uid, "group": self._user.pw_gid}
        done = subprocess.run(
            [str(self._bin / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=self.root,
            env={**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"},
            **kwargs,
        )
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}): {done.stderr}{tail}")

    def start(self) -> PostgresServer:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
        options = (
            f"-c listen_addresses='' -c unix_socket_directories={self.root} -p {self.port}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            "pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", "server.log", "-o", options
        )
        return self

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL (psycopg 3) for ``database`` over the server's Unix socket."""
        return URL.create(
            "postgresql+psycopg",
            username="postgres",
            database=database,
            query={"host": str(self.root), "port": str(self.port)},
        ).render_as_string(hide_password=False)

    def create_database(self) -> str:
        """A new empty database (named ``t<n>``); returns its URL."""
        import psycopg

        self._databases += 1
        name = f"t{self._databases}"
        with psycopg.connect(host=str(self.root), port=self.port, user="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
