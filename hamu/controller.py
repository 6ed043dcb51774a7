"""Drive an unlearning run to a forget-loss target, with any method, without changing the unlearning loop.

A run at a fixed η (and, for HAMU, a fixed c = B/η) moves the forget loss by roughly the same amount per
step whatever the distance to the goal: on a converged model the gradients are tiny, the lr radius
R = η‖g_r‖ is tiny, and HAMU-Q raises the forget loss by about c·η per step, far too little to reach a
retrained reference's forget loss in the budget. Raising η once by hand overshoots instead, and
over-unlearning is a failure too (the forgotten rows then stand out from unseen rows the other way).

:func:`unlearn_to_target` composes ordinary :func:`hamu.unlearner.unlearn` runs ("chunks" of
``check_every`` steps, in place, on the same model). After each chunk it evaluates the forget (and
optionally retain) loss on fixed evaluation slices and:

* stops with ``"target"`` as soon as the forget loss is inside ``[loss − tolerance, loss + tolerance]``;
* rolls the chunk back (weights restored from a snapshot taken before it) when the forget loss went past
  ``loss + tolerance``, when a loss is no longer finite, or when the measured update norm per step went over
  ``max_update_norm``, and retries with a smaller step (η ÷ 4; the rolled-back steps count against the
  budget);
* otherwise sets the next chunk's η from the remaining gap: η ← η·clip(needed/achieved, ½, 4), where
  *needed* is the remaining gap spread evenly over the remaining chunks and *achieved* is the last chunk's
  forget-loss progress, bounded by ``config.lr · 256`` and by ``max_update_norm``;
* for HAMU-Q also sets the constraint from the remaining gap, c = clip(gap / (steps_left · η), 1e-4, cap),
  where the cap (the caller's ratio, else 1) drops ÷4 when a chunk stops infeasible and doubles back after a
  feasible chunk it limited, and switches to HAMU-U with c = 0 when HAMU-Q is infeasible even at c = 1e-4.
  Every step inside a chunk is an ordinary HAMU step, so the per-step guarantees (trust region, constraint)
  hold step by step.

A chunk also ends early when a step's forget-batch loss reaches the band (only a trigger for the
evaluation), the chunks draw their batches from one continuing stream, and KL/SCRUB objectives keep the
model from before unlearning as their reference.

Every chunk leaves one ``decisions`` entry (η, c/variant, the measured update norm per step, the losses
before and after, and why the next step size was chosen), so an audit can replay the controller's choices.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from hamu.core.transform import HamuConfig
from hamu.methods.registry import HAMU_METHODS
from hamu.unlearner import (
    STOP_DEGRADATION,
    STOP_INFEASIBLE,
    STOP_MAX_STEPS,
    LossFn,
    NonFiniteError,
    StepRecord,
    UnlearnConfig,
    Unlearner,
    UnlearnResult,
    call_model,
    eval_mode,
    move_to_device,
    resolve_device,
)

STOP_TARGET = "target"
STOP_STALLED = "stalled"
STOP_ALREADY_PAST = "already-past-target"

#: η never grows past ``config.lr · LR_GROWTH_LIMIT`` (8 chunks of ×2, 4 of ×4): a converged model's
#: gradients can be ~100× smaller than a lightly trained one's, and a bound keeps a run that cannot make
#: progress from diverging before it is declared stalled.
LR_GROWTH_LIMIT = 256.0
#: The smallest HAMU constraint ratio c the controller sets before giving up on HAMU-Q's forget constraint.
C_MIN = 1e-4
#: η (and a fixed radius) is divided by this after a chunk that went past the band.
ROLLBACK_FACTOR = 4.0
#: Per chunk, η changes by at most ×4 and at least ×½.
GROWTH_MAX = 4.0
SHRINK_MAX = 0.5
#: η is set so that the predicted update norm per step is this fraction of ``max_update_norm``.
NORM_SAFETY = 0.9

Batch = Any


@dataclass(frozen=True)
class ForgetTarget:
    """The forget-set mean loss to reach (e.g. the retrained reference's), within ± ``tolerance``.

    ``retain_ceiling``: the highest retain loss (on ``eval_retain``) a chunk may leave; a chunk that ends
    above it is rolled back like one that overshoots the forget band. Why: with a large step size the
    forget loss can be reached by damaging everything (the demo's first controller run reached its target
    with the retain loss ×10 and failed the test-accuracy gate); reaching the target that way is not
    unlearning.
    """

    loss: float
    tolerance: float
    check_every: int = 10
    retain_ceiling: float | None = None

    def __post_init__(self) -> None:
        for name, value in (("target loss", self.loss), ("tolerance", self.tolerance)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.tolerance <= 0:
            raise ValueError(f"tolerance must be > 0, got {self.tolerance!r}")
        every = self.check_every
        if isinstance(every, bool) or not isinstance(every, numbers.Integral) or every < 1:
            raise ValueError(f"check_every must be an integer >= 1, got {every!r}")
        ceiling = self.retain_ceiling
        if ceiling is not None and not (math.isfinite(ceiling) and ceiling > 0):
            raise ValueError(f"retain_ceiling must be a finite number > 0 or None, got {ceiling!r}")

    @property
    def low(self) -> float:
        return self.loss - self.tolerance

    @property
    def high(self) -> float:
        return self.loss + self.tolerance

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass
class TargetResult(UnlearnResult):
    """An :class:`UnlearnResult` (usable wherever one is expected) plus the controller's account.

    ``history`` concatenates every chunk's steps with a global ``step`` index over all steps taken; steps of a
    rolled-back chunk stay in it with ``applied=False`` and ``diagnostics["rolled_back"] = 1``, and every
    record carries ``diagnostics["chunk"]`` and ``diagnostics["lr"]``. ``steps_applied`` counts the steps in
    the returned model; ``steps_taken`` every step spent from the budget. ``config`` is the caller's.
    """

    reached: bool
    final_forget_loss: float
    final_retain_loss: float | None
    initial_forget_loss: float
    initial_retain_loss: float | None
    steps_taken: int
    target: ForgetTarget
    decisions: list[dict[str, Any]] = field(default_factory=list)

    def to_unlearn_result(self) -> UnlearnResult:
        return UnlearnResult(
            model=self.model,
            history=self.history,
            stop_reason=self.stop_reason,
            steps_applied=self.steps_applied,
            tensor_names=self.tensor_names,
            config=self.config,
        )


# -- evaluation ----------------------------------------------------------------------------------------------


def _rows(targets: Any) -> int:
    if isinstance(targets, torch.Tensor) and targets.ndim >= 1:
        return int(targets.shape[0])
    return 1


def _mean_loss_tensor(
    model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], device: torch.device
) -> torch.Tensor:
    """The row-weighted mean of ``loss_fn`` over ``batches`` (eval mode, no grad), left on the device."""
    total = torch.zeros((), device=device, dtype=torch.float64)
    rows = 0
    with eval_mode(model), torch.no_grad():
        for batch in batches:
            inputs, targets = move_to_device(batch, device)
            n = _rows(targets)
            total = total + loss_fn(call_model(model, inputs), targets).detach().double() * n
            rows += n
    return total / rows


def mean_loss(
    model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], *, device: str | torch.device = "auto"
) -> float:
    """The loss :func:`unlearn_to_target` compares with the target: ``loss_fn`` (a batch mean) averaged over
    ``batches`` weighted by their row counts, in eval mode without gradients. Compute the target (e.g. the
    retrained reference's forget loss) with this on the same slice."""
    batches = _check_slice(batches, "batches")
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    return float(_mean_loss_tensor(model.to(dev), loss_fn, batches, dev).item())


def _check_slice(batches: Sequence[Batch] | None, name: str) -> list[Batch]:
    if batches is None or isinstance(batches, torch.Tensor):
        raise ValueError(
            f"{name} must be a sequence of (inputs, targets) batches, got {type(batches).__name__}"
        )
    out = list(batches)
    if not out:
        raise ValueError(f"{name} is empty: the controller needs at least one batch to evaluate")
    return out


class _Stream:
    """One pass-continuing stream of batches over all chunks.

    Each chunk's :func:`unlearn` iterates its data afresh; handed the caller's list it would restart at the
    first batch every chunk, and with more batches than ``check_every`` the later ones would never be used.
    This hands every chunk the batches after the ones the previous chunk drew (re-iterating the source, so a
    DataLoader reshuffles, whenever a pass ends), exactly as one long run would.
    """

    def __init__(self, source: Iterable[Batch], name: str) -> None:
        self.source = source
        self.name = name
        self.it: Iterator[Batch] | None = None

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self._next()

    def _next(self) -> Batch:
        if self.it is not None:
            try:
                return next(self.it)
            except StopIteration:
                pass
        self.it = iter(self.source)
        try:
            return next(self.it)
        except StopIteration:
            raise ValueError(f"the {self.name} data yielded no batches") from None


# -- weights -------------------------------------------------------------------------------------------------


class _Snapshot:
    """What an unlearning run can change: the trainable parameters and the buffers.

    Frozen parameters (an LLM's base weights under LoRA) are not copied; they cannot move.
    """

    def __init__(self, model: nn.Module) -> None:
        self.params = [(p, p.detach().clone()) for p in model.parameters() if p.requires_grad]
        self.buffers = [(b, b.detach().clone()) for b in model.buffers()]

    def distance(self) -> torch.Tensor:
        """‖w_now − w_snapshot‖ over the trainable parameters, on the device (no host read)."""
        device = self.params[0][1].device
        total = torch.zeros((), device=device, dtype=torch.float64)
        for p, saved in self.params:
            total = total + (p.detach() - saved).double().square().sum()
        return total.sqrt()

    def restore(self) -> None:
        with torch.no_grad():
            for p, saved in self.params:
                p.copy_(saved)
            for b, saved in self.buffers:
                b.copy_(saved)


# -- the HAMU knobs ------------------------------------------------------------------------------------------


@dataclass
class _HamuKnobs:
    """HAMU's constraint, as the controller drives it.

    ``lr`` radius mode: c = B/η (``constraint_ratio``). Fixed-radius mode: the radius follows η
    (R_t = R_0·η_t/η_0, since SGD then applies w + δ whatever η is) and c = B/R, so that in both modes the
    forget loss rises by at least c·(step scale) per HAMU-Q step, with step scale η or R_t.

    HAMU-Q: c = clip(gap / (steps_left · scale), C_MIN, cap). ``cap`` starts at ``c_max`` (the caller's
    ratio, else 1), drops ÷4 after an infeasible chunk and recovers ×2 after a feasible chunk it bounded,
    up to ``c_max``: feasibility (Σ_t‖g_r,t‖‖g_f,t‖ ≥ c) gets easier as the forget gradient grows.
    HAMU-U chosen by the caller keeps its c (a retain-descent requirement, not a forget gain) unless
    infeasible, then ÷4 down to C_MIN, then 0.
    """

    variant: str
    c: float
    cap: float
    c_max: float
    fixed_radius: float | None  # R_0, or None for the lr radius
    base_lr: float
    options: dict[str, Any]

    @classmethod
    def from_config(cls, config: UnlearnConfig) -> _HamuKnobs:
        options = dict(config.method_options)
        base = HamuConfig(variant=config.method, **options)  # type: ignore[arg-type]
        explicit: float | None = None
        if base.radius is not None:
            assert base.constraint is not None  # HamuConfig insists
            explicit = base.constraint / base.radius if base.radius > 0 else 0.0
        elif base.constraint is not None:
            explicit = base.constraint / config.lr
            options.pop("constraint")
        elif "constraint_ratio" in options:
            explicit = base.constraint_ratio
        if config.method == "hamu-u":
            c = explicit if explicit is not None else base.constraint_ratio
        else:
            c = explicit if explicit is not None else 1.0
        return cls(
            variant=config.method,
            c=c,
            cap=c,
            c_max=c,
            fixed_radius=base.radius,
            base_lr=config.lr,
            options=options,
        )

    def step_scale(self, lr: float) -> float:
        """How far one step may move (η, or the fixed radius scaled with η)."""
        return lr if self.fixed_radius is None else self.fixed_radius * lr / self.base_lr

    def plan(self, gap: float, steps_left: int, lr: float) -> None:
        """HAMU-Q: the c that spreads the remaining gap over the remaining steps, within [C_MIN, cap]."""
        if self.variant != "hamu-q":
            return
        scale = self.step_scale(lr)
        wanted = gap / (steps_left * scale) if scale > 0 else self.cap
        self.c = min(max(wanted, C_MIN), max(self.cap, C_MIN))

    def at_minimum(self) -> bool:
        return self.c <= C_MIN if self.variant == "hamu-q" else self.c <= 0.0

    def on_infeasible(self) -> str:
        """Lower c after an infeasible chunk; returns what was done."""
        before = self.c
        if before > C_MIN:
            self.c = self.cap = max(before / 4.0, C_MIN)
            return f"infeasible at c={before:.3g}: c ÷4 → {self.c:.3g}"
        if self.variant == "hamu-q":
            # HAMU-U with the grad-norm split and the lr radius is feasible iff Σ‖g_r,t‖‖g_f,t‖ ≥ c, the
            # same test HAMU-Q just failed, so it gets c = 0: the retain loss must not rise (first order),
            # which is always feasible, and the forget loss rises as fast as the trust region allows.
            self.variant, self.c, self.cap = "hamu-u", 0.0, 0.0
            return f"infeasible at c={before:.3g} (minimum): switch to hamu-u with c=0"
        self.c = self.cap = 0.0
        return f"infeasible at c={before:.3g}: c → 0"

    def on_feasible(self) -> str:
        """After a feasible chunk whose c was held down by the cap, let the cap recover (×2, up to c_max)."""
        if self.variant != "hamu-q" or self.cap >= self.c_max or self.c < self.cap:
            return ""
        self.cap = min(self.cap * 2.0, self.c_max)
        return f"; c cap ×2 → {self.cap:.3g}"

    def options_for(self, lr: float) -> dict[str, Any]:
        opts = dict(self.options)
        if self.fixed_radius is None:
            opts["constraint_ratio"] = self.c
        else:
            radius = self.step_scale(lr)
            opts["radius"] = radius
            opts["constraint"] = self.c * radius
        return opts

    def describe(self, lr: float) -> dict[str, Any]:
        out: dict[str, Any] = {"variant": self.variant, "constraint_ratio": self.c}
        if self.fixed_radius is not None:
            radius = self.step_scale(lr)
            out.update(radius=radius, constraint=self.c * radius)
        return out


# -- the controller ------------------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def unlearn_to_target(
    model: nn.Module,
    loss_fn: LossFn,
    retain: Iterable[Batch] | None,
    forget: Iterable[Batch] | None,
    config: UnlearnConfig,
    target: ForgetTarget,
    *,
    eval_forget: Sequence[Batch],
    eval_retain: Sequence[Batch] | None = None,
    max_update_norm: float | None = None,
    progress: bool = False,
    measure_fn: LossFn | None = None,
) -> TargetResult:
    """Unlearn ``forget`` from ``model`` (in place) until its forget loss is within ``target``'s band.

    ``loss_fn`` is the objective the steps differentiate; ``measure_fn`` (default ``loss_fn``) the loss the
    target and the retain ceiling are written in, read on the evaluation slices. They differ when a model is
    trained with its own loss but judged, like every other, in cross-entropy.

    ``config.max_steps`` is the step budget over all chunks (rolled-back ones included); ``config.lr`` the
    first chunk's η; the method and its options as in :func:`hamu.unlearner.unlearn`. ``eval_forget`` (and
    ``eval_retain``) are fixed lists of ``(inputs, targets)`` batches evaluated after every chunk with
    :func:`mean_loss`'s rule. ``max_update_norm`` bounds the measured update norm per step,
    ‖w_after − w_before‖ / steps over a chunk. Stop reasons: ``"target"``, ``"max_steps"`` (budget spent),
    ``"stalled"`` (η at its maximum, c at its minimum, and a chunk made no forget progress),
    ``"already-past-target"`` (the forget loss starts above the band: nothing to forget), and
    ``"degradation_unavoidable"`` when the caller's HAMU config acts on the stopping rule.
    """
    if not isinstance(target, ForgetTarget):
        raise ValueError(f"target must be a ForgetTarget, got {type(target).__name__}")
    if not isinstance(config, UnlearnConfig):
        raise ValueError(f"config must be an UnlearnConfig, got {type(config).__name__}")
    eval_f = _check_slice(eval_forget, "eval_forget")
    eval_r = _check_slice(eval_retain, "eval_retain") if eval_retain is not None else None
    if max_update_norm is not None and (not math.isfinite(max_update_norm) or max_update_norm <= 0):
        raise ValueError(f"max_update_norm must be a finite number > 0 or None, got {max_update_norm!r}")
    retain_stream = _Stream(retain, "retain") if retain is not None else None
    forget_stream = _Stream(forget, "forget") if forget is not None else None

    device = resolve_device(config.device)
    model.to(device)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("the model has no trainable parameters")
    names = tuple(n for n, p in model.named_parameters() if p.requires_grad)
    hamu = _HamuKnobs.from_config(config) if config.method in HAMU_METHODS else None
    measure = measure_fn or loss_fn

    def evaluate(snapshot: _Snapshot | None) -> tuple[float, float | None, float]:
        """Forget loss, retain loss and the distance moved since ``snapshot``: one host read."""
        parts = [_mean_loss_tensor(model, measure, eval_f, device)]
        if eval_r is not None:
            parts.append(_mean_loss_tensor(model, measure, eval_r, device))
        if snapshot is not None:
            parts.append(snapshot.distance())
        values = torch.stack(parts).tolist()
        lf = values[0]
        rl = values[1] if eval_r is not None else None
        moved = values[-1] if snapshot is not None else 0.0
        return lf, rl, moved

    lf0, lr0, _ = evaluate(None)
    if target.retain_ceiling is not None and eval_r is None:
        raise ValueError("a retain_ceiling needs eval_retain to measure the retain loss")
    ceiling = target.retain_ceiling
    forget_loss, retain_loss = lf0, lr0
    history: list[StepRecord] = []
    decisions: list[dict[str, Any]] = []
    taken = applied = 0
    lr = config.lr
    lr_max = config.lr * LR_GROWTH_LIMIT
    lr_min = config.lr * 1e-12  # rollbacks shrink η geometrically; keep it a valid (positive) lr
    lr_ceiling = math.inf  # the smallest lr that went past the band: never used again
    reference: nn.Module | None = None

    def result(stop: str) -> TargetResult:
        return TargetResult(
            model=model,
            history=history,
            stop_reason=stop,
            steps_applied=applied,
            tensor_names=names,
            config=config,
            reached=stop == STOP_TARGET,
            final_forget_loss=forget_loss,
            final_retain_loss=retain_loss,
            initial_forget_loss=lf0,
            initial_retain_loss=lr0,
            steps_taken=taken,
            target=target,
            decisions=decisions,
        )

    if not math.isfinite(lf0):
        raise ValueError(f"the model's forget loss on eval_forget is not finite ({lf0!r})")
    if lf0 >= target.low:
        return result(STOP_TARGET if target.contains(lf0) else STOP_ALREADY_PAST)

    def near_band(record: StepRecord) -> bool:
        # End the chunk early (and evaluate) once the step's forget-batch loss reaches the band: a fast
        # method can otherwise run far past it within one chunk. Only a trigger; the eval slice decides.
        return record.forget_loss is not None and record.forget_loss >= target.low

    chunk = 0
    while taken < config.max_steps:
        steps_left = config.max_steps - taken
        k = min(target.check_every, steps_left)
        gap = target.loss - forget_loss
        if hamu is not None:
            hamu.plan(gap, steps_left, lr)
        chunk_cfg = replace(
            config,
            method=hamu.variant if hamu is not None else config.method,
            lr=lr,
            max_steps=k,
            seed=config.seed + chunk,
            method_options=hamu.options_for(lr) if hamu is not None else config.method_options,
        )
        decision: dict[str, Any] = {"chunk": chunk, "first_step": taken, "lr": lr, "method": chunk_cfg.method}
        if hamu is not None:
            decision.update(hamu.describe(lr))
        decision.update(forget_loss_before=forget_loss, retain_loss_before=retain_loss)

        snapshot = _Snapshot(model)
        records: list[StepRecord] = []
        runner = Unlearner(model, loss_fn, chunk_cfg)
        if runner.reference is not None:
            # KL/SCRUB objectives compare with the model *before unlearning*, not before this chunk.
            reference = reference if reference is not None else runner.reference
            runner.reference = reference
        failure: str | None = None
        chunk_stop = STOP_MAX_STEPS
        chunk_applied = 0
        try:
            res = runner.run(
                retain_stream, forget_stream, callbacks=[records.append, near_band], progress=progress
            )
            records = res.history  # the same records, plus a final stopped (not applied) one
            chunk_stop, chunk_applied = res.stop_reason, res.steps_applied
        except NonFiniteError as exc:
            failure = str(exc)
            chunk_applied = len(records)  # the callback saw only applied steps
        steps = len(records) + (1 if failure is not None else 0)
        lf, retain_after, moved = evaluate(snapshot)
        per_step = moved / chunk_applied if chunk_applied > 0 else 0.0
        decision.update(
            steps=steps,
            steps_applied=chunk_applied,
            chunk_stop_reason="non-finite" if failure is not None else chunk_stop,
            # None where not finite, so that the decisions stay plain JSON
            update_norm_per_step=_finite(per_step),
            forget_loss_after=_finite(lf),
            retain_loss_after=_finite(retain_after),
        )

        # -- reject: past the band, non-finite, or over the update-norm bound --------------------------------
        reasons: list[str] = []
        shrink = 1.0
        if failure is not None:
            reasons.append(f"non-finite ({failure})")
            shrink = 1.0 / ROLLBACK_FACTOR
        if not math.isfinite(lf) or (retain_after is not None and not math.isfinite(retain_after)):
            reasons.append("a loss is no longer finite")
            shrink = 1.0 / ROLLBACK_FACTOR
        elif lf > target.high:
            reasons.append(f"forget loss {_fmt(lf)} > {_fmt(target.high)}")
            shrink = 1.0 / ROLLBACK_FACTOR
            lr_ceiling = min(lr_ceiling, lr)
        elif retain_after is not None and ceiling is not None and retain_after > ceiling:
            reasons.append(f"retain loss {_fmt(retain_after)} > ceiling {_fmt(ceiling)}")
            shrink = 1.0 / ROLLBACK_FACTOR
            lr_ceiling = min(lr_ceiling, lr)
        if max_update_norm is not None and not per_step <= max_update_norm:
            reasons.append(f"update norm {_fmt(per_step)}/step > {_fmt(max_update_norm)}")
            shrink = min(
                shrink, NORM_SAFETY * max_update_norm / per_step if math.isfinite(per_step) else 0.25
            )
        if reasons:
            snapshot.restore()
            _append(history, records, taken, chunk, lr, rolled_back=True)
            taken += steps
            new_lr = lr * shrink
            decision.update(
                action="rolled-back",
                why=f"{'; '.join(reasons)}: restored, lr ×{_fmt(shrink)}",
                next_lr=new_lr,
            )
            decisions.append(decision)
            lr = max(new_lr, lr_min)
            chunk += 1
            continue

        # -- accept ------------------------------------------------------------------------------------------
        _append(history, records, taken, chunk, lr, rolled_back=False)
        taken += steps
        applied += chunk_applied
        progress_made = lf - forget_loss
        forget_loss, retain_loss = lf, retain_after
        decision.update(action="accepted", progress=progress_made)
        if target.contains(lf):
            decision.update(why=f"forget loss {_fmt(lf)} inside [{_fmt(target.low)}, {_fmt(target.high)}]")
            decisions.append(decision)
            return result(STOP_TARGET)
        if chunk_stop == STOP_DEGRADATION:
            decision.update(why="the HAMU stopping rule fired (stop_on_degradation)")
            decisions.append(decision)
            return result(STOP_DEGRADATION)

        steps_left = config.max_steps - taken
        gap = target.loss - lf
        why: str
        new_lr = lr
        if hamu is not None and chunk_stop == STOP_INFEASIBLE:
            why = hamu.on_infeasible()
        else:
            chunks_left = max(1, math.ceil(steps_left / target.check_every))
            needed = gap / chunks_left
            # Progress scaled to a full chunk (a chunk can be shorter: the budget's tail).
            achieved = progress_made * target.check_every / chunk_applied if chunk_applied > 0 else 0.0
            factor = GROWTH_MAX if achieved <= 0 else min(max(needed / achieved, SHRINK_MAX), GROWTH_MAX)
            new_lr = min(lr * factor, lr_max)
            capped = ""
            if new_lr >= lr_ceiling:
                # An lr this large already went past the band once: go halfway (geometrically) instead.
                new_lr = min(new_lr, math.sqrt(lr * lr_ceiling))
                capped = f" (lr {_fmt(lr_ceiling)} overshot before)"
            why = (
                f"gap {_fmt(gap)} over {chunks_left} chunks needs {_fmt(needed)}/chunk, "
                f"got {_fmt(achieved)}: lr ×{_fmt(new_lr / lr)}{capped}"
            )
            stuck = progress_made <= 0 and lr >= lr_max and (hamu is None or hamu.at_minimum())
            if stuck:
                decision.update(why=f"no forget progress at the largest lr and smallest c: {why}", next_lr=lr)
                decisions.append(decision)
                return result(STOP_STALLED)
            if hamu is not None:
                why += hamu.on_feasible()
        if max_update_norm is not None and per_step > 0:
            bound = lr * NORM_SAFETY * max_update_norm / per_step
            if new_lr > bound:
                new_lr = bound
                why += f"; capped by max_update_norm → lr {_fmt(new_lr)}"
        decision.update(why=why, next_lr=new_lr)
        decisions.append(decision)
        lr = max(new_lr, lr_min)
        chunk += 1
    return result(STOP_MAX_STEPS)


def _append(
    history: list[StepRecord],
    records: Sequence[StepRecord],
    first: int,
    chunk: int,
    lr: float,
    *,
    rolled_back: bool,
) -> None:
    for i, rec in enumerate(records):
        rec.step = first + i
        if rolled_back:
            rec.applied = False
        rec.diagnostics.update(chunk=float(chunk), lr=lr, rolled_back=float(rolled_back))
        history.append(rec)


__all__ = [
    "HAMU_METHODS",
    "STOP_ALREADY_PAST",
    "STOP_STALLED",
    "STOP_TARGET",
    "ForgetTarget",
    "TargetResult",
    "mean_loss",
    "unlearn_to_target",
]
