"""The audit trail: keyed hashes of IDs, a hash-chained step ledger, erasure receipts, offline verification.

Plain Python (hashlib, hmac, json): the pipeline's tasks call it, and a reviewer can verify a trail with
nothing but this package.
"""

from hamu.audit.keys import KeyedHasher, load_or_create_key
from hamu.audit.ledger import GENESIS, Ledger, LedgerRecord, VerifyResult, verify_ledger
from hamu.audit.provenance import code_version, file_sha256, package_versions, sha256_bytes, sha256_json
from hamu.audit.receipts import ErasureReceipt, ReceiptStore

__all__ = [
    "GENESIS",
    "ErasureReceipt",
    "KeyedHasher",
    "Ledger",
    "LedgerRecord",
    "ReceiptStore",
    "VerifyResult",
    "code_version",
    "file_sha256",
    "load_or_create_key",
    "package_versions",
    "sha256_bytes",
    "sha256_json",
    "verify_ledger",
]
