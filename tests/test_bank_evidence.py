"""Reference-bank maths vs slow, obviously correct loops; AUC vs a pairwise oracle; hand-built answers."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from scipy import stats as sps

from hamu.evaluation.bank import (
    LOSS_CAP,
    BankEvidence,
    LossGap,
    assign_membership,
    bank_evidence,
    calibrated_losses,
    expected_forget_loss,
    lira_scores,
    loss_gap,
    out_statistics,
    short_rows,
)

# ---------------------------------------------------------------- oracles (plain Python loops)


def oracle_out_stats(
    values: np.ndarray, mask: np.ndarray
) -> tuple[list[float], list[float], list[int], float]:
    k, n = values.shape
    means, stds, counts = [], [], []
    num, den = 0.0, 0
    for j in range(n):
        xs = [float(values[i, j]) for i in range(k) if mask[i, j]]
        counts.append(len(xs))
        m = sum(xs) / len(xs) if xs else math.nan
        means.append(m)
        if len(xs) >= 2:
            var = sum((x - m) ** 2 for x in xs) / (len(xs) - 1)
            stds.append(math.sqrt(var))
            num += var * (len(xs) - 1)
            den += len(xs) - 1
        else:
            stds.append(math.nan)
    pooled = max(math.sqrt(num / den), 1e-6) if den else math.nan
    return means, stds, counts, pooled


def oracle_scores(phi: np.ndarray, values: np.ndarray, mask: np.ndarray, fixed: bool) -> list[float]:
    means, stds, counts, pooled = oracle_out_stats(values, mask)
    out = []
    for j in range(phi.size):
        sigma = pooled if fixed or counts[j] < 2 else max(stds[j], 1e-6)
        out.append((float(phi[j]) - means[j]) / sigma)
    return out


def oracle_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    total = 0.0
    for p in pos:
        for q in neg:
            total += 1.0 if p > q else 0.5 if p == q else 0.0
    return total / (pos.size * neg.size)


def oracle_calibrated(model: np.ndarray, bank: np.ndarray, mask: np.ndarray) -> list[float]:
    """Per row: min(model loss, cap) minus the mean of min(bank loss, cap) over the models OUT on the row."""
    k, n = bank.shape
    out = []
    for j in range(n):
        xs = [min(max(float(bank[i, j]), 0.0), LOSS_CAP) for i in range(k) if mask[i, j]]
        out.append(min(max(float(model[j]), 0.0), LOSS_CAP) - sum(xs) / len(xs))
    return out


# ---------------------------------------------------------------- assign_membership


@pytest.mark.parametrize(("n_rows", "n_models"), [(1, 2), (37, 4), (1000, 8), (501, 16)])
def test_membership_exactly_half_in_per_row(n_rows: int, n_models: int) -> None:
    m = assign_membership(n_rows, n_models, seed=3)
    assert m.shape == (n_models, n_rows)
    assert m.dtype == np.bool_
    np.testing.assert_array_equal(m.sum(axis=0), n_models // 2)


def test_membership_model_sizes_near_half() -> None:
    n = 4000
    sizes = assign_membership(n, 8, seed=11).sum(axis=1)
    # Binomial(4000, 1/2): sd ~ 32; 6 sd is loose yet fails for a model trained on all or none.
    assert np.all(np.abs(sizes - n / 2) < 6 * math.sqrt(n) / 2)


def test_membership_every_subset_drawn_uniformly() -> None:
    # K = 4: 6 possible IN pairs per row, each with probability 1/6.
    m = assign_membership(6000, 4, seed=5)
    codes = (m * np.array([[1], [2], [4], [8]])).sum(axis=0)
    counts = np.bincount(codes, minlength=16)[[3, 5, 6, 9, 10, 12]]
    assert np.all(np.abs(counts - 1000) < 150)


def test_membership_deterministic_and_seed_dependent() -> None:
    a = assign_membership(200, 6, seed=1)
    np.testing.assert_array_equal(a, assign_membership(200, 6, seed=1))
    assert not np.array_equal(a, assign_membership(200, 6, seed=2))


@pytest.mark.parametrize(
    ("n_rows", "n_models", "match"),
    [(10, 3, "even"), (10, 0, "even"), (10, -2, "even"), (0, 4, "n_rows must be >= 1")],
)
def test_membership_bad_args(n_rows: int, n_models: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        assign_membership(n_rows, n_models, seed=0)


# ---------------------------------------------------------------- out_statistics / lira_scores


@pytest.mark.parametrize("seed", range(6))
def test_out_statistics_and_scores_match_loop_oracle(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k, n = int(rng.integers(2, 9)), int(rng.integers(1, 40))
    values = rng.normal(size=(k, n)) * rng.uniform(0.1, 3.0, size=n) + rng.normal(size=n)
    mask = rng.random((k, n)) < 0.6
    mask[:, 0] = True  # at least one row with >= 2 OUT models, so the pooled std exists
    mask[0, :] = True  # every row has an OUT model, so every row can be scored
    # values where the model trained on the row must be ignored, NaN included
    values = np.where(mask, values, np.nan)
    stats = out_statistics(values, mask)
    means, stds, counts, pooled = oracle_out_stats(values, mask)
    np.testing.assert_allclose(stats.mean, means, rtol=1e-12)
    np.testing.assert_allclose(stats.std, stds, rtol=1e-10)
    np.testing.assert_array_equal(stats.n_out, counts)
    assert stats.n_out.dtype == np.int64
    assert stats.pooled_std == pytest.approx(pooled, rel=1e-12)
    phi = rng.normal(size=n)
    for fixed in (True, False):
        got = lira_scores(phi, stats, fixed_variance=fixed)
        np.testing.assert_allclose(got, oracle_scores(phi, values, mask, fixed), rtol=1e-10)


def test_out_statistics_nan_where_undefined_and_pooled_floor() -> None:
    values = np.array([[1.0, 2.0, 5.0], [1.0, 3.0, 5.0]])
    mask = np.array([[True, False, False], [True, True, False]])
    stats = out_statistics(values, mask)
    np.testing.assert_array_equal(stats.n_out, [2, 1, 0])
    assert stats.mean[0] == 1.0 and stats.mean[1] == 3.0 and np.isnan(stats.mean[2])
    assert stats.std[0] == 0.0 and np.isnan(stats.std[1:]).all()
    assert stats.pooled_std == 1e-6  # the only variance is 0, floored
    with pytest.raises(ValueError, match="1 rows have no OUT model"):
        lira_scores(np.zeros(3), stats)


def test_lira_scores_higher_for_members() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=(8, 50))
    stats = out_statistics(values, np.ones((8, 50), dtype=bool))
    scores = lira_scores(stats.mean + 3 * stats.pooled_std, stats)
    np.testing.assert_allclose(scores, 3.0)


def test_short_rows() -> None:
    mask = np.array([[True, False, True, False], [True, False, False, True], [False, False, True, False]])
    np.testing.assert_array_equal(short_rows(mask, 2), [1, 3])
    np.testing.assert_array_equal(short_rows(mask, 1), [1])
    assert short_rows(mask, 0).size == 0
    assert short_rows(mask, 2).dtype == np.int64


def test_out_statistics_bad_inputs() -> None:
    values = np.zeros((4, 5))
    mask = np.ones((4, 5), dtype=bool)
    with pytest.raises(ValueError, match=r"values has shape \(4, 5\) but its OUT mask has shape \(4, 6\)"):
        out_statistics(values, np.ones((4, 6), dtype=bool))
    with pytest.raises(ValueError, match="must be a bool array"):
        out_statistics(values, mask.astype(int))
    bad = values.copy()
    bad[1, 2] = np.nan
    bad[2, 3] = np.inf
    with pytest.raises(ValueError, match="NaN/Inf at 2 OUT entries"):
        out_statistics(bad, mask)
    stats = out_statistics(values, mask)
    with pytest.raises(ValueError, match="expected 5 target φ values"):
        lira_scores(np.zeros(4), stats)
    with pytest.raises(ValueError, match="target φ contains NaN/Inf"):
        lira_scores(np.array([0, 0, np.nan, 0, 0]), stats)


def test_lira_scores_without_any_variance_raises() -> None:
    stats = out_statistics(np.ones((2, 3)), np.array([[True, False, True], [False, True, False]]))
    assert np.isnan(stats.pooled_std)
    with pytest.raises(ValueError, match="no row has 2 OUT models"):
        lira_scores(np.zeros(3), stats)


# ---------------------------------------------------------------- bank_evidence


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pairwise_oracle_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    forget = rng.integers(0, 6, size=int(rng.integers(1, 60))).astype(float)
    test = rng.integers(0, 5, size=int(rng.integers(1, 60))).astype(float)
    ev = bank_evidence(forget, test, n_resamples=200, seed=seed)
    assert ev.auc == pytest.approx(oracle_auc(forget, test), abs=1e-12)
    assert ev.auc_ci_low <= ev.auc <= ev.auc_ci_high
    assert ev.mean_score_gap == pytest.approx(forget.mean() - test.mean())
    assert (ev.n_forget, ev.n_test) == (forget.size, test.size)


def test_null_half_width_formula() -> None:
    ev = bank_evidence(np.arange(30.0), np.arange(50.0), level=0.9, n_resamples=100)
    assert ev.null_half_width == pytest.approx(1.6448536269514722 * math.sqrt(81 / (12 * 30 * 50)))


def test_identical_distributions_auc_near_half() -> None:
    inside = 0
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        ev = bank_evidence(rng.normal(size=400), rng.normal(size=600), n_resamples=100, seed=seed)
        inside += abs(ev.auc - 0.5) <= 1.5 * ev.null_half_width
    assert inside >= 18


def test_shifted_forget_scores_detected() -> None:
    rng = np.random.default_rng(7)
    ev = bank_evidence(rng.normal(2.0, 1.0, size=1000), rng.normal(size=1000), seed=1)
    assert ev.auc > 0.9
    assert ev.auc_ci_low > 0.5 + ev.null_half_width
    assert ev.auc_ci_high < 1.0
    assert ev.mean_score_gap > 1.5


def test_bootstrap_fast_and_deterministic() -> None:
    rng = np.random.default_rng(0)
    forget, test = rng.normal(size=2000), rng.normal(size=2000)
    start = time.perf_counter()
    a = bank_evidence(forget, test, n_resamples=1000, seed=3)
    assert time.perf_counter() - start < 2.0
    b = bank_evidence(forget, test, n_resamples=1000, seed=3)
    assert (a.auc_ci_low, a.auc_ci_high) == (b.auc_ci_low, b.auc_ci_high)


def test_detectable_fractions_hand_built() -> None:
    test = np.arange(10.0)  # 0..9
    forget = np.array([8.0, 8.5, 9.0, 10.0, -1.0])
    ev = bank_evidence(forget, test, fprs=(0.2, 0.1, 0.01), n_resamples=100)
    # fpr 0.2: 2 test rows may exceed -> threshold 7 -> 8, 8.5, 9, 10 detected
    # fpr 0.1: 1 test row may exceed  -> threshold 8 -> 8.5, 9, 10
    # fpr 0.01: 10 * 0.01 < 1          -> threshold max = 9 -> 10 only, unresolved
    assert ev.detectable == {"fpr_0.2": 0.8, "fpr_0.1": 0.6, "fpr_0.01": 0.2}
    assert ev.resolved == {"fpr_0.2": True, "fpr_0.1": True, "fpr_0.01": False}


def test_detectable_threshold_robust_to_float_products() -> None:
    # 100 * 0.29 == 28.999999999999996 in floats; 29 test rows (71..99) may exceed the threshold 70.
    ev = bank_evidence(np.array([70.0, 70.5]), np.arange(100.0), fprs=(0.29,), n_resamples=100)
    assert ev.detectable == {"fpr_0.29": 0.5}
    assert ev.resolved == {"fpr_0.29": True}


def test_resolved_flags_follow_test_size() -> None:
    ev = bank_evidence(np.zeros(5), np.arange(999.0), n_resamples=100)
    assert ev.resolved == {"fpr_0.01": True, "fpr_0.001": False}
    ev = bank_evidence(np.zeros(5), np.arange(1000.0), n_resamples=100)
    assert ev.resolved == {"fpr_0.01": True, "fpr_0.001": True}


def test_to_dict_is_json_safe_without_rows() -> None:
    rng = np.random.default_rng(2)
    ev = bank_evidence(rng.normal(size=40), rng.normal(size=50), n_resamples=100)
    d = ev.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert set(d) == {f for f in BankEvidence.__dataclass_fields__}
    for v in d.values():
        assert not isinstance(v, np.ndarray | list | np.generic)
    assert type(d["auc"]) is float and type(d["n_forget"]) is int
    assert all(type(v) is bool for v in d["resolved"].values())


@pytest.mark.parametrize(
    ("forget", "test", "kwargs", "match"),
    [
        ([0.0, np.nan], [0.0], {}, "forget_scores contains NaN/Inf"),
        ([0.0], [np.inf, 1.0], {}, "test_scores contains NaN/Inf"),
        ([], [0.0], {}, "forget_scores is empty"),
        ([0.0], [], {}, "test_scores is empty"),
        ([[0.0]], [0.0], {}, "forget_scores must be 1-D"),
        ([0.0], [0.0], {"level": 1.0}, r"level must lie in \(0, 1\)"),
        ([0.0], [0.0], {"fprs": (0.0,)}, r"fprs must lie in \(0, 1\)"),
        ([0.0], [0.0], {"fprs": (1.0,)}, r"fprs must lie in \(0, 1\)"),
        ([0.0], [0.0], {"n_resamples": 99}, "n_resamples must be >= 100"),
    ],
)
def test_bank_evidence_bad_inputs(forget: list, test: list, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        bank_evidence(np.array(forget), np.array(test), **kwargs)


# ---------------------------------------------------------------- expected_forget_loss


def test_expected_forget_loss_hand_built() -> None:
    bank_forget = np.array([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])
    forget_out = np.array([[True, False, True], [True, True, False]])
    # OUT means per row: (1+3)/2 = 2, 4, 3
    bank_test = np.array([[1.0, 3.0], [3.0, 5.0]])  # model means 2 and 4 -> 3
    served_test = np.array([0.5, 1.5])  # mean 1 -> shift = 1 - 3 = -2
    mean, per_row = expected_forget_loss(bank_forget, forget_out, bank_test, served_test)
    np.testing.assert_allclose(per_row, [0.0, 2.0, 1.0])
    assert mean == pytest.approx(1.0)


def test_expected_forget_loss_bad_inputs() -> None:
    bank_forget = np.ones((2, 3))
    out = np.array([[True, False, True], [True, False, False]])
    with pytest.raises(ValueError, match="1 forget rows have no OUT bank model"):
        expected_forget_loss(bank_forget, out, np.ones((2, 4)), np.ones(4))
    out[0, 1] = True
    with pytest.raises(ValueError, match="served_test_loss has 3 rows but bank_test_loss has 4"):
        expected_forget_loss(bank_forget, out, np.ones((2, 4)), np.ones(3))
    with pytest.raises(ValueError, match=r"bank_test_loss must have shape \(2, n_test\)"):
        expected_forget_loss(bank_forget, out, np.ones((3, 4)), np.ones(4))
    with pytest.raises(ValueError, match=r"bank_forget_loss has shape \(2, 3\) but its OUT mask"):
        expected_forget_loss(bank_forget, out[:, :2], np.ones((2, 4)), np.ones(4))
    with pytest.raises(ValueError, match="served_test_loss contains NaN/Inf"):
        expected_forget_loss(bank_forget, out, np.ones((2, 2)), np.array([1.0, np.nan]))


# ---------------------------------------------------------------- calibrated_losses


@pytest.mark.parametrize("seed", range(6))
def test_calibrated_losses_match_loop_oracle_with_the_cap(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k, n = int(rng.integers(2, 9)), int(rng.integers(5, 60))
    bank = rng.exponential(2.0, size=(k, n))
    model = rng.exponential(2.0, size=n)
    mask = rng.random((k, n)) < 0.5
    mask[rng.integers(0, k, n), np.arange(n)] = True  # every row has an OUT model
    # losses past the cap, on OUT entries, IN entries and the model itself
    bank[rng.random((k, n)) < 0.15] = 300.0
    bank[0, 0], mask[0, 0] = 50.0, True
    model[rng.random(n) < 0.15] = 300.0
    model[0] = LOSS_CAP + 1e-3
    # where a model trained on the row its loss is never read, NaN included
    bank = np.where(mask, bank, np.where(rng.random((k, n)) < 0.5, np.nan, 1e6))
    got = calibrated_losses(model, bank, mask)
    assert got.shape == (n,) and got.dtype == np.float64
    np.testing.assert_allclose(got, oracle_calibrated(model, bank, mask), rtol=1e-12, atol=1e-12)
    # the cap decides: no calibrated loss exceeds LOSS_CAP in size, which uncapped 300s would
    assert np.abs(got).max() <= LOSS_CAP
    uncapped = model - out_statistics(bank, mask).mean
    assert np.abs(uncapped).max() > LOSS_CAP


def test_calibrated_losses_hand_built() -> None:
    bank = np.array([[1.0, 20.0, 0.5], [3.0, 2.0, 7.0]])
    mask = np.array([[True, True, False], [True, False, True]])
    # OUT means, capped: (1 + 3)/2 = 2, min(20, 10) = 10, 7
    got = calibrated_losses(np.array([1.5, 40.0, 7.0]), bank, mask)
    np.testing.assert_allclose(got, [-0.5, 0.0, 0.0])


def test_calibrated_losses_bad_inputs() -> None:
    bank = np.ones((2, 3))
    mask = np.array([[True, False, True], [True, False, False]])
    with pytest.raises(ValueError, match=r"1 row\(s\) have no bank member that never trained on them"):
        calibrated_losses(np.ones(3), bank, mask)
    mask[0, 1] = True
    with pytest.raises(ValueError, match="model_loss has 4 rows, the bank's losses 3"):
        calibrated_losses(np.ones(4), bank, mask)
    with pytest.raises(ValueError, match="model_loss has 2 rows, the bank's losses 3"):
        calibrated_losses(np.ones(2), bank, mask)
    with pytest.raises(ValueError, match=r"has shape \(2, 3\) but its OUT mask has shape \(2, 2\)"):
        calibrated_losses(np.ones(3), bank, mask[:, :2])
    with pytest.raises(ValueError, match="must be a bool array"):
        calibrated_losses(np.ones(3), bank, mask.astype(int))
    bad = bank.copy()
    bad[0, 0] = np.nan  # an OUT entry
    with pytest.raises(ValueError, match="NaN/Inf at 1 OUT entries"):
        calibrated_losses(np.ones(3), bad, mask)


def test_calibrated_losses_scalar_model_loss_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="model_loss"):
        calibrated_losses(np.float64(1.0), np.ones((2, 3)), np.ones((2, 3), dtype=bool))


def test_calibrated_losses_refuses_a_nan_model_loss() -> None:
    with pytest.raises(ValueError, match="NaN"):
        calibrated_losses(np.array([np.nan, 1.0, 1.0]), np.ones((2, 3)), np.ones((2, 3), dtype=bool))


# ---------------------------------------------------------------- loss_gap


def oracle_noise(forget: np.ndarray, test: np.ndarray, level: float) -> float:
    z = float(sps.norm.ppf((1.0 + level) / 2.0))
    m = sum(test) / len(test)
    sd = math.sqrt(sum((x - m) ** 2 for x in test) / (len(test) - 1))
    return z * sd * math.sqrt(1.0 / len(forget) + 1.0 / len(test))


@pytest.mark.parametrize(("seed", "level"), [(0, 0.95), (1, 0.9), (2, 0.99), (3, 0.8)])
def test_loss_gap_matches_independent_computation(seed: int, level: float) -> None:
    rng = np.random.default_rng(seed)
    forget = rng.normal(-0.3, 0.7, size=int(rng.integers(50, 400)))
    test = rng.normal(0.1, 0.4, size=int(rng.integers(50, 800)))
    g = loss_gap(forget, test, level=level, n_resamples=400, seed=seed)
    assert isinstance(g, LossGap)
    assert g.gap == pytest.approx(sum(forget) / len(forget) - sum(test) / len(test), abs=1e-12)
    assert g.ci_low < g.gap < g.ci_high
    assert g.noise == pytest.approx(oracle_noise(forget, test, level), rel=1e-12)
    assert (g.n_forget, g.n_test) == (forget.size, test.size)
    # the percentile interval's half-width is about z·√(var_f/n_f + var_t/n_t)
    z = float(sps.norm.ppf((1.0 + level) / 2.0))
    se = math.sqrt(forget.var(ddof=1) / forget.size + test.var(ddof=1) / test.size)
    assert (g.ci_high - g.ci_low) / 2 == pytest.approx(z * se, rel=0.2)


def test_loss_gap_noise_uses_the_test_rows_spread_only() -> None:
    test = np.array([0.0, 1.0, 2.0, 3.0])  # sd (ddof 1) = √(5/3)
    for forget in (np.zeros(6), np.arange(6.0) * 100):
        g = loss_gap(forget, test, level=0.9, n_resamples=100)
        expected = float(sps.norm.ppf(0.95)) * math.sqrt(5 / 3) * math.sqrt(1 / 6 + 1 / 4)
        assert g.noise == pytest.approx(expected, rel=1e-12)
    assert loss_gap(np.zeros(3), np.array([2.0]), n_resamples=100).noise == 0.0


def test_loss_gap_deterministic_per_seed() -> None:
    rng = np.random.default_rng(9)
    forget, test = rng.normal(size=300), rng.normal(size=500)
    a = loss_gap(forget, test, seed=4)
    assert a == loss_gap(forget, test, seed=4)
    b = loss_gap(forget, test, seed=5)
    assert (a.ci_low, a.ci_high) != (b.ci_low, b.ci_high)
    assert (a.gap, a.noise) == (b.gap, b.noise)  # only the bootstrap depends on the seed


def test_loss_gap_to_dict_is_json_safe() -> None:
    d = loss_gap(np.arange(5.0), np.arange(7.0), n_resamples=100).to_dict()
    assert json.loads(json.dumps(d)) == d
    assert set(d) == set(LossGap.__dataclass_fields__)
    assert type(d["gap"]) is float and type(d["n_forget"]) is int and type(d["n_test"]) is int


@pytest.mark.parametrize(
    ("forget", "test", "kwargs", "match"),
    [
        ([0.0, np.nan], [0.0], {}, "forget contains NaN/Inf"),
        ([0.0], [np.nan, 1.0], {}, "test contains NaN/Inf"),
        ([0.0], [np.inf, 1.0], {}, "test contains NaN/Inf"),
        ([], [0.0], {}, "forget is empty"),
        ([0.0], [], {}, "test is empty"),
        ([0.0], [0.0], {"level": 0.0}, r"level must lie in \(0, 1\)"),
        ([0.0], [0.0], {"level": 1.0}, r"level must lie in \(0, 1\)"),
        ([0.0], [0.0], {"level": 1.5}, r"level must lie in \(0, 1\)"),
        ([0.0], [0.0], {"n_resamples": 99}, "n_resamples must be >= 100"),
        ([0.0], [0.0], {"n_resamples": 0}, "n_resamples must be >= 100"),
    ],
)
def test_loss_gap_bad_inputs(forget: list, test: list, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        loss_gap(np.array(forget), np.array(test), **kwargs)
