"""Liveness of batches: a running batch holds an exclusive ``flock`` on ``work/<batch>.lock``.

A batch whose lock can be taken belongs to a process that died (SIGKILL, power loss), so the next run
recovers it (tasks/recovery.py) and its requests are picked up again. The kernel drops the lock when a
process dies, however it dies, which a heartbeat timestamp cannot guarantee.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class BatchLock:
    def __init__(self, work: Path, batch_id: str) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.path = work / f"{batch_id}.lock"
        self.fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
            self.path.unlink(missing_ok=True)
