"""The verdict on a bank report, the choice of evidence, and the cost gate with a bank.

A. :func:`hamu.evaluation.bank_report.bank_report` on synthetic per-example statistics (real
   :class:`PerExample` objects from chosen logits), synthetic LiRA scores (reported, not gated) and synthetic
   calibrated losses (gated), then :func:`decide`: a retrain-like candidate passes the calibrated forget-loss
   gate, under- and over-unlearning fail in their direction, an original that looks like a retrain makes the
   evidence insufficient, earlier-erased rows and test accuracy are gated, the integrity gates apply. The
   report's numbers are checked against scipy (Mann-Whitney AUC, the normal quantile) and plain numpy.
   Scores and calibrated losses are normal quantiles at (i + ½)/n (a "perfectly drawn" normal sample), so
   the AUCs and loss gaps are their population values up to O(1/n) and no outcome rests on one random draw.
B. :func:`reference_mode` as a table, and :func:`bank_batches_since_audit` on ledger records.
C. :func:`hamu_pipeline.tasks.hardness.gate`: with a bank, certifying an unlearned model costs no retrain.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy import stats as sps
from torch import nn

from hamu.evaluation.bank import out_statistics
from hamu.evaluation.bank_report import SCHEMA, bank_report, joint_lira_scores
from hamu.evaluation.per_example import PerExample, per_example_from_logits
from hamu.governance.audit import LedgerRecord
from hamu.governance.bank_gates import erased_gate, loss_gate
from hamu.governance.drift import batch_gaps
from hamu.governance.verdict import GatePolicy, RunFacts, Verdict, decide
from hamu.hardness import HardnessReport
from hamu_pipeline.tasks.config import BatchConfig
from hamu_pipeline.tasks.hardness import gate
from hamu_pipeline.tasks.models import ServedModel
from hamu_pipeline.tasks.stages.reference import bank_batches_since_audit, reference_mode

N_FORGET, N_TEST, N_RETAIN, N_ERASED, N_CLASSES = 400, 2000, 300, 300, 10
LEVEL = 0.95
Z = float(sps.norm.ppf(0.5 + LEVEL / 2))
# LiRA: a member's forget scores shifted +1, AUC Φ(1/√2) ≈ 0.76 (reported only).
SHIFT = 1.0
# Calibrated losses: sd 0.5 on every group; a member's forget losses shifted DOWN by 0.5. With the default
# policy (fraction ½, loss cap 0.25) the original's gap −0.5 sets the band to min(0.25, 0.25) = 0.25, while
# the intervals are ±≈0.055 (forget 400 rows, test 2000) and the noise floor z·0.5·√(1/400 + 1/2000) ≈ 0.054:
# a gap of 0 is well inside, ±0.5 wholly outside.
LOSS_SD, LOSS_SHIFT = 0.5, 0.5
LOSS_CAP_BAND = 0.25  # GatePolicy().caps["loss"]
CLEAN = RunFacts(action="unlearn", steps_applied=7, candidate_weights="sha:b", original_weights="sha:a")


# ------------------------------------------------------------------------------------------ synthetic data
def _normal(n: int, shift: float = 0.0, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    """n normal quantiles at (i + ½)/n, scaled then shifted, in a seeded order."""
    q = scale * sps.norm.ppf((np.arange(n) + 0.5) / n) + shift
    return np.random.default_rng(seed).permutation(q)


def _per_example(correct: np.ndarray, seed: int) -> PerExample:
    """Real per-example statistics from logits built so that exactly the ``correct`` rows are predicted
    right."""
    rng = np.random.default_rng(seed)
    n = correct.size
    targets = rng.integers(0, N_CLASSES, n)
    logits = rng.normal(size=(n, N_CLASSES))
    winner = np.where(correct, targets, (targets + 1) % N_CLASSES)
    logits[np.arange(n), winner] += 8.0
    return per_example_from_logits(torch.from_numpy(logits), torch.from_numpy(targets))


def _accurate(n: int, accuracy: float, seed: int) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).permutation(n)[: round(accuracy * n)]] = True
    return mask


ORIGINAL_TEST = _accurate(N_TEST, 0.85, seed=1)


def _stats(test_correct: np.ndarray = ORIGINAL_TEST) -> dict[str, PerExample]:
    return {
        "retain": _per_example(_accurate(N_RETAIN, 0.95, seed=2), seed=12),
        "forget": _per_example(_accurate(N_FORGET, 0.9, seed=3), seed=13),
        # the same targets (seed) for every model: only which rows are right changes
        "test": _per_example(test_correct, seed=14),
    }


def _lossy_test() -> np.ndarray:
    """The original's test correctness with 10% of the test rows turned wrong."""
    lossy = ORIGINAL_TEST.copy()
    right = np.flatnonzero(lossy)
    lossy[np.random.default_rng(5).choice(right, size=N_TEST // 10, replace=False)] = False
    return lossy


def _scores(forget_member: float, erased_member: float | None = None) -> dict[str, np.ndarray]:
    """LiRA scores: a member-like group (member 1) is shifted up by SHIFT."""
    groups = {"forget": _normal(N_FORGET, SHIFT * forget_member, seed=21), "test": _normal(N_TEST, seed=22)}
    if erased_member is not None:
        groups["erased"] = _normal(N_ERASED, SHIFT * erased_member, seed=23)
    return groups


def _forget_losses(member: float) -> np.ndarray:
    return _normal(N_FORGET, -LOSS_SHIFT * member, seed=31, scale=LOSS_SD)


def _test_losses() -> np.ndarray:
    return _normal(N_TEST, seed=32, scale=LOSS_SD)


def _erased_losses(member: float) -> np.ndarray:
    return _normal(N_ERASED, -LOSS_SHIFT * member, seed=33, scale=LOSS_SD)


def _losses(forget_member: float, erased_member: float | None = None) -> dict[str, np.ndarray]:
    """Calibrated losses: a member-like group (member 1) is shifted down by LOSS_SHIFT, an over-unlearned one
    (member −1) up."""
    groups = {"forget": _forget_losses(forget_member), "test": _test_losses()}
    if erased_member is not None:
        groups["erased"] = _erased_losses(erased_member)
    return groups


def _report(original_member: float = 1.0, only: tuple[str, ...] = ()) -> dict[str, Any]:
    models = {
        # name: (forget membership, erased membership or None, test correctness)
        "original": (original_member, None, ORIGINAL_TEST),
        "unlearned": (0.0, None, ORIGINAL_TEST),
        "under": (1.0, None, ORIGINAL_TEST),
        "over": (-1.0, None, ORIGINAL_TEST),
        "lossy": (0.0, None, _lossy_test()),
        "erased_kept": (0.0, 1.0, ORIGINAL_TEST),
        "erased_clean": (0.0, 0.0, ORIGINAL_TEST),
    }
    if only:
        models = {name: models[name] for name in ("original", *only)}
    return bank_report(
        {name: _stats(test) for name, (_, _, test) in models.items()},
        {name: _scores(f, e) for name, (f, e, _) in models.items()},
        {name: _losses(f, e) for name, (f, e, _) in models.items()},
        bank={"bank_id": "0123456789abcdef", "n_models": 8},
        level=LEVEL,
        n_resamples=500,
    )


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    return _report()


@pytest.fixture(scope="module")
def weak_report() -> dict[str, Any]:
    """The original's forget rows look exactly like test rows: the bank cannot see the forget set."""
    return _report(original_member=0.0, only=("unlearned",))


def _gate(verdict: Verdict, name: str) -> Any:
    found = [g for g in verdict.gates if g.name == name]
    assert len(found) == 1, [g.name for g in verdict.gates]
    return found[0]


def _loss_noise(n_forget: int) -> float:
    return Z * float(_test_losses().std(ddof=1)) * math.sqrt(1 / n_forget + 1 / N_TEST)


# ------------------------------------------------------------------------------------ A. the report itself
def test_the_report_numbers_match_independent_computations(report: dict[str, Any]) -> None:
    assert report["schema"] == SCHEMA and report["reference"]["kind"] == "bank"
    assert report["reference"]["bank_id"] == "0123456789abcdef"
    for model, member in (("original", 1.0), ("unlearned", 0.0), ("over", -1.0)):
        evidence = report["bank"][model]["forget"]
        assert set(evidence) == {"loss", "lira"}
        # the LiRA AUC, reported
        forget, test = _normal(N_FORGET, SHIFT * member, seed=21), _normal(N_TEST, seed=22)
        u = sps.mannwhitneyu(forget, test, alternative="two-sided").statistic
        lira = evidence["lira"]
        assert lira["auc"] == pytest.approx(u / (N_FORGET * N_TEST), abs=1e-12)
        assert lira["auc"] == pytest.approx(sps.norm.cdf(SHIFT * member / math.sqrt(2)), abs=5e-3)
        assert lira["auc_ci_low"] < lira["auc"] < lira["auc_ci_high"]
        assert lira["mean_score_gap"] == pytest.approx(forget.mean() - test.mean(), abs=1e-12)
        assert (lira["n_forget"], lira["n_test"]) == (N_FORGET, N_TEST)
        hw = Z * math.sqrt((N_FORGET + N_TEST + 1) / (12 * N_FORGET * N_TEST))
        assert lira["null_half_width"] == pytest.approx(hw, rel=1e-12)
        # the calibrated loss gap, gated
        loss = evidence["loss"]
        f_loss, t_loss = _forget_losses(member), _test_losses()
        assert loss["gap"] == pytest.approx(float(f_loss.mean() - t_loss.mean()), abs=1e-12)
        assert loss["gap"] == pytest.approx(-LOSS_SHIFT * member, abs=1e-9)
        assert loss["ci_low"] < loss["gap"] < loss["ci_high"]
        # the bootstrap interval's half-width is about z·√(var_f/n_f + var_t/n_t)
        se = math.sqrt(f_loss.var(ddof=1) / N_FORGET + t_loss.var(ddof=1) / N_TEST)
        assert (loss["ci_high"] - loss["ci_low"]) / 2 == pytest.approx(Z * se, rel=0.15)
        assert loss["noise"] == pytest.approx(_loss_noise(N_FORGET), rel=1e-12)
        assert (loss["n_forget"], loss["n_test"]) == (N_FORGET, N_TEST)
    assert report["bank"]["original"]["erased"] is None
    erased = report["bank"]["erased_kept"]["erased"]
    assert set(erased) == {"loss", "lira"}
    assert erased["loss"]["n_forget"] == N_ERASED and erased["lira"]["n_forget"] == N_ERASED
    assert erased["loss"]["gap"] == pytest.approx(-LOSS_SHIFT, abs=1e-9)
    assert erased["loss"]["noise"] == pytest.approx(_loss_noise(N_ERASED), rel=1e-12)
    change = report["test_accuracy_change"]
    assert change["original"]["gap"] == 0.0
    assert change["lossy"]["gap"] == pytest.approx(-0.1, abs=1e-12)
    assert change["lossy"]["gap_ci_low"] < -0.1 < change["lossy"]["gap_ci_high"]
    assert report["utility"]["original"]["test"]["accuracy"]["estimate"] == pytest.approx(
        ORIGINAL_TEST.mean()
    )
    assert report["utility"]["lossy"]["test"]["accuracy"]["estimate"] == pytest.approx(0.75)


def test_the_report_carries_no_per_row_values(report: dict[str, Any]) -> None:
    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            assert len(node) < 20, "a long list in the report looks like per-row values"
            for v in node:
                walk(v)
        else:
            assert node is None or isinstance(node, str | int | float | bool), type(node)

    walk(report)


def test_joint_lira_scores_use_one_pooled_sigma_across_groups() -> None:
    rng = np.random.default_rng(7)
    k = 6
    phi = {"forget": rng.normal(size=5), "test": rng.normal(size=9)}
    bank = {"forget": rng.normal(size=(k, 5)), "test": rng.normal(2.0, 3.0, size=(k, 9))}
    masks = {"forget": rng.random((k, 5)) < 0.5, "test": np.ones((k, 9), dtype=bool)}
    masks["forget"][:2] = True  # every forget row has two OUT models
    scores = joint_lira_scores(phi, bank, masks)
    # by hand: per-row means over OUT models; one σ pooled over all rows of both groups, weighted by n − 1
    num = den = 0.0
    means: dict[str, list[float]] = {}
    for g in ("forget", "test"):
        means[g] = []
        for j in range(phi[g].size):
            xs = bank[g][masks[g][:, j], j]
            means[g].append(float(xs.mean()))
            num += float(((xs - xs.mean()) ** 2).sum())
            den += xs.size - 1
    sigma = math.sqrt(num / den)
    for g in ("forget", "test"):
        assert scores[g] == pytest.approx((phi[g] - np.array(means[g])) / sigma, rel=1e-10)
    # not the group's own σ (which would put the two groups on different scales)
    own = out_statistics(bank["test"], masks["test"]).pooled_std
    assert abs(own - sigma) > 0.1


# ------------------------------------------------------------------------------------------ A. the verdict
def test_a_retrain_like_candidate_passes_with_adequate_evidence(report: dict[str, Any]) -> None:
    verdict = decide(report, CLEAN, model="unlearned")
    assert verdict.passed and verdict.promotable(), verdict.reason
    assert verdict.evidence == "adequate"
    loss = _gate(verdict, "bank-loss")
    assert loss.status == "pass" and loss.direction == ""
    assert loss.gap == pytest.approx(report["bank"]["unlearned"]["forget"]["loss"]["gap"])
    original = report["bank"]["original"]["forget"]["loss"]
    assert loss.band == pytest.approx(max(original["noise"], min(LOSS_CAP_BAND, 0.5 * abs(original["gap"]))))
    assert loss.band == pytest.approx(LOSS_CAP_BAND)  # ½ · 0.5 = 0.25, the cap
    # unambiguous: the interval lies well inside the band
    assert loss.ci_low is not None and loss.ci_high is not None
    assert -0.5 * loss.band < loss.ci_low < loss.ci_high < 0.5 * loss.band
    # the control: the original itself fails the same gate, wholly below the band
    assert [g.name for g in verdict.control] == ["bank-loss"]
    control = verdict.control[0]
    assert control.status == "fail" and control.direction == "under-unlearning"
    assert control.ci_high is not None and control.band is not None and control.ci_high < -control.band
    assert control.band == pytest.approx(loss.band)
    assert "bank-loss" in verdict.evidence_reason
    assert {g.name for g in verdict.gates} == {
        "steps-applied",
        "weights-changed",
        "bank-loss",
        "test-accuracy",
    }
    # LiRA is reported, never gated
    assert not any("lira" in g.name for g in (*verdict.gates, *verdict.control))


@pytest.mark.parametrize("model,direction", [("under", "under-unlearning"), ("over", "over-unlearning")])
def test_unlearning_too_little_or_too_much_fails_in_its_direction(
    report: dict[str, Any], model: str, direction: str
) -> None:
    verdict = decide(report, CLEAN, model=model)
    assert verdict.status == "fail" and not verdict.promotable(accept_insufficient_evidence=True)
    loss = _gate(verdict, "bank-loss")
    assert loss.status == "fail" and loss.direction == direction
    assert loss.reason.startswith(direction)
    assert loss.band is not None and loss.ci_low is not None and loss.ci_high is not None
    # under-unlearning: losses still member-like (lower), gap wholly below −band; over: wholly above +band
    outside = loss.ci_high < -loss.band if direction == "under-unlearning" else loss.ci_low > loss.band
    assert outside, loss
    assert [g.name for g in verdict.failing] == ["bank-loss"]


def test_an_original_that_looks_like_a_retrain_makes_the_evidence_insufficient(
    weak_report: dict[str, Any],
) -> None:
    original = weak_report["bank"]["original"]["forget"]["loss"]
    assert abs(original["gap"]) < 1e-9
    verdict = decide(weak_report, CLEAN, model="unlearned")
    assert verdict.evidence == "insufficient" and "fails none" in verdict.evidence_reason
    control = verdict.control[0]
    assert control.name == "bank-loss" and control.status != "fail"
    # with no effect the band falls to the noise floor
    assert control.band == pytest.approx(original["noise"])
    # the candidate's interval may touch the noise-wide band, but it cannot lie outside it
    assert verdict.status in ("pass", "inconclusive")
    assert not verdict.passed and not verdict.promotable()
    assert verdict.promotable(accept_insufficient_evidence=True)
    assert "evidence insufficient" in verdict.reason


def test_a_passing_candidate_is_not_promotable_on_insufficient_evidence(report: dict[str, Any]) -> None:
    """The original's gap is −0.15 and fraction 1 puts the band at the whole effect, 0.15: the original's
    interval (±≈0.055) crosses the band edge, so it does not fail; the retrain-like candidate's interval lies
    well inside and every one of its gates passes. Still not promotable without the recorded override."""
    weak = _report(original_member=0.3, only=("unlearned",))
    policy = GatePolicy(fraction=1.0)
    verdict = decide(weak, CLEAN, model="unlearned", policy=policy)
    control = verdict.control[0]
    assert control.band == pytest.approx(0.15, abs=1e-9)
    assert control.status == "inconclusive" and control.direction == "under-unlearning", control
    assert verdict.status == "pass", verdict.reason
    assert verdict.evidence == "insufficient"
    assert not verdict.passed and not verdict.promotable()
    assert verdict.promotable(accept_insufficient_evidence=True)
    # the same candidate with a strong original passes outright under that policy
    assert decide(report, CLEAN, model="unlearned", policy=policy).passed


def _loss(gap: float, low: float, high: float, noise: float = 0.05) -> dict[str, float]:
    return {"gap": gap, "ci_low": low, "ci_high": high, "noise": noise, "n_forget": 400, "n_test": 2000}


@pytest.mark.parametrize(
    "gap,low,high,direction",
    [(-0.04, -0.08, 0.0, "under-unlearning"), (0.04, 0.0, 0.08, "over-unlearning")],
)
def test_an_inconclusive_loss_gate_names_the_side_it_leans_to(
    gap: float, low: float, high: float, direction: str
) -> None:
    # band max(0.05, min(0.25, ½·0.06)) = 0.05: each interval crosses one edge
    gate_ = loss_gate(_loss(gap, low, high), _loss(-0.06, -0.1, -0.02), GatePolicy())
    assert gate_.status == "inconclusive" and gate_.band == pytest.approx(0.05)
    assert gate_.direction == direction and gate_.reason.startswith(direction)


def test_an_inconclusive_loss_gate_at_exactly_zero_claims_no_side() -> None:
    """A gap of exactly 0 leans to neither side; the exact-reference verdict calls such a gap ``deviates``,
    and so does the bank gate."""
    gate_ = loss_gate(_loss(0.0, -0.07, 0.07), _loss(0.0, -0.05, 0.05), GatePolicy())
    assert gate_.status == "inconclusive" and gate_.gap == 0.0
    assert gate_.band == pytest.approx(0.05)  # no effect: the noise floor
    assert gate_.direction == "deviates", gate_.reason
    assert gate_.reason.startswith("deviates")


def test_the_loss_gate_band_never_falls_below_the_noise() -> None:
    # effect ½·0.04 = 0.02 < noise 0.08: the band is the noise, and [−0.07, 0.07] passes inside it
    gate_ = loss_gate(_loss(0.0, -0.07, 0.07), _loss(-0.04, -0.1, 0.02, noise=0.08), GatePolicy())
    assert gate_.band == pytest.approx(0.08) and gate_.status == "pass" and gate_.direction == ""


@pytest.mark.parametrize("model,status", [("erased_kept", "fail"), ("erased_clean", "pass")])
def test_earlier_erased_rows_must_stay_forgotten(report: dict[str, Any], model: str, status: str) -> None:
    verdict = decide(report, CLEAN, model=model)
    erased = _gate(verdict, "bank-erased")
    assert erased.status == status, erased.reason
    evidence = report["bank"][model]["erased"]["loss"]
    assert erased.band == pytest.approx(max(evidence["noise"], LOSS_CAP_BAND))
    assert erased.gap == pytest.approx(evidence["gap"])
    assert erased.ci_low is not None and erased.ci_high is not None and erased.band is not None
    if status == "fail":
        assert erased.ci_high < -erased.band  # wholly below the allowed margin
        assert erased.direction == "under-unlearning" and f"n={N_ERASED}" in erased.reason
    else:
        assert erased.ci_low > -0.5 * erased.band and erased.direction == ""
    assert _gate(verdict, "bank-loss").status == "pass"
    assert verdict.status == status


def test_the_erased_gate_is_one_sided() -> None:
    """Erased rows that look *less* member-like than test rows (a positive gap) are no reason to fail."""
    policy = GatePolicy()
    assert erased_gate(_loss(0.6, 0.5, 0.7), policy).status == "pass"
    crossing = erased_gate(_loss(-0.25, -0.3, -0.2), policy)
    assert crossing.status == "inconclusive" and crossing.direction == "under-unlearning"
    # the noise widens the margin when it exceeds the cap
    assert erased_gate(_loss(-0.35, -0.4, -0.3, noise=0.5), policy).status == "pass"


def test_no_erased_gate_without_erased_rows(report: dict[str, Any]) -> None:
    assert "bank-erased" not in {g.name for g in decide(report, CLEAN, model="unlearned").gates}


def test_a_candidate_that_loses_test_accuracy_fails(report: dict[str, Any]) -> None:
    verdict = decide(report, CLEAN, model="lossy")
    utility = _gate(verdict, "test-accuracy")
    assert utility.status == "fail" and utility.direction == "deviates"
    assert utility.gap == pytest.approx(float(np.mean(_lossy_test()) - np.mean(ORIGINAL_TEST)))
    assert utility.ci_high is not None and utility.ci_high < -0.02
    assert _gate(verdict, "bank-loss").status == "pass"
    assert verdict.status == "fail" and not verdict.promotable()
    # a budget above the drop (and above its whole interval) lets it through
    assert decide(report, CLEAN, model="lossy", policy=GatePolicy(utility_budget=0.2)).passed


def test_the_integrity_gates_apply_to_a_bank_verdict(report: dict[str, Any]) -> None:
    same = decide(report, RunFacts(candidate_weights="a", original_weights="a"), model="unlearned")
    assert _gate(same, "weights-changed").status == "fail" and same.status == "fail"
    lazy = decide(report, RunFacts(action="unlearn", steps_applied=0), model="unlearned")
    assert _gate(lazy, "steps-applied").status == "fail" and lazy.status == "fail"
    tampered = RunFacts(report_sha256_recorded="x", report_sha256_actual="y")
    assert _gate(decide(report, tampered, model="unlearned"), "report-integrity").status == "fail"
    # a retrain applies no steps and is not judged on them
    retrain = decide(report, RunFacts(action="retrain", steps_applied=0), model="unlearned")
    assert "steps-applied" not in {g.name for g in retrain.gates} and retrain.passed
    for verdict in (same, lazy, retrain, decide(report, None, model="unlearned")):
        assert "reference-retrained" not in {g.name for g in verdict.gates}


def test_a_bank_report_without_the_model_is_refused(report: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="no evidence for model 'ghost'"):
        decide(report, CLEAN, model="ghost")
    with pytest.raises(ValueError, match="original"):
        bank_report(
            {"unlearned": _stats()}, {"unlearned": _scores(0.0)}, {"unlearned": _losses(0.0)}, bank={}
        )


@pytest.mark.parametrize("group", ["forget", "test"])
def test_a_bank_report_without_calibrated_losses_is_refused(group: str) -> None:
    stats = {"original": _stats(), "unlearned": _stats()}
    scores = {"original": _scores(1.0), "unlearned": _scores(0.0)}
    partial = _losses(0.0)
    del partial[group]
    with pytest.raises(ValueError, match=f"model 'unlearned' has no '{group}' calibrated losses"):
        bank_report(stats, scores, {"original": _losses(1.0), "unlearned": partial}, bank={})
    with pytest.raises(ValueError, match="model 'unlearned' has no 'forget' calibrated losses"):
        bank_report(stats, scores, {"original": _losses(1.0)}, bank={})
    # and LiRA scores are still required
    lira = _scores(0.0)
    del lira[group]
    with pytest.raises(ValueError, match=f"model 'unlearned' has no '{group}' LiRA scores"):
        bank_report(
            stats,
            {"original": _scores(1.0), "unlearned": lira},
            {"original": _losses(1.0), "unlearned": _losses(0.0)},
            bank={},
        )


def test_a_bank_report_with_erased_losses_but_no_erased_lira_scores_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="erased"):
        bank_report(
            {"original": _stats()},
            {"original": _scores(1.0)},
            {"original": _losses(1.0, erased_member=0.0)},
            bank={},
        )


@pytest.mark.parametrize("model", ["unlearned", "lossy", "under"])
def test_drift_reads_a_bank_report(report: dict[str, Any], model: str) -> None:
    utility, auc_gap = batch_gaps(report, model)
    assert utility == pytest.approx(-report["test_accuracy_change"][model]["gap"])
    assert auc_gap == pytest.approx(abs(report["bank"][model]["forget"]["lira"]["auc"] - 0.5))
    if model == "lossy":
        assert utility == pytest.approx(0.1)
    if model == "under":
        assert auc_gap == pytest.approx(sps.norm.cdf(SHIFT / math.sqrt(2)) - 0.5, abs=5e-3)
    if model == "unlearned":
        assert utility == 0.0 and auc_gap < 5e-3


# ----------------------------------------------------------------------------- B. which evidence to use
@pytest.mark.parametrize(
    "config,bank,since,action,audit,mode,why",
    [
        ("exact", True, 0, "unlearn", False, "exact", "reference_mode is exact"),
        ("exact", True, 99, "retrain", True, "exact", "reference_mode is exact"),
        ("auto", False, 0, "unlearn", False, "exact", "no reference bank"),
        ("bank", False, 0, "unlearn", False, "exact", "no reference bank"),
        ("both", False, 0, "retrain", True, "exact", "no reference bank"),
        ("auto", True, 0, "unlearn", True, "both", "inconclusive"),
        ("bank", True, 0, "unlearn", True, "both", "inconclusive"),
        ("auto", True, 0, "retrain", False, "both", "the outcome is the exact retrain"),
        ("bank", True, 0, "retrain", False, "both", "the outcome is the exact retrain"),
        ("both", True, 0, "unlearn", False, "both", "reference_mode is both"),
        ("auto", True, 3, "unlearn", False, "both", "every 4 batches"),
        ("auto", True, 7, "unlearn", False, "both", "every 4 batches"),
        ("auto", True, 2, "unlearn", False, "bank", "reference bank"),
        ("auto", True, 0, "unlearn", False, "bank", "reference bank"),
        ("bank", True, 3, "unlearn", False, "bank", "reference bank"),  # sampled audits are auto's
    ],
)
def test_reference_mode_table(
    config: str, bank: bool, since: int, action: str, audit: bool, mode: str, why: str
) -> None:
    cfg = BatchConfig(reference_mode=config, bank_audit_every=4)
    got, reason = reference_mode(cfg, bank, since, action, audit=audit)
    assert got == mode and why in reason, (got, reason)


def test_an_audit_every_batch_always_trains_the_exact_reference() -> None:
    cfg = BatchConfig(reference_mode="auto", bank_audit_every=1)
    assert reference_mode(cfg, True, 0, "unlearn")[0] == "both"


def _records(*steps: tuple[str, str]) -> list[LedgerRecord]:
    return [LedgerRecord(step=s, batch_id=f"b{i}", decision=d) for i, (s, d) in enumerate(steps)]


@pytest.mark.parametrize(
    "steps,count",
    [
        ((), 0),
        ((("reference", "bank"),), 1),
        ((("reference", "both"),), 0),
        ((("reference", "bank"), ("reference", "bank"), ("reference", "bank")), 3),
        (
            (
                ("reference", "bank"),
                ("reference", "both"),
                ("bank", "loaded"),
                ("reference", "bank"),
                ("unlearn", "bank"),
                ("verdict", "bank"),
                ("reference", "bank"),
                ("evaluate", "both"),
            ),
            2,
        ),
        ((("reference", "both"), ("reference", "bank"), ("reference", "both")), 0),
    ],
)
def test_bank_batches_since_audit(steps: tuple[tuple[str, str], ...], count: int) -> None:
    assert bank_batches_since_audit(_records(*steps)) == count


def test_the_count_since_audit_drives_the_sampled_audit() -> None:
    cfg = BatchConfig(reference_mode="auto", bank_audit_every=3)
    records = _records(("reference", "both"))
    modes = []
    for _ in range(6):
        mode, _why = reference_mode(cfg, True, bank_batches_since_audit(records), "unlearn")
        modes.append(mode)
        records += _records(("bank", "loaded"), ("reference", mode))
    assert modes == ["bank", "bank", "both", "bank", "bank", "both"]


# ----------------------------------------------------------------------------- C. the cost gate, banked
def _hardness() -> HardnessReport:
    """A feasible, easy report (HAMU's geometry out of the way, so that cost decides)."""
    return HardnessReport(
        batches=2, variant="hamu-q", lr=0.01, constraint=0.01, kappa=0.0, kappa_std=0.0, kappa1=1.0,
        kappa2=2.0, cosine=0.0, angle_degrees=90.0, retain_grad_norm=1.0, forget_grad_norm=1.0,
        feasible_fraction=1.0, degradation_fraction=0.0, predicted_retain_change=0.0,
        predicted_forget_change=0.01, kappa_per_tensor={}, method="hamu-q", device="cpu", timed_steps=2,
        seconds_per_step=1.0,
    )  # fmt: skip


def _champion(train_seconds: float) -> ServedModel:
    return ServedModel(
        name="hamu-test",
        version="2",
        model=nn.Linear(1, 1),
        metadata={"data_size": 400, "train_seconds": train_seconds},
        featurizer=None,  # type: ignore[arg-type]  # the gate never encodes rows
        checkpoint=Path("unused"),
    )


# 50 steps at 1 s: 50 s of unlearning; the retain set (300 of the 400 trained rows) retrains in 60 s.
STEPS, RETAIN_ROWS, TRAIN_SECONDS = 50, 300, 80.0
RETRAIN = TRAIN_SECONDS * RETAIN_ROWS / 400


def test_with_a_bank_unlearning_is_not_charged_the_exact_references_retrain() -> None:
    report = _hardness()
    cfg = BatchConfig(method="hamu-q", max_steps=STEPS)
    assert STEPS < RETRAIN < STEPS + RETRAIN  # unlearning alone is cheaper; with the retrain it is not

    exact = gate(report, 1.0, _champion(TRAIN_SECONDS), RETAIN_ROWS, cfg, [])
    assert exact.action == "retrain"
    assert "exact retraining is cheaper" in exact.reason and "the exact reference's retrain" in exact.reason
    assert exact.cost is not None
    assert exact.cost.retrain_seconds == pytest.approx(RETRAIN)
    assert exact.cost.evidence_seconds == pytest.approx(RETRAIN)
    assert exact.cost.honour_by_unlearning == pytest.approx(STEPS + RETRAIN)

    banked = gate(report, 1.0, _champion(TRAIN_SECONDS), RETAIN_ROWS, cfg, [], bank_available=True)
    assert banked.action == "unlearn", banked.reason
    assert banked.cost is not None and banked.cost.evidence_seconds == 0.0
    assert banked.cost.evidence == "the reference bank (inference only)"
    assert banked.to_dict()["cost"]["evidence"] == "the reference bank (inference only)"
    assert banked.cost.unlearn_over_retrain == pytest.approx(STEPS / RETRAIN)
    assert f"{STEPS / RETRAIN:.2f}× the retrain time" in banked.reason

    forced = cfg.model_copy(update={"reference_mode": "exact"})
    refused = gate(report, 1.0, _champion(TRAIN_SECONDS), RETAIN_ROWS, forced, [], bank_available=True)
    assert refused.action == "retrain" and "the exact reference's retrain" in refused.reason
    assert refused.cost is not None and refused.cost.evidence_seconds == pytest.approx(RETRAIN)


def test_with_a_bank_a_retrain_cheaper_than_the_steps_alone_still_wins() -> None:
    cfg = BatchConfig(method="hamu-q", max_steps=STEPS)
    quick = gate(_hardness(), 1.0, _champion(40.0), RETAIN_ROWS, cfg, [], bank_available=True)
    assert quick.action == "retrain" and "exact retraining is cheaper" in quick.reason
    assert quick.cost is not None and quick.cost.honour_by_unlearning == pytest.approx(STEPS)
    assert " plus " not in quick.reason  # no evidence cost is charged, so none is named
