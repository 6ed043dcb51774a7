"""Shared helpers of the benchmarks: the machine record, data tensors, under-trained originals, timed runs.

Every benchmark prints the machine it ran on (so a number is never quoted without its context) and writes
its raw results under ``bench/out/`` (gitignored); docs/results.md quotes the printed tables.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hamu.unlearner import eval_mode

OUT = Path(__file__).resolve().parent / "out"


def set_threads(n: int) -> None:
    """Bound torch's CPU threads: the benchmark machine is shared, and timings need a fixed thread count."""
    torch.set_num_threads(max(1, n))
    os.environ.setdefault("OMP_NUM_THREADS", str(n))


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (platform.processor() is empty on most Linux boxes)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What a reader needs to compare a timing: cores, CPU, threads used and library versions."""
    import numpy
    import scipy

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "platform": platform.platform(),
    }


def machine_line() -> str:
    m = machine()
    return (
        f"machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, "
        f"python {m['python']}, torch {m['torch']}, numpy {m['numpy']}, scipy {m['scipy']}"
    )


def write_json(name: str, payload: Mapping[str, Any]) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / name
    path.write_text(json.dumps(payload, indent=2, default=float))
    return path


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], floatfmt: str = ".3f") -> str:
    """A Markdown table, so the printed output can be pasted into docs/results.md unchanged."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "nan" if v != v else format(v, floatfmt)
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


@torch.no_grad()
def mean_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 4096) -> float:
    """Mean cross-entropy in eval mode, restoring every module's mode: called from the unlearning loop's
    callback, where batch norm is frozen and must stay so (``hamu.unlearner.eval_mode``)."""
    total = 0.0
    with eval_mode(model):
        for i in range(0, len(y), batch):
            total += float(F.cross_entropy(model(x[i : i + batch]), y[i : i + batch], reduction="sum"))
    return total / max(len(y), 1)


@torch.no_grad()
def losses_and_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, float]:
    with eval_mode(model):
        logits = torch.cat([model(x[i : i + 4096]) for i in range(0, len(y), 4096)])
    losses = F.cross_entropy(logits, y, reduction="none").double().numpy()
    return losses, float((logits.argmax(1) == y).double().mean())


def loss_auc_ci(
    member_losses: np.ndarray, nonmember_losses: np.ndarray, resamples: int = 200
) -> tuple[float, float, float]:
    """Loss-attack AUC (lower loss = member) with its 95% stratified bootstrap interval."""
    from hamu.evaluation import bootstrap_roc

    ci = bootstrap_roc(-member_losses, -nonmember_losses, n_resamples=resamples, seed=0)["auc"]
    return ci.estimate, ci.low, ci.high


def batches(
    x: torch.Tensor, y: torch.Tensor, batch: int | None, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor]] | Any:
    """Full batch (one tensor pair, cycled by the loop) or a seeded, reshuffled mini-batch iterable."""
    if batch is None or batch <= 0 or batch >= len(y):
        return [(x, y)]
    size: int = batch  # narrowed here; the class body below does not see the narrowing

    class _Shuffled:
        def __init__(self) -> None:
            self.gen = torch.Generator().manual_seed(seed)

        def __iter__(self) -> Any:
            perm = torch.randperm(len(y), generator=self.gen)
            for i in range(0, len(y) - size + 1, size):  # drop the ragged tail: fixed batch sizes
                idx = perm[i : i + size]
                yield x[idx], y[idx]

    return _Shuffled()


@dataclass
class Trajectory:
    """Losses measured by the benchmark itself after every applied step (cross-entropy, whatever the method's
    objectives are), so KL/SCRUB are compared with the others on the same scale."""

    retain: list[float] = field(default_factory=list)
    forget: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def run_method(
    model: nn.Module,
    method: str,
    retain: Any,
    forget: Any,
    monitor: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    lr: float,
    steps: int,
    seed: int,
    options: Mapping[str, Any] | None = None,
    on_step: Callable[[int, float, float], bool] | None = None,
) -> tuple[Any, Trajectory]:
    """One unlearning run with CE losses on (retain, forget) monitor tensors logged after every step.

    ``on_step(t, L_r, L_f)`` may return True to stop. The step-0 losses are the first trajectory entry.
    """
    from hamu import UnlearnConfig, unlearn

    xr, yr, xf, yf = monitor
    traj = Trajectory([mean_loss(model, xr, yr)], [mean_loss(model, xf, yf)], [0.0])
    start = time.perf_counter()

    def callback(_: Any) -> bool:
        lr_, lf_ = mean_loss(model, xr, yr), mean_loss(model, xf, yf)
        traj.retain.append(lr_)
        traj.forget.append(lf_)
        traj.seconds.append(time.perf_counter() - start)
        return bool(on_step and on_step(len(traj.retain) - 1, lr_, lf_))

    cfg = UnlearnConfig(
        method=method,
        lr=lr,
        max_steps=steps,
        max_grad_norm=1.0,
        seed=seed,
        device="cpu",
        method_options=dict(options or {}),
    )
    result = unlearn(model, F.cross_entropy, retain, forget, cfg, callbacks=[callback])
    return result, traj
