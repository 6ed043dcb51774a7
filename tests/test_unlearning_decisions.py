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


def test_reached_loss_with_forget_accuracy_outside_its_band_retrains() -> None:
    """The mean forget loss matched while the forget rows are still mostly classified right: not the
    reference's distribution, so the retrain is the outcome, and the reason names both numbers."""
    params = {
        "reached": True,
        "why": WHY,
        "forget_accuracy": 0.928,
        "target_accuracy": 0.874,
        "accuracy_tolerance": 0.025,
        "accuracy_inside": False,
    }
    why = retrain_instead(params, 116)
    assert why.startswith("exact retrain: the forget loss reached its target but the forget accuracy 0.9280")
    assert "0.8740 ± 0.0250" in why
    assert retrain_instead({**params, "forget_accuracy": 0.88, "accuracy_inside": True}, 116) == ""


def test_accuracy_target_band_matches_an_independent_computation() -> None:
    """forget_accuracy_target against a direct computation of the gate's band rule on random rows."""
    import math
    from statistics import NormalDist

    import numpy as np

    from hamu.governance.verdict import GatePolicy, forget_accuracy_target
    from hamu_pipeline.tasks.unlearning import AccuracyTarget

    rng = np.random.default_rng(0)
    for n, p_orig, p_ref in ((50, 0.98, 0.6), (500, 0.976, 0.874), (2000, 0.9, 0.89)):
        orig = (rng.random(n) < p_orig).astype(float)
        ref = (rng.random(n) < p_ref).astype(float)
        target, tolerance, band = forget_accuracy_target(orig.tolist(), ref.tolist())
        mean_r = ref.mean()
        noise = NormalDist().inv_cdf(0.975) * math.sqrt(mean_r * (1 - mean_r) / n)
        expected = max(noise, min(GatePolicy().caps["accuracy"], 0.5 * abs(orig.mean() - mean_r)))
        assert target == mean_r and band == expected and tolerance == band / 2
        inside = AccuracyTarget(target, tolerance)
        assert inside.contains(target + tolerance * 0.99) and not inside.contains(target + tolerance * 1.01)
