"""The closed-form HAMU block solver.

For one block (a parameter tensor, or the whole model) HAMU-Q solves exactly

    minimise_δ  g_r·δ          (first-order change of the retain loss: the cost)
    subject to  g_f·δ ≥ B      (the forget loss must rise by at least B)
                ‖δ‖ ≤ R        (trust region)

HAMU-U solves the same problem after the swap (g_r, g_f) → (−g_f, −g_r): it maximises the forget-loss rise
subject to the retain loss falling by at least B.

Notation (the paper's): κ = g_r·g_f is the hardness, κ1 = −B‖g_r‖/R, κ2 = ‖g_r‖·√(‖g_f‖² − B²/R²),
Δ = R² − B²/‖g_f‖², a = (B/‖g_f‖²)·g_f the smallest step meeting the constraint, and
g_r⊥ = g_r − (κ/‖g_f‖²)·g_f the part of g_r orthogonal to g_f.

Branches, in the order they are tested:

====================  =====================================  ===========================================
branch                condition                              update δ
====================  =====================================  ===========================================
``zero_forget``       ‖g_f‖² < ε and B > ε                   0 (continue policy) or no update (stop)
``infeasible``        Δ < 0, i.e. B > R‖g_f‖                 a (continue policy; leaves the ball) or none
``direct``            κ ≤ κ1 (or ‖g_f‖ = 0 and B ≤ ε)        −R·g_r/‖g_r‖
``colinear``          ‖g_r⊥‖ ≈ 0                             a
``rectified``         otherwise                              a − √Δ·g_r⊥/‖g_r⊥‖
====================  =====================================  ===========================================

Every update is a combination ``δ = c_r·g_r + c_f·g_f`` of the two input gradients, so the solver works on the
three scalars (‖g_r‖², ‖g_f‖², κ) of each block. :func:`block_coefficients` does that for many blocks at once
(one tensor entry per block, no host synchronisation), which is what the model-wide transform uses;
:func:`solve_block` is the single-block public entry point built on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Literal

import torch

from hamu.core.arrays import clamp0, int8_codes, namespace, on_host, to_arrays, to_tensor

Variant = Literal["hamu-q", "hamu-u"]
VARIANTS: tuple[str, ...] = ("hamu-q", "hamu-u")

#: Squared norms below this count as zero (the reference implementation's ε).
ZERO_EPS = 1e-12


class Branch(IntEnum):
    """Which closed-form case produced a block's update (stored as small integers in tensors)."""

    DIRECT = 0
    RECTIFIED = 1
    COLINEAR = 2
    INFEASIBLE = 3
    ZERO_FORGET = 4

    @property
    def label(self) -> str:
        return self.name.lower()


BRANCH_LABELS: tuple[str, ...] = tuple(b.label for b in Branch)


@dataclass(frozen=True)
class BlockCoefficients:
    """Per-block solution, every field a tensor with one entry per block.

    ``δ_b = coef_retain[b]·g_r,b + coef_forget[b]·g_f,b`` in the *original* (unswapped) gradients.
    ``cost`` is the optimal value of the solved problem's objective (for HAMU-Q the predicted retain-loss
    change g_r·δ; for HAMU-U the negated predicted forget-loss change −g_f·δ). ``degradation_unavoidable``
    is true iff the block is infeasible or ``cost > 0``: the best first-order step that honours the
    constraint still worsens the objective (κ > κ2), whatever the sign conventions.
    """

    coef_retain: torch.Tensor
    coef_forget: torch.Tensor
    branch: torch.Tensor
    cost: torch.Tensor
    retain_change: torch.Tensor
    forget_change: torch.Tensor
    kappa1: torch.Tensor
    kappa2: torch.Tensor
    degradation_unavoidable: torch.Tensor


def colinear_rel_eps(dtype: torch.dtype) -> float:
    """The colinear test's tolerance on ‖e_r⊥‖²/‖e_r‖² for scalars computed in ``dtype``."""
    # ‖g_r⊥‖² is computed as ‖g_r‖² − κ²/‖g_f‖², which loses ~eps·‖g_r‖² to cancellation.
    return 64.0 * torch.finfo(dtype).eps


def block_coefficients(
    retain_sq: torch.Tensor,
    forget_sq: torch.Tensor,
    kappa: torch.Tensor,
    *,
    radius: torch.Tensor,
    constraint: torch.Tensor,
    variant: Variant = "hamu-q",
    continue_on_infeasible: bool = False,
    perp_sq: torch.Tensor | None = None,
) -> BlockCoefficients:
    """Solve every block from its scalars (‖g_r‖², ‖g_f‖², κ) in the *original* orientation.

    All arguments are tensors of the same shape (one entry per block). For HAMU-U the swap
    (g_r, g_f) → (−g_f, −g_r) exchanges the squared norms and leaves κ unchanged. Pass them in float32 or
    float64 (compute them from half-precision gradients cast up): the colinear test is relative to the
    dtype's eps, which in bfloat16 (64·eps = 0.5 = sin²45°) would call every block under ~45° colinear, and
    in float16 R² and B² underflow at the radii of η = 1e-4.

    ``perp_sq`` is optional: ‖e_r − (κ/‖e_f‖²)·e_f‖², the squared norm of the *effective* retain gradient's
    part orthogonal to the effective forget gradient (g_r⊥ for HAMU-Q; g_f − (κ/‖g_r‖²)·g_r for HAMU-U),
    computed by the caller from the vectors. Pass it whenever the vectors are at hand. Without it the
    scalar formula ‖e_r‖² − κ²/‖e_f‖² is used, whose relative error grows like eps/sin²θ for nearly
    colinear gradients; since the rectified step's orthogonal part is scaled by 1/‖e_r⊥‖, that error
    makes the step overshoot the trust region by the same relative amount (measured in float32: ‖δ‖/R − 1
    ≈ 1.5e-4 at θ = 0.03 rad and ≈ 1.5e-2 at θ = 0.003 rad; in float64 ≈ 8e-3 near the colinear threshold).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown HAMU variant {variant!r}; accepted: {', '.join(VARIANTS)}")
    inputs = (retain_sq, forget_sq, kappa, radius, constraint) + ((perp_sq,) if perp_sq is not None else ())
    host = on_host(*inputs)
    arrays = to_arrays(host, *inputs)
    solved = solve_arrays(
        namespace(host),
        *arrays[:5],
        variant=variant,
        continue_on_infeasible=continue_on_infeasible,
        perp_sq=arrays[5] if perp_sq is not None else None,
        colinear_eps=colinear_rel_eps(kappa.dtype),
    )
    return BlockCoefficients(*(to_tensor(a) for a in solved))


def solve_arrays(
    xp: Any,
    retain_sq: Any,
    forget_sq: Any,
    kappa: Any,
    radius: Any,
    constraint: Any,
    *,
    variant: Variant,
    continue_on_infeasible: bool,
    perp_sq: Any | None,
    colinear_eps: float,
) -> tuple[Any, ...]:
    """:func:`block_coefficients` on the arrays of the namespace ``xp`` (see :mod:`hamu.core.arrays`).

    Returns the :class:`BlockCoefficients` fields in order as ``xp`` arrays, with ``branch`` as int8 codes.
    """
    swapped = variant == "hamu-u"
    # Effective gradients: e_r plays g_r's role in the solved problem, e_f plays g_f's.
    er_sq, ef_sq = (forget_sq, retain_sq) if swapped else (retain_sq, forget_sq)
    R, B = radius, constraint
    er_norm = xp.sqrt(clamp0(xp, er_sq))
    zero_f = ef_sq < ZERO_EPS
    zero_r = er_sq < ZERO_EPS
    safe_ef_sq = xp.where(zero_f, 1.0, ef_sq)
    safe_er_norm = xp.where(zero_r, 1.0, er_norm)

    disc = R * R - B * B / safe_ef_sq
    b_trivial = B <= ZERO_EPS
    zero_forget = zero_f & ~b_trivial
    infeasible = ~zero_f & (disc < 0)
    solvable = ~zero_forget & ~infeasible
    # κ ≤ κ1 = −B‖e_r‖/R, written without dividing by R. With a zero forget gradient and B ≈ 0 every δ
    # is feasible, so plain descent is optimal.
    direct = solvable & ~zero_r & ((kappa * R <= -B * er_norm) | zero_f)
    if perp_sq is None:
        perp_sq = er_sq - kappa * kappa / safe_ef_sq  # cancellation-prone; see block_coefficients
    perp_sq = clamp0(xp, perp_sq)
    colinear = solvable & ~direct & (perp_sq <= colinear_eps * er_sq)
    rectified = solvable & ~direct & ~colinear

    ascent = B / safe_ef_sq  # coefficient of e_f in a
    scale = xp.sqrt(clamp0(xp, disc)) / xp.sqrt(xp.where(rectified, perp_sq, 1.0))
    # δ = α·e_f + β·e_r in the effective gradients.
    alpha = xp.where(rectified, ascent + scale * kappa / safe_ef_sq, 0.0)
    alpha = xp.where(colinear, ascent, alpha)
    beta = xp.where(rectified, -scale, 0.0)
    beta = xp.where(direct, -R / safe_er_norm, beta)
    # Zero-radius solvable blocks: R = 0 and B ≈ 0 leave only δ = 0.
    if continue_on_infeasible:
        alpha = xp.where(infeasible, ascent, alpha)
        update_valid = xp.ones_like(zero_f)
    else:
        alpha = xp.where(infeasible | zero_forget, math.nan, alpha)
        beta = xp.where(infeasible | zero_forget, math.nan, beta)
        update_valid = solvable
    cost = alpha * kappa + beta * er_sq
    cost = xp.where(update_valid, cost, math.nan)

    branch = xp.full_like(kappa, float(Branch.RECTIFIED))
    for mask, code in (
        (direct, Branch.DIRECT),
        (colinear, Branch.COLINEAR),
        (infeasible, Branch.INFEASIBLE),
        (zero_forget, Branch.ZERO_FORGET),
    ):
        branch = xp.where(mask, float(code), branch)

    safe_R = xp.where(R > 0, R, 1.0)
    kappa1 = xp.where(R > 0, -B * er_norm / safe_R, -math.inf)
    kappa2 = er_norm * xp.sqrt(clamp0(xp, ef_sq - (B / safe_R) ** 2))
    # The cost is exactly 0 at κ = κ2; allow rounding at the scale of the best achievable cost R‖e_r‖.
    tol = 1e-6 * R * er_norm
    unavoidable = infeasible | zero_forget | (solvable & (cost > tol))

    # Back to the original gradients: e_r = −g_f and e_f = −g_r under the swap.
    coef_r, coef_f = (-alpha, -beta) if swapped else (beta, alpha)
    retain_change = coef_r * retain_sq + coef_f * kappa
    forget_change = coef_r * kappa + coef_f * forget_sq
    return (
        coef_r,
        coef_f,
        int8_codes(xp, branch),
        cost,
        retain_change,
        forget_change,
        kappa1,
        kappa2,
        unavoidable,
    )


@dataclass(frozen=True)
class BlockSolution:
    """The solution of one block.

    ``update`` has the inputs' shape (NaN-filled when the block is infeasible and the policy is to stop, so
    it can never be applied by accident); ``kappa`` is g_r·g_f; ``cost`` is the optimal objective value.
    """

    update: torch.Tensor
    branch: str
    kappa: float
    kappa1: float
    kappa2: float
    cost: float
    degradation_unavoidable: bool

    @property
    def feasible(self) -> bool:
        return self.branch not in ("infeasible", "zero_forget")


def _check_nonnegative(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def solve_block(
    retain_grad: torch.Tensor,
    forget_grad: torch.Tensor,
    *,
    radius: float,
    constraint: float,
    variant: Variant = "hamu-q",
    continue_on_infeasible: bool = False,
) -> BlockSolution:
    """Solve one HAMU block exactly (see the module docstring for the problem and its branches).

    The scalars are computed in at least float32 whatever the gradients' dtype; ``update`` is returned in
    the gradients' dtype.

    >>> import torch
    >>> sol = solve_block(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]), radius=1.0, constraint=0.5)
    >>> sol.branch
    'rectified'
    """
    if retain_grad.shape != forget_grad.shape:
        raise ValueError(
            f"retain_grad and forget_grad must have the same shape, got {tuple(retain_grad.shape)} "
            f"and {tuple(forget_grad.shape)}"
        )
    _check_nonnegative("radius", float(radius))
    _check_nonnegative("constraint", float(constraint))
    for name, grad in (("retain_grad", retain_grad), ("forget_grad", forget_grad)):
        if not torch.isfinite(grad).all():
            raise ValueError(f"{name} contains NaN or Inf")
    # Scalars in at least float32 (half-precision inputs are exact there); the update in the inputs' dtype.
    out_dtype = torch.promote_types(retain_grad.dtype, forget_grad.dtype)
    work = torch.promote_types(out_dtype, torch.float32)
    g_r = retain_grad.reshape(-1).to(work)
    g_f = forget_grad.reshape(-1).to(work)
    scalar = torch.stack([g_r @ g_r, g_f @ g_f, g_r @ g_f]).reshape(3, 1)
    like = scalar[0]
    # ‖e_r⊥‖² from the vectors (accurate for nearly colinear gradients); the signs of the HAMU-U swap
    # (e_r, e_f) = (−g_f, −g_r) do not change it.
    e_r, e_f = (g_f, g_r) if variant == "hamu-u" else (g_r, g_f)
    ef_sq = e_f @ e_f
    perp = e_r - (scalar[2, 0] / torch.where(ef_sq < ZERO_EPS, torch.ones_like(ef_sq), ef_sq)) * e_f
    coefs = block_coefficients(
        scalar[0],
        scalar[1],
        scalar[2],
        radius=torch.full_like(like, float(radius)),
        constraint=torch.full_like(like, float(constraint)),
        variant=variant,
        continue_on_infeasible=continue_on_infeasible,
        perp_sq=(perp @ perp).reshape(1),
    )
    update = (coefs.coef_retain * g_r + coefs.coef_forget * g_f).reshape(retain_grad.shape).to(out_dtype)
    return BlockSolution(
        update=update,
        branch=BRANCH_LABELS[int(coefs.branch.item())],
        kappa=float(scalar[2].item()),
        kappa1=float(coefs.kappa1.item()),
        kappa2=float(coefs.kappa2.item()),
        cost=float(coefs.cost.item()),
        degradation_unavoidable=bool(coefs.degradation_unavoidable.item()),
    )
