"""Fault injection for crash tests: ``HAMU_FAULT=after:<stage>`` SIGKILLs the process after that stage.

SIGKILL, not an exception: nothing in the process gets to clean up, exactly like a power cut or the OOM
killer, so the tests exercise recovery rather than ``finally`` blocks.
"""

from __future__ import annotations

import os
import signal

STAGES = (
    "claim",
    "validate",
    "split",
    "bank",
    "hardness",
    "reference",
    "unlearn",
    "evaluate",
    "register",
    "report",
    "receipts",
    "close-requests",
    "close",
    "reject",
)


def check_fault_spec() -> None:
    """Refuse a misspelt spec up front: a fault that never fires would make a crash test pass vacuously."""
    spec = os.environ.get("HAMU_FAULT", "")
    if spec and (not spec.startswith("after:") or spec.removeprefix("after:") not in STAGES):
        raise ValueError(f"HAMU_FAULT={spec!r} is not after:<stage> with stage one of {', '.join(STAGES)}")


def maybe_fault(stage: str) -> None:
    if stage not in STAGES:
        raise ValueError(f"unknown fault stage {stage!r}")
    if os.environ.get("HAMU_FAULT", "") == f"after:{stage}":
        os.kill(os.getpid(), signal.SIGKILL)
