"""The bank stage: find the lineage's reference bank, make sure every row the batch judges has enough members
that never saw it (retraining the affected members when not), and read the members' statistics on the
batch's rows (docs/pipeline.md step 4).

The statistics feed three later stages: the cost gate (with a bank, certifying an unlearned model costs
inference, not a retrain), the controller's forget target when no exact reference is trained, and the
evidence the candidate is judged on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hamu.data import record_ids
from hamu.train.bank import Bank, BankError, members_to_refresh, refresh_bank
from hamu_pipeline.tasks.bank import BankView, bank_view, ensure_test_statistics, find_bank, record_bank
from hamu_pipeline.tasks.config import BatchConfig
from hamu_pipeline.tasks.stages.base import BatchContext, stage
from hamu_pipeline.tasks.stages.intake import Validated
from hamu_pipeline.tasks.stages.split import Prepared


@dataclass(frozen=True)
class Banked:
    """The lineage's bank as this batch uses it (``bank`` is ``None`` when there is none to use, ``note``
    says why), and its members' statistics on the batch's rows."""

    bank: Bank | None
    note: str
    view: BankView | None = None
    #: Manifest rows erased by earlier batches that this batch re-checks (a seeded sample).
    erased: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    refreshed: dict[str, Any] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return self.bank is not None and self.view is not None

    def describe(self) -> dict[str, Any]:
        """The bank as the report and the receipts name it."""
        if self.bank is None:
            return {}
        return {
            "bank_id": self.bank.plan.bank_id,
            "n_models": self.bank.plan.n_models,
            "erased_rows_rechecked": int(self.erased.size),
            "refreshed": self.refreshed or None,
        }

    def summary(self) -> dict[str, Any]:
        return {"bank": self.bank.plan.bank_id if self.bank else None, "bank_note": self.note}


def wants_bank(config: BatchConfig) -> bool:
    return config.reference_mode != "exact"


def erased_positions(ctx: BatchContext, erased_before: list[str], forget: set[str]) -> np.ndarray:
    """Manifest rows erased by earlier batches (not this batch's forget rows): a seeded sample of at most
    ``bank_erased_rows``, re-checked in every batch."""
    rows = sorted(ctx.data.positions[r] for r in set(erased_before) - forget if r in ctx.data.positions)
    cap = ctx.config.bank_erased_rows
    if len(rows) > cap:
        rows = sorted(np.random.default_rng(ctx.config.seed).choice(rows, size=cap, replace=False).tolist())
    return np.asarray(rows, dtype=np.int64)


@stage("bank", rerunnable=True)
def bank(ctx: BatchContext, validated: Validated, prepared: Prepared) -> Banked:
    """Load and verify the bank; refresh the members a row lacks; read the members on the batch's rows."""
    cfg = ctx.config
    if not wants_bank(cfg):
        return Banked(None, "reference_mode is exact")
    required = cfg.reference_mode in ("bank", "both")
    try:
        found = find_bank(ctx.paths, ctx.data, ctx.champion)
    except BankError as exc:
        if required:
            raise
        ctx.audit.record("bank", decision="refused", reason=str(exc)[:2000])
        return Banked(None, f"bank refused: {exc}")
    if found is None:
        if required:
            raise BankError(
                f"reference_mode {cfg.reference_mode!r} needs a reference bank for {ctx.champion.name}: "
                "train one with `hamu bank train`"
            )
        return Banked(None, "no reference bank for this lineage (hamu bank train)")
    forget_ids = record_ids(prepared.split.forget)
    forget = np.asarray([ctx.data.positions[r] for r in forget_ids], dtype=np.int64)
    erased = erased_positions(ctx, list(validated.erased_before), set(forget_ids))
    members, short = members_to_refresh(found, np.concatenate([forget, erased]), cfg.bank_min_out)
    refreshed: dict[str, Any] = {}
    if members:
        found, refreshed = refresh_bank(found, ctx.data.train, short, members)
    found, computed = ensure_test_statistics(found, ctx.data.test)
    if refreshed or computed:  # the ledger vouches for the bank as it now is
        record_bank(ctx.paths, ctx.data, ctx.champion, found)
    groups: dict[str, tuple[Any, np.ndarray | None]] = {
        "forget": (prepared.split.forget, forget),
        "test": (prepared.split.test, None),
    }
    if erased.size:
        groups["erased"] = (ctx.data.train.select(erased.tolist()), erased)
    view = bank_view(found, groups)
    result = Banked(found, "", view, erased, refreshed)
    ctx.audit.record(
        "bank",
        decision="refreshed" if refreshed else "loaded",
        reason=(
            f"members {refreshed['members']} retrained without {refreshed['rows_dropped']} rows that had "
            f"fewer than {cfg.bank_min_out} members that never saw them"
            if refreshed
            else ""
        ),
        params=result.describe(),
        inputs={"manifest": found.plan.manifest_digest},
    )
    return result
