"""Reference-bank storage (:mod:`hamu.train.bank`) on real, tiny digits MLPs.

The plan (its ID and membership), what a member is trained on, the written bank's round trip and every
refusal of :func:`load_bank`, the atomic write (a failure leaves nothing in use and an older bank intact),
and the refresh of the members a row lacks, checked against membership matrices computed here by hand.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pytest

from hamu.data.digest import dataset_digest, order_digest
from hamu.models import model_digest
from hamu.train import Recipe, TrainedModel
from hamu.train.bank import (
    BANK_FILE,
    MEMBERSHIP_FILE,
    Bank,
    BankError,
    BankIntegrityError,
    BankMismatchError,
    BankPlan,
    load_bank,
    members_to_refresh,
    read_bank_file,
    refresh_bank,
    train_member,
    write_bank,
)
from hamu.train.trainer import sized_train_test

N_MODELS = 4
RECIPE = Recipe(model="mlp", model_config={"hidden": [16]}, epochs=2, batch_size=64, lr=1e-2).to_dict()


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def train(single_thread: None) -> Any:
    data, _ = sized_train_test("digits", 120, 20)
    return data


@pytest.fixture(scope="module")
def plan(train: Any) -> BankPlan:
    return BankPlan(
        dataset_digest(train), RECIPE, len(train), N_MODELS, seed=3, manifest_order=order_digest(train)
    )


@pytest.fixture(scope="module")
def members(train: Any, plan: BankPlan) -> list[TrainedModel]:
    return [train_member(train, plan, k) for k in range(plan.n_models)]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, plan: BankPlan, members: list[TrainedModel]) -> Path:
    """The bank as written once; tests that change files work on a copy (:func:`_copy`)."""
    folder = tmp_path_factory.mktemp("pristine") / "bank"
    write_bank(folder, plan, members, train_seconds=12.5)
    return folder


def _copy(pristine: Path, parent: Path) -> Path:
    folder = parent / "bank"
    shutil.copytree(pristine, folder)
    return folder


def _load(folder: Path, plan: BankPlan) -> Bank:
    return load_bank(
        folder, manifest_digest=plan.manifest_digest, manifest_order=plan.manifest_order, recipe=RECIPE
    )


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith((".bank-", ".old-")))


# -------------------------------------------------------------------------------------------------- plan
def test_bank_id_is_deterministic_and_binds_every_part_of_the_plan(plan: BankPlan) -> None:
    same = BankPlan(
        plan.manifest_digest, dict(RECIPE), plan.n_rows, plan.n_models, plan.seed, plan.manifest_order
    )
    assert same.bank_id == plan.bank_id and len(plan.bank_id) == 16
    variants = {
        "manifest": dataclasses.replace(plan, manifest_digest="0" * 64),
        "recipe": dataclasses.replace(plan, recipe={**RECIPE, "lr": 2e-2}),
        "n_models": dataclasses.replace(plan, n_models=plan.n_models + 2),
        "seed": dataclasses.replace(plan, seed=plan.seed + 1),
        "order": dataclasses.replace(plan, manifest_order="0" * 64),
        "n_rows": dataclasses.replace(plan, n_rows=plan.n_rows - 1),
    }
    ids = {name: p.bank_id for name, p in variants.items()}
    assert plan.bank_id not in ids.values(), ids
    assert len(set(ids.values())) == len(ids), ids
    assert plan.to_dict()["bank_id"] == plan.bank_id


@pytest.mark.parametrize("n_models", [0, 1, 3, 5, -2])
def test_odd_or_too_few_models_are_refused(n_models: int) -> None:
    with pytest.raises(BankError, match="even number"):
        BankPlan("m" * 64, RECIPE, 100, n_models)


def test_a_manifest_of_one_row_is_refused() -> None:
    with pytest.raises(BankError, match="at least 2 rows"):
        BankPlan("m" * 64, RECIPE, 1, 2)


@pytest.mark.parametrize("n_models", [2, 4, 8])
def test_every_row_is_in_for_exactly_half_the_members(plan: BankPlan, n_models: int) -> None:
    p = dataclasses.replace(plan, n_models=n_models)
    membership = p.membership()
    assert membership.dtype == np.bool_ and membership.shape == (n_models, p.n_rows)
    assert (membership.sum(axis=0) == n_models // 2).all()
    assert np.array_equal(membership, p.membership()), "the membership is a function of the seed"
    assert not np.array_equal(membership, dataclasses.replace(p, seed=p.seed + 1).membership())


# ------------------------------------------------------------------------------------------------ members
def test_a_member_trains_on_exactly_its_rows(train: Any, plan: BankPlan, members: list[TrainedModel]) -> None:
    membership = plan.membership()
    digests = set()
    for k, member in enumerate(members):
        rows = np.flatnonzero(membership[k])
        assert member.metadata["data_size"] == rows.size
        assert member.metadata["data_digest"] == dataset_digest(train.select(rows.tolist()))
        assert member.metadata["bank_id"] == plan.bank_id and member.metadata["bank_member"] == k
        assert member.metadata["recipe"]["seed"] == plan.seed * 1000 + k + 1
        assert {key: v for key, v in member.metadata["recipe"].items() if key != "seed"} == {
            key: v for key, v in RECIPE.items() if key != "seed"
        }
        digests.add(member.metadata["data_digest"])
    assert len(digests) == plan.n_models
    assert dataset_digest(train) not in digests


def test_a_member_of_another_manifest_or_outside_the_bank_is_refused(train: Any, plan: BankPlan) -> None:
    with pytest.raises(BankMismatchError, match="rows"):
        train_member(train.select(range(len(train) - 1)), plan, 0)
    _, test = sized_train_test("digits", 120, 20)
    other = datasets.concatenate_datasets([train.select(range(len(train) - 1)), test.select([0])])
    with pytest.raises(BankMismatchError, match="not the one the bank plan was made for"):
        train_member(other, plan, 0)  # the same size, one row another
    reordered = train.select([*range(1, len(train)), 0])  # the same rows, every position shifted
    with pytest.raises(BankMismatchError, match="another order"):
        train_member(reordered, plan, 0)
    for k in (-1, plan.n_models):
        with pytest.raises(BankError, match="outside"):
            train_member(train, plan, k)


# ------------------------------------------------------------------------------------------- round trip
def test_write_then_load_round_trips(pristine: Path, plan: BankPlan, members: list[TrainedModel]) -> None:
    bank = _load(pristine, plan)
    assert bank.plan.bank_id == plan.bank_id
    assert np.array_equal(bank.membership, plan.membership())
    assert np.array_equal(bank.out_mask, ~plan.membership())
    assert [model_digest(m.model) for m in bank.members] == [model_digest(m.model) for m in members]
    assert [m.metadata["bank_member"] for m in bank.members] == list(range(plan.n_models))
    assert bank.train_seconds == pytest.approx(12.5) and bank.refreshed == ()
    body = read_bank_file(pristine)
    assert body["plan"]["bank_id"] == plan.bank_id
    assert [e["rows"] for e in body["members"]] == plan.membership().sum(axis=1).tolist()
    assert sorted(p.name for p in pristine.iterdir()) == sorted(
        [BANK_FILE, MEMBERSHIP_FILE, *(f"member-{k}.safetensors" for k in range(plan.n_models))]
    )


# ---------------------------------------------------------------------------------------------- refusals
def test_load_refuses_another_manifest_or_recipe(pristine: Path, plan: BankPlan) -> None:
    order = plan.manifest_order
    with pytest.raises(BankMismatchError, match="another training manifest"):
        load_bank(pristine, manifest_digest="f" * 64, manifest_order=order, recipe=RECIPE)
    # another manifest has another order too: the message still names the manifest, not the order
    with pytest.raises(BankMismatchError, match="another training manifest"):
        load_bank(pristine, manifest_digest="f" * 64, manifest_order="0" * 64, recipe=RECIPE)
    with pytest.raises(BankMismatchError, match="another recipe"):
        load_bank(
            pristine,
            manifest_digest=plan.manifest_digest,
            manifest_order=order,
            recipe={**RECIPE, "epochs": 3},
        )


def test_load_refuses_the_manifest_in_another_order(pristine: Path, plan: BankPlan, tmp_path: Path) -> None:
    """The same rows reordered share the manifest digest; membership is by position, so the order binds."""
    assert plan.manifest_order is not None
    bank = load_bank(
        pristine, manifest_digest=plan.manifest_digest, recipe=RECIPE, manifest_order=plan.manifest_order
    )
    assert bank.plan.bank_id == plan.bank_id
    with pytest.raises(BankMismatchError, match="another order"):
        load_bank(pristine, manifest_digest=plan.manifest_digest, manifest_order="0" * 64, recipe=RECIPE)
    folder = _copy(pristine, tmp_path)  # a bank.json from before the order was recorded
    body = json.loads((folder / BANK_FILE).read_text())
    del body["plan"]["manifest_order"]
    (folder / BANK_FILE).write_text(json.dumps(body))
    with pytest.raises(BankMismatchError, match="predates the order binding"):
        load_bank(
            folder, manifest_digest=plan.manifest_digest, recipe=RECIPE, manifest_order=plan.manifest_order
        )


def test_load_refuses_a_member_with_one_byte_changed(pristine: Path, plan: BankPlan, tmp_path: Path) -> None:
    folder = _copy(pristine, tmp_path)
    path = folder / "member-2.safetensors"
    raw = bytearray(path.read_bytes())
    raw[len(raw) - 7] ^= 0x01  # in the tensor data, past the header
    path.write_bytes(bytes(raw))
    with pytest.raises(BankIntegrityError, match=r"member-2\.safetensors"):
        _load(folder, plan)


def test_load_refuses_a_deleted_member(pristine: Path, plan: BankPlan, tmp_path: Path) -> None:
    folder = _copy(pristine, tmp_path)
    (folder / "member-1.safetensors").unlink()
    with pytest.raises(BankIntegrityError, match="missing"):
        _load(folder, plan)


def test_load_refuses_a_changed_membership(pristine: Path, plan: BankPlan, tmp_path: Path) -> None:
    folder = _copy(pristine, tmp_path)
    membership = plan.membership()
    changed = membership.copy()
    changed[0, int(np.flatnonzero(~membership[0])[0])] = True  # member 0 now claims a row it never saw
    np.save(folder / MEMBERSHIP_FILE, np.packbits(changed, axis=1))
    with pytest.raises(BankIntegrityError, match=MEMBERSHIP_FILE):
        _load(folder, plan)


def test_load_refuses_a_membership_outside_its_plan_even_with_a_matching_digest(
    pristine: Path, plan: BankPlan, tmp_path: Path
) -> None:
    """A membership rewritten together with its recorded digest still must be the plan's (less rows)."""
    folder = _copy(pristine, tmp_path)
    membership = plan.membership()
    changed = membership.copy()
    changed[0, int(np.flatnonzero(~membership[0])[0])] = True
    np.save(folder / MEMBERSHIP_FILE, np.packbits(changed, axis=1))
    body = json.loads((folder / BANK_FILE).read_text())
    body["membership"]["sha256"] = hashlib.sha256((folder / MEMBERSHIP_FILE).read_bytes()).hexdigest()
    (folder / BANK_FILE).write_text(json.dumps(body))
    with pytest.raises(BankIntegrityError, match="not its plan's"):
        _load(folder, plan)


@pytest.mark.parametrize("damage", ["no-schema", "other-schema", "not-json", "missing"])
def test_load_refuses_a_bank_file_without_the_schema(
    pristine: Path, plan: BankPlan, tmp_path: Path, damage: str
) -> None:
    folder = _copy(pristine, tmp_path)
    path = folder / BANK_FILE
    body = json.loads(path.read_text())
    if damage == "no-schema":
        del body["schema"]
        path.write_text(json.dumps(body))
    elif damage == "other-schema":
        path.write_text(json.dumps({**body, "schema": "hamu.bank/0"}))
    elif damage == "not-json":
        path.write_text(path.read_text()[:-20])
    else:
        path.unlink()
    with pytest.raises(BankIntegrityError):
        _load(folder, plan)


# ----------------------------------------------------------------------------------------- atomic write
def _with_wrong_bank_id(members: list[TrainedModel], k: int) -> list[TrainedModel]:
    bad = list(members)
    bad[k] = dataclasses.replace(members[k], metadata={**members[k].metadata, "bank_id": "0123456789abcdef"})
    return bad


def test_a_failed_write_leaves_no_bank_and_no_staging(
    plan: BankPlan, members: list[TrainedModel], tmp_path: Path
) -> None:
    folder = tmp_path / "lineage" / "bank"
    # the last member is wrong: the first three are already saved in the staging folder when it fails
    with pytest.raises(BankError, match="member 3 was not trained for bank"):
        write_bank(folder, plan, _with_wrong_bank_id(members, plan.n_models - 1), train_seconds=1.0)
    assert not folder.exists()
    assert _leftovers(folder.parent) == []
    assert list(folder.parent.iterdir()) == []


def test_a_member_of_another_index_is_refused(
    plan: BankPlan, members: list[TrainedModel], tmp_path: Path
) -> None:
    swapped = [members[1], members[0], *members[2:]]
    with pytest.raises(BankError, match="member 0 was not trained for bank"):
        write_bank(tmp_path / "bank", plan, swapped, train_seconds=1.0)
    assert not (tmp_path / "bank").exists() and _leftovers(tmp_path) == []
    with pytest.raises(BankError, match="needs as many members"):
        write_bank(tmp_path / "bank", plan, members[:-1], train_seconds=1.0)


def test_a_failed_write_keeps_the_older_bank(
    pristine: Path, plan: BankPlan, members: list[TrainedModel], tmp_path: Path
) -> None:
    folder = _copy(pristine, tmp_path)
    before = _files(folder)
    with pytest.raises(BankError):
        write_bank(folder, plan, _with_wrong_bank_id(members, 1), train_seconds=99.0)
    assert _files(folder) == before
    assert _leftovers(tmp_path) == []
    bank = _load(folder, plan)
    assert [model_digest(m.model) for m in bank.members] == [model_digest(m.model) for m in members]
    assert bank.train_seconds == pytest.approx(12.5)


def test_a_successful_write_replaces_the_older_bank(
    pristine: Path, plan: BankPlan, members: list[TrainedModel], tmp_path: Path
) -> None:
    folder = _copy(pristine, tmp_path)
    write_bank(folder, plan, members, train_seconds=7.0)
    assert _leftovers(tmp_path) == []
    assert _load(folder, plan).train_seconds == pytest.approx(7.0)


# -------------------------------------------------------------------------------------------- refreshing
def _refreshed_membership(membership: np.ndarray, chosen: list[int], rows: np.ndarray) -> np.ndarray:
    out = membership.copy()
    for k in chosen:
        out[k, rows] = False
    return out


def test_nothing_to_refresh_while_every_row_has_enough_out_members(pristine: Path, plan: BankPlan) -> None:
    bank = _load(pristine, plan)
    rows = np.arange(0, plan.n_rows, 3)
    for min_out in range(1, plan.n_models // 2 + 1):
        chosen, short = members_to_refresh(bank, rows, min_out)
        assert chosen == [] and short.size == 0, (min_out, chosen, short)


@pytest.mark.parametrize("extra", [1, 2])
def test_refreshing_the_chosen_members_gives_every_row_enough_out_members(
    pristine: Path, plan: BankPlan, extra: int
) -> None:
    bank = _load(pristine, plan)
    rows = np.array([0, 5, 17, 40, 41, 99, 118])
    min_out = plan.n_models // 2 + extra
    chosen, short = members_to_refresh(bank, rows, min_out)
    # every row has exactly K/2 OUT members, so every row is short
    assert np.array_equal(np.sort(short), np.sort(rows))
    assert chosen == sorted(set(chosen)) and all(0 <= k < plan.n_models for k in chosen)
    after = _refreshed_membership(bank.membership, chosen, short)
    out_counts = (~after[:, rows]).sum(axis=0)
    assert (out_counts >= min_out).all(), out_counts
    # rows outside the batch are untouched
    others = np.setdiff1d(np.arange(plan.n_rows), rows)
    assert np.array_equal(after[:, others], bank.membership[:, others])


@pytest.mark.parametrize("min_out", [0, N_MODELS + 1])
def test_an_impossible_min_out_is_refused(pristine: Path, plan: BankPlan, min_out: int) -> None:
    with pytest.raises(BankError, match="min_out"):
        members_to_refresh(_load(pristine, plan), np.arange(5), min_out)


def test_refresh_retrains_only_the_chosen_members_and_is_recorded(
    pristine: Path, plan: BankPlan, train: Any, tmp_path: Path
) -> None:
    folder = _copy(pristine, tmp_path)
    bank = _load(folder, plan)
    rows = np.array([2, 3, 60, 77])
    chosen, short = members_to_refresh(bank, rows, plan.n_models // 2 + 1)
    assert chosen and len(chosen) < plan.n_models
    expected = _refreshed_membership(bank.membership, chosen, short)
    before = [model_digest(m.model) for m in bank.members]

    new, note = refresh_bank(bank, train, short, chosen)

    assert np.array_equal(new.membership, expected)
    after = [model_digest(m.model) for m in new.members]
    for k in range(plan.n_models):
        if k in chosen:
            assert after[k] != before[k], f"member {k} was chosen but not retrained"
            kept = np.flatnonzero(expected[k])
            assert new.members[k].metadata["data_size"] == kept.size
            assert new.members[k].metadata["data_digest"] == dataset_digest(train.select(kept.tolist()))
            assert not expected[k, short].any()
        else:
            assert after[k] == before[k], f"member {k} was not chosen but changed"
    assert note["members"] == chosen and note["rows_dropped"] == short.size
    body = read_bank_file(folder)
    assert body["refreshed"] == [note]
    assert [e["rows"] for e in body["members"]] == expected.sum(axis=1).tolist()
    assert _leftovers(tmp_path) == []

    loaded = _load(folder, plan)
    assert np.array_equal(loaded.membership, expected)
    assert [model_digest(m.model) for m in loaded.members] == after
    assert loaded.refreshed == (note,)
    # the guarantee holds on the bank as stored: nothing is short any more
    assert members_to_refresh(loaded, rows, plan.n_models // 2 + 1)[0] == []
