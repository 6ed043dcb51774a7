"""The unlearning loop: paired retain/forget gradients → method → optimizer step, with diagnostics.

One call, :func:`unlearn`, turns a user's model, loss and two batch iterables into an unlearning run:

1. draw the next retain and forget batches (each cycled independently; ``accumulation_steps`` micro-batches
   per objective are summed before clipping, which the public reference cannot do with paired gradients);
2. compute the method's retain and forget objective gradients, each clipped separately to
   ``max_grad_norm`` (the paper's per-objective clipping);
3. let the method turn them into an equivalent gradient G and step the optimizer (default SGD(η), so
   HAMU applies exactly w + δ);
4. record one :class:`StepRecord` of diagnostics, reading every scalar of the step from the device with a
   single host synchronisation. Both losses are recorded for every method: where a method has no objective
   for one side (FT has no forget objective, GA no retain objective) and that side's data is given, the
   task loss there is *evaluated* (no gradient, eval mode, RNG state restored), so every run yields a
   trade-off trajectory without changing the run's updates.

A NaN or Inf in a loss, a gradient or an update raises :class:`NonFiniteError` naming the tensor and the
step *before* anything is applied. An infeasible HAMU step (default policy) or, when asked, the
sign-correct stopping rule ends the run without applying that step.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from hamu.core.layout import FlatLayout
from hamu.core.transform import HamuConfig
from hamu.device import resolve_device
from hamu.methods.base import Objective, UpdateRule, objective_weights, stops_on_degradation
from hamu.methods.registry import make_method

Role = Literal["retain", "forget"]
BOTH_ROLES: tuple[Role, Role] = ("retain", "forget")
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[["StepRecord"], bool | None]

STOP_MAX_STEPS = "max_steps"
STOP_INFEASIBLE = "infeasible"
STOP_DEGRADATION = "degradation_unavoidable"
STOP_CALLBACK = "callback"

logger = logging.getLogger("hamu")


class NonFiniteError(FloatingPointError):
    """A loss, gradient or update held NaN/Inf; no update was applied."""


@dataclass(frozen=True)
class UnlearnConfig:
    """Options of one unlearning run. ``method_options`` go to the method (for HAMU: HamuConfig fields)."""

    method: str = "hamu-q"
    lr: float = 0.01
    max_steps: int = 100
    max_grad_norm: float | None = 1.0
    accumulation_steps: int = 1
    freeze_batchnorm: bool = True
    seed: int = 0
    device: str = "auto"
    method_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps!r}")
        if self.accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be >= 1, got {self.accumulation_steps!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm!r}")
        make_method(self.method, **dict(self.method_options))  # fail early on bad names/options

    def build_method(self) -> UpdateRule:
        return make_method(self.method, **dict(self.method_options))


@dataclass
class StepRecord:
    """Diagnostics of one step (plain Python numbers, safe to log or serialise).

    ``retain_loss``/``forget_loss`` are the method's objective losses on the step's batches; on a side the
    method has no objective for (FT: forget, GA: retain), the task loss evaluated there (None only when that
    side's data was not given). ``diagnostics`` holds the method's scalars; for HAMU: kappa, kappa1, kappa2,
    predicted retain/forget change, stopping_margin and per-step branch counts (not cumulative).
    """

    step: int
    retain_loss: float | None
    forget_loss: float | None
    retain_grad_norm: float | None
    forget_grad_norm: float | None
    applied: bool
    diagnostics: dict[str, float]
    kappa_per_tensor: list[float] | None = None
    feasible: bool = True
    degradation_unavoidable: bool = False
    stop_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class UnlearnResult:
    model: nn.Module
    history: list[StepRecord]
    stop_reason: str
    steps_applied: int
    tensor_names: tuple[str, ...]
    config: UnlearnConfig


@dataclass(frozen=True)
class PairedGradients:
    retain: torch.Tensor | None
    forget: torch.Tensor | None
    retain_loss: torch.Tensor | None
    forget_loss: torch.Tensor | None
    retain_norm: torch.Tensor | None
    forget_norm: torch.Tensor | None


@dataclass(frozen=True)
class ObjectiveGradient:
    flat: torch.Tensor
    loss: torch.Tensor
    norm: torch.Tensor  # before clipping


class Pairing(Protocol):
    """How (g_r, g_f) are produced: in one process, or split across ranks (see hamu.distributed)."""

    def roles(self, needs_retain: bool, needs_forget: bool) -> tuple[Role, ...]: ...

    def pair(self, computed: Mapping[Role, ObjectiveGradient]) -> PairedGradients: ...


class SequentialPairing:
    """Both gradients in this process, retain first (the reference's ``sequential`` mode)."""

    def roles(self, needs_retain: bool, needs_forget: bool) -> tuple[Role, ...]:
        wanted: list[Role] = []
        if needs_retain:
            wanted.append("retain")
        if needs_forget:
            wanted.append("forget")
        return tuple(wanted)

    def pair(self, computed: Mapping[Role, ObjectiveGradient]) -> PairedGradients:
        r, f = computed.get("retain"), computed.get("forget")
        return PairedGradients(
            retain=r.flat if r else None,
            forget=f.flat if f else None,
            retain_loss=r.loss if r else None,
            forget_loss=f.loss if f else None,
            retain_norm=r.norm if r else None,
            forget_norm=f.norm if f else None,
        )


def auto_move_message(model: nn.Module, name: str, target: torch.device) -> str | None:
    """What to tell the user when ``device=name`` moves ``model`` (in place) to another device, else None.

    Only ``auto`` moves a model without the caller naming the device: a CPU model silently going to CUDA
    surprises whoever keeps using the model object (its tensors, optimizers and inputs are then elsewhere).
    """
    if name != "auto":
        return None
    current = sorted({str(t.device) for t in itertools.chain(model.parameters(), model.buffers())})
    if target.type == "cuda" and target.index is None:
        target = torch.device("cuda", torch.cuda.current_device())  # where .to("cuda") puts it
    if all(d == str(target) for d in current):
        return None
    return (
        f"device='auto' moves the model in place from {', '.join(current)} to {target} "
        f"(pass device={current[0]!r} in UnlearnConfig to keep it where it is)"
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _cycle(iterable: Iterable[Any], name: str) -> Iterator[Any]:
    """Re-iterate an iterable forever (re-shuffling DataLoaders each pass, unlike itertools.cycle)."""
    while True:
        empty = True
        for item in iterable:
            empty = False
            yield item
        if empty:
            raise ValueError(f"the {name} data yielded no batches")


def _logits(outputs: Any) -> torch.Tensor:
    return outputs.logits if hasattr(outputs, "logits") else outputs


def move_to_device(obj: Any, device: torch.device) -> Any:
    """A batch (a tensor, or tensors nested in mappings, lists and tuples) on ``device``; the loop and the
    target controller read batches of any of these shapes."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: move_to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(move_to_device(v, device) for v in obj)
    return obj


def call_model(model: nn.Module, inputs: Any) -> torch.Tensor:
    """The model's logits for ``inputs``: keyword arguments for a mapping (a tokenizer's output), one
    positional argument otherwise; models returning an object with ``logits`` are unwrapped."""
    return _logits(model(**inputs) if isinstance(inputs, Mapping) else model(inputs))


def _kl_to_reference(logits: torch.Tensor, reference_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_reference ‖ p_θ), summed over classes, averaged over the batch."""
    return F.kl_div(
        F.log_softmax(logits, dim=-1),
        F.log_softmax(reference_logits, dim=-1),
        log_target=True,
        reduction="batchmean",
    )


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode while the block runs; every module's own mode is restored afterwards.

    Why per module: ``model.train(was)`` switches every submodule to one mode, so a loss measured from a
    callback inside :class:`FrozenBatchNorm` would put batch norm back in training mode, and the remaining
    unlearning steps would update running statistics that the run meant to keep frozen.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


class FrozenBatchNorm:
    """While entered: train mode, batch-norm layers in eval mode (running statistics frozen; affine weights
    still train). Every module's mode is restored on exit. ``enabled=False``: train mode only."""

    def __init__(self, model: nn.Module, enabled: bool) -> None:
        self.model = model
        self.enabled = enabled
        self.modes: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> FrozenBatchNorm:
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.train()
        if self.enabled:
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def __exit__(self, *exc: object) -> None:
        for m, mode in self.modes:
            m.training = mode


class Unlearner:
    """Owns one run's state: parameters, layout, reference model, optimizer, iterators."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        config: UnlearnConfig,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        pairing: Pairing | None = None,
    ) -> None:
        self.config = config
        self.method = config.build_method()
        self.device = resolve_device(config.device)
        message = auto_move_message(model, config.device, self.device)
        if message is not None:
            logger.warning(message)
        self.model = model.to(self.device)
        self.loss_fn = loss_fn
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("the model has no trainable parameters")
        self.names = tuple(n for n, _ in named)
        self.params = [p for _, p in named]
        self.layout = FlatLayout.for_tensors(self.names, self.params, device=self.device)
        self.optimizer = optimizer or torch.optim.SGD(self.params, lr=config.lr, momentum=0.0)
        self.pairing: Pairing = pairing or SequentialPairing()
        needs_reference = "kl" in (self.method.retain_objective, self.method.forget_objective) or (
            self.method.retain_objective == "scrub"
        )
        self.reference: nn.Module | None = None
        if needs_reference:
            self.reference = copy.deepcopy(self.model).eval()
            for p in self.reference.parameters():
                p.requires_grad_(False)

    # -- gradients -------------------------------------------------------------------------------------
    def _objective_loss(self, objective: Objective, inputs: Any, targets: Any) -> torch.Tensor:
        logits = call_model(self.model, inputs)
        if objective == "task":
            return self.loss_fn(logits, targets)
        assert self.reference is not None
        with torch.no_grad():
            ref_logits = call_model(self.reference, inputs)
        kl = _kl_to_reference(logits, ref_logits)
        if objective == "kl":
            return kl
        alpha, gamma = objective_weights(self.method)
        return alpha * kl + gamma * self.loss_fn(logits, targets)

    def evaluated_loss(self, batches: Sequence[Any]) -> torch.Tensor:
        """The task loss on ``batches`` for a side the method does not differentiate, without side effects.

        Why side-effect free: the value only feeds the diagnostics (the trade-off plot needs both losses), so
        it must not change the run. Eval mode keeps batch-norm statistics untouched and dropout off, and the
        RNG state is restored, so a run's updates are the same whether or not this side's data was given.
        """
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        modes = [(m, m.training) for m in self.model.modules()]
        total = torch.zeros((), device=self.device)
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            self.model.eval()
            try:
                for batch in batches:
                    inputs, targets = move_to_device(batch, self.device)
                    total = total + self.loss_fn(call_model(self.model, inputs), targets).detach()
            finally:
                for m, mode in modes:
                    m.training = mode
        return total / len(batches)

    def objective_gradient(self, objective: Objective, batches: Sequence[Any]) -> ObjectiveGradient:
        """Accumulate the objective's gradient over ``batches`` (micro-batches), then clip it."""
        for p in self.params:
            p.grad = None
        total = torch.zeros((), device=self.device)
        for batch in batches:
            inputs, targets = move_to_device(batch, self.device)
            loss = self._objective_loss(objective, inputs, targets)
            (loss / len(batches)).backward()
            total = total + loss.detach()
        flat = self.layout.flatten([p.grad for p in self.params])
        for p in self.params:
            p.grad = None
        norm = flat.norm()
        clip = self.config.max_grad_norm
        if clip is not None:
            flat = flat * (clip / (norm + 1e-6)).clamp(max=1.0)
        return ObjectiveGradient(flat=flat, loss=total / len(batches), norm=norm)

    # -- the loop ---------------------------------------------------------------------------------------
    def run(
        self,
        retain: Iterable[Any] | None,
        forget: Iterable[Any] | None,
        *,
        callbacks: Sequence[StepCallback] = (),
        progress: bool = False,
    ) -> UnlearnResult:
        cfg = self.config
        seed_everything(cfg.seed)
        method = self.method
        roles = self.pairing.roles(method.retain_objective is not None, method.forget_objective is not None)
        sources = {"retain": retain, "forget": forget}
        iterators: dict[Role, Iterator[Any]] = {}
        for role in roles:
            source = sources[role]
            if source is None:
                raise ValueError(f"method {method.name!r} needs {role} data, got None")
            iterators[role] = _cycle(source, role)
        objectives: dict[Role, Objective | None] = {
            "retain": method.retain_objective,
            "forget": method.forget_objective,
        }
        # Sides the method has no objective for, but whose data was given: their loss is evaluated only.
        evaluated: list[Role] = []
        for role in BOTH_ROLES:
            source = sources[role]
            if objectives[role] is None and source is not None:
                evaluated.append(role)
                iterators[role] = _cycle(source, role)

        history: list[StepRecord] = []
        stop_reason = STOP_MAX_STEPS
        applied = 0
        bar = _progress_bar(cfg.max_steps, method.name, enabled=progress)
        with FrozenBatchNorm(self.model, cfg.freeze_batchnorm):
            for step in range(cfg.max_steps):
                computed: dict[Role, ObjectiveGradient] = {}
                for role in roles:
                    objective = objectives[role]
                    assert objective is not None
                    batches = [next(iterators[role]) for _ in range(cfg.accumulation_steps)]
                    computed[role] = self.objective_gradient(objective, batches)
                paired = self.pairing.pair(computed)
                for role in evaluated:
                    batches = [next(iterators[role]) for _ in range(cfg.accumulation_steps)]
                    loss = self.evaluated_loss(batches)
                    paired = (
                        replace(paired, retain_loss=loss)
                        if role == "retain"
                        else replace(paired, forget_loss=loss)
                    )
                out = method(paired.retain, paired.forget, self.layout, lr=cfg.lr)
                record = self._record(step, paired, out)
                if record.stop_reason is None:
                    for p, g in zip(self.params, self.layout.split(out.grad), strict=True):
                        p.grad = g
                    self.optimizer.step()
                    for p in self.params:
                        p.grad = None
                    record.applied = True
                    applied += 1
                history.append(record)
                bar.update(1)
                if record.stop_reason is not None:
                    stop_reason = record.stop_reason
                    break
                if any(cb(record) for cb in callbacks):
                    stop_reason = STOP_CALLBACK
                    record.stop_reason = STOP_CALLBACK
                    break
        bar.close()
        return UnlearnResult(
            model=self.model,
            history=history,
            stop_reason=stop_reason,
            steps_applied=applied,
            tensor_names=self.names,
            config=cfg,
        )

    def _record(self, step: int, paired: PairedGradients, out: Any) -> StepRecord:
        """Read every scalar of the step with one host synchronisation; raise on NaN/Inf."""
        scalars: dict[str, torch.Tensor] = {}
        for key in ("retain_loss", "forget_loss", "retain_norm", "forget_norm"):
            value = getattr(paired, key)
            if value is not None:
                scalars[key] = value
        scalars["update_finite"] = torch.isfinite(out.grad).all()
        if out.stop_infeasible is not None:
            scalars["stop_infeasible"] = out.stop_infeasible
        if out.degradation is not None:
            scalars["degradation"] = out.degradation
        per_tensor = out.diagnostics.get("kappa_per_tensor")
        for key, value in out.diagnostics.items():
            if key != "kappa_per_tensor":
                scalars[f"d:{key}"] = value
        keys = list(scalars)
        # One stack for the whole step (it promotes bools and counts); a reshape per value only when some
        # value is not 0-d. Every call here runs once per step, so the count of calls is the cost.
        items = list(scalars.values())
        if any(v.dim() != 0 for v in items):
            items = [v.reshape(()) for v in items]
        packed = torch.stack(items).float()
        if per_tensor is not None:
            packed = torch.cat([packed, per_tensor.float()])
        values = packed.tolist()  # the step's single host synchronisation
        got = dict(zip(keys, values[: len(keys)], strict=True))

        for key in ("retain_loss", "forget_loss", "retain_norm", "forget_norm"):
            if key in got and not math.isfinite(got[key]):
                self._raise_non_finite(step, key, paired)
        if got["update_finite"] < 1.0:
            name = self._first_non_finite(out.grad)
            raise NonFiniteError(
                f"step {step}: the {self.method.name} update for tensor {name!r} is NaN/Inf; "
                "no update was applied"
            )
        infeasible = got.get("stop_infeasible", 0.0) > 0
        degradation = got.get("degradation", 0.0) > 0
        stop: str | None = None
        if infeasible:
            stop = STOP_INFEASIBLE
        elif degradation and stops_on_degradation(self.method):
            stop = STOP_DEGRADATION
        return StepRecord(
            step=step,
            retain_loss=got.get("retain_loss"),
            forget_loss=got.get("forget_loss"),
            retain_grad_norm=got.get("retain_norm"),
            forget_grad_norm=got.get("forget_norm"),
            applied=False,
            diagnostics={k[2:]: v for k, v in got.items() if k.startswith("d:")},
            kappa_per_tensor=values[len(keys) :] if per_tensor is not None else None,
            feasible=not infeasible,
            degradation_unavoidable=degradation,
            stop_reason=stop,
        )

    def _first_non_finite(self, flat: torch.Tensor) -> str:
        for name, view in zip(self.names, self.layout.split(flat), strict=True):
            if not bool(torch.isfinite(view).all()):
                return name
        return "<unknown>"

    def _raise_non_finite(self, step: int, key: str, paired: PairedGradients) -> None:
        role = key.split("_")[0]
        if key.endswith("loss"):
            raise NonFiniteError(f"step {step}: the {role} loss is NaN/Inf; no update was applied")
        flat = paired.retain if role == "retain" else paired.forget
        name = self._first_non_finite(flat) if flat is not None else "<unknown>"
        raise NonFiniteError(
            f"step {step}: the {role} gradient of tensor {name!r} is NaN/Inf; no update was applied"
        )


class _NullBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, name: str, *, enabled: bool) -> Any:
    if not enabled:
        return _NullBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"unlearn[{name}]", unit="step")


def unlearn(
    model: nn.Module,
    loss_fn: LossFn,
    retain: Iterable[Any] | None,
    forget: Iterable[Any] | None,
    config: UnlearnConfig | None = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    pairing: Pairing | None = None,
    callbacks: Sequence[StepCallback] = (),
    progress: bool = False,
) -> UnlearnResult:
    """Unlearn ``forget`` from ``model`` (in place) while preserving ``retain``.

    ``retain`` and ``forget`` yield ``(inputs, targets)`` batches and are cycled independently. The default
    optimizer is SGD(lr, momentum 0), for which HAMU's first-order guarantees hold exactly.

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Linear(4, 3)
    >>> x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    >>> res = unlearn(model, nn.functional.cross_entropy, [(x[:4], y[:4])], [(x[4:], y[4:])],
    ...               UnlearnConfig(max_steps=2, method="gdiff"))
    >>> res.steps_applied
    2
    """
    cfg = config or UnlearnConfig()
    runner = Unlearner(model, loss_fn, cfg, optimizer=optimizer, pairing=pairing)
    return runner.run(retain, forget, callbacks=callbacks, progress=progress)


__all__ = [
    "FrozenBatchNorm",
    "HamuConfig",
    "NonFiniteError",
    "PairedGradients",
    "Pairing",
    "SequentialPairing",
    "StepRecord",
    "UnlearnConfig",
    "UnlearnResult",
    "Unlearner",
    "eval_mode",
    "resolve_device",
    "unlearn",
]
