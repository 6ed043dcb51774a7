"""The audit trail: keyed hashes of IDs, a hash-chained step ledger, erasure receipts, offline verification.

Plain Python (hashlib, hmac, json): the pipeline's tasks call it, and a reviewer can verify a trail with
nothing but this package.
"""

from hamu.governance.audit.keys import (
    AuditKeyError,
    KeyedHasher,
    create_key,
    key_fingerprint,
    load_key,
    load_or_create_key,
)
from hamu.governance.audit.ledger import (
    ANCHOR_TAG,
    GENESIS,
    Anchor,
    Ledger,
    LedgerRecord,
    VerifyResult,
    verify_ledger,
)
from hamu.governance.audit.provenance import (
    code_version,
    file_sha256,
    package_versions,
    sha256_bytes,
    sha256_json,
)
from hamu.governance.audit.receipts import ErasureReceipt, ReceiptStore
from hamu.governance.audit.trail import anchor_problem, check_receipts

__all__ = [
    "ANCHOR_TAG",
    "GENESIS",
    "Anchor",
    "AuditKeyError",
    "ErasureReceipt",
    "KeyedHasher",
    "Ledger",
    "LedgerRecord",
    "ReceiptStore",
    "VerifyResult",
    "anchor_problem",
    "check_receipts",
    "code_version",
    "create_key",
    "file_sha256",
    "key_fingerprint",
    "load_key",
    "load_or_create_key",
    "package_versions",
    "sha256_bytes",
    "sha256_json",
    "verify_ledger",
]
