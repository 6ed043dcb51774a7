"""Seeded sampling that depends only on record IDs and the seed, never on row order or library versions.

Each record gets the key ``sha256(f"{seed}:{record_id}")`` (first 8 bytes as an integer); a seeded sample
of k records is the k smallest keys. The same seed therefore picks the same records in any process, on any
machine, for any numpy version, and whatever order the rows are in — which is what lets a forget set be
reconstructed from its recipe by an auditor.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np


def rank_keys(ids: Sequence[str], seed: int | str) -> np.ndarray:
    """One uint64 sort key per record ID."""
    prefix = f"{seed}:".encode()
    keys = np.empty(len(ids), dtype=np.uint64)
    for i, rid in enumerate(ids):
        keys[i] = int.from_bytes(hashlib.sha256(prefix + rid.encode()).digest()[:8], "big")
    return keys


def seeded_order(ids: Sequence[str], seed: int | str) -> np.ndarray:
    """Positions of ``ids`` in seeded random order (ties, which need a hash collision, broken by ID)."""
    keys = rank_keys(ids, seed)
    return np.asarray(sorted(range(len(ids)), key=lambda i: (int(keys[i]), ids[i])), dtype=np.int64)


def seeded_sample(ids: Sequence[str], k: int, seed: int | str) -> np.ndarray:
    """Positions of a seeded sample of ``k`` of ``ids``, returned in ascending position order."""
    if not 0 <= k <= len(ids):
        raise ValueError(f"cannot sample {k} of {len(ids)} records")
    return np.sort(seeded_order(ids, seed)[:k])


def seeded_fraction_mask(ids: Sequence[str], fraction: float, seed: int | str) -> np.ndarray:
    """A boolean mask holding each record with probability ``fraction`` (independently, by its key)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    keys = rank_keys(ids, seed)
    return keys < np.uint64(min(int(fraction * 2**64), 2**64 - 1))


def stratified_sample(ids: Sequence[str], labels: np.ndarray, k: int, seed: int | str) -> np.ndarray:
    """Positions of a seeded sample of ``k`` records with class proportions kept (largest remainders)."""
    n = len(ids)
    if not 0 <= k <= n:
        raise ValueError(f"cannot sample {k} of {n} records")
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * (k / n) if n else counts * 0.0
    quota = np.floor(exact).astype(np.int64)
    # Hand out the remaining slots to the largest fractional parts (ties: lower class first).
    for j in np.argsort(-(exact - quota), kind="stable")[: k - int(quota.sum())]:
        quota[j] += 1
    chosen: list[np.ndarray] = []
    for cls, q in zip(classes, quota, strict=True):
        pos = np.flatnonzero(labels == cls)
        sub = seeded_sample([ids[int(i)] for i in pos], int(q), seed)
        chosen.append(pos[sub])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
