"""Half-precision gradients: HAMU's per-block scalars are computed in float32, the update comes back in the
gradients' dtype, and the result is the float32 result on the same (half-precision) values up to one rounding
of the output.

Two failures this guards against, both silent:

* bfloat16: the colinear test is relative to the dtype's eps (‖e_r⊥‖² ≤ 64·eps·‖e_r‖²); with bfloat16's eps
  that is sin²θ ≤ 0.5, so every block under ~45° was called colinear and given the smallest step meeting its
  share, k̂·R_t (measured 0.15·R_t below, where k̂ = 0.15, at 10°, 30° and 44°), instead of the rectified
  step of length R_t.
* float16 at η = 1e-4: R_t² ≈ 1e-10 and B_t² underflow (float16's smallest subnormal is 6e-8), the
  discriminant R_t² − B_t²/‖g_f,t‖² becomes 0 and the step collapses to the tiny ascent part (measured: 11 %
  (HAMU-Q) and 12 % (HAMU-U) of the float32 step below, and HAMU-U's predicted forget change had the wrong
  sign).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hamu.core.layout import FlatLayout
from hamu.core.solver import BRANCH_LABELS, solve_block
from hamu.core.transform import HamuConfig, HamuTransform
from hamu.methods.hamu_rule import HamuRule

pytestmark = pytest.mark.usefixtures("single_thread")

SHAPES = [(64, 32), (32,), (16, 8, 4), (128,), (1,), (48, 2)]
VARIANTS = ("hamu-q", "hamu-u")
NAMES = [f"t{i}" for i in range(len(SHAPES))]


def _layout(dtype: torch.dtype, strategy: str = "auto") -> FlatLayout:
    return FlatLayout.for_tensors(NAMES, [torch.zeros(s, dtype=dtype) for s in SHAPES], strategy=strategy)  # type: ignore[arg-type]


def _sizes() -> list[int]:
    return [int(np.prod(s)) for s in SHAPES]


def _pair_at_angle(rng: np.random.Generator, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """Per tensor, g_r and g_f at ``degrees`` from each other with random norms; both clipped to global
    norm 1 (the unlearner's per-objective clipping). The one-element tensor is parallel by force."""
    angle = math.radians(degrees)
    rs, fs = [], []
    for n in _sizes():
        e1 = rng.normal(size=n)
        e1 /= np.linalg.norm(e1)
        e2 = rng.normal(size=n)
        e2 -= (e2 @ e1) * e1
        e2 = e2 / np.linalg.norm(e2) if n > 1 else np.zeros(n)
        rs.append(rng.uniform(0.5, 1.5) * (math.cos(angle) * e1 + math.sin(angle) * e2))
        fs.append(rng.uniform(0.5, 1.5) * e1)
    g_r, g_f = np.concatenate(rs), np.concatenate(fs)
    return g_r / np.linalg.norm(g_r), g_f / np.linalg.norm(g_f)


def _segments(x: torch.Tensor) -> list[torch.Tensor]:
    return list(x.double().split(_sizes()))


def _grad_norm_product_sum(g_r: torch.Tensor, g_f: torch.Tensor) -> float:
    return sum(float(r.norm() * f.norm()) for r, f in zip(_segments(g_r), _segments(g_f), strict=True))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("degrees", [10.0, 30.0, 44.0])
def test_bfloat16_aligned_blocks_are_rectified_like_float32(variant: str, degrees: float) -> None:
    rng = np.random.default_rng(int(degrees) + 100 * VARIANTS.index(variant))
    lr = 0.01
    g_r, g_f = (torch.from_numpy(x).to(torch.bfloat16) for x in _pair_at_angle(rng, degrees))
    S = _grad_norm_product_sum(g_r, g_f)
    cfg = HamuConfig(variant=variant, constraint_ratio=0.15 * S)  # type: ignore[arg-type]  # k̂ = 0.15
    out = HamuTransform(cfg)(g_r, g_f, _layout(torch.bfloat16), lr=lr)
    # The float32 result on exactly the same values.
    ref = HamuTransform(cfg)(g_r.float(), g_f.float(), _layout(torch.float32), lr=lr)

    assert out.update.dtype == torch.bfloat16
    labels = [BRANCH_LABELS[int(b)] for b in out.blocks.branch]
    assert labels == [BRANCH_LABELS[int(b)] for b in ref.blocks.branch]
    assert labels == ["colinear" if n == 1 else "rectified" for n in _sizes()]
    radii = ref.radius.double()
    for t, (d, d_ref) in enumerate(zip(_segments(out.update), _segments(ref.update), strict=True)):
        # One rounding of the output to bfloat16: 2^-8 relative per element.
        assert float((d - d_ref).norm()) <= 2**-8 * float(d_ref.norm()), t
        if labels[t] == "rectified":
            assert float(d.norm()) == pytest.approx(float(radii[t]), rel=2**-7), t
    assert not bool(out.stop_infeasible)
    assert torch.equal(out.branch_counts, ref.branch_counts)
    assert out.kappa.dtype == torch.float32


@pytest.mark.parametrize("variant", VARIANTS)
def test_float16_at_small_lr_takes_the_float32_step(variant: str) -> None:
    """η = 1e-4 (the reference scripts' value), c = 0.1, float16 gradients clipped to norm 1: the method's
    equivalent gradient −δ/η must be the float32 one, and the step must have length η‖e_r‖ per block."""
    rng = np.random.default_rng(7 + VARIANTS.index(variant))
    lr = 1e-4
    g_r, g_f = (torch.from_numpy(x).to(torch.float16) for x in _pair_at_angle(rng, 60.0))
    assert _grad_norm_product_sum(g_r, g_f) > 0.1  # feasible in exact arithmetic
    rule = HamuRule(HamuConfig(variant=variant, constraint_ratio=0.1))  # type: ignore[arg-type]
    out = rule(g_r, g_f, _layout(torch.float16), lr=lr)
    ref = rule(g_r.float(), g_f.float(), _layout(torch.float32), lr=lr)

    assert out.grad.dtype == torch.float16
    assert not bool(out.stop_infeasible) and not bool(ref.stop_infeasible)
    for key in ("branch_direct", "branch_rectified", "branch_colinear", "branch_infeasible"):
        assert int(out.diagnostics[key]) == int(ref.diagnostics[key]), key
    got, want = out.grad.double(), ref.grad.double()
    # One rounding to float16 (eps 2^-10) of a result of order 1 (−δ/η ≈ −e_r).
    assert float((got - want).norm()) <= 2**-10 * float(want.norm())
    eff = g_f if variant == "hamu-u" else g_r
    for t, (d, e) in enumerate(zip(_segments(-lr * got), _segments(eff), strict=True)):
        if e.numel() > 1:
            assert float(d.norm()) == pytest.approx(lr * float(e.norm()), rel=2**-9), t
    for key in ("predicted_retain_change", "predicted_forget_change", "kappa"):
        assert float(out.diagnostics[key]) == pytest.approx(float(ref.diagnostics[key]), rel=1e-5), key


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_solve_block_half_precision_matches_float32(dtype: torch.dtype) -> None:
    rng = np.random.default_rng(3)
    g_r, g_f = (torch.from_numpy(x).to(dtype) for x in _pair_at_angle(rng, 30.0))
    kwargs = {"radius": 1e-4, "constraint": 0.3e-4}
    sol = solve_block(g_r, g_f, **kwargs)
    ref = solve_block(g_r.float(), g_f.float(), **kwargs)
    assert sol.branch == ref.branch == "rectified"
    assert sol.update.dtype == dtype and sol.update.shape == g_r.shape
    assert sol.cost == pytest.approx(ref.cost, rel=1e-6)
    # One rounding of the update to ``dtype``; at this radius float16 elements are subnormal (spacing 2^-24).
    info = torch.finfo(dtype)
    torch.testing.assert_close(
        sol.update.double(), ref.update.double(), rtol=info.eps, atol=info.smallest_normal * info.eps
    )
    # The step has the full length R (before the fix: R² underflowed in float16 and the step was B/‖g_f‖).
    assert float(sol.update.double().norm()) == pytest.approx(1e-4, rel=0.02)


@pytest.mark.parametrize("strategy", ["fused", "views"])
def test_layout_keeps_float32_coefficients_on_half_values(strategy: str) -> None:
    """Both layout paths promote like ``expand(a) * x``: the coefficients are not rounded to bfloat16."""
    layout = _layout(torch.bfloat16, strategy)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(layout.numel, generator=gen).to(torch.bfloat16)
    y = torch.randn(layout.numel, generator=gen).to(torch.bfloat16)
    a = 1 + torch.rand(len(SHAPES), generator=gen) * 1e-3  # not representable in bfloat16
    b = -a
    got = layout.combine(a, x, b, y)
    assert got.dtype == torch.float32
    want = torch.cat(
        [
            ai * xs.float() + bi * ys.float()
            for ai, bi, xs, ys in zip(a, b, x.split(layout.sizes), y.split(layout.sizes), strict=True)
        ]
    )
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    scaled = layout.scale(a, x)
    assert scaled.dtype == torch.float32
    torch.testing.assert_close(scaled, layout.expand(a) * x.float(), rtol=1e-6, atol=1e-6)
