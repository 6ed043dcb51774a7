"""Content digests of records and datasets: SHA-256 over canonical bytes, independent of storage layout.

Why not ``Dataset._fingerprint``: after ``load_dataset`` it follows file paths and mtimes, not content.
Why not the Arrow IPC stream of ``ds.data.table`` either: it ignores the indices mapping that
``select``/``shuffle`` leave behind (the table still holds every row), and its bytes depend on chunking,
schema metadata and string width (``string`` vs ``large_string``). Here every value is encoded explicitly
(little-endian numbers, UTF-8 text, length prefixes), so a digest is the same in every process, on every
machine and for every pyarrow version, and changes when any byte of the content changes.

* The **record digest** covers a row's content: every column except ``record_id``, in column-name order,
  each as name, type tag and value bytes. Two records with the same pixels and label share a digest,
  whatever their IDs, which is how near- and exact duplicates are found.
* The **dataset digest** covers the set of ``(record_id, record digest)`` pairs, sorted by ID: it names
  exactly which records with exactly which content, and survives reordering (a shuffled copy has the same
  digest; moving one record in or out, or changing one byte, changes it).
* The **order digest** covers the record IDs in row order, nothing else. It is for what reads a dataset by
  position: a reference bank's membership says which *positions* of the manifest each member trained on,
  so the same set in another order would silently swap which rows a member saw.
* The **keyed digest** passes a dataset digest through a keyed hash (HMAC with the audit key in the
  pipeline). It is for sets derived from forget rows alone: an unkeyed digest of a one-record forget set is
  recovered by hashing each row of the training manifest in turn, a keyed one only with the key.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

RECORD_ID = "record_id"
#: A training record's ID: lowercase ASCII letters and digits, then up to 127 of ``a-z 0-9 . _ -``.
#: Lowercase only, so that two spellings can never name one record; no ``/`` or whitespace, so an ID is
#: safe in a path, a URL and a CSV cell. Defined here, with the data, so that datasets and deletion
#: requests (``hamu.governance.requests``, which re-exports it) agree; the GX suites repeat this string.
RECORD_ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,127}$"
# ``$`` also matches before a trailing newline, so the compiled form is used with ``fullmatch``.
_RECORD_ID_RE = re.compile(RECORD_ID_PATTERN[1:-1])


def is_valid_record_id(value: object) -> bool:
    """True if ``value`` is a string matching :data:`RECORD_ID_PATTERN` (whole string, no newline)."""
    return isinstance(value, str) and _RECORD_ID_RE.fullmatch(value) is not None


_RECORD_DOMAIN = b"hamu-record-v1\n"
_DATASET_DOMAIN = b"hamu-dataset-v1\n"
_KEYED_DOMAIN = "hamu-keyed-dataset-v1\n"
_ORDER_DOMAIN = b"hamu-order-v1\n"


def arrow_table(ds: Any) -> pa.Table:
    """The rows of a ``datasets.Dataset`` as one Arrow table, with any indices mapping applied."""
    if len(ds) == 0:
        return ds.data.table.slice(0, 0)
    table = ds.with_format("arrow")[:]
    if not isinstance(table, pa.Table):  # pragma: no cover - defensive: datasets changed its arrow format
        raise TypeError(f"expected a pyarrow.Table from the arrow format, got {type(table).__name__}")
    return table


def _prefixed(data: bytes) -> bytes:
    return len(data).to_bytes(8, "little") + data


def _primitive_tag(t: pa.DataType) -> str | None:
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return str(np.dtype(t.to_pandas_dtype()).newbyteorder("<").str)
    return None


def _encode_value(t: pa.DataType, value: Any) -> tuple[bytes, bytes]:
    """(type tag, value bytes) of one Python value: the slow path, which defines the fast one."""
    if value is None:
        return b"null", b""
    if pa.types.is_fixed_size_list(t) and (tag := _primitive_tag(t.value_type)) is not None:
        return f"{tag}[{t.list_size}]".encode(), np.asarray(value, dtype=tag).tobytes()
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return b"<i8", int(value).to_bytes(8, "little", signed=True)
    if pa.types.is_floating(t):
        return b"<f8", np.asarray(value, dtype="<f8").tobytes()
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return b"utf8", str(value).encode("utf-8")
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return b"bytes", bytes(value)
    return b"json", json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()


def _encode_column(col: pa.ChunkedArray) -> tuple[list[bytes], list[bytes | memoryview]]:
    """Per-row (type tag, value bytes) of one column; vectorised for the common null-free column types."""
    t = col.type
    n = len(col)
    if col.null_count:
        pairs = [_encode_value(t, v) for v in col.to_pylist()]
        return [p[0] for p in pairs], [p[1] for p in pairs]
    if pa.types.is_fixed_size_list(t) and (vtag := _primitive_tag(t.value_type)) is not None:
        width = t.list_size
        arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
        flat = np.ascontiguousarray(np.asarray(arr.flatten().to_numpy(zero_copy_only=False), dtype=vtag))
        stride = width * flat.dtype.itemsize
        view = memoryview(flat.tobytes())
        return [f"{vtag}[{width}]".encode()] * n, [view[i * stride : (i + 1) * stride] for i in range(n)]
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        raw = np.asarray(col.to_numpy(zero_copy_only=False), dtype="<i8").tobytes()
        return [b"<i8"] * n, [raw[i * 8 : (i + 1) * 8] for i in range(n)]
    if pa.types.is_floating(t):
        raw = np.asarray(col.to_numpy(zero_copy_only=False), dtype="<f8").tobytes()
        return [b"<f8"] * n, [raw[i * 8 : (i + 1) * 8] for i in range(n)]
    pairs = [_encode_value(t, v) for v in col.to_pylist()]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def record_digests(ds: Any) -> list[str]:
    """SHA-256 (hex) of each row's content, in row order; ``record_id`` is not part of the content."""
    table = arrow_table(ds)
    names = sorted(name for name in table.column_names if name != RECORD_ID)
    columns = []
    for name in names:
        tags, values = _encode_column(table.column(name))
        columns.append((_prefixed(name.encode()), tags, values))
    out: list[str] = []
    for i in range(table.num_rows):
        h = hashlib.sha256(_RECORD_DOMAIN)
        for head, tags, values in columns:
            value = values[i]
            h.update(head)
            h.update(_prefixed(tags[i]))
            h.update(len(value).to_bytes(8, "little"))
            h.update(value)
        out.append(h.hexdigest())
    return out


def record_ids(ds: Any) -> list[str]:
    """The ``record_id`` column as a list of strings (raises if the dataset has none)."""
    if RECORD_ID not in ds.column_names:
        raise ValueError(f"the dataset has no {RECORD_ID!r} column; digests and splits need stable IDs")
    return [str(x) for x in arrow_table(ds).column(RECORD_ID).to_pylist()]


def manifest_digest(pairs: Iterable[tuple[str, str]]) -> str:
    """Digest of a set of ``(record_id, record digest)`` pairs (order does not matter; IDs must be unique)."""
    items = sorted(pairs)
    for a, b in itertools.pairwise(items):
        if a[0] == b[0]:
            raise ValueError(f"record ID {a[0]!r} appears more than once; record IDs must be unique")
    h = hashlib.sha256(_DATASET_DOMAIN)
    for rid, digest in items:
        h.update(f"{rid}\t{digest}\n".encode())
    return h.hexdigest()


def keyed_manifest_digest(pairs: Iterable[tuple[str, str]], keyed_hash: Callable[[str], str]) -> str:
    """The manifest digest passed through ``keyed_hash`` (the pipeline's ``KeyedHasher.hash``, HMAC-SHA-256).

    Why: the digest of a forget set is a fingerprint of the erased records. Unkeyed, anyone holding the
    training manifest finds a one-record forget set by digesting each row in turn; keyed, that needs the
    key. The same set under the same key keeps the same digest, so records still link across stores.
    ``keyed_hash`` takes a callable, not key bytes, so the key never leaves its holder. Its result must be
    labelled (``hmac-sha256:<hex>``) so a reader can tell a keyed digest from a plain one.
    """
    out = keyed_hash(_KEYED_DOMAIN + manifest_digest(pairs))
    label, sep, value = out.partition(":")
    if not (sep and label and value):
        raise ValueError(
            f"keyed_hash must return a labelled digest such as 'hmac-sha256:<hex>', got {out[:24]!r}"
        )
    return out


def manifest(ds: Any) -> list[tuple[str, str]]:
    """``(record_id, record digest)`` for every row, in row order."""
    return list(zip(record_ids(ds), record_digests(ds), strict=True))


def dataset_digest(ds: Any) -> str:
    """The dataset digest (see the module docstring): SHA-256 hex, stable across processes and machines."""
    return manifest_digest(manifest(ds))


def order_digest(ds: Any) -> str:
    """The order digest (see the module docstring): SHA-256 hex of the record IDs in row order."""
    h = hashlib.sha256(_ORDER_DOMAIN)
    for record_id in record_ids(ds):
        h.update(_prefixed(record_id.encode()))
    return h.hexdigest()


def union_digest(*manifests: Sequence[tuple[str, str]]) -> str:
    """Digest of the union of disjoint datasets given by their manifests (e.g. retain ∪ forget)."""
    return manifest_digest(pair for m in manifests for pair in m)
