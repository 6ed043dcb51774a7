"""The deletion batch as typed stages, one Prefect task each, in the order of ``docs/pipeline.md``.

Each stage takes the batch's :class:`BatchContext` and the frozen results of the stages before it, writes
its own ledger record and MLflow logs, and returns its own frozen result.
``hamu_pipeline.flows.deletion_batch`` only
lists them.
"""

from hamu_pipeline.tasks.stages.bank import Banked, bank
from hamu_pipeline.tasks.stages.base import BatchContext, Stage, stage
from hamu_pipeline.tasks.stages.close import close, close_requests, receipts, reject, report
from hamu_pipeline.tasks.stages.evaluate import DriftOutcome, Evaluated, drift_outcome, evaluate, judge
from hamu_pipeline.tasks.stages.hardness import Gated, choose_path, hardness, retrain_after_failure
from hamu_pipeline.tasks.stages.intake import Claimed, Validated, claim, nothing_claimed, validate
from hamu_pipeline.tasks.stages.reference import (
    Reference,
    reference,
    reference_mode,
    trains_reference,
    usable_reference,
)
from hamu_pipeline.tasks.stages.register import Registered, register, version_tags
from hamu_pipeline.tasks.stages.session import guarded, new_batch_id, open_batch
from hamu_pipeline.tasks.stages.split import Prepared, split
from hamu_pipeline.tasks.stages.unlearn import Candidate, unlearn

__all__ = [
    "Banked",
    "BatchContext",
    "Candidate",
    "Claimed",
    "DriftOutcome",
    "Evaluated",
    "Gated",
    "Prepared",
    "Reference",
    "Registered",
    "Stage",
    "Validated",
    "bank",
    "choose_path",
    "claim",
    "close",
    "close_requests",
    "drift_outcome",
    "evaluate",
    "guarded",
    "hardness",
    "judge",
    "new_batch_id",
    "nothing_claimed",
    "open_batch",
    "receipts",
    "reference",
    "reference_mode",
    "register",
    "reject",
    "report",
    "retrain_after_failure",
    "split",
    "stage",
    "trains_reference",
    "unlearn",
    "usable_reference",
    "validate",
    "version_tags",
]
