"""The model-wide HAMU transform: from paired flat gradients to one update for every trainable tensor.

Two modes:

* ``layerwise`` (default): every tensor t is its own block with radius R_t and constraint share B_t. Because
  Σ_t R_t² = R² and Σ_t B_t = B, the concatenated update is a feasible point of the whole-model problem
  whenever every block is feasible.
* ``global``: the whole model is one block, solved exactly. Unlike the reference implementation (which
  normalises the orthogonal part per tensor, overshooting R), the orthogonal direction is normalised by its
  global norm, so the result is the true optimum of the whole-model problem.

Radius: ``lr`` radius R_t = η‖g_eff,t‖ (the effective retain gradient: g_r for HAMU-Q, g_f for HAMU-U),
which turns the direct branch into exactly an SGD step; or a fixed total radius R split as
R_t = R·‖g_eff,t‖/‖g_eff‖, so that Σ_t R_t² = R² (the reference gives every tensor the full R).

Constraint split (layer-wise). Only blocks that can carry a share take one: both gradients nonzero
(‖g_r,t‖², ‖g_f,t‖² ≥ the solver's ε). A block without a gradient (an unused head, an embedding block no batch
touches) has reach R_t‖g_f,t‖ = 0, so any share would make it infeasible and stop the run for nothing.

* ``grad-norm`` (default, the paper's) B_t = B·‖g_r,t‖‖g_f,t‖/S with S = Σ_s ‖g_r,s‖‖g_f,s‖;
* ``equal`` B_t = B/n over the n blocks with a gradient;
* ``softmax`` B_t = B·softmax(−κ)_t over the blocks with a gradient;
* ``grad-norm-unnormalised`` (the reference's ``--distribute_constraint_grad_norm
  --no_normalize_distributed_constraint``): B_t = B·‖g_r,t‖‖g_f,t‖ with the lr radius. With R_t = η‖e_r,t‖
  each block's reach is R_t‖e_f,t‖ = η‖g_r,t‖‖g_f,t‖, so B_t/reach_t = c: every block is feasible iff c ≤ 1,
  whatever the gradient scale, and the concatenated step meets the *total* Σ_t B_t = c·η·S (not B). With a
  fixed radius R the same rule reads B_t = c·R_t‖e_f,t‖ with c = B/R, i.e. B_t = B·‖g_r,t‖‖g_f,t‖/‖e_r‖.

The first three split B itself (Σ_t B_t = B); the unnormalised split does not, and the global thresholds
κ1, κ2 are then computed with its total Σ_t B_t (the reference's stopping rule uses B·S there likewise).

Precision: the per-block scalars (norms, dot products, ‖e_r⊥‖², radii, shares, coefficients) are computed in
at least float32 whatever the gradients' dtype, and the update is returned in the gradients' dtype. In
bfloat16 the colinear test (relative to eps) would otherwise catch every block under ~45° and in float16 at
η = 1e-4 R_t² and B_t² underflow.

All work is batched over tensors; nothing here synchronises with the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from hamu.core.arrays import clamp0, namespace, nan_to_zero, to_arrays, to_tensor, to_tensors
from hamu.core.layout import FlatLayout
from hamu.core.solver import (
    VARIANTS,
    ZERO_EPS,
    BlockCoefficients,
    Branch,
    Variant,
    colinear_rel_eps,
    solve_arrays,
)

Mode = Literal["layerwise", "global"]
#: How the constraint budget B is shared among blocks (see :class:`HamuConfig`).
ConstraintSplit = Literal["grad-norm", "equal", "softmax", "grad-norm-unnormalised"]
InfeasiblePolicy = Literal["stop", "continue"]
MODES: tuple[str, ...] = ("layerwise", "global")
SPLITS: tuple[str, ...] = ("grad-norm", "equal", "softmax", "grad-norm-unnormalised")
#: The split under which every block is feasible whenever c ≤ 1 (see the module docstring).
UNNORMALISED_SPLIT = "grad-norm-unnormalised"
POLICIES: tuple[str, ...] = ("stop", "continue")


@dataclass(frozen=True)
class HamuConfig:
    """Options of the HAMU transform.

    ``constraint_ratio`` is c = B/η, used with the lr radius (the paper's setting). With a fixed ``radius``,
    give the absolute ``constraint`` B instead. ``stop_on_degradation`` acts on the sign-correct stopping
    rule (stop when the predicted retain change of the chosen update is positive); it is always logged.
    ``split`` chooses how B is shared between the blocks (module docstring); ``grad-norm-unnormalised``
    makes every block feasible for c ≤ 1 at the price of a total constraint c·η·S instead of B.
    """

    variant: Variant = "hamu-q"
    constraint_ratio: float = 0.1
    constraint: float | None = None
    radius: float | None = None
    mode: Mode = "layerwise"
    split: ConstraintSplit = "grad-norm"
    on_infeasible: InfeasiblePolicy = "stop"
    stop_on_degradation: bool = False

    def __post_init__(self) -> None:
        for name, value, accepted in (
            ("variant", self.variant, VARIANTS),
            ("mode", self.mode, MODES),
            ("split", self.split, SPLITS),
            ("on_infeasible", self.on_infeasible, POLICIES),
        ):
            if value not in accepted:
                raise ValueError(f"unknown {name} {value!r}; accepted: {', '.join(accepted)}")
        for name, num in (
            ("constraint_ratio", self.constraint_ratio),
            ("constraint", self.constraint),
            ("radius", self.radius),
        ):
            if num is not None and (not math.isfinite(num) or num < 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {num!r}")
        if self.radius is not None and self.constraint is None:
            raise ValueError("a fixed radius needs an absolute constraint B (set constraint=...)")

    def total_constraint(self, lr: float) -> float:
        return self.constraint if self.constraint is not None else self.constraint_ratio * lr


@dataclass(frozen=True)
class TransformOutput:
    """The update and its diagnostics; every field stays on the gradients' device.

    ``update`` is the flat δ in the gradients' dtype (NaN-free even when the step must be skipped; then it is
    zero and ``stop`` is true). Every other field is in the scalar dtype (at least float32).
    ``stop_infeasible`` flags an infeasible block under the ``stop`` policy; ``degradation`` is the
    sign-correct stopping rule for this step. ``constraint_total`` is the forget gain the concatenated update
    guarantees when every block is feasible: Σ_t B_t, which is B except under the unnormalised split.
    """

    update: torch.Tensor
    blocks: BlockCoefficients
    kappa: torch.Tensor  # per block
    radius: torch.Tensor  # per block
    constraint: torch.Tensor  # per block
    kappa_global: torch.Tensor
    kappa1_global: torch.Tensor
    kappa2_global: torch.Tensor
    predicted_retain_change: torch.Tensor
    predicted_forget_change: torch.Tensor
    stopping_margin: torch.Tensor
    branch_counts: torch.Tensor
    stop_infeasible: torch.Tensor
    degradation: torch.Tensor
    constraint_total: torch.Tensor


def _safe_nonzero(xp: Any, sq: Any) -> Any:
    """Replace squared norms the solver treats as zero by 1 (the solver ignores those blocks' ratios)."""
    return xp.where(sq < ZERO_EPS, 1.0, sq)


def scalar_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype HAMU computes its per-block scalars in: the gradients' own, but at least float32."""
    return torch.promote_types(dtype, torch.float32)


def count_branches(branch: Any) -> torch.Tensor:
    """Blocks per :class:`Branch` (int64, one entry per branch), without a host synchronisation.

    ``torch.bincount`` reads the largest value back from the device to size its output; the number of
    branches is known, so a comparison with every code and a sum does the same on the device. Host codes
    (a numpy array) are counted by numpy.
    """
    if isinstance(branch, np.ndarray):
        return torch.from_numpy(np.bincount(branch, minlength=len(Branch)))
    codes = torch.arange(len(Branch), device=branch.device, dtype=branch.dtype)
    return (branch.reshape(-1, 1) == codes).sum(dim=0)


class HamuTransform:
    """Turn paired gradients (g_r, g_f) into the HAMU update δ for every block at once."""

    def __init__(self, config: HamuConfig | None = None) -> None:
        self.config = config or HamuConfig()

    def __call__(
        self,
        retain: torch.Tensor,
        forget: torch.Tensor,
        layout: FlatLayout,
        *,
        lr: float,
        scale: float = 1.0,
    ) -> TransformOutput:
        """``update`` is ``scale``·δ: the methods pass −1/η and get the equivalent gradient without one
        more pass over the parameters."""
        if retain.shape != forget.shape or retain.numel() != layout.numel:
            raise ValueError(
                f"flat gradients must both have {layout.numel} elements, got {retain.numel()} "
                f"and {forget.numel()}"
            )
        if not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        # Python floats: a numpy float64 would promote the host path's float32 scalars to float64.
        lr, scale = float(lr), float(scale)
        cfg = self.config
        out_dtype = torch.promote_types(retain.dtype, forget.dtype)
        # Half-precision gradients are exact in float32: work there (no-op copies for float32/float64).
        work = scalar_dtype(out_dtype)
        retain, forget = retain.to(work), forget.to(work)
        gram = layout.segment_gram(retain, forget)
        # The per-block scalars: numpy on the host, torch on an accelerator (see hamu.core.arrays).
        host = layout.on_host(retain)
        xp = namespace(host)
        retain_sq, forget_sq, kappa = to_arrays(host, *gram)
        B = float(cfg.total_constraint(lr))
        eff_sq = forget_sq if cfg.variant == "hamu-u" else retain_sq
        eff_total = eff_sq.sum()

        # ‖e_r⊥‖² of each block is computed from the vectors: the scalar formula ‖e_r‖² − κ²/‖e_f‖² loses
        # precision for nearly colinear gradients and then overshoots the trust region (see
        # block_coefficients). e_r/e_f: the effective gradients, up to sign (which does not change the norm).
        eff_r, eff_f = (forget, retain) if cfg.variant == "hamu-u" else (retain, forget)
        eff_f_sq = retain_sq if cfg.variant == "hamu-u" else forget_sq
        if cfg.mode == "global":
            block_r = xp.reshape(retain_sq.sum(), (1,))
            block_f = xp.reshape(forget_sq.sum(), (1,))
            block_k = xp.reshape(kappa.sum(), (1,))
            R = self._radius(xp, xp.reshape(eff_total, (1,)), eff_total, lr)
            Bt = xp.full_like(R, B)
            B_total = Bt.sum()
            ratio = to_tensor(block_k / _safe_nonzero(xp, xp.reshape(eff_f_sq.sum(), (1,))))
            perp = eff_r - ratio * eff_f
            perp_sq = to_arrays(host, (perp * perp).sum().reshape(1))[0]
        else:
            block_r, block_f, block_k = retain_sq, forget_sq, kappa
            R = self._radius(xp, eff_sq, eff_total, lr)
            Bt, B_total = self._split_constraint(xp, B, retain_sq, forget_sq, kappa, eff_total)
            ratio = to_tensor(kappa / _safe_nonzero(xp, eff_f_sq))
            perp_sq = to_arrays(host, layout.segment_residual_sq(eff_r, ratio, eff_f))[0]

        parts = solve_arrays(
            xp,
            block_r,
            block_f,
            block_k,
            R,
            Bt,
            variant=cfg.variant,
            continue_on_infeasible=cfg.on_infeasible == "continue",
            perp_sq=perp_sq,
            colinear_eps=colinear_rel_eps(work),
        )
        coef_retain, coef_forget, branch, cost, retain_change, forget_change, k1, k2, unavoidable = parts
        stop_infeasible = (~xp.isfinite(coef_retain)).any()
        # A stopped step must leave the model as it is: zero every coefficient (tiny tensors) rather than
        # masking the full-size update afterwards.
        coef_r = xp.where(stop_infeasible, 0.0, nan_to_zero(xp, coef_retain) * scale)
        coef_f = xp.where(stop_infeasible, 0.0, nan_to_zero(xp, coef_forget) * scale)
        total_cost = nan_to_zero(xp, cost).sum()
        infeasible_any = (branch >= int(Branch.INFEASIBLE)).any()
        # Sign-correct rule: stop when even the best constrained step is predicted to raise the objective
        # (retain loss for HAMU-Q), or when no step can meet the constraint. Never fires for κ < 0.
        degradation = infeasible_any | (total_cost > 0)
        # Global hardness thresholds for the whole-model problem with the total radius and the total
        # constraint the blocks carry (B, or c·η·S under the unnormalised split).
        total_R = xp.sqrt((R * R).sum())
        eff_norm = xp.sqrt(eff_total)
        other_sq = (retain_sq if cfg.variant == "hamu-u" else forget_sq).sum()
        safe_R = xp.where(total_R > 0, total_R, 1.0)
        kappa1 = -B_total * eff_norm / safe_R
        kappa2 = eff_norm * xp.sqrt(clamp0(xp, other_sq - (B_total / safe_R) ** 2))

        # Back to tensors, a handful of conversions for the whole step (see hamu.core.arrays.to_tensors).
        c_r, c_f, cost_t, retain_t, forget_t, k1_t, k2_t, radius_t, constraint_t, coef_r_t, coef_f_t = (
            to_tensors(
                coef_retain, coef_forget, cost, retain_change, forget_change, k1, k2, R, Bt, coef_r, coef_f
            )
        )
        totals = to_tensors(
            kappa.sum(),
            kappa1,
            kappa2,
            nan_to_zero(xp, retain_change).sum(),
            nan_to_zero(xp, forget_change).sum(),
            -total_cost,
            B_total,
        )
        flags = to_tensors(stop_infeasible, degradation)
        if cfg.mode == "global":
            update = coef_r_t * retain + coef_f_t * forget
        else:
            update = layout.combine(coef_r_t, retain, coef_f_t, forget)
        # The combination is formed in the scalar dtype (its two terms can nearly cancel), then rounded once.
        update = update.to(out_dtype)
        solved = BlockCoefficients(
            c_r, c_f, to_tensor(branch), cost_t, retain_t, forget_t, k1_t, k2_t, to_tensor(unavoidable)
        )
        return TransformOutput(
            update=update,
            blocks=solved,
            kappa=to_tensor(kappa),
            radius=radius_t,
            constraint=constraint_t,
            kappa_global=totals[0],
            kappa1_global=totals[1],
            kappa2_global=totals[2],
            predicted_retain_change=totals[3],
            predicted_forget_change=totals[4],
            stopping_margin=totals[5],
            branch_counts=count_branches(branch),
            stop_infeasible=flags[0],
            degradation=flags[1],
            constraint_total=totals[6],
        )

    def _radius(self, xp: Any, eff_sq: Any, eff_total: Any, lr: float) -> Any:
        if self.config.radius is None:
            return lr * xp.sqrt(eff_sq)
        share = eff_sq / xp.where(eff_total > 0, eff_total, 1.0)
        return float(self.config.radius) * xp.sqrt(share)

    def _split_constraint(
        self,
        xp: Any,
        B: float,
        retain_sq: Any,
        forget_sq: Any,
        kappa: Any,
        eff_total: Any,
    ) -> tuple[Any, Any]:
        """Per-block shares B_t and their total (B, except under the unnormalised split)."""
        split = self.config.split
        # Blocks that can carry a share: both gradients nonzero by the solver's test. Any other block has
        # reach R_t‖e_f,t‖ = 0 and would be infeasible (zero_forget) for every B_t > 0.
        active = (retain_sq >= ZERO_EPS) & (forget_sq >= ZERO_EPS)
        weight = xp.where(active, xp.sqrt(retain_sq) * xp.sqrt(forget_sq), 0.0)
        if split == UNNORMALISED_SPLIT:
            if self.config.radius is not None:
                # c·R_t‖e_f,t‖ with c = B/R and R_t = R‖e_r,t‖/‖e_r‖: the radius cancels.
                weight = weight / xp.sqrt(_safe_nonzero(xp, eff_total))
            shares = B * weight
            return shares, shares.sum()
        indicator = xp.where(active, 1.0, xp.zeros_like(retain_sq))  # 1 per active block, in its dtype
        n_active = indicator.sum()
        any_active = n_active > 0
        total = xp.full_like(eff_total, B)
        # No block can carry a share: split over all of them (so that B > 0 is reported infeasible).
        fallback = xp.full_like(retain_sq, B / len(retain_sq))
        if split == "equal":
            share = indicator / xp.where(any_active, n_active, 1.0)
        elif split == "softmax":
            logits = xp.where(active, -kappa, -math.inf)
            logits = xp.where(any_active, logits, -kappa)
            share = xp.exp(logits - logits.max())
            share = share / share.sum()
        else:
            weight_sum = weight.sum()
            share = weight / xp.where(weight_sum > 0, weight_sum, 1.0)
        return xp.where(any_active, B * share, fallback), total
