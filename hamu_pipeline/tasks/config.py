"""The deletion-batch flow's parameters: a validated pydantic model (the Prefect UI renders it as a form).

It lives here, below the flows, so the tasks that read it can take it typed; ``hamu_pipeline.flows.config``
re-exports it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from hamu.governance.drift import DriftBudget
from hamu.governance.requests import DEFAULT_MAX_REQUESTS
from hamu.governance.verdict import UTILITY_BUDGET, GatePolicy
from hamu.methods import HAMU_METHODS, METHODS
from hamu.unlearner import UnlearnConfig

#: Where a batch's unlearning runs (``auto``: CUDA when present); the hardness task times its steps there.
RUN_DEVICE = "auto"


class BatchConfig(BaseModel):
    """Everything one deletion batch needs. Defaults are the CPU demo's."""

    preset: str = Field(
        "fashion-mnist-cpu",
        description="workload of the served model: a built-in preset or one the project file names",
    )
    model_name: str | None = Field(None, description="registered model name (default: hamu-<preset>)")
    method: str = Field("hamu-q", description="unlearning method")
    lr: float = Field(0.01, gt=0)
    max_steps: int = Field(100, ge=1, le=100_000)
    constraint_ratio: float = Field(0.1, ge=0, le=1, description="HAMU's c = B/η")
    batch_size: int = Field(256, ge=2, description="retain and forget batch size for unlearning")
    max_grad_norm: float = Field(1.0, gt=0)
    to_target: bool = Field(
        True,
        description="drive unlearning to the retrained reference's forget loss (hamu.unlearn_to_target); "
        "when it is not reached within max_steps, the batch's outcome is the exact retrain",
    )
    check_every: int = Field(10, ge=1, description="steps between the target controller's evaluations")
    retrain_on_fail: bool = Field(
        True,
        description="when the unlearned candidate fails its gates, the batch's outcome is the exact retrain "
        "(trained, registered and judged in its place); off: the failing candidate is registered, not "
        "promotable, and its requests carry over",
    )
    max_update_norm: float | None = Field(None, gt=0, description="largest weight change per step")
    stop_on_degradation: bool = False
    hardness_batches: int = Field(3, ge=1, le=50)
    gate_policy: Literal["stop", "warn"] = Field("stop", description="hardness verdict against unlearning")
    cost_aware: bool = Field(True, description="retrain exactly when that is predicted to be cheaper")
    exact: bool = Field(False, description="retrain exactly whatever hardness and cost say")
    train_reference: bool = Field(True, description="train the exact retrained reference when absent")
    reference_mode: Literal["auto", "exact", "bank", "both"] = Field(
        "auto",
        description="what the candidate is judged against: the exact retrain, the lineage's reference bank, "
        "or both; auto uses the bank when the lineage has one (hamu bank train), the exact retrain otherwise",
    )
    bank_audit_every: int = Field(
        10,
        ge=1,
        description="under auto, every N-th batch judged by the bank also trains the exact reference",
    )
    bank_min_out: int = Field(
        2,
        ge=1,
        description="bank members that never saw a row needed to judge it; fewer retrains the members",
    )
    bank_erased_rows: int = Field(
        2000, ge=0, description="rows erased by earlier batches re-checked against the bank in every batch"
    )
    eval_retain_rows: int = Field(3000, ge=100, description="retain rows used for evaluation")
    shadow_models: int = Field(2, ge=0, le=64, description="LiRA reference models (0 turns LiRA off)")
    max_requests: int = Field(
        DEFAULT_MAX_REQUESTS,
        ge=1,
        description="most requests one batch claims, oldest first; a larger backlog drains over the next "
        "batches. Bounds one batch's forget set, memory and run time, and what one failure sends back",
    )
    seed: int = 0
    stage_retries: int = Field(
        1,
        ge=0,
        le=10,
        description="retries of a stage whose re-run is safe (split, hardness, reference, unlearn, "
        "evaluate): a transient failure (a tracking server's hiccup, a lost GPU) does not fail the batch",
    )
    stage_retry_delay_s: float = Field(2.0, ge=0, description="seconds between a stage's attempts")
    stage_timeout_s: float | None = Field(
        None, gt=0, description="wall-clock limit of one attempt of a re-runnable stage (none by default)"
    )
    utility_budget: float = Field(
        UTILITY_BUDGET,
        ge=0,
        description="verdict gate: test-accuracy drop allowed against the retrained reference",
    )
    drift_utility_budget: float = Field(0.03, ge=0, description="cumulative test-accuracy deficit allowed")
    drift_mia_budget: float = Field(0.15, ge=0, description="cumulative Σ|AUC gap| allowed")
    drift_max_batches: int = Field(20, ge=1, description="unlearning batches between exact retrains")
    drift_action: Literal["recommend", "retrain"] = Field(
        "recommend", description="over budget: recommend a full retrain, or retrain exactly in the next batch"
    )

    def verdict_policy(self) -> GatePolicy:
        """The verdict's policy for this batch: default bands, this batch's utility budget."""
        return GatePolicy(utility_budget=self.utility_budget)

    def drift_budget(self) -> DriftBudget:
        return DriftBudget(self.drift_utility_budget, self.drift_mia_budget, self.drift_max_batches)

    def method_options(self) -> dict[str, Any]:
        """The options this batch passes to its method: HAMU's c and stopping rule, none for the others."""
        if self.method in HAMU_METHODS:
            return {
                "constraint_ratio": self.constraint_ratio,
                "stop_on_degradation": self.stop_on_degradation,
            }
        return {}

    def unlearn_config(self, *, device: str = RUN_DEVICE) -> UnlearnConfig:
        """The unlearning run this batch asks for, on ``device``."""
        return UnlearnConfig(
            method=self.method,
            lr=self.lr,
            max_steps=self.max_steps,
            max_grad_norm=self.max_grad_norm,
            seed=self.seed,
            device=device,
            method_options=self.method_options(),
        )

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in METHODS:
            raise ValueError(f"unknown method {value!r}; accepted: {', '.join(METHODS)}")
        return value

    @property
    def registered_name(self) -> str:
        return self.model_name or f"hamu-{self.preset}"
