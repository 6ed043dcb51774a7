"""Keyed hashing of request and record IDs.

IDs only ever enter the audit trail, MLflow or Prefect as HMAC-SHA-256 keyed hashes. A plain SHA-256 of a
short, structured ID (``fmnist-train-000123``) can be reversed by enumeration; a keyed hash cannot without
the key, which lives apart from the trail (a 0600 file under HAMU_HOME, or an environment variable) and is
never logged. The same key MACs the ledger's chain (:mod:`hamu.governance.audit.ledger`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import tempfile
from pathlib import Path

KEY_ENV = "HAMU_AUDIT_KEY"
KEY_BYTES = 32


class AuditKeyError(ValueError):
    """The audit key is missing, malformed or exposed."""


#: Where the key lives under HAMU_HOME when ``$HAMU_AUDIT_KEY`` is not set.
KEY_FILE = Path("secrets") / "audit.key"


def key_path(home: Path) -> Path:
    return home / KEY_FILE


def _from_env(env_var: str) -> bytes | None:
    from_env = os.environ.get(env_var)
    if not from_env:
        return None
    try:
        key = bytes.fromhex(from_env.strip())
    except ValueError:
        raise AuditKeyError(f"${env_var} must be hex-encoded") from None
    if len(key) < 16:
        raise AuditKeyError(f"${env_var} must hold at least 16 bytes (32 hex characters)")
    return key


def _read_file(path: Path) -> bytes:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise AuditKeyError(f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}")
    try:
        key = bytes.fromhex(path.read_text().strip())
    except ValueError:
        raise AuditKeyError(f"{path} is malformed: expected hex digits") from None
    if len(key) < 16:
        raise AuditKeyError(f"{path} is malformed: expected at least 32 hex characters")
    return key


def load_key(home: Path, *, env_var: str = KEY_ENV) -> bytes:
    """The existing audit key: ``$HAMU_AUDIT_KEY`` (hex) if set, else ``<home>/secrets/audit.key`` (0600).

    Why it never creates one: every keyed hash in the trail (receipt names, record hashes, erasure
    manifests, the ledger's MACs) depends on the key. A new key would make every earlier receipt
    unfindable and every earlier erasure look new, so a missing key is an error to restore from backup.
    """
    key = _from_env(env_var)
    if key is not None:
        return key
    path = key_path(home)
    if not path.exists():
        raise AuditKeyError(
            f"no audit key: ${env_var} is not set and {path} does not exist. Restore the key from its "
            "backup (docs/audit.md, 'The audit key'); a new key would orphan every receipt and erasure "
            "manifest already written"
        )
    return _read_file(path)


def create_key(home: Path) -> bytes:
    """Create ``<home>/secrets/audit.key`` atomically, or return the key another process just created.

    The key is written to a private temporary file, fsynced, then hard-linked into place: ``link`` fails
    if the name exists, so two first runs racing here end with one key, both using it.
    """
    path = key_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    key = secrets.token_bytes(KEY_BYTES)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".audit.key.")
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, key.hex().encode())
        os.fsync(fd)
        os.close(fd)
        fd = -1
        try:
            os.link(tmp, path)
        except FileExistsError:
            return _read_file(path)
        _fsync_dir(path.parent)
        return key
    finally:
        if fd >= 0:
            os.close(fd)
        os.unlink(tmp)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_or_create_key(home: Path, *, env_var: str = KEY_ENV, ledger: Path | None = None) -> bytes:
    """The audit key, created on first use: only when no key exists *and* the trail is empty.

    ``ledger`` is the ledger file. When it already holds records, the trail was written with a key that
    is now missing, and a fresh key would silently break it (see :func:`load_key`): that is an error.
    """
    key = _from_env(env_var)
    if key is not None:
        return key
    if key_path(home).exists():
        return _read_file(key_path(home))
    if ledger is not None and ledger.exists() and ledger.stat().st_size > 0:
        load_key(home, env_var=env_var)  # raises, naming the missing key
    return create_key(home)


def key_fingerprint(key: bytes) -> str:
    """A short public name of the key (16 hex digits of an HMAC of a fixed label), for the ledger.

    Why: a reviewer holding a key can check it is the one that wrote the trail, and verification can say
    "wrong key" instead of "every record was modified"; the fingerprint reveals nothing about the key.
    """
    return hmac.new(key, b"hamu audit key fingerprint", hashlib.sha256).hexdigest()[:16]


class KeyedHasher:
    """HMAC-SHA-256 of IDs; ``repr`` never shows the key."""

    PREFIX = "hmac-sha256:"

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise AuditKeyError("the audit key must be at least 16 bytes")
        self._key = key

    def __repr__(self) -> str:
        return "KeyedHasher(key=<hidden>)"

    def key(self) -> bytes:
        """The key itself, for the ledger's chain MAC (one audit key signs both; it is never logged)."""
        return self._key

    def hash(self, value: str) -> str:
        return self.PREFIX + self.hex(value)

    def hex(self, value: str) -> str:
        """The bare hex digest (no algorithm label), for short display forms such as its first 16 digits."""
        return hmac.new(self._key, value.encode("utf-8"), hashlib.sha256).hexdigest()

    def hash_many(self, values: list[str]) -> list[str]:
        return [self.hash(v) for v in values]
