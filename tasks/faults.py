"""Fault injection for crash tests: ``HAMU_FAULT=after:<stage>`` SIGKILLs the process after that stage."""

from __future__ import annotations

import os
import signal


def maybe_fault(stage: str) -> None:
    spec = os.environ.get("HAMU_FAULT", "")
    if spec == f"after:{stage}":
        os.kill(os.getpid(), signal.SIGKILL)
