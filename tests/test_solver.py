"""The closed-form HAMU block solver against an independent numerical solver of the same problem.

HAMU-Q:  minimise g_r·δ   s.t. g_f·δ ≥ B,   ‖δ‖ ≤ R
HAMU-U:  minimise −g_f·δ  s.t. −g_r·δ ≥ B,  ‖δ‖ ≤ R

Cases are generated so that each lands in a chosen branch by construction (from the geometry of the problem,
not from the implementation): with o the objective vector and c the constraint vector of the solved problem,
u = B/(R‖c‖) and cos θ = o·c/(‖o‖‖c‖),

* infeasible ⇔ u > 1 (no point of the ball reaches c·δ = B);
* direct (plain descent −R·ô already meets the constraint) ⇔ −R·c·ô ≥ B ⇔ cos θ ≤ −u;
* colinear: o = λc with λ > 0 (the optimum is not unique: any point with c·δ = B);
* rectified: otherwise (the constraint is active and the optimum unique);
* zero_forget: c ≈ 0 while B > 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from hamu.core.solver import BRANCH_LABELS, Branch, block_coefficients, solve_arrays, solve_block

pytestmark = pytest.mark.usefixtures("single_thread")

DIMS = (2, 5, 17, 64)
VARIANTS = ("hamu-q", "hamu-u")
N_CASES = 200  # per (branch, dimension, variant)

# Tolerances for float64. The oracle (SLSQP, ftol 1e-12) reaches ~1e-8 relative accuracy in the optimal
# value and ~1e-7 in the optimal point on these problems; the closed form is accurate to ~1e-15.
VALUE_RTOL = 1e-6  # of the natural scale R‖o‖ of the objective
POINT_RTOL = 1e-5  # of R, where the optimum is unique
FEAS_RTOL = 1e-9  # first-order guarantee: constraint and trust region, relative to R‖c‖ and R


@dataclass(frozen=True)
class Case:
    g_r: np.ndarray
    g_f: np.ndarray
    radius: float
    constraint: float
    branch: str  # the branch this case was built to land in

    def problem(self, variant: str) -> tuple[np.ndarray, np.ndarray]:
        """(objective vector o, constraint vector c) of the problem this variant solves."""
        if variant == "hamu-q":
            return self.g_r, self.g_f
        return -self.g_f, -self.g_r


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _orthonormal_pair(rng: np.random.Generator, dim: int) -> tuple[np.ndarray, np.ndarray]:
    e1 = rng.normal(size=dim)
    e1 /= np.linalg.norm(e1)
    e2 = rng.normal(size=dim)
    e2 -= (e2 @ e1) * e1
    e2 /= np.linalg.norm(e2)
    return e1, e2


def make_case(rng: np.random.Generator, dim: int, branch: str, variant: str) -> Case:
    """A random problem (objective o, constraint c, R, B) built to land in ``branch`` (see the module doc)."""
    R = _loguniform(rng, 0.05, 20.0)
    o_norm = _loguniform(rng, 0.05, 20.0)
    c_norm = _loguniform(rng, 0.05, 20.0)
    e1, e2 = _orthonormal_pair(rng, dim)
    if branch == "zero_forget":
        # ‖c‖² below the solver's 1e-12 "zero" threshold, sometimes exactly zero.
        c_norm = 0.0 if rng.random() < 0.25 else rng.uniform(1e-9, 9e-7)
        B = _loguniform(rng, 1e-3, 10.0)
        cos = rng.uniform(-1.0, 1.0)
    else:
        if branch == "infeasible":
            u = rng.uniform(1.05, 5.0)
            cos = rng.uniform(-1.0, 1.0)
        else:
            u = 0.0 if rng.random() < 0.1 else rng.uniform(0.02, 0.95)
            if branch == "direct":
                cos = rng.uniform(-1.0, -u - 0.02)
            elif branch == "rectified":
                cos = rng.uniform(-u + 0.02, 0.98)
            elif branch == "colinear":
                cos = 1.0
            else:
                raise AssertionError(branch)
        B = u * R * c_norm
    c = c_norm * e1
    if branch == "colinear":
        o = (o_norm / c_norm) * c  # o = λc, λ > 0
    else:
        o = o_norm * (cos * e1 + math.sqrt(max(0.0, 1.0 - cos * cos)) * e2)
    # HAMU-Q solves (o, c) = (g_r, g_f); HAMU-U solves (o, c) = (−g_f, −g_r).
    g_r, g_f = (o, c) if variant == "hamu-q" else (-c, -o)
    return Case(g_r=g_r, g_f=g_f, radius=R, constraint=B, branch=branch)


def _solve(case: Case, variant: str, *, continue_on_infeasible: bool = False):
    return solve_block(
        torch.from_numpy(case.g_r),
        torch.from_numpy(case.g_f),
        radius=case.radius,
        constraint=case.constraint,
        variant=variant,  # type: ignore[arg-type]
        continue_on_infeasible=continue_on_infeasible,
    )


def _fail_report(failures: list[str], n: int) -> str:
    return f"{len(failures)}/{n} cases failed, first ones:\n" + "\n".join(failures[:8])


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("branch", ["direct", "rectified", "colinear"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_feasible_branches_match_numerical_optimum(
    qp_oracle: Callable, variant: str, branch: str, dim: int
) -> None:
    seed = [*VARIANTS].index(variant) * 1000 + ["direct", "rectified", "colinear"].index(branch) * 100 + dim
    rng = np.random.default_rng(seed)
    failures: list[str] = []
    n_degradation_checked = 0
    for i in range(N_CASES):
        case = make_case(rng, dim, branch, variant)
        o, c = case.problem(variant)
        R, B = case.radius, case.constraint
        sol = _solve(case, variant)
        ref = qp_oracle(o, c, R, B)
        delta = sol.update.numpy()
        scale = R * np.linalg.norm(o)
        tag = f"case {i} (R={R:.3g}, B={B:.3g}, ‖o‖={np.linalg.norm(o):.3g}, ‖c‖={np.linalg.norm(c):.3g})"
        if not ref.feasible:
            failures.append(f"{tag}: oracle says infeasible (generator bug)")
            continue
        if sol.branch != branch or not sol.feasible:
            failures.append(f"{tag}: branch {sol.branch!r}, expected {branch!r}")
            continue
        if not np.all(np.isfinite(delta)):
            failures.append(f"{tag}: non-finite update")
            continue
        # Optimal value: the closed form's update must achieve the oracle's optimum...
        achieved = float(o @ delta)
        if abs(achieved - ref.value) > VALUE_RTOL * scale:
            failures.append(f"{tag}: value {achieved!r} vs oracle {ref.value!r}")
        # ...and report it as its cost.
        if abs(sol.cost - achieved) > 1e-12 * scale:
            failures.append(f"{tag}: reported cost {sol.cost!r} but o·δ = {achieved!r}")
        # First-order guarantee: the constraint and the trust region hold.
        if c @ delta < B - FEAS_RTOL * R * np.linalg.norm(c):
            failures.append(f"{tag}: constraint violated, c·δ = {c @ delta!r} < B")
        if np.linalg.norm(delta) > R * (1 + FEAS_RTOL):
            failures.append(f"{tag}: ‖δ‖ = {np.linalg.norm(delta)!r} > R")
        # The optimum is unique except in the colinear case.
        if branch != "colinear" and np.linalg.norm(delta - ref.x) > POINT_RTOL * R:
            failures.append(f"{tag}: update differs from the oracle's by {np.linalg.norm(delta - ref.x):.3g}")
        # κ is the raw dot product g_r·g_f whatever the variant.
        if abs(sol.kappa - case.g_r @ case.g_f) > 1e-12 * np.linalg.norm(case.g_r) * np.linalg.norm(case.g_f):
            failures.append(f"{tag}: kappa {sol.kappa!r} is not g_r·g_f")
        # Reported thresholds agree with the geometry: κ ≤ κ1 exactly in the direct region.
        if (sol.kappa <= sol.kappa1) != (branch == "direct"):
            failures.append(f"{tag}: κ={sol.kappa:.4g} vs κ1={sol.kappa1:.4g} disagrees with branch {branch}")
        # degradation_unavoidable ⇔ the optimal objective is positive (skip the rounding band around 0).
        if abs(ref.value) > 1e-5 * scale:
            n_degradation_checked += 1
            if sol.degradation_unavoidable != (ref.value > 0):
                failures.append(f"{tag}: degradation {sol.degradation_unavoidable} but optimum {ref.value!r}")
            if branch != "direct" and (sol.kappa > sol.kappa2) != (ref.value > 0):
                failures.append(f"{tag}: κ={sol.kappa:.4g} vs κ2={sol.kappa2:.4g} but optimum {ref.value!r}")
    assert not failures, _fail_report(failures, N_CASES)
    assert n_degradation_checked >= 0.9 * N_CASES or branch == "colinear"


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_infeasible_detection(qp_oracle: Callable, variant: str, dim: int) -> None:
    rng = np.random.default_rng(7000 + 10 * dim + VARIANTS.index(variant))
    failures: list[str] = []
    for i in range(N_CASES):
        case = make_case(rng, dim, "infeasible", variant)
        o, c = case.problem(variant)
        R, B = case.radius, case.constraint
        ref = qp_oracle(o, c, R, B)
        tag = f"case {i} (R={R:.3g}, B={B:.3g}, ‖c‖={np.linalg.norm(c):.3g})"
        if ref.feasible or ref.reach > B * (1 - 1e-3):
            failures.append(f"{tag}: oracle reach {ref.reach!r} not clearly below B (generator bug)")
            continue
        stop = _solve(case, variant)
        if stop.branch != "infeasible" or stop.feasible or not stop.degradation_unavoidable:
            failures.append(f"{tag}: stop policy gave branch {stop.branch!r}")
        if not torch.isnan(stop.update).all():
            failures.append(f"{tag}: stop policy update is not all NaN")
        cont = _solve(case, variant, continue_on_infeasible=True)
        delta = cont.update.numpy()
        # Continue policy: the smallest step meeting the constraint, i.e. parallel to c with c·δ = B.
        if cont.branch != "infeasible":
            failures.append(f"{tag}: continue policy gave branch {cont.branch!r}")
        if abs(c @ delta - B) > 1e-10 * B:
            failures.append(f"{tag}: continue policy c·δ = {c @ delta!r} ≠ B")
        if abs(c @ delta) < (1 - 1e-10) * np.linalg.norm(c) * np.linalg.norm(delta):
            failures.append(f"{tag}: continue policy update is not parallel to c")
        if np.linalg.norm(delta) <= R:
            failures.append(f"{tag}: continue policy step should leave the trust region")
    assert not failures, _fail_report(failures, N_CASES)


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_zero_forget_gradient(qp_oracle: Callable, variant: str, dim: int) -> None:
    rng = np.random.default_rng(8000 + 10 * dim + VARIANTS.index(variant))
    failures: list[str] = []
    for i in range(N_CASES):
        case = make_case(rng, dim, "zero_forget", variant)
        o, c = case.problem(variant)
        ref = qp_oracle(o, c, case.radius, case.constraint)
        tag = f"case {i} (‖c‖={np.linalg.norm(c):.3g}, B={case.constraint:.3g})"
        if ref.feasible:
            failures.append(f"{tag}: oracle says feasible (generator bug)")
            continue
        stop = _solve(case, variant)
        if stop.branch != "zero_forget" or stop.feasible or not stop.degradation_unavoidable:
            failures.append(f"{tag}: stop policy gave branch {stop.branch!r}")
        if not torch.isnan(stop.update).all():
            failures.append(f"{tag}: stop policy update is not all NaN")
        cont = _solve(case, variant, continue_on_infeasible=True)
        if cont.branch != "zero_forget" or not torch.equal(cont.update, torch.zeros_like(cont.update)):
            failures.append(f"{tag}: continue policy should give a zero update, got branch {cont.branch!r}")
    assert not failures, _fail_report(failures, N_CASES)


@pytest.mark.parametrize("variant", VARIANTS)
def test_zero_forget_gradient_without_constraint_is_plain_descent(qp_oracle: Callable, variant: str) -> None:
    """B = 0 and c = 0: every δ is feasible, so the optimum is the full-radius descent step −R·ô."""
    rng = np.random.default_rng(3)
    for dim in DIMS:
        zero = np.zeros(dim)
        o = rng.normal(size=dim)
        R = 0.7
        g_r, g_f = (o, zero) if variant == "hamu-q" else (zero, -o)
        sol = solve_block(
            torch.from_numpy(g_r), torch.from_numpy(g_f), radius=R, constraint=0.0, variant=variant
        )
        ref = qp_oracle(o, zero, R, 0.0)
        assert sol.branch == "direct" and sol.feasible
        np.testing.assert_allclose(sol.update.numpy(), ref.x, atol=POINT_RTOL * R)
        assert sol.cost == pytest.approx(ref.value, rel=1e-6)
        assert not sol.degradation_unavoidable


@pytest.mark.parametrize("variant", VARIANTS)
def test_nearly_colinear_gradients(qp_oracle: Callable, variant: str) -> None:
    """Tiny angles between o and c (down to 1e-6 rad): the value must stay optimal and the step feasible."""
    rng = np.random.default_rng(11)
    for angle in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6):
        for dim in DIMS:
            e1, e2 = _orthonormal_pair(rng, dim)
            c = 1.3 * e1
            o = 0.8 * (math.cos(angle) * e1 + math.sin(angle) * e2)
            R, B = 2.0, 0.5 * 2.0 * 1.3
            g_r, g_f = (o, c) if variant == "hamu-q" else (-c, -o)
            sol = solve_block(
                torch.from_numpy(g_r), torch.from_numpy(g_f), radius=R, constraint=B, variant=variant
            )
            ref = qp_oracle(o, c, R, B)
            delta = sol.update.numpy()
            assert sol.branch in ("rectified", "colinear"), (angle, dim, sol.branch)
            assert o @ delta == pytest.approx(ref.value, abs=VALUE_RTOL * R * 0.8)
            # δ = α·e_f + β·e_r with |α|, |β| ~ 1/sin θ: rounding costs ~eps/sin θ relative, no more. (An
            # orthogonal norm taken from the scalars, ‖o‖² − κ²/‖c‖², costs eps/sin²θ: 1.7e-4 at 1e-6 rad.)
            tol = FEAS_RTOL + 16 * np.finfo(np.float64).eps / math.sin(angle)
            assert c @ delta >= B * (1 - tol), (angle, dim)
            assert np.linalg.norm(delta) <= R * (1 + tol), (angle, dim)
            assert sol.degradation_unavoidable == (ref.value > 0)


def test_matches_two_dimensional_brute_force(qp_oracle: Callable) -> None:
    """In 2-D, enumerate the boundary of {‖δ‖ ≤ R} ∩ {g_f·δ ≥ B} densely (a linear objective over a convex
    set is minimised on its boundary). This also validates the SLSQP oracle the other tests rely on."""
    rng = np.random.default_rng(2024)
    angles = np.linspace(0.0, 2 * np.pi, 40_000, endpoint=False)
    circle = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    ts = np.linspace(-1.0, 1.0, 40_000)
    n_checked = 0
    for _ in range(300):
        g_r = rng.normal(size=2) * _loguniform(rng, 0.1, 10)
        g_f = rng.normal(size=2) * _loguniform(rng, 0.1, 10)
        R = _loguniform(rng, 0.1, 10)
        B = rng.uniform(0.0, 1.2) * R * np.linalg.norm(g_f)
        sol = solve_block(torch.from_numpy(g_r), torch.from_numpy(g_f), radius=R, constraint=B)
        arc = R * circle[R * circle @ g_f >= B]
        # The chord: points on g_f·δ = B inside the ball.
        f_sq = g_f @ g_f
        half = R * R - B * B / f_sq
        if half < 0:  # no point of the ball meets the constraint
            assert arc.size == 0
            assert sol.branch == "infeasible"
            assert not qp_oracle(g_r, g_f, R, B).feasible
            continue
        n_checked += 1
        foot = (B / f_sq) * g_f
        along = np.array([-g_f[1], g_f[0]]) / math.sqrt(f_sq)
        chord = foot + np.sqrt(half) * ts[:, None] * along
        brute = min((arc @ g_r).min(initial=np.inf), (chord @ g_r).min())
        scale = R * np.linalg.norm(g_r)
        # The grids are fine enough for ~1e-8 relative error at the optimum.
        assert sol.cost == pytest.approx(brute, abs=1e-6 * scale)
        assert qp_oracle(g_r, g_f, R, B).value == pytest.approx(brute, abs=1e-6 * scale)
    assert n_checked > 200


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("theta_deg", [179.9, 179.0, 175.0, 170.0, 150.0, 140.0, 120.0, 100.0])
def test_degradation_rule_is_sign_correct_for_obtuse_angles(
    qp_oracle: Callable, variant: str, theta_deg: float
) -> None:
    """κ < 0 (θ > 90°): descending the objective also helps the constraint, so degradation is avoidable.

    The public reference's rule "B > R‖c‖ sin θ" ignores the sign of κ and fires here (asserted below, so
    each case really discriminates); the solver must not.
    """
    theta = math.radians(theta_deg)
    rng = np.random.default_rng(int(theta_deg * 10))
    for dim in DIMS:
        e1, e2 = _orthonormal_pair(rng, dim)
        c = 1.7 * e1
        o = 0.6 * (math.cos(theta) * e1 + math.sin(theta) * e2)
        R = 0.9
        # Largest feasible constraint that still makes the sin θ rule fire: u = B/(R‖c‖) ∈ (sin θ, 1).
        u = 0.5 * (math.sin(theta) + 1.0) if math.sin(theta) < 0.98 else 0.99
        B = u * R * np.linalg.norm(c)
        assert R * np.linalg.norm(c) * math.sin(theta) < B  # the reference's rule fires
        g_r, g_f = (o, c) if variant == "hamu-q" else (-c, -o)
        assert g_r @ g_f < 0
        sol = solve_block(
            torch.from_numpy(g_r), torch.from_numpy(g_f), radius=R, constraint=B, variant=variant
        )
        ref = qp_oracle(o, c, R, B)
        assert ref.feasible and ref.value < 0
        assert sol.feasible
        assert sol.cost == pytest.approx(ref.value, abs=VALUE_RTOL * R * 0.6)
        assert not sol.degradation_unavoidable


def test_float32_inputs_stay_close_to_float64_optimum(qp_oracle: Callable) -> None:
    rng = np.random.default_rng(5)
    for branch in ("direct", "rectified", "colinear"):
        for variant in VARIANTS:
            for dim in DIMS:
                for _ in range(10):
                    case = make_case(rng, dim, branch, variant)
                    o, c = case.problem(variant)
                    sol = solve_block(
                        torch.from_numpy(case.g_r).float(),
                        torch.from_numpy(case.g_f).float(),
                        radius=case.radius,
                        constraint=case.constraint,
                        variant=variant,  # type: ignore[arg-type]
                    )
                    assert sol.update.dtype == torch.float32
                    ref = qp_oracle(o, c, case.radius, case.constraint)
                    delta = sol.update.double().numpy()
                    scale = case.radius * np.linalg.norm(o)
                    assert sol.branch == branch
                    assert o @ delta == pytest.approx(ref.value, abs=1e-4 * scale)
                    assert c @ delta >= case.constraint - 1e-5 * case.radius * np.linalg.norm(c)
                    assert np.linalg.norm(delta) <= case.radius * (1 + 1e-5)


def test_block_coefficients_batch_equals_single_blocks() -> None:
    """The batched solver gives every block the same answer as solving it alone."""
    rng = np.random.default_rng(9)
    cases = [make_case(rng, 5, b, "hamu-q") for b in ("direct", "rectified", "colinear", "infeasible") * 5]
    r_sq = torch.tensor([c.g_r @ c.g_r for c in cases])
    f_sq = torch.tensor([c.g_f @ c.g_f for c in cases])
    kap = torch.tensor([c.g_r @ c.g_f for c in cases])
    radius = torch.tensor([c.radius for c in cases])
    constraint = torch.tensor([c.constraint for c in cases])
    for variant in VARIANTS:
        batch = block_coefficients(r_sq, f_sq, kap, radius=radius, constraint=constraint, variant=variant)
        for i, case in enumerate(cases):
            single = _solve(case, variant)
            assert BRANCH_LABELS[int(batch.branch[i])] == single.branch
            upd = batch.coef_retain[i] * torch.from_numpy(case.g_r) + batch.coef_forget[i] * torch.from_numpy(
                case.g_f
            )
            torch.testing.assert_close(upd, single.update, equal_nan=True)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_block_solution_is_the_same_in_numpy_and_torch(variant: str, dtype: type) -> None:
    """The solver's scalar code runs on numpy arrays on the host and on tensors on an accelerator: both give
    the same fields on random blocks of every branch, with zero gradients and zero radii mixed in."""
    rng = np.random.default_rng(11)
    n = 400
    retain_sq = rng.exponential(size=n) * np.where(rng.random(n) < 0.1, 0.0, 1.0)
    forget_sq = rng.exponential(size=n) * np.where(rng.random(n) < 0.1, 0.0, 1.0)
    cos = rng.uniform(-1, 1, size=n) * np.where(rng.random(n) < 0.1, 1e-9, 1.0)
    cos = np.where(rng.random(n) < 0.1, np.sign(cos), cos)  # exactly colinear blocks
    kappa = cos * np.sqrt(retain_sq * forget_sq)
    radius = rng.exponential(size=n) * np.where(rng.random(n) < 0.05, 0.0, 1.0)
    constraint = rng.exponential(size=n) * np.where(rng.random(n) < 0.1, 0.0, 0.5)
    arrays = [a.astype(dtype) for a in (retain_sq, forget_sq, kappa, radius, constraint)]
    for policy in (False, True):
        kwargs = dict(variant=variant, continue_on_infeasible=policy, perp_sq=None, colinear_eps=1e-5)
        host = solve_arrays(np, *arrays, **kwargs)  # type: ignore[arg-type]
        device = solve_arrays(torch, *(torch.from_numpy(a) for a in arrays), **kwargs)  # type: ignore[arg-type]
        assert len(set(host[2].tolist())) >= 4  # most branches appear
        for got, want in zip(host, device, strict=True):
            got = torch.as_tensor(got)
            assert got.dtype == want.dtype
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, equal_nan=True)


def test_branch_enum_labels() -> None:
    assert BRANCH_LABELS == ("direct", "rectified", "colinear", "infeasible", "zero_forget")
    assert Branch.ZERO_FORGET.label == "zero_forget"


def test_input_validation() -> None:
    g = torch.ones(3)
    with pytest.raises(ValueError, match="same shape"):
        solve_block(g, torch.ones(4), radius=1.0, constraint=0.1)
    with pytest.raises(ValueError, match="radius"):
        solve_block(g, g, radius=-1.0, constraint=0.1)
    with pytest.raises(ValueError, match="constraint"):
        solve_block(g, g, radius=1.0, constraint=-0.1)
    with pytest.raises(ValueError, match="constraint"):
        solve_block(g, g, radius=1.0, constraint=math.nan)
    with pytest.raises(ValueError, match="retain_grad"):
        solve_block(torch.tensor([1.0, math.nan, 0.0]), g, radius=1.0, constraint=0.1)
    with pytest.raises(ValueError, match="forget_grad"):
        solve_block(g, torch.tensor([1.0, math.inf, 0.0]), radius=1.0, constraint=0.1)
    with pytest.raises(ValueError, match=r"hamu-q, hamu-u"):
        solve_block(g, g, radius=1.0, constraint=0.1, variant="hamu-x")  # type: ignore[arg-type]


def test_docstring_example_is_rectified_and_optimal(qp_oracle: Callable) -> None:
    g_r, g_f = np.array([1.0, 0.0]), np.array([1.0, 1.0])
    sol = solve_block(torch.from_numpy(g_r), torch.from_numpy(g_f), radius=1.0, constraint=0.5)
    ref = qp_oracle(g_r, g_f, 1.0, 0.5)
    assert sol.branch == "rectified"
    np.testing.assert_allclose(sol.update.numpy(), ref.x, atol=1e-6)
