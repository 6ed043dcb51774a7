"""Erasure lineage: which erased records a model version no longer carries.

Batches unlearn from the served ``champion``. A candidate that is never promoted must not take its
erasures with it: the next batch starts again from the champion, so its forget set has to include every
record erased since the champion was made, not just the batch's own. And promoting an *older* candidate
must never reinstate records erased after it. Both need to know, per model version, exactly which records
are gone from it. :class:`ErasureManifest` is that set, held as keyed hashes (HMAC-SHA-256 under the audit
key), so it travels with the model in the registry without putting a raw record ID there.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

SCHEMA = "hamu.erasures/1"


class LineageError(ValueError):
    """A model version's erasure manifest is unreadable or contradicts the request queue."""


@dataclass(frozen=True)
class ErasureManifest:
    """The keyed hashes of every record removed from a model's training set since the original."""

    record_hashes: frozenset[str] = frozenset()

    def __len__(self) -> int:
        return len(self.record_hashes)

    def __contains__(self, record_hash: object) -> bool:
        return record_hash in self.record_hashes

    def digest(self) -> str:
        """Order-independent SHA-256 of the set: equal manifests, equal digests (a registry tag)."""
        body = "\n".join(sorted(self.record_hashes)).encode()
        return hashlib.sha256(body).hexdigest()

    def union(self, record_hashes: Iterable[str]) -> ErasureManifest:
        return ErasureManifest(self.record_hashes | frozenset(record_hashes))

    def missing(self, required: Iterable[str]) -> frozenset[str]:
        """The hashes in ``required`` that this manifest lacks (records the model may still carry)."""
        return frozenset(required) - self.record_hashes

    def to_json(self) -> bytes:
        return json.dumps({"schema": SCHEMA, "record_hashes": sorted(self.record_hashes)}, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> ErasureManifest:
        try:
            obj = json.loads(data)
        except json.JSONDecodeError as exc:
            raise LineageError(f"erasure manifest is not JSON: {exc}") from None
        if not isinstance(obj, dict) or obj.get("schema") != SCHEMA:
            raise LineageError(f"erasure manifest has no {SCHEMA!r} schema marker")
        hashes = obj.get("record_hashes")
        if not isinstance(hashes, list) or not all(isinstance(h, str) for h in hashes):
            raise LineageError("erasure manifest's record_hashes must be a list of strings")
        return cls(frozenset(hashes))


@dataclass(frozen=True)
class ForgetPlan:
    """What one batch must do to a source model so that the result carries none of the erased records.

    ``absent`` are training records the source already lacks (dropped from the retain set, not forgotten
    again); ``forget`` are the batch's accepted records plus every earlier erasure the source still carries.
    """

    forget: tuple[str, ...]
    absent: frozenset[str]
    carried_over: tuple[str, ...]
    manifest_after: ErasureManifest


def plan_forget(
    train_ids: Iterable[str],
    accepted: Iterable[str],
    erased_before: Iterable[str],
    source: ErasureManifest,
    hash_id: Callable[[str], str],
) -> ForgetPlan:
    """Split the training IDs into absent-from-source, to-forget and retain (the rest).

    ``hash_id`` is the audit key's hasher. Raises :class:`LineageError` when an accepted record is already
    absent from the source (it would be "forgotten" twice) or is not a training record.
    """
    train = list(dict.fromkeys(train_ids))
    known = set(train)
    accepted_ids = list(dict.fromkeys(accepted))
    unknown = [r for r in accepted_ids if r not in known]
    if unknown:
        raise LineageError(f"{len(unknown)} accepted record(s) are not in the training set")
    hashes = {r: hash_id(r) for r in train}
    absent = frozenset(r for r in train if hashes[r] in source)
    twice = [r for r in accepted_ids if r in absent]
    if twice:
        raise LineageError(f"{len(twice)} accepted record(s) are already absent from the source model")
    accepted_set = set(accepted_ids)
    carried = tuple(sorted(set(erased_before) & known - absent - accepted_set))
    forget = tuple(accepted_ids) + carried
    return ForgetPlan(
        forget=forget,
        absent=absent,
        carried_over=carried,
        manifest_after=source.union(hashes[r] for r in forget),
    )
