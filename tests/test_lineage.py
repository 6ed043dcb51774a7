"""plan_forget against a brute-force set-algebra oracle, over many random inputs and batch sequences.

The oracle works on raw IDs and recomputes every set from scratch with a real keyed hasher, so a plan that
drops a carried-over erasure, forgets an absent record twice or leaves a manifest short is caught.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

from hamu.governance.audit import KeyedHasher
from hamu.governance.lineage import SCHEMA, ErasureManifest, ForgetPlan, LineageError, plan_forget

HASH = KeyedHasher(b"k" * 32).hash


def _ids(rng: np.random.Generator, pool: list[str], k: int) -> list[str]:
    """``k`` distinct IDs from ``pool`` in random order."""
    k = min(k, len(pool))
    return [pool[i] for i in rng.choice(len(pool), size=k, replace=False)] if k else []


@dataclass(frozen=True)
class Oracle:
    absent: frozenset[str]
    accepted: tuple[str, ...]
    carried: frozenset[str]
    retain: frozenset[str]
    manifest_after: frozenset[str]


def oracle(train: list[str], accepted: list[str], erased_before: list[str], source: frozenset[str]) -> Oracle:
    """Plain set algebra over raw IDs; the only shared ingredient is the keyed hash."""
    train_set = set(train)
    absent = {r for r in train_set if HASH(r) in source}
    acc: list[str] = []
    for r in accepted:
        if r not in acc:
            acc.append(r)
    carried = (set(erased_before) & train_set) - absent - set(acc)
    forget = set(acc) | carried
    retain = train_set - absent - forget
    return Oracle(
        absent=frozenset(absent),
        accepted=tuple(acc),
        carried=frozenset(carried),
        retain=frozenset(retain),
        manifest_after=frozenset(source | {HASH(r) for r in forget}),
    )


def _check_against_oracle(plan: ForgetPlan, expected: Oracle, train: list[str]) -> None:
    n_acc = len(expected.accepted)
    assert plan.forget[:n_acc] == expected.accepted, "accepted records come first, in request order"
    assert plan.carried_over == plan.forget[n_acc:]
    assert set(plan.carried_over) == expected.carried
    assert len(set(plan.forget)) == len(plan.forget), "a record is forgotten once"
    assert plan.absent == expected.absent
    retain = set(train) - plan.absent - set(plan.forget)
    assert retain == expected.retain
    assert retain.isdisjoint(plan.forget) and plan.absent.isdisjoint(plan.forget)
    assert plan.manifest_after.record_hashes == expected.manifest_after


@pytest.mark.parametrize("seed", range(40))
def test_plan_matches_oracle_on_random_inputs(seed: int) -> None:
    """Random train set, source manifest (with foreign hashes), accepted (with duplicates), earlier erasures
    (absent, accepted, pending and non-training records mixed)."""
    rng = np.random.default_rng(seed)
    universe = [f"rec-{i:05d}" for i in range(int(rng.integers(5, 120)))]
    train = _ids(rng, universe, int(rng.integers(1, len(universe) + 1)))
    outside = [r for r in universe if r not in set(train)]
    absent_ids = _ids(rng, train, int(rng.integers(0, len(train) + 1)))
    foreign = [HASH(r) for r in _ids(rng, outside, int(rng.integers(0, 4)))] + ["hmac-sha256:not-a-record"]
    source = frozenset([HASH(r) for r in absent_ids] + foreign)
    present = [r for r in train if r not in set(absent_ids)]
    accepted = _ids(rng, present, int(rng.integers(0, len(present) + 1)))
    if accepted and rng.random() < 0.5:
        accepted = [*accepted, accepted[int(rng.integers(len(accepted)))]]  # a repeated request
    erased_before = (
        _ids(rng, absent_ids, int(rng.integers(0, len(absent_ids) + 1)))
        + _ids(rng, present, int(rng.integers(0, len(present) + 1)))
        + _ids(rng, outside, int(rng.integers(0, len(outside) + 1)))
    )
    erased_before += erased_before[:2]  # duplicates too

    plan = plan_forget(train, accepted, erased_before, ErasureManifest(source), HASH)

    expected = oracle(train, accepted, erased_before, source)
    _check_against_oracle(plan, expected, train)
    # the plan itself is deterministic in its inputs' sets
    again = plan_forget(train, accepted, list(reversed(erased_before)), ErasureManifest(source), HASH)
    assert again.forget == plan.forget and again.manifest_after == plan.manifest_after


@pytest.mark.parametrize("seed", range(25))
def test_unpromoted_candidates_never_lose_erasures(seed: int) -> None:
    """3-5 batches from the champion; candidates are promoted at random. Every candidate's manifest must
    cover every record erased so far, and its retain set must hold none of them."""
    rng = np.random.default_rng(1000 + seed)
    train = [f"rec-{i:04d}" for i in range(int(rng.integers(20, 80)))]
    champion = ErasureManifest()  # the original model
    champion_erased: set[str] = set()
    erased: list[str] = []  # every record accepted by any batch so far, promoted or not
    for _ in range(int(rng.integers(3, 6))):
        pending = [r for r in train if r not in set(erased)]
        accepted = _ids(rng, pending, int(rng.integers(1, 6)))
        plan = plan_forget(train, accepted, erased, champion, HASH)
        _check_against_oracle(plan, oracle(train, accepted, erased, champion.record_hashes), train)
        assert plan.absent == frozenset(champion_erased), "absent = erased when the champion was made"

        erased += accepted
        assert plan.manifest_after.missing(HASH(r) for r in erased) == frozenset()
        retain = set(train) - plan.absent - set(plan.forget)
        assert retain.isdisjoint(erased)
        # an erased record the champion still carries is in this batch's forget set
        assert {r for r in erased if HASH(r) not in champion} <= set(plan.forget)

        if rng.random() < 0.4:  # promoted: the candidate becomes the next source
            champion, champion_erased = plan.manifest_after, set(erased)
        else:  # not promoted: the next batch starts again from the old champion
            assert champion.missing(HASH(r) for r in accepted) == {HASH(r) for r in accepted}

    final = plan
    assert len(final.manifest_after) == len(set(erased))
    assert final.manifest_after.record_hashes == frozenset(HASH(r) for r in erased)


def test_never_promoted_chain_carries_everything() -> None:
    """With the original as champion throughout, batch k forgets all k batches' records."""
    train = [f"r{i}" for i in range(30)]
    batches = [["r3", "r1"], ["r7"], ["r2", "r9", "r4"], ["r20"]]
    erased: list[str] = []
    for accepted in batches:
        plan = plan_forget(train, accepted, erased, ErasureManifest(), HASH)
        assert plan.forget[: len(accepted)] == tuple(accepted)
        assert set(plan.carried_over) == set(erased)
        erased += accepted
        assert set(plan.forget) == set(erased) and plan.absent == frozenset()


def test_accepted_record_not_in_training_set_is_refused() -> None:
    with pytest.raises(LineageError, match="not in the training set"):
        plan_forget(["a", "b"], ["a", "zzz"], [], ErasureManifest(), HASH)


def test_accepted_record_already_absent_is_refused() -> None:
    source = ErasureManifest(frozenset({HASH("b")}))
    with pytest.raises(LineageError, match="already absent"):
        plan_forget(["a", "b", "c"], ["c", "b"], ["b"], source, HASH)


@pytest.mark.parametrize("seed", range(10))
def test_random_refusals(seed: int) -> None:
    """Any accepted batch containing an absent or unknown record is refused as a whole."""
    rng = np.random.default_rng(seed)
    train = [f"t{i}" for i in range(20)]
    absent = _ids(rng, train, 5)
    source = ErasureManifest(frozenset(HASH(r) for r in absent))
    present = [r for r in train if r not in absent]
    good = _ids(rng, present, 3)
    with pytest.raises(LineageError):
        plan_forget(train, [*good, absent[int(rng.integers(5))]], [], source, HASH)
    with pytest.raises(LineageError):
        plan_forget(train, [*good, f"x{seed}"], [], source, HASH)
    assert plan_forget(train, good, [], source, HASH).forget == tuple(good)


# -- ErasureManifest ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_manifest_json_round_trip(seed: int) -> None:
    rng = np.random.default_rng(seed)
    manifest = ErasureManifest(frozenset(HASH(f"r{i}") for i in rng.choice(500, 30, replace=False)))
    data = manifest.to_json()
    assert ErasureManifest.from_json(data) == manifest
    assert ErasureManifest.from_json(data.decode()) == manifest
    assert json.loads(data)["schema"] == SCHEMA
    assert ErasureManifest.from_json(ErasureManifest().to_json()) == ErasureManifest()


def test_digest_is_order_independent_and_discriminating() -> None:
    hashes = [HASH(f"r{i}") for i in range(10)]
    a = ErasureManifest(frozenset(hashes))
    b = ErasureManifest().union(reversed(hashes))
    assert a.digest() == b.digest()
    assert ErasureManifest(frozenset(hashes[:9])).digest() != a.digest()
    assert ErasureManifest(frozenset([*hashes[:9], HASH("other")])).digest() != a.digest()
    assert ErasureManifest().digest() != a.digest()
    # a record boundary cannot be moved without changing the digest
    assert (
        ErasureManifest(frozenset({"ab", "c"})).digest() != ErasureManifest(frozenset({"a", "bc"})).digest()
    )


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"",
        b"[]",
        json.dumps({"record_hashes": []}),
        json.dumps({"schema": "hamu.erasures/0", "record_hashes": []}),
        json.dumps({"schema": SCHEMA, "record_hashes": "abc"}),
        json.dumps({"schema": SCHEMA, "record_hashes": ["a", 1]}),
        json.dumps({"schema": SCHEMA, "record_hashes": [None]}),
        json.dumps({"schema": SCHEMA}),
    ],
)
def test_from_json_rejects_bad_manifests(data: bytes | str) -> None:
    with pytest.raises(LineageError):
        ErasureManifest.from_json(data)


def test_missing_and_membership() -> None:
    manifest = ErasureManifest(frozenset({HASH("a"), HASH("b")}))
    assert manifest.missing([HASH("a"), HASH("c"), HASH("c")]) == frozenset({HASH("c")})
    assert manifest.missing([]) == frozenset()
    assert manifest.missing([HASH("b")]) == frozenset()
    assert HASH("a") in manifest and HASH("c") not in manifest and "a" not in manifest
    assert len(manifest.union([HASH("a"), HASH("d")])) == 3
