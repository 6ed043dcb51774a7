"""The model-wide HAMU transform: per-block radii and constraint shares, the batched per-block solution,
the global guarantee, global mode against a numerical solver, feasibility policies, and config validation.

Radii and shares are recomputed here in numpy from their definitions; per-block solutions are compared with
:func:`solve_block` (itself checked against a numerical solver in test_solver.py) and, for the optimal
values, with the numerical oracle directly.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Callable

import numpy as np
import pytest
import torch

from hamu.core.arrays import to_tensor, to_tensors
from hamu.core.layout import FlatLayout
from hamu.core.solver import BRANCH_LABELS, Branch, solve_block
from hamu.core.transform import HamuConfig, HamuTransform, count_branches

pytestmark = pytest.mark.usefixtures("single_thread")

SHAPES = [(4, 3), (3,), (2, 2, 2), (5,), (1,), (6, 2)]
VARIANTS = ("hamu-q", "hamu-u")
SPLITS = ("grad-norm", "equal", "softmax", "grad-norm-unnormalised")
LR = 0.05
FEAS_RTOL = 1e-9


def make_layout(shapes=SHAPES, dtype=torch.float64) -> FlatLayout:
    tensors = [torch.zeros(s, dtype=dtype) for s in shapes]
    return FlatLayout.for_tensors([f"t{i}" for i in range(len(shapes))], tensors)


def segments(flat: np.ndarray, shapes=SHAPES) -> list[np.ndarray]:
    sizes = [int(np.prod(s)) for s in shapes]
    return np.split(np.asarray(flat, dtype=np.float64), np.cumsum(sizes)[:-1])


def random_pair(
    rng: np.random.Generator, shapes=SHAPES, corr: tuple[float, float] = (-1.5, 1.5)
) -> tuple[np.ndarray, np.ndarray]:
    """Per tensor: g_r of random scale, g_f = a·g_r + noise with a random per-tensor correlation a."""
    rs, fs = [], []
    for s in shapes:
        n = int(np.prod(s))
        g_r = rng.normal(size=n) * math.exp(rng.uniform(-1, 1))
        a = rng.uniform(*corr)
        g_f = a * g_r + rng.normal(size=n) * math.exp(rng.uniform(-1, 1)) * 0.7
        rs.append(g_r)
        fs.append(g_f)
    return np.concatenate(rs), np.concatenate(fs)


def effective(variant: str, g_r: np.ndarray, g_f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(objective vector o, constraint vector c) of the problem the variant solves."""
    return (g_r, g_f) if variant == "hamu-q" else (-g_f, -g_r)


def expected_shares(
    split: str, g_r: list[np.ndarray], g_f: list[np.ndarray], eff_norm: float | None = None
) -> np.ndarray:
    """B_t / B for each split rule, from the definitions. The unnormalised split's shares do not sum to 1:
    ‖g_r,t‖‖g_f,t‖ with the lr radius, divided by ‖e_r‖ (``eff_norm``) with a fixed radius."""
    n = len(g_r)
    if split == "equal":
        return np.full(n, 1.0 / n)
    if split == "softmax":
        neg_kappa = -np.array([r @ f for r, f in zip(g_r, g_f, strict=True)])
        w = np.exp(neg_kappa - neg_kappa.max())
        return w / w.sum()
    w = np.array([np.linalg.norm(r) * np.linalg.norm(f) for r, f in zip(g_r, g_f, strict=True)])
    if split == "grad-norm-unnormalised":
        return w if eff_norm is None else w / eff_norm
    return w / w.sum()


def run(cfg: HamuConfig, g_r: np.ndarray, g_f: np.ndarray, layout: FlatLayout | None = None, lr: float = LR):
    layout = layout or make_layout()
    return HamuTransform(cfg)(torch.from_numpy(g_r), torch.from_numpy(g_f), layout, lr=lr)


def _config(variant: str, split: str, radius_mode: str, B: float, R: float | None) -> HamuConfig:
    if radius_mode == "lr":
        return HamuConfig(variant=variant, split=split, constraint_ratio=B / LR)  # type: ignore[arg-type]
    return HamuConfig(variant=variant, split=split, radius=R, constraint=B)  # type: ignore[arg-type]


@pytest.mark.parametrize("radius_mode", ["lr", "fixed"])
@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_layerwise_equals_per_block_solution(
    qp_oracle: Callable, variant: str, split: str, radius_mode: str
) -> None:
    rng = np.random.default_rng(100 * VARIANTS.index(variant) + 10 * SPLITS.index(split) + len(radius_mode))
    seen_branches: set[str] = set()
    for draw in range(6):
        g_r, g_f = random_pair(rng)
        o, c = effective(variant, g_r, g_f)
        os_, cs = segments(o), segments(c)
        rs, fs = segments(g_r), segments(g_f)
        # Radii from the definitions: R_t = η‖e_r,t‖, or a fixed total R split as R·‖e_r,t‖/‖e_r‖.
        if radius_mode == "lr":
            R_total = LR * np.linalg.norm(o)
            radii = np.array([LR * np.linalg.norm(x) for x in os_])
        else:
            R_total = 0.3
            radii = np.array([R_total * np.linalg.norm(x) / np.linalg.norm(o) for x in os_])
        shares = expected_shares(split, rs, fs, None if radius_mode == "lr" else float(np.linalg.norm(o)))
        # The largest B for which every block is feasible (B_t ≤ R_t‖c_t‖); use a fraction of it.
        B_max = min(radii[t] * np.linalg.norm(cs[t]) / shares[t] for t in range(len(SHAPES)))
        if split == "grad-norm-unnormalised":  # scale-free: every block is feasible iff c ≤ 1
            assert B_max == pytest.approx(LR if radius_mode == "lr" else R_total, rel=1e-12)
        B = B_max * [0.1, 0.5, 0.9, 0.99, 0.3, 0.7][draw]
        cfg = _config(variant, split, radius_mode, B, R_total)
        out = run(cfg, g_r, g_f)

        np.testing.assert_allclose(out.radius.numpy(), radii, rtol=1e-12)
        np.testing.assert_allclose(out.constraint.numpy(), B * shares, rtol=1e-12)
        # Σ B_t = B, except under the unnormalised split, whose total is B·Σ shares (B·S with the lr radius).
        B_total = B * shares.sum()
        if split != "grad-norm-unnormalised":
            assert B_total == pytest.approx(B, rel=1e-12)
        assert out.constraint.sum().item() == pytest.approx(B_total, rel=1e-12)
        assert out.constraint_total.item() == pytest.approx(B_total, rel=1e-12)
        assert (out.radius.square().sum().item()) == pytest.approx(R_total**2, rel=1e-12)  # Σ R_t² = R²
        np.testing.assert_allclose(
            out.kappa.numpy(), [r @ f for r, f in zip(rs, fs, strict=True)], rtol=1e-12
        )
        assert out.kappa_global.item() == pytest.approx(g_r @ g_f, rel=1e-12, abs=1e-12)

        delta = out.update.numpy()
        deltas = segments(delta)
        labels = [BRANCH_LABELS[int(b)] for b in out.blocks.branch]
        oracle_total = 0.0
        for t in range(len(SHAPES)):
            sol = solve_block(
                torch.from_numpy(rs[t]),
                torch.from_numpy(fs[t]),
                radius=float(radii[t]),
                constraint=float(B * shares[t]),
                variant=variant,  # type: ignore[arg-type]
            )
            assert labels[t] == sol.branch, (draw, t)
            assert sol.feasible, (draw, t)
            np.testing.assert_allclose(deltas[t], sol.update.numpy(), rtol=1e-9, atol=1e-12 * radii[t])
            ref = qp_oracle(os_[t], cs[t], radii[t], B * shares[t])
            assert os_[t] @ deltas[t] == pytest.approx(
                ref.value, abs=1e-6 * radii[t] * np.linalg.norm(os_[t])
            )
            oracle_total += ref.value
            seen_branches.add(labels[t])
        assert not bool(out.stop_infeasible)
        # Every block feasible ⇒ the concatenated update is feasible for the whole-model problem.
        assert c @ delta >= B_total * (1 - FEAS_RTOL)
        assert np.linalg.norm(delta) <= R_total * (1 + FEAS_RTOL)
        # Diagnostics agree with the update actually returned.
        assert out.predicted_retain_change.item() == pytest.approx(g_r @ delta, rel=1e-9, abs=1e-15)
        assert out.predicted_forget_change.item() == pytest.approx(g_f @ delta, rel=1e-9, abs=1e-15)
        # The stopping margin is minus the solved objective's predicted change (o·δ).
        assert out.stopping_margin.item() == pytest.approx(-(o @ delta), rel=1e-9, abs=1e-15)
        counts = out.branch_counts.tolist()
        assert counts == [labels.count(name) for name in BRANCH_LABELS]
        if abs(oracle_total) > 1e-6 * R_total * np.linalg.norm(o):
            assert bool(out.degradation) == (oracle_total > 0)
    assert {"direct", "rectified"} <= seen_branches


@pytest.mark.parametrize("variant", VARIANTS)
def test_default_config_closed_form(variant: str) -> None:
    """Default (lr radius, grad-norm split): every block moves exactly η‖e_r,t‖, and a block goes direct
    (δ_t = −η·e_r,t) iff cos θ_t ≤ −k̂ with k̂ = c/S, S = Σ_s ‖g_r,s‖‖g_f,s‖ (the reference's §1.7)."""
    rng = np.random.default_rng(42 + VARIANTS.index(variant))
    n_direct = n_other = 0
    for _ in range(10):
        g_r, g_f = random_pair(rng)
        o, c = effective(variant, g_r, g_f)
        S = sum(
            np.linalg.norm(r) * np.linalg.norm(f) for r, f in zip(segments(g_r), segments(g_f), strict=True)
        )
        ratio = rng.uniform(0.05, 0.95) * S  # c = B/η < S: every block feasible
        out = run(HamuConfig(variant=variant, constraint_ratio=ratio), g_r, g_f)  # type: ignore[arg-type]
        k_hat = ratio / S
        for o_t, c_t, d_t, b in zip(
            segments(o), segments(c), segments(out.update.numpy()), out.blocks.branch, strict=True
        ):
            cos = o_t @ c_t / (np.linalg.norm(o_t) * np.linalg.norm(c_t))
            if abs(cos + k_hat) < 1e-9:
                continue
            if cos > 1 - 1e-12:  # the one-element tensor: parallel gradients, smallest step meeting B_t
                assert BRANCH_LABELS[int(b)] == "colinear"
                assert c_t @ d_t == pytest.approx(k_hat * LR * np.linalg.norm(o_t) * np.linalg.norm(c_t))
                assert np.linalg.norm(d_t) == pytest.approx(k_hat * LR * np.linalg.norm(o_t), rel=1e-10)
                continue
            assert np.linalg.norm(d_t) == pytest.approx(LR * np.linalg.norm(o_t), rel=1e-10)
            if cos <= -k_hat:
                n_direct += 1
                assert BRANCH_LABELS[int(b)] == "direct"
                np.testing.assert_allclose(d_t, -LR * o_t, rtol=1e-10, atol=1e-15)
            else:
                n_other += 1
                assert BRANCH_LABELS[int(b)] == "rectified"
                # The forced ascent share along ĉ_t is k̂ of the step length.
                assert c_t @ d_t / np.linalg.norm(c_t) == pytest.approx(k_hat * np.linalg.norm(d_t), rel=1e-9)
    assert n_direct > 5 and n_other > 5


def _reference_per_tensor_global_update(g_r: np.ndarray, g_f: np.ndarray, R: float, B: float) -> np.ndarray:
    """The public reference's --full_grad rectified update (HAMU-Q): global a and √Δ, but g_r⊥ normalised
    per tensor. Each tensor's orthogonal part then has length √Δ, so the total step exceeds R."""
    f_sq = g_f @ g_f
    kappa = g_r @ g_f
    a = (B / f_sq) * g_f
    disc = R * R - B * B / f_sq
    perp = g_r - (kappa / f_sq) * g_f
    parts = [
        a_t - math.sqrt(disc) * p_t / np.linalg.norm(p_t)
        for a_t, p_t in zip(segments(a), segments(perp), strict=True)
    ]
    return np.concatenate(parts)


def _assert_in_trust_region(delta: np.ndarray, R: float) -> None:
    assert np.linalg.norm(delta) <= R * (1 + FEAS_RTOL), (
        f"trust region: ‖δ‖ = {np.linalg.norm(delta)!r} > R = {R!r}"
    )


def _assert_meets_constraint(delta: np.ndarray, c: np.ndarray, B: float) -> None:
    assert c @ delta >= B * (1 - FEAS_RTOL), f"constraint: c·δ = {c @ delta!r} < B = {B!r}"


@pytest.mark.parametrize("radius_mode", ["lr", "fixed"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_global_mode_equals_numerical_global_optimum(
    qp_oracle: Callable, variant: str, radius_mode: str
) -> None:
    rng = np.random.default_rng(7 + VARIANTS.index(variant) + 2 * len(radius_mode))
    seen: set[str] = set()
    n_wrong_caught = 0
    for draw in range(12):
        # Mostly aligned draws (rectified), some opposed (direct).
        corr = (0.2, 1.5) if draw % 3 else (-1.5, -0.5)
        g_r, g_f = random_pair(rng, corr=corr)
        o, c = effective(variant, g_r, g_f)
        R = LR * np.linalg.norm(o) if radius_mode == "lr" else 0.4
        B = rng.uniform(0.05, 0.9) * R * np.linalg.norm(c)
        cfg = _config(variant, "grad-norm", radius_mode, B, R)
        cfg = dataclasses.replace(cfg, mode="global")
        out = run(cfg, g_r, g_f)
        delta = out.update.numpy()
        branch = BRANCH_LABELS[int(out.blocks.branch[0])]
        seen.add(branch)
        assert out.radius.numel() == 1 and out.radius.item() == pytest.approx(R, rel=1e-12)
        ref = qp_oracle(o, c, R, B)
        assert o @ delta == pytest.approx(ref.value, abs=1e-6 * R * np.linalg.norm(o))
        np.testing.assert_allclose(delta, ref.x, atol=1e-5 * R)  # unique optimum (not colinear)
        _assert_in_trust_region(delta, R)
        _assert_meets_constraint(delta, c, B)
        if variant == "hamu-q" and branch == "rectified":
            # The reference's per-tensor normalisation breaks the trust region; the same check catches it.
            wrong = _reference_per_tensor_global_update(g_r, g_f, R, B)
            with pytest.raises(AssertionError, match="trust region"):
                _assert_in_trust_region(wrong, R)
            n_wrong_caught += 1
    assert seen == {"direct", "rectified"}
    if variant == "hamu-q":
        assert n_wrong_caught >= 4


@pytest.mark.parametrize("variant", VARIANTS)
def test_all_blocks_infeasible_stop_and_continue(variant: str) -> None:
    rng = np.random.default_rng(5)
    g_r, g_f = random_pair(rng)
    o, c = effective(variant, g_r, g_f)
    S = sum(np.linalg.norm(r) * np.linalg.norm(f) for r, f in zip(segments(g_r), segments(g_f), strict=True))
    ratio = 1.5 * S  # c > S: with the lr radius and grad-norm split every block is infeasible

    stop = run(HamuConfig(variant=variant, constraint_ratio=ratio), g_r, g_f)  # type: ignore[arg-type]
    assert bool(stop.stop_infeasible)
    assert bool(stop.degradation)
    assert torch.equal(stop.update, torch.zeros_like(stop.update))
    assert stop.branch_counts[BRANCH_LABELS.index("infeasible")].item() == len(SHAPES)

    cont = run(
        HamuConfig(variant=variant, constraint_ratio=ratio, on_infeasible="continue"),  # type: ignore[arg-type]
        g_r,
        g_f,
    )
    assert not bool(cont.stop_infeasible)
    assert bool(cont.degradation)
    B_t = cont.constraint.numpy()
    for t, (c_t, d_t, o_t) in enumerate(
        zip(segments(c), segments(cont.update.numpy()), segments(o), strict=True)
    ):
        # The ascent step: the smallest δ_t with c_t·δ_t ≥ B_t (parallel to c_t, c_t·δ_t = B_t); leaves R_t.
        assert c_t @ d_t == pytest.approx(B_t[t], rel=1e-10)
        assert abs(c_t @ d_t) == pytest.approx(np.linalg.norm(c_t) * np.linalg.norm(d_t), rel=1e-10)
        assert np.linalg.norm(d_t) > LR * np.linalg.norm(o_t)


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_infeasible_block(variant: str) -> None:
    """Equal split: a block with a tiny radius cannot meet its share. Stop: nothing moves. Continue: that
    block takes the ascent step, every other block its own solution."""
    rng = np.random.default_rng(17)
    g_r, g_f = random_pair(rng, corr=(0.5, 1.0))
    rs, fs = segments(g_r), segments(g_f)
    shrink = 3
    # Shrink the effective retain gradient (hence R_t = η‖e_r,t‖) of block 3.
    (fs if variant == "hamu-u" else rs)[shrink] *= 1e-4
    g_r, g_f = np.concatenate(rs), np.concatenate(fs)
    o, c = effective(variant, g_r, g_f)
    radii = [LR * np.linalg.norm(x) for x in segments(o)]
    reach = [r * np.linalg.norm(x) for r, x in zip(radii, segments(c), strict=True)]
    others = min(x for t, x in enumerate(reach) if t != shrink)
    B = 0.5 * others * len(SHAPES)  # B_t = B/n = others/2: feasible everywhere except the shrunk block
    assert B / len(SHAPES) > reach[shrink]
    base = {"variant": variant, "split": "equal", "constraint_ratio": B / LR}

    stop = run(HamuConfig(**base), g_r, g_f)  # type: ignore[arg-type]
    assert bool(stop.stop_infeasible)
    assert torch.equal(stop.update, torch.zeros_like(stop.update))

    cont = run(HamuConfig(**base, on_infeasible="continue"), g_r, g_f)  # type: ignore[arg-type]
    assert not bool(cont.stop_infeasible)
    for t, d_t in enumerate(segments(cont.update.numpy())):
        sol = solve_block(
            torch.from_numpy(rs[t]),
            torch.from_numpy(fs[t]),
            radius=radii[t],
            constraint=B / len(SHAPES),
            variant=variant,  # type: ignore[arg-type]
            continue_on_infeasible=True,
        )
        assert sol.branch == ("infeasible" if t == shrink else sol.branch)
        assert sol.feasible == (t != shrink)
        np.testing.assert_allclose(d_t, sol.update.numpy(), rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("variant", VARIANTS)
def test_degradation_rule_ignores_obtuse_blocks(variant: str) -> None:
    """κ_t < 0 in every block: descent already helps forgetting, so nothing is unavoidable, although the
    reference's rule Σ_t ‖g_r,t‖‖g_f,t‖ sin θ_t < c (blind to the sign of κ) fires."""
    rng = np.random.default_rng(23)
    g_r, g_f = random_pair(rng, corr=(-3.0, -2.0))
    rs, fs = segments(g_r), segments(g_f)
    assert all(r @ f < 0 for r, f in zip(rs, fs, strict=True))
    S = sum(np.linalg.norm(r) * np.linalg.norm(f) for r, f in zip(rs, fs, strict=True))
    sin_sum = 0.0
    for r, f in zip(rs, fs, strict=True):
        cos = r @ f / (np.linalg.norm(r) * np.linalg.norm(f))
        sin_sum += np.linalg.norm(r) * np.linalg.norm(f) * math.sqrt(max(0.0, 1 - cos * cos))
    ratio = 0.5 * (sin_sum + S)
    assert sin_sum < ratio < S  # feasible, and the reference's stopping rule fires
    out = run(HamuConfig(variant=variant, constraint_ratio=ratio), g_r, g_f)  # type: ignore[arg-type]
    assert not bool(out.stop_infeasible)
    assert not bool(out.degradation)
    assert (
        out.predicted_retain_change.item() < 0
        if variant == "hamu-q"
        else out.predicted_forget_change.item() > 0
    )


def test_degradation_fires_when_aligned() -> None:
    """Nearly identical gradients and a large constraint: any step meeting it must raise the retain loss."""
    rng = np.random.default_rng(29)
    g_r, _ = random_pair(rng)
    g_f = g_r + 0.01 * rng.normal(size=g_r.size)
    S = sum(np.linalg.norm(r) * np.linalg.norm(f) for r, f in zip(segments(g_r), segments(g_f), strict=True))
    out = run(HamuConfig(constraint_ratio=0.9 * S), g_r, g_f)
    assert not bool(out.stop_infeasible)
    assert bool(out.degradation)
    assert g_r @ out.update.numpy() > 0


def test_block_without_forget_gradient_takes_plain_descent() -> None:
    """Grad-norm split gives a tensor with g_f,t = 0 no share (B_t = 0): its optimum is −R_t·ĝ_r,t."""
    rng = np.random.default_rng(31)
    g_r, g_f = random_pair(rng, corr=(0.3, 0.8))
    fs = segments(g_f)
    fs[2][:] = 0.0
    g_f = np.concatenate(fs)
    out = run(HamuConfig(constraint_ratio=0.1), g_r, g_f)
    assert out.constraint[2].item() == 0.0
    assert BRANCH_LABELS[int(out.blocks.branch[2])] == "direct"
    np.testing.assert_allclose(segments(out.update.numpy())[2], -LR * segments(g_r)[2], rtol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
def test_unnormalised_split_is_feasible_where_the_normalised_is_not(
    qp_oracle: Callable, variant: str
) -> None:
    """Gradients of a nearly converged model (S = Σ_t‖g_r,t‖‖g_f,t‖ ≪ 1) and c between S and 1: the
    normalised grad-norm split is infeasible in every block (it needs S ≥ c), the unnormalised one
    (B_t = B·‖g_r,t‖‖g_f,t‖) is feasible in every block, each block's update is the optimum of its own problem
    (checked against the numerical oracle), every block moves η‖e_r,t‖ with the forced cosine c (k̂ = c
    instead of c/S), and the update meets the split's total c·η·S, the total the stopping rule uses."""
    rng = np.random.default_rng(61 + VARIANTS.index(variant))
    n_direct = n_rectified = 0
    for draw in range(8):
        g_r, g_f = random_pair(rng)
        g_r, g_f = 0.02 * g_r, 0.03 * g_f
        o, c = effective(variant, g_r, g_f)
        rs, fs, os_, cs = segments(g_r), segments(g_f), segments(o), segments(c)
        S = sum(np.linalg.norm(r) * np.linalg.norm(f) for r, f in zip(rs, fs, strict=True))
        ratio = [0.1, 0.5, 0.9, 0.99][draw % 4]
        assert S < ratio <= 1

        normalised = run(HamuConfig(variant=variant, constraint_ratio=ratio), g_r, g_f)  # type: ignore[arg-type]
        assert bool(normalised.stop_infeasible)
        assert normalised.branch_counts[BRANCH_LABELS.index("infeasible")].item() == len(SHAPES)

        cfg = HamuConfig(variant=variant, constraint_ratio=ratio, split="grad-norm-unnormalised")  # type: ignore[arg-type]
        out = run(cfg, g_r, g_f)
        assert not bool(out.stop_infeasible)
        B = ratio * LR
        shares = np.array([B * np.linalg.norm(r) * np.linalg.norm(f) for r, f in zip(rs, fs, strict=True)])
        np.testing.assert_allclose(out.constraint.numpy(), shares, rtol=1e-12)
        assert out.constraint_total.item() == pytest.approx(B * S, rel=1e-12)
        deltas = segments(out.update.numpy())
        total_value = 0.0
        for t in range(len(SHAPES)):
            R_t = LR * np.linalg.norm(os_[t])
            ref = qp_oracle(os_[t], cs[t], R_t, shares[t])
            assert ref.feasible, (draw, t)
            assert os_[t] @ deltas[t] == pytest.approx(ref.value, abs=1e-6 * R_t * np.linalg.norm(os_[t]))
            assert np.linalg.norm(deltas[t]) <= R_t * (1 + FEAS_RTOL)
            assert cs[t] @ deltas[t] >= shares[t] * (1 - FEAS_RTOL)
            total_value += ref.value
            label = BRANCH_LABELS[int(out.blocks.branch[t])]
            cos = os_[t] @ cs[t] / (np.linalg.norm(os_[t]) * np.linalg.norm(cs[t]))
            if label == "colinear":  # the one-element tensor: not a unique optimum
                continue
            np.testing.assert_allclose(deltas[t], ref.x, atol=1e-5 * R_t)
            assert np.linalg.norm(deltas[t]) == pytest.approx(R_t, rel=1e-10)
            if cos <= -ratio:
                n_direct += 1
                assert label == "direct"
            else:
                n_rectified += 1
                assert label == "rectified"
                # Forced share of the step along ĉ_t: exactly c, whatever the gradient scale.
                assert cs[t] @ deltas[t] / np.linalg.norm(cs[t]) == pytest.approx(ratio * R_t, rel=1e-9)
        delta = out.update.numpy()
        assert c @ delta >= B * S * (1 - FEAS_RTOL)
        assert np.linalg.norm(delta) <= LR * np.linalg.norm(o) * (1 + FEAS_RTOL)
        # Global thresholds with the split's total constraint B·S (not B).
        R_total = LR * np.linalg.norm(o)
        assert out.kappa1_global.item() == pytest.approx(-B * S * np.linalg.norm(o) / R_total, rel=1e-10)
        k2 = np.linalg.norm(o) * math.sqrt(max(0.0, c @ c - (B * S / R_total) ** 2))
        assert out.kappa2_global.item() == pytest.approx(k2, rel=1e-10)
        assert bool(out.degradation) == (total_value > 0)
    assert n_direct > 3 and n_rectified > 3


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_blocks_without_gradient_take_no_share(variant: str, split: str) -> None:
    """A tensor with no gradient at all (an unused head: g_r,t = g_f,t = 0) and one with a retain gradient
    only must not take a share of B: their reach R_t‖e_f,t‖ is 0, so any share would be infeasible and
    stop the run at step 0. The other blocks share B as if those tensors were absent."""
    rng = np.random.default_rng(71 + SPLITS.index(split))
    g_r, g_f = random_pair(rng, corr=(0.3, 0.8))
    rs, fs = segments(g_r), segments(g_f)
    dead, one_sided = 2, 5
    rs[dead][:] = 0.0
    fs[dead][:] = 0.0
    # Only the solved problem's objective gradient: the constraint vector of this block is zero.
    (rs if variant == "hamu-u" else fs)[one_sided][:] = 0.0
    g_r, g_f = np.concatenate(rs), np.concatenate(fs)
    o, c = effective(variant, g_r, g_f)
    active = [t for t in range(len(SHAPES)) if t not in (dead, one_sided)]
    os_, cs = segments(o), segments(c)
    radii = np.array([LR * np.linalg.norm(x) for x in os_])
    shares = np.zeros(len(SHAPES))
    shares[active] = expected_shares(split, [rs[t] for t in active], [fs[t] for t in active])
    # A c every active block can meet.
    B = 0.5 * min(radii[t] * np.linalg.norm(cs[t]) / shares[t] for t in active)
    out = run(HamuConfig(variant=variant, split=split, constraint_ratio=B / LR), g_r, g_f)  # type: ignore[arg-type]
    assert not bool(out.stop_infeasible)
    np.testing.assert_allclose(out.constraint.numpy(), B * shares, rtol=1e-12, atol=0.0)
    if split != "grad-norm-unnormalised":
        assert out.constraint_total.item() == pytest.approx(B, rel=1e-12)
        assert out.constraint.sum().item() == pytest.approx(B, rel=1e-12)
    deltas = segments(out.update.numpy())
    assert not deltas[dead].any()
    for t in range(len(SHAPES)):
        sol = solve_block(
            torch.from_numpy(rs[t]),
            torch.from_numpy(fs[t]),
            radius=float(radii[t]),
            constraint=float(B * shares[t]),
            variant=variant,  # type: ignore[arg-type]
        )
        assert sol.feasible
        np.testing.assert_allclose(deltas[t], sol.update.numpy(), rtol=1e-9, atol=1e-15)
    # The one-sided block descends on its objective alone: −R_t·ô_t.
    np.testing.assert_allclose(deltas[one_sided], -LR * os_[one_sided], rtol=1e-12)
    assert c @ out.update.numpy() >= out.constraint_total.item() * (1 - FEAS_RTOL)


@pytest.mark.parametrize("split", ["grad-norm", "equal", "softmax"])
def test_no_block_with_a_gradient_is_infeasible(split: str) -> None:
    """No block can carry any share (all forget gradients are zero) and B > 0: the step is infeasible."""
    rng = np.random.default_rng(79)
    g_r, _ = random_pair(rng)
    out = run(HamuConfig(split=split, constraint_ratio=0.1), g_r, np.zeros_like(g_r))  # type: ignore[arg-type]
    assert bool(out.stop_infeasible)
    assert out.constraint.sum().item() == pytest.approx(0.1 * LR, rel=1e-12)


@pytest.mark.parametrize(("dtype", "angle"), [(torch.float64, 1e-6), (torch.float32, 5e-3)])
@pytest.mark.parametrize("variant", VARIANTS)
def test_nearly_colinear_block_stays_in_trust_region(variant: str, dtype: torch.dtype, angle: float) -> None:
    """One block with nearly parallel gradients. The rectified step's length must not depend on the
    cancellation in ‖e_r‖² − κ²/‖e_f‖², which overshoots R_t by up to ~eps/sin²θ (measured: 1.7e-4 in
    float64 at 1e-6 rad, 8e-3 in float32 at 5e-3 rad); we allow rounding of 4·eps/sin θ (measured: 6e-6
    in float32 here)."""
    rng = np.random.default_rng(37)
    t = 0
    R_t = LR * 0.8
    tol = 4 * torch.finfo(dtype).eps / math.sin(angle)
    layout = make_layout(dtype=dtype)
    cfg = HamuConfig(variant=variant, split="equal", constraint_ratio=0.01)  # type: ignore[arg-type]
    for _ in range(10):
        g_r, g_f = random_pair(rng, corr=(0.5, 1.0))
        rs, fs = segments(g_r), segments(g_f)
        e1 = rng.normal(size=rs[t].size)
        e1 /= np.linalg.norm(e1)
        e2 = rng.normal(size=rs[t].size)
        e2 -= (e2 @ e1) * e1
        e2 /= np.linalg.norm(e2)
        o_t, c_t = 0.8 * (math.cos(angle) * e1 + math.sin(angle) * e2), 1.3 * e1
        rs[t], fs[t] = (o_t, c_t) if variant == "hamu-q" else (-c_t, -o_t)
        g_r, g_f = np.concatenate(rs), np.concatenate(fs)
        out = HamuTransform(cfg)(
            torch.from_numpy(g_r).to(dtype), torch.from_numpy(g_f).to(dtype), layout, lr=LR
        )
        assert BRANCH_LABELS[int(out.blocks.branch[t])] == "rectified"
        d_t = segments(out.update.double().numpy())[t]
        assert np.linalg.norm(d_t) <= R_t * (1 + tol)
        # The constraint's rounding scale is R_t‖c_t‖ (B_t itself is much smaller here).
        assert c_t @ d_t >= out.constraint[t].item() - tol * R_t * np.linalg.norm(c_t)


def test_hamu_u_radius_uses_forget_gradient() -> None:
    rng = np.random.default_rng(41)
    g_r, g_f = random_pair(rng)
    out = run(HamuConfig(variant="hamu-u", constraint_ratio=0.01), g_r, g_f)
    np.testing.assert_allclose(
        out.radius.numpy(), [LR * np.linalg.norm(f) for f in segments(g_f)], rtol=1e-12
    )


@pytest.mark.parametrize(
    ("field", "value", "accepted"),
    [
        ("mode", "per-tensor", ("layerwise", "global")),
        ("split", "uniform", ("grad-norm", "equal", "softmax", "grad-norm-unnormalised")),
        ("variant", "hamu-z", ("hamu-q", "hamu-u")),
        ("on_infeasible", "skip", ("stop", "continue")),
    ],
)
def test_invalid_choice_names_accepted_values(field: str, value: str, accepted: tuple[str, ...]) -> None:
    with pytest.raises(ValueError) as err:
        HamuConfig(**{field: value})  # type: ignore[arg-type]
    message = str(err.value)
    assert value in message
    for name in accepted:
        assert name in message


@pytest.mark.parametrize(
    "kwargs",
    [
        {"constraint_ratio": -0.1},
        {"constraint_ratio": math.nan},
        {"constraint": -1.0},
        {"radius": -1.0, "constraint": 0.1},
        {"radius": math.inf, "constraint": 0.1},
        {"radius": 1.0},  # a fixed radius needs an absolute constraint
    ],
)
def test_invalid_numbers_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        HamuConfig(**kwargs)


def test_call_validation() -> None:
    layout = make_layout()
    g = torch.ones(layout.numel, dtype=torch.float64)
    transform = HamuTransform()
    with pytest.raises(ValueError, match="lr"):
        transform(g, g, layout, lr=0.0)
    with pytest.raises(ValueError, match="lr"):
        transform(g, g, layout, lr=-1.0)
    with pytest.raises(ValueError, match="elements"):
        transform(g[:-1], g[:-1], layout, lr=LR)
    with pytest.raises(ValueError, match="elements"):
        transform(g, g[:-1], layout, lr=LR)


@pytest.mark.parametrize("strategy", ["fused", "views"])
@pytest.mark.parametrize("seed", range(5))
def test_layout_primitives_match_numpy_for_each_strategy(strategy: str, seed: int) -> None:
    """Both implementations of the per-segment primitives (fused kernels for accelerators, per-view ops
    for the CPU) against numpy, so the path a GPU takes is checked on a CPU-only machine too."""
    rng = np.random.default_rng(seed)
    tensors = [torch.zeros(s, dtype=torch.float64) for s in SHAPES]
    layout = FlatLayout.for_tensors([f"t{i}" for i in range(len(SHAPES))], tensors, strategy=strategy)
    a, b = (rng.normal(size=layout.numel) for _ in range(2))
    c = rng.normal(size=len(SHAPES))
    ta, tb, tc = (torch.from_numpy(x) for x in (a, b, c))
    assert np.allclose(layout.segment_sum(ta).numpy(), [s.sum() for s in segments(a)], rtol=1e-12)
    dots = [x @ y for x, y in zip(segments(a), segments(b), strict=True)]
    assert np.allclose(layout.segment_dot(ta, tb).numpy(), dots, rtol=1e-12)
    scaled = np.concatenate([k * s for k, s in zip(c, segments(a), strict=True)])
    assert np.allclose(layout.scale(tc, ta).numpy(), scaled, rtol=1e-12)
    gram = layout.segment_gram(ta, tb)
    for got, want in zip(
        gram, ([x @ x for x in segments(a)], [y @ y for y in segments(b)], dots), strict=True
    ):
        assert np.allclose(got.numpy(), want, rtol=1e-12)
    residual = [float((x - k * y) @ (x - k * y)) for k, x, y in zip(c, segments(a), segments(b), strict=True)]
    assert np.allclose(layout.segment_residual_sq(ta, tc, tb).numpy(), residual, rtol=1e-10)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("seed", range(5))
def test_transform_is_the_same_on_both_layout_strategies(variant: str, seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    g_r, g_f = (torch.from_numpy(x) for x in random_pair(rng))
    tensors = [torch.zeros(s, dtype=torch.float64) for s in SHAPES]
    names = [f"t{i}" for i in range(len(SHAPES))]
    transform = HamuTransform(HamuConfig(variant=variant, constraint_ratio=0.05))
    outs = [
        transform(g_r, g_f, FlatLayout.for_tensors(names, tensors, strategy=s), lr=LR)
        for s in ("fused", "views")
    ]
    assert torch.allclose(outs[0].update, outs[1].update, rtol=1e-10, atol=1e-14)
    assert torch.equal(outs[0].branch_counts, outs[1].branch_counts)
    assert bool(outs[0].degradation) == bool(outs[1].degradation)


SCALAR_FIELDS = (
    "kappa",
    "radius",
    "constraint",
    "kappa_global",
    "kappa1_global",
    "kappa2_global",
    "predicted_retain_change",
    "predicted_forget_change",
    "stopping_margin",
    "constraint_total",
)


@pytest.mark.parametrize("policy", ["stop", "continue"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["layerwise", "global"])
@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_host_scalars_equal_device_scalars(
    variant: str, split: str, mode: str, dtype: torch.dtype, policy: str
) -> None:
    """The CPU path computes the per-block scalars with numpy, the accelerator path with torch (the
    ``fused`` strategy keeps torch on the CPU too): every output agrees, field by field, in type and dtype,
    including a block without a forget gradient and an infeasible one."""
    rng = np.random.default_rng(zlib.crc32(f"{variant}/{split}/{mode}".encode()))
    g_r, g_f = random_pair(rng)
    sizes = [int(np.prod(s)) for s in SHAPES]
    g_f[sum(sizes[:3]) : sum(sizes[:4])] = 0.0  # t3: no forget gradient
    tensors = [torch.zeros(s, dtype=dtype) for s in SHAPES]
    names = [f"t{i}" for i in range(len(SHAPES))]
    cfg = HamuConfig(variant=variant, split=split, mode=mode, constraint_ratio=0.3, on_infeasible=policy)  # type: ignore[arg-type]
    outs = [
        HamuTransform(cfg)(
            torch.from_numpy(g_r).to(dtype),
            torch.from_numpy(g_f).to(dtype),
            FlatLayout.for_tensors(names, tensors, strategy=strategy),
            lr=LR,
            scale=-1.0 / LR,
        )
        for strategy in ("fused", "views")
    ]
    device, host = outs
    rtol = 1e-4 if dtype == torch.float32 else 1e-10
    scale = float(device.update.abs().max())
    assert host.update.dtype == dtype
    torch.testing.assert_close(host.update, device.update, rtol=rtol, atol=rtol * scale)
    for name in SCALAR_FIELDS:
        got, want = getattr(host, name), getattr(device, name)
        assert isinstance(got, torch.Tensor) and got.dtype == want.dtype and got.shape == want.shape, name
        atol = rtol * float(want.abs().max())
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol, equal_nan=True, msg=name)
    for name in ("branch_counts", "stop_infeasible", "degradation"):
        assert torch.equal(getattr(host, name), getattr(device, name)), name
    for field in dataclasses.fields(host.blocks):
        got, want = getattr(host.blocks, field.name), getattr(device.blocks, field.name)
        assert got.dtype == want.dtype, field.name
        if got.dtype.is_floating_point:
            # Sums such as forget_change = c_r·κ + c_f·‖g_f‖² cancel: compare at the field's own scale.
            atol = rtol * float(torch.nan_to_num(want, nan=0.0, neginf=0.0).abs().max())
            torch.testing.assert_close(got, want, rtol=rtol, atol=atol, equal_nan=True, msg=field.name)
        else:
            assert torch.equal(got, want), field.name


@pytest.mark.parametrize("seed", range(3))
def test_layout_views_with_mixed_dtypes_promote(seed: int) -> None:
    """Mixed dtypes leave the numpy per-view path for torch's, which promotes (float32 values with float64
    coefficients give a float64 result, never a coefficient rounded to float32)."""
    rng = np.random.default_rng(200 + seed)
    layout = make_layout(dtype=torch.float32)
    x, y = (rng.normal(size=layout.numel).astype(np.float32) for _ in range(2))
    a, b = (rng.normal(size=len(SHAPES)) * (1 + 1e-9) for _ in range(2))
    got = layout.combine(torch.from_numpy(a), torch.from_numpy(x), torch.from_numpy(b), torch.from_numpy(y))
    assert got.dtype == torch.float64
    want = np.concatenate(
        [ak * xs + bk * ys for ak, bk, xs, ys in zip(a, b, segments(x), segments(y), strict=True)]
    )
    assert np.allclose(got.numpy(), want, rtol=1e-12)
    residual = layout.segment_residual_sq(torch.from_numpy(x), torch.from_numpy(a), torch.from_numpy(y))
    assert residual.dtype == torch.float64
    want_r = [
        float((xs - k * ys) @ (xs - k * ys)) for k, xs, ys in zip(a, segments(x), segments(y), strict=True)
    ]
    assert np.allclose(residual.numpy(), want_r, rtol=1e-10)


@pytest.mark.parametrize("strategy", ["fused", "views"])
def test_layout_combine_and_transform_scale(strategy: str) -> None:
    rng = np.random.default_rng(7)
    tensors = [torch.zeros(s, dtype=torch.float64) for s in SHAPES]
    names = [f"t{i}" for i in range(len(SHAPES))]
    layout = FlatLayout.for_tensors(names, tensors, strategy=strategy)
    x, y = (rng.normal(size=layout.numel) for _ in range(2))
    a, b = (rng.normal(size=len(SHAPES)) for _ in range(2))
    want = np.concatenate(
        [ak * xs + bk * ys for ak, bk, xs, ys in zip(a, b, segments(x), segments(y), strict=True)]
    )
    got = layout.combine(*(torch.from_numpy(v) for v in (a, x, b, y)))
    assert np.allclose(got.numpy(), want, rtol=1e-12)
    g_r, g_f = (torch.from_numpy(v) for v in random_pair(rng))
    transform = HamuTransform(HamuConfig(constraint_ratio=0.05))
    plain = transform(g_r, g_f, layout, lr=LR)
    scaled = transform(g_r, g_f, layout, lr=LR, scale=-1.0 / LR)
    assert torch.allclose(scaled.update, -plain.update / LR, rtol=1e-12, atol=1e-15)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["layerwise", "global"])
@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_no_host_synchronisation_on_cuda(variant: str, split: str, mode: str, dtype: torch.dtype) -> None:
    """The per-step HAMU work (the method: flat scalars, shares, solution, update, diagnostics) never waits
    for the device: no ``segment_reduce`` validation, no ``bincount``, no ``.item()``/``.tolist()``. The
    unlearner's one read-back per step (its StepRecord) is the only synchronisation of a step."""
    from hamu.methods.hamu_rule import HamuRule

    rng = np.random.default_rng(97)
    g_r, g_f = (torch.from_numpy(x).to("cuda", dtype) for x in random_pair(rng))
    tensors = [torch.zeros(s, dtype=dtype, device="cuda") for s in SHAPES]
    layout = FlatLayout.for_tensors([f"t{i}" for i in range(len(SHAPES))], tensors)
    rule = HamuRule(HamuConfig(variant=variant, split=split, mode=mode, constraint_ratio=0.05))  # type: ignore[arg-type]
    rule(g_r, g_f, layout, lr=LR)  # warm-up: lazy CUDA initialisation may synchronise once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = rule(g_r, g_f, layout, lr=LR)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    cpu_layout = FlatLayout.for_tensors([f"t{i}" for i in range(len(SHAPES))], [t.cpu() for t in tensors])
    ref = rule(g_r.cpu(), g_f.cpu(), cpu_layout, lr=LR)
    assert out.grad.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2**-7
    torch.testing.assert_close(
        out.grad.cpu().float(), ref.grad.float(), rtol=tol, atol=tol * float(ref.grad.float().abs().max())
    )
    for key, value in ref.diagnostics.items():
        if key.startswith("branch_"):
            assert int(out.diagnostics[key]) == int(value), key


@pytest.mark.parametrize("seed", range(6))
def test_branch_counts_agree_for_host_and_device_codes(seed: int) -> None:
    """numpy's bincount (host codes) and the comparison-and-sum (device codes) both count like Python does,
    including branches that never occur."""
    rng = np.random.default_rng(300 + seed)
    codes = rng.integers(0, len(Branch) - seed % 3, size=int(rng.integers(1, 40))).astype(np.int8)
    want = [sum(1 for c in codes.tolist() if c == int(b)) for b in Branch]
    host, device = count_branches(codes), count_branches(torch.from_numpy(codes))
    assert host.tolist() == want == device.tolist()
    assert host.dtype == device.dtype == torch.int64


def test_to_tensors_converts_host_arrays_once_and_passes_tensors_through() -> None:
    rng = np.random.default_rng(7)
    arrays = [rng.standard_normal(5).astype(np.float32) for _ in range(4)]
    for got, array in zip(to_tensors(*arrays), arrays, strict=True):
        assert torch.equal(got, to_tensor(array))
    scalars = to_tensors(np.float64(1.5), np.float64(-2.0))
    assert [s.dim() for s in scalars] == [0, 0]
    assert scalars[1].dtype == torch.float64 and scalars[1].item() == -2.0
    flags = to_tensors(np.bool_(True), np.bool_(False))
    assert flags[0].dtype == torch.bool and flags[0].item() and not flags[1].item()
    tensor = torch.ones(3)
    assert to_tensors(tensor, tensor)[0] is tensor
