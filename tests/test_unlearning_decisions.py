"""The unlearn stage's decisions, without Prefect: when a target-driven run hands over to the retrain."""

from __future__ import annotations

from hamu_pipeline.tasks.unlearning import retrain_instead

WHY = "forget loss 0.04 → 0.30, target 0.47 ± 0.11, stop max_steps after 100 steps"


def test_no_target_never_retrains() -> None:
    assert retrain_instead({}, 0) == ""
    assert retrain_instead({}, 50) == ""


def test_target_not_reached_retrains_and_says_why() -> None:
    why = retrain_instead({"reached": False, "why": WHY}, 100)
    assert why.startswith("exact retrain: the forget target was not reached") and WHY in why


def test_reached_without_a_step_retrains() -> None:
    """A candidate identical to the original still carries the forget rows: the retrain is the outcome."""
    why = retrain_instead({"reached": True, "why": WHY}, 0)
    assert "already sits inside the forget target" in why


def test_reached_with_steps_keeps_the_unlearned_model() -> None:
    assert retrain_instead({"reached": True, "why": WHY}, 38) == ""
