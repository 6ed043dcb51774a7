"""Hardness assessment before touching the model.

Samples a few paired retain/forget gradient batches on the current model (no update is applied to it) and
reports what HAMU's geometry says about the request: κ = g_r·g_f globally and per tensor, the thresholds
κ1 and κ2, whether the requested forget improvement is feasible, the predicted first-order retain change
of the best feasible step, and whether retain degradation is unavoidable. A pipeline gate turns this into
"unlearn" or "retrain exactly" (:mod:`hamu.governance.decision`); HAMU's verdict binds only runs of a HAMU
method.

It also times the step of the method the run will use (``method``, built by the method registry and run
by :class:`~hamu.unlearner.Unlearner`, as :func:`~hamu.unlearn` does) on the device the run will use
(``device``, resolved like the unlearner's ``auto``), on a copy of the model: the report says which
method, device and how many steps were timed. The caller's model is left as it was (weights and device).
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from hamu.core.solver import Branch
from hamu.core.transform import HamuConfig, HamuTransform
from hamu.methods.registry import HAMU_METHODS  # for any other method the hardness verdict is advisory
from hamu.unlearner import FrozenBatchNorm, LossFn, StepRecord, UnlearnConfig, Unlearner, resolve_device


@dataclass(frozen=True)
class HardnessReport:
    """Aggregates over the sampled batches (plain numbers, JSON-serialisable).

    ``constraint`` is the forget gain the step guarantees when feasible (the transform's
    ``constraint_total``: B, or c·η·S under the unnormalised split), averaged over the batches.
    ``method``, ``device`` and ``timed_steps`` say what ``seconds_per_step`` timed: that many steps of the
    run's method on that device (after one untimed warm-up step).
    """

    batches: int
    variant: str
    lr: float
    constraint: float
    kappa: float
    kappa_std: float
    kappa1: float
    kappa2: float
    cosine: float
    angle_degrees: float
    retain_grad_norm: float
    forget_grad_norm: float
    feasible_fraction: float
    degradation_fraction: float
    predicted_retain_change: float
    predicted_forget_change: float
    kappa_per_tensor: dict[str, float]
    method: str
    device: str
    timed_steps: int
    seconds_per_step: float

    @property
    def feasible(self) -> bool:
        return self.feasible_fraction == 1.0

    @property
    def degradation_unavoidable(self) -> bool:
        """True when most sampled steps cannot meet the constraint without raising the retain loss."""
        return self.degradation_fraction > 0.5

    @property
    def verdict(self) -> str:
        if not self.feasible:
            return "infeasible"
        if self.degradation_unavoidable:
            return "degradation-unavoidable"
        if self.kappa <= self.kappa1:
            return "easy"
        return "hard"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["feasible"] = self.feasible
        out["degradation_unavoidable"] = self.degradation_unavoidable
        out["verdict"] = self.verdict
        return out


def assess_hardness(
    model: nn.Module,
    loss_fn: LossFn,
    retain: Iterable[Any],
    forget: Iterable[Any],
    *,
    hamu: HamuConfig | None = None,
    lr: float = 0.01,
    batches: int = 3,
    max_grad_norm: float | None = 1.0,
    device: str = "auto",
    method: str | None = None,
    method_options: Mapping[str, Any] | None = None,
    timed_steps: int | None = None,
) -> HardnessReport:
    """Measure κ, κ1, κ2, feasibility and the stopping rule on ``batches`` paired batches, and time the
    run's step; the model is left unchanged.

    ``method``/``method_options`` are the run's (as in :class:`~hamu.unlearner.UnlearnConfig`); by default
    the HAMU variant of ``hamu``, and for a HAMU method without options ``hamu``'s fields. ``timed_steps``
    (default ``batches``) steps are timed after one warm-up step, on a copy of the model on ``device``
    (``auto``: CUDA when present, as in the unlearner). A HAMU method is timed with
    ``on_infeasible="continue"`` and no degradation stop, so that an infeasible request is still timed.
    """
    if batches < 1:
        raise ValueError(f"batches must be >= 1, got {batches!r}")
    steps = batches if timed_steps is None else timed_steps
    if steps < 1:
        raise ValueError(f"timed_steps must be >= 1, got {timed_steps!r}")
    cfg = hamu or HamuConfig()
    method = method or cfg.variant
    if method_options is not None:
        options = dict(method_options)
    elif method in HAMU_METHODS:
        options = {k: v for k, v in asdict(cfg).items() if k != "variant"}
    else:
        options = {}
    if method in HAMU_METHODS:
        # Timing measures the cost of a step, not whether the run would stop: keep stepping.
        options.update(on_infeasible="continue", stop_on_degradation=False)
    target = resolve_device(device)
    if target.type == "cuda" and target.index is None:
        target = torch.device("cuda", torch.cuda.current_device())  # where .to("cuda") puts it
    placed = str(target)
    work = copy.deepcopy(model).to(target)
    runner = Unlearner(
        work,
        loss_fn,
        UnlearnConfig(
            method=method,
            lr=lr,
            max_steps=steps + 1,
            max_grad_norm=max_grad_norm,
            device=placed,
            method_options=options,
        ),
    )
    retain_batches = _draw(retain, batches, "retain")
    forget_batches = _draw(forget, batches, "forget")
    with _preserved_rng(target):
        geometry = _geometry(runner, cfg, lr, retain_batches, forget_batches)
        # One-shot iterators were consumed above; re-iterable sources are read again, as the run reads them.
        seconds_per_step = _time_steps(
            runner,
            retain if not isinstance(retain, Iterator) else retain_batches,
            forget if not isinstance(forget, Iterator) else forget_batches,
        )
    stats, per_tensor = geometry
    mean = stats.mean(dim=0).tolist()
    kappa_std = float(stats[:, 0].std(unbiased=False))
    kappa, k1, k2, rn, fn, feas, degr, d_ret, d_for, constraint = mean
    denom = rn * fn
    cosine = kappa / denom if denom > 0 else 0.0
    cosine = max(-1.0, min(1.0, cosine))
    return HardnessReport(
        batches=batches,
        variant=cfg.variant,
        lr=lr,
        constraint=constraint,
        kappa=kappa,
        kappa_std=kappa_std,
        kappa1=k1,
        kappa2=k2,
        cosine=cosine,
        angle_degrees=math.degrees(math.acos(cosine)),
        retain_grad_norm=rn,
        forget_grad_norm=fn,
        feasible_fraction=feas,
        degradation_fraction=degr,
        predicted_retain_change=d_ret,
        predicted_forget_change=d_for,
        kappa_per_tensor=dict(zip(runner.names, (per_tensor / batches).tolist(), strict=True)),
        method=method,
        device=placed,
        timed_steps=steps,
        seconds_per_step=seconds_per_step,
    )


def _geometry(
    runner: Unlearner, cfg: HamuConfig, lr: float, retain: list[Any], forget: list[Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-batch HAMU scalars (rows) and the summed per-tensor κ, from the task loss's clipped gradients at
    the current weights (train mode, batch-norm statistics frozen, as in the run)."""
    transform = HamuTransform(cfg)
    rows: list[torch.Tensor] = []
    per_tensor = torch.zeros(runner.layout.num_segments, device=runner.device)
    with FrozenBatchNorm(runner.model, runner.config.freeze_batchnorm):
        for r_batch, f_batch in zip(retain, forget, strict=True):
            g_r = runner.objective_gradient("task", [r_batch])
            g_f = runner.objective_gradient("task", [f_batch])
            out = transform(g_r.flat, g_f.flat, runner.layout, lr=lr)
            feasible = (out.blocks.branch < int(Branch.INFEASIBLE)).all()
            rows.append(
                torch.stack(
                    [
                        out.kappa_global,
                        out.kappa1_global,
                        out.kappa2_global,
                        g_r.flat.norm(),
                        g_f.flat.norm(),
                        feasible.float(),
                        out.degradation.float(),
                        out.predicted_retain_change,
                        out.predicted_forget_change,
                        out.constraint_total,
                    ]
                )
            )
            per_tensor += out.kappa
    return torch.stack(rows).double().cpu(), per_tensor.cpu()


def _time_steps(runner: Unlearner, retain: Iterable[Any], forget: Iterable[Any]) -> float:
    """Mean wall time of the run's steps after the first (which pays warm-up costs: allocation, kernels)."""
    sync: Callable[[], None] = (
        (lambda: torch.cuda.synchronize(runner.device)) if runner.device.type == "cuda" else (lambda: None)
    )
    stamps: list[float] = []

    def stamp(record: StepRecord) -> None:
        sync()
        stamps.append(time.perf_counter())

    result = runner.run(retain, forget, callbacks=[stamp])
    if len(stamps) != runner.config.max_steps:
        raise RuntimeError(
            f"the timed {runner.method.name} run stopped after {len(stamps)} of {runner.config.max_steps} "
            f"steps ({result.stop_reason})"
        )
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def _draw(data: Iterable[Any], n: int, name: str) -> list[Any]:
    """The first ``n`` batches of ``data``, re-iterating it when it has fewer."""
    out: list[Any] = []
    while len(out) < n:
        before = len(out)
        for item in data:
            out.append(item)
            if len(out) == n:
                break
        if len(out) == before:
            raise ValueError(f"the {name} data yielded no batches")
    return out


@contextmanager
def _preserved_rng(device: torch.device) -> Iterator[None]:
    """The run seeds Python's and torch's generators: give the caller's states back afterwards."""
    state = random.getstate()
    devices = [device.index] if device.type == "cuda" and device.index is not None else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(state)
