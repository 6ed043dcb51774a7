"""A reference bank: K models trained once with the served model's own recipe, each on a seeded half of the
training manifest, then reused by every later deletion batch as the models that never saw a row.

Why: certifying an unlearned model against an exact retrain costs one full retrain per batch, the very cost
unlearning exists to avoid. A bank is paid once per lineage (manifest and recipe). Every row of the manifest
is OUT of exactly half the bank (:func:`hamu.evaluation.bank.assign_membership`), so any forget set, including
rows erased long after the bank was trained, has K/2 models that never trained on each of its rows: the
per-example LiRA evidence of :mod:`hamu.evaluation.bank` reads only those.

A bank is written to a private temporary folder and moved into place in one rename, so a crash while
training leaves no half-bank where a batch could find it. Its ``bank.json`` binds the manifest digest, the
recipe, the membership matrix and every member's checkpoint by SHA-256; :func:`load_bank` refuses a bank of
another manifest or recipe (:class:`BankMismatchError`) and a changed file (:class:`BankIntegrityError`).

Bank members are evidence, never served. Like the original's registered version, those that trained on a
since-erased row still carry it; they are kept under ``HAMU_HOME`` with the same access as the checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from hamu.data.digest import dataset_digest, order_digest
from hamu.evaluation.bank import assign_membership
from hamu.models import load_checkpoint
from hamu.plugins import PluginImportError
from hamu.train.recipe import Recipe, plugin_code_digests
from hamu.train.trainer import TrainedModel, featurizer_from_metadata, train_model

SCHEMA = "hamu.bank/1"
BANK_FILE = "bank.json"
MEMBERSHIP_FILE = "membership.npy"
TEST_STATISTICS_FILE = "test-statistics.npz"
#: The default bank size: each member trains on half the manifest, so 8 members cost about 4 retrains.
DEFAULT_BANK_MODELS = 8


class BankError(ValueError):
    """A reference bank cannot be used."""


class BankMismatchError(BankError):
    """The bank was trained on another manifest or with another recipe: its members are no evidence here."""


class BankIntegrityError(BankError):
    """A bank file does not match the digest its ``bank.json`` recorded (changed or truncated)."""


def recipe_digest(recipe: Mapping[str, Any]) -> str:
    """SHA-256 of a recipe's canonical JSON: members must be trained the way the served model was."""
    return hashlib.sha256(json.dumps(dict(recipe), sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class BankPlan:
    """What a bank is: which manifest, which recipe, how many members, which seed. Its ID is their digest.

    ``manifest_order`` (:func:`hamu.data.digest.order_digest`) binds the manifest's row order: membership is
    by position, and the manifest digest names a set, which a reordered manifest shares.
    """

    manifest_digest: str
    recipe: Mapping[str, Any]
    n_rows: int
    n_models: int = DEFAULT_BANK_MODELS
    seed: int = 0
    manifest_order: str | None = None

    def __post_init__(self) -> None:
        if self.n_models < 2 or self.n_models % 2:
            raise BankError(f"a bank needs an even number (>= 2) of models, got {self.n_models}")
        if self.n_rows < 2:
            raise BankError(f"a bank needs a manifest of at least 2 rows, got {self.n_rows}")

    @cached_property
    def plugin_code(self) -> dict[str, str]:
        """SHA-256 of the source behind each plugin the recipe names: members trained with other code under
        the same names are no evidence (empty for a recipe without plugins)."""
        return plugin_code_digests(self.recipe)

    def _bindings(self) -> dict[str, Any]:
        """The optional bindings, in the ID and in ``bank.json`` alike: each is absent when unset, so a bank
        of a plugin-free recipe keeps the ID it had before plugin code was bound."""
        bindings: dict[str, Any] = {}
        if self.plugin_code:
            bindings["plugin_code"] = self.plugin_code
        if self.manifest_order is not None:
            bindings["manifest_order"] = self.manifest_order
        return bindings

    @property
    def bank_id(self) -> str:
        body: dict[str, Any] = {
            "manifest": self.manifest_digest,
            "recipe": recipe_digest(self.recipe),
            "n_rows": self.n_rows,
            "n_models": self.n_models,
            "seed": self.seed,
        } | self._bindings()
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

    def membership(self) -> np.ndarray:
        """``(n_models, n_rows)`` bool: True where the member trains on the manifest's row."""
        return assign_membership(self.n_rows, self.n_models, self.seed)

    def member_recipe(self, k: int) -> Recipe:
        """The served recipe with member ``k``'s own seed (its initialisation and batch order)."""
        return Recipe.from_dict(dict(self.recipe)).with_options(seed=self.seed * 1000 + k + 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "manifest_digest": self.manifest_digest,
            "recipe": dict(self.recipe),
            "recipe_digest": recipe_digest(self.recipe),
            "n_rows": self.n_rows,
            "n_models": self.n_models,
            "seed": self.seed,
            "bank_id": self.bank_id,
        } | self._bindings()


def train_member(
    train: Any, plan: BankPlan, k: int, *, rows: np.ndarray | None = None, progress: bool = False
) -> TrainedModel:
    """Member ``k``: the served recipe on its half of the manifest (``rows``, default the plan's, in manifest
    order)."""
    if not 0 <= k < plan.n_models:
        raise BankError(f"member {k} is outside a bank of {plan.n_models}")
    if len(train) != plan.n_rows:
        raise BankMismatchError(
            f"the manifest has {len(train)} rows; the bank plan was made for {plan.n_rows}"
        )
    # Same size is not same data, and same data is not same positions: a member's subset is positions.
    if dataset_digest(train) != plan.manifest_digest:
        raise BankMismatchError("the manifest given is not the one the bank plan was made for (other rows)")
    if plan.manifest_order is not None and order_digest(train) != plan.manifest_order:
        raise BankMismatchError(
            "the manifest given has the plan's rows in another order: a member's rows are positions"
        )
    rows = np.flatnonzero(plan.membership()[k]) if rows is None else np.asarray(rows, dtype=np.int64)
    return train_model(
        train.select(rows.tolist()),
        plan.member_recipe(k),
        role=f"bank-member-{k}",
        progress=progress,
        extra_metadata={"bank_id": plan.bank_id, "bank_member": k},
    )


@dataclass(frozen=True)
class TestStatistics:
    """The members' φ and loss on the workload's test rows, ``(members, rows)``: the same in every batch
    (test rows are in no member's training set), so computed once and kept with the bank."""

    test_digest: str
    phi: np.ndarray
    loss: np.ndarray
    correct: np.ndarray


@dataclass(frozen=True)
class Bank:
    """A loaded, verified bank: its plan, membership, members and the seconds it took to train."""

    plan: BankPlan
    membership: np.ndarray
    members: Sequence[TrainedModel]
    train_seconds: float
    folder: Path
    refreshed: tuple[dict[str, Any], ...] = ()
    test_statistics: TestStatistics | None = None

    @property
    def out_mask(self) -> np.ndarray:
        """``(n_models, n_rows)`` bool: True where the member never trained on the row."""
        return ~self.membership


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_bank(
    folder: Path,
    plan: BankPlan,
    members: Sequence[TrainedModel],
    *,
    train_seconds: float,
    membership: np.ndarray | None = None,
    refreshed: Sequence[Mapping[str, Any]] = (),
) -> Path:
    """Write the bank to ``folder`` atomically: into a sibling temporary folder, then one rename.

    ``membership`` is the plan's unless members were refreshed (:func:`refresh_bank`); ``refreshed`` lists
    those refreshes. An older bank at ``folder`` is replaced only once the new one is complete.
    """
    if len(members) != plan.n_models:
        raise BankError(f"a bank of {plan.n_models} needs as many members, got {len(members)}")
    membership = plan.membership() if membership is None else membership
    _check_membership(plan, membership, folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bank-", dir=folder.parent))
    try:
        np.save(staging / MEMBERSHIP_FILE, np.packbits(membership, axis=1))
        entries = []
        for k, member in enumerate(members):
            if member.metadata.get("bank_id") != plan.bank_id or member.metadata.get("bank_member") != k:
                raise BankError(f"member {k} was not trained for bank {plan.bank_id}")
            if member.metadata.get("plugin_code", {}) != plan.plugin_code:
                raise BankError(f"member {k} was trained with other code under the recipe's plugin names")
            path = member.save(staging / f"member-{k}.safetensors")
            entries.append(
                {"member": k, "file": path.name, "sha256": _sha256(path), "rows": int(membership[k].sum())}
            )
        body = {
            "schema": SCHEMA,
            "plan": plan.to_dict(),
            "membership": {"file": MEMBERSHIP_FILE, "sha256": _sha256(staging / MEMBERSHIP_FILE)},
            "members": entries,
            "train_seconds": round(float(train_seconds), 3),
            "refreshed": [dict(r) for r in refreshed],
        }
        (staging / BANK_FILE).write_text(json.dumps(body, indent=1, sort_keys=True))
        old = None
        if folder.exists():
            old = folder.with_name(f".old-{folder.name}-{os.getpid()}")
            os.replace(folder, old)
        os.replace(staging, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def read_bank_file(folder: Path) -> dict[str, Any]:
    """The bank's ``bank.json``, checked for its schema."""
    path = folder / BANK_FILE
    try:
        body = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BankIntegrityError(f"cannot read the bank's {path}: {exc}") from exc
    if not isinstance(body, dict) or body.get("schema") != SCHEMA:
        raise BankIntegrityError(f"{path} has no {SCHEMA!r} schema marker")
    return body


def load_bank(
    folder: Path, *, manifest_digest: str, manifest_order: str | None, recipe: Mapping[str, Any]
) -> Bank:
    """Load the bank at ``folder`` for this manifest and recipe, verifying every file against ``bank.json``.

    Raises :class:`BankMismatchError` for a bank of another manifest, row order, recipe or plugin code (it
    is never silently used) and :class:`BankIntegrityError` for a changed, missing or truncated file.
    ``manifest_order`` is the manifest's :func:`~hamu.data.digest.order_digest`: a bank of the same rows in
    another order, or one that did not record its order, is refused, since its membership would name other
    rows. It is required so that every caller decides; ``None`` skips the order check (for inspecting a
    bank without its manifest at hand, never for using one as evidence).
    """
    body = read_bank_file(folder)
    stored = body["plan"]
    if stored["manifest_digest"] != manifest_digest:
        raise BankMismatchError(
            f"the bank at {folder} was trained on another training manifest "
            f"({stored['manifest_digest'][:12]}…, this one is {manifest_digest[:12]}…); train a new bank"
        )
    stored_order = stored.get("manifest_order")
    if manifest_order is not None and stored_order != manifest_order:
        raise BankMismatchError(
            f"the bank at {folder} was trained on the manifest's rows in another order, or predates the "
            "order binding: its members' rows are positions; train a new bank"
        )
    if stored["recipe_digest"] != recipe_digest(recipe):
        raise BankMismatchError(
            f"the bank at {folder} was trained with another recipe than the served model's; train a new bank"
        )
    plan = BankPlan(
        manifest_digest,
        dict(recipe),
        int(stored["n_rows"]),
        int(stored["n_models"]),
        int(stored["seed"]),
        stored_order,
    )
    stored_code = stored.get("plugin_code", {})
    try:
        current_code = plan.plugin_code
    except PluginImportError as exc:
        raise BankMismatchError(
            f"the bank at {folder} cannot be checked against the code behind the recipe's plugin names: {exc}"
        ) from exc
    changed = sorted(
        k for k in current_code.keys() | stored_code.keys() if current_code.get(k) != stored_code.get(k)
    )
    if changed:
        named = ", ".join(f"{k} {recipe.get(k)!r}" for k in changed)
        raise BankMismatchError(
            f"the bank at {folder} was trained with other code under the recipe's plugin names ({named}: "
            "the source file changed, or the bank predates code digests); train a new bank"
        )
    if plan.bank_id != stored["bank_id"]:
        raise BankIntegrityError(f"the bank at {folder}: its ID does not match its plan")
    _verify(folder / body["membership"]["file"], body["membership"]["sha256"])
    packed = np.load(folder / body["membership"]["file"])
    membership = np.unpackbits(packed, axis=1, count=plan.n_rows).astype(bool)
    _check_membership(plan, membership, folder)
    members: list[TrainedModel] = []
    for entry in sorted(body["members"], key=lambda e: int(e["member"])):
        path = folder / entry["file"]
        _verify(path, entry["sha256"])
        model, metadata = load_checkpoint(path)
        members.append(TrainedModel(model, featurizer_from_metadata(metadata), metadata))
    if len(members) != plan.n_models:
        raise BankIntegrityError(f"the bank at {folder} lists {len(members)} of its {plan.n_models} members")
    refreshed = tuple(dict(r) for r in body.get("refreshed", []))
    stats = _load_test_statistics(folder, body.get("test_statistics"), plan.n_models)
    return Bank(
        plan, membership, tuple(members), float(body.get("train_seconds", 0.0)), folder, refreshed, stats
    )


def _load_test_statistics(
    folder: Path, entry: Mapping[str, Any] | None, n_models: int
) -> TestStatistics | None:
    if not entry:
        return None
    path = folder / entry["file"]
    _verify(path, entry["sha256"])
    with np.load(path) as arrays:
        phi, loss, correct = arrays["phi"], arrays["loss"], arrays["correct"]
    if not phi.shape == loss.shape == correct.shape or phi.shape[0] != n_models:
        raise BankIntegrityError(f"the bank's {path} does not hold one row of statistics per member")
    return TestStatistics(str(entry["test_digest"]), phi, loss, correct)


def attach_test_statistics(bank: Bank, stats: TestStatistics) -> Bank:
    """Keep the members' test-row statistics with the bank, listed in ``bank.json`` by SHA-256 (each file
    written beside its final name, then renamed into place)."""
    if (
        not stats.phi.shape == stats.loss.shape == stats.correct.shape
        or stats.phi.shape[0] != bank.plan.n_models
    ):
        raise BankError(
            f"test statistics need one row per member ({bank.plan.n_models}), got {stats.phi.shape}"
        )
    path = bank.folder / TEST_STATISTICS_FILE
    staged = path.with_name(path.name + ".tmp")
    with open(staged, "wb") as fh:
        np.savez(fh, phi=stats.phi, loss=stats.loss, correct=stats.correct)
    os.replace(staged, path)
    body = read_bank_file(bank.folder)
    body["test_statistics"] = {"file": path.name, "sha256": _sha256(path), "test_digest": stats.test_digest}
    staged_body = bank.folder / (BANK_FILE + ".tmp")
    staged_body.write_text(json.dumps(body, indent=1, sort_keys=True))
    os.replace(staged_body, bank.folder / BANK_FILE)
    return replace(bank, test_statistics=stats)


def _check_membership(plan: BankPlan, membership: np.ndarray, folder: Path) -> None:
    """A bank's membership is its plan's, less rows that refreshed members dropped (never more rows)."""
    planned = plan.membership()
    if membership.shape != planned.shape or bool((membership & ~planned).any()):
        raise BankIntegrityError(f"the bank at {folder}: its membership is not its plan's")


def members_to_refresh(bank: Bank, rows: np.ndarray, min_out: int) -> tuple[list[int], np.ndarray]:
    """Which members to retrain so that every row in ``rows`` has ``min_out`` members that never saw it.

    Returns (members, short rows). Greedy: the member that is IN for the most short rows first, until each
    short row has enough OUT members; ``min_out`` above the bank's size cannot be met (:class:`BankError`).
    """
    if not 1 <= min_out <= bank.plan.n_models:
        raise BankError(f"min_out must lie in [1, {bank.plan.n_models}], got {min_out}")
    rows = np.asarray(rows, dtype=np.int64)
    inside = bank.membership[:, rows]
    need = np.maximum(min_out - (~inside).sum(axis=0), 0)
    short = rows[need > 0]
    chosen: list[int] = []
    while bool((need > 0).any()):
        covered = (inside & (need > 0)).sum(axis=1)
        covered[chosen] = -1
        k = int(np.argmax(covered))
        chosen.append(k)
        need = np.where(inside[k], np.maximum(need - 1, 0), need)
    return sorted(chosen), short


def refresh_bank(
    bank: Bank, train: Any, drop_rows: np.ndarray, members: Sequence[int], *, progress: bool = False
) -> tuple[Bank, dict[str, Any]]:
    """Retrain ``members`` without ``drop_rows`` (the affected part of the bank) and write the bank again.

    The other members are kept as they are; the refresh is listed in ``bank.json``.
    """
    import time

    membership = bank.membership.copy()
    drop = np.asarray(drop_rows, dtype=np.int64)
    updated = list(bank.members)
    start = time.perf_counter()
    for k in members:
        membership[k, drop] = False
        updated[k] = train_member(train, bank.plan, k, rows=np.flatnonzero(membership[k]), progress=progress)
    seconds = time.perf_counter() - start
    note = {
        "members": [int(k) for k in members],
        "rows_dropped": int(drop.size),
        "seconds": round(seconds, 3),
    }
    write_bank(
        bank.folder,
        bank.plan,
        updated,
        train_seconds=bank.train_seconds,
        membership=membership,
        refreshed=[*bank.refreshed, note],
    )
    return Bank(
        bank.plan, membership, tuple(updated), bank.train_seconds, bank.folder, (*bank.refreshed, note)
    ), note


def _verify(path: Path, expected: str) -> None:
    if not path.is_file():
        raise BankIntegrityError(f"the bank's file {path} is missing")
    if _sha256(path) != expected:
        raise BankIntegrityError(f"the bank's file {path} does not match its recorded SHA-256")
