"""Keyed hashing of request and record IDs.

IDs only ever enter the audit trail, MLflow or Prefect as HMAC-SHA-256 keyed hashes. A plain SHA-256 of a
short, structured ID (``fmnist-train-000123``) can be reversed by enumeration; a keyed hash cannot without
the key, which lives apart from the trail (a 0600 file under HAMU_HOME, or an environment variable) and is
never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

KEY_ENV = "HAMU_AUDIT_KEY"
KEY_BYTES = 32


class AuditKeyError(ValueError):
    """The audit key is missing, malformed or exposed."""


def load_or_create_key(home: Path, *, env_var: str = KEY_ENV) -> bytes:
    """The audit key: from ``$HAMU_AUDIT_KEY`` (hex) if set, else ``<home>/secrets/audit.key`` (0600),
    created on first use."""
    from_env = os.environ.get(env_var)
    if from_env:
        try:
            key = bytes.fromhex(from_env.strip())
        except ValueError:
            raise AuditKeyError(f"${env_var} must be hex-encoded") from None
        if len(key) < 16:
            raise AuditKeyError(f"${env_var} must hold at least 16 bytes (32 hex characters)")
        return key
    path = home / "secrets" / "audit.key"
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise AuditKeyError(f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}")
        key = bytes.fromhex(path.read_text().strip())
        if len(key) < 16:
            raise AuditKeyError(f"{path} is malformed: expected at least 32 hex characters")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    key = secrets.token_bytes(KEY_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key.hex())
    return key


class KeyedHasher:
    """HMAC-SHA-256 of IDs; ``repr`` never shows the key."""

    PREFIX = "hmac-sha256:"

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise AuditKeyError("the audit key must be at least 16 bytes")
        self._key = key

    def __repr__(self) -> str:
        return "KeyedHasher(key=<hidden>)"

    def hash(self, value: str) -> str:
        return self.PREFIX + self.hex(value)

    def hex(self, value: str) -> str:
        """The bare hex digest (no algorithm label), for short display forms such as its first 16 digits."""
        return hmac.new(self._key, value.encode("utf-8"), hashlib.sha256).hexdigest()

    def hash_many(self, values: list[str]) -> list[str]:
        return [self.hash(v) for v in values]
