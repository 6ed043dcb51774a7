"""The reference stage: the model retrained without the forget rows, which the candidate is judged against
(cached by the retain digest; docs/pipeline.md step 5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hamu.evaluation import MissingReferenceError
from hamu.models import model_digest
from hamu.train import TrainedModel
from hamu_pipeline.tasks.config import BatchConfig
from hamu_pipeline.tasks.models import retrained_reference
from hamu_pipeline.tasks.stages.base import BatchContext, stage
from hamu_pipeline.tasks.stages.hardness import Gated
from hamu_pipeline.tasks.stages.split import Prepared


@dataclass(frozen=True)
class Reference:
    """``kind`` ``retrained`` (exact, for this retain set) or ``proxy`` (another retain set's, labelled)."""

    trained: TrainedModel
    kind: str
    train_seconds: float

    @property
    def model(self) -> Any:
        """The reference's network."""
        return self.trained.model

    @property
    def exact(self) -> bool:
        return self.kind == "retrained"

    def summary(self) -> dict[str, Any]:
        return {}


def trains_reference(config: BatchConfig, action: str) -> bool:
    """Whether the batch may train the exact reference when none is cached: when asked to, and always when
    the batch's outcome is the retrain itself."""
    return config.train_reference or action == "retrain"


def usable_reference(model: TrainedModel | None, kind: str, action: str) -> TrainedModel:
    """The reference the batch goes on with, or the error that explains why there is none it may use.

    No reference at all stops the batch; a proxy may judge an unlearned candidate (labelled as such) but can
    never be the outcome of a retrain, since it was trained on another retain set.
    """
    if model is None:
        raise MissingReferenceError(
            "no retrained reference for this retain set and train_reference is off: enable it "
            "(BatchConfig.train_reference) so that the batch trains the reference it is judged against"
        )
    if action == "retrain" and kind != "retrained":
        raise MissingReferenceError("retraining was chosen but only a proxy reference exists")
    return model


@stage("reference", rerunnable=True)
def reference(ctx: BatchContext, prepared: Prepared, gated: Gated) -> Reference:
    """Load the cached exact reference for this retain set, or train it, or fall back to a labelled proxy."""
    found, kind, seconds = retrained_reference(
        ctx.paths, prepared.split, ctx.champion, train=trains_reference(ctx.config, gated.action)
    )
    model = usable_reference(found, kind, gated.action)
    ctx.audit.record(
        "reference",
        decision=kind,
        params={"train_seconds": round(seconds, 3)},
        outputs={"weights": model_digest(model.model)},
    )
    return Reference(model, kind, seconds)
