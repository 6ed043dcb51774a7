"""HAMU's per-step overhead: a HAMU-Q step against a GDiff step on the same model and batches.

Both methods do two forward and two backward passes per step (one per objective); HAMU adds the transform.
We time whole unlearning steps (median of >= 20 after warm-up, the two methods interleaved in rounds
so load changes on a shared machine hit both alike) and the transform alone, and compare the
vectorised transform with a naive per-tensor loop that synchronises with the host at every branch test
(:func:`hamu.solve_block` per tensor, as the public reference does). Ends with ``hamu_over_gdiff=<ratio>``
(the worst ratio over the models measured).

Usage: python bench/step_overhead.py [--steps 25] [--rounds 4] [--batch 128] [--models cnn,resnet20]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from hamu import HamuConfig, HamuTransform, StepRecord, UnlearnConfig, solve_block, unlearn
from hamu.core.layout import FlatLayout
from hamu.models import build_model

SHAPES = {"cnn": (1, 28, 28), "resnet20": (3, 32, 32)}


def _batches(shape: tuple[int, ...], batch: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, *shape, generator=gen), torch.randint(0, 10, (batch,), generator=gen))]


def _step_times(model_name: str, method: str, steps: int, warmup: int, batch: int) -> list[float]:
    torch.manual_seed(0)
    model = build_model(model_name)
    stamps: list[float] = []

    def stamp(_: StepRecord) -> bool:
        stamps.append(time.perf_counter())
        return False

    shape = SHAPES[model_name]
    # c = 0 keeps HAMU feasible on random data so every timed step is a full step.
    options = {"constraint_ratio": 0.0} if method.startswith("hamu") else {}
    cfg = UnlearnConfig(
        method=method, lr=1e-4, max_steps=warmup + steps, device="cpu", method_options=options
    )
    start = time.perf_counter()
    result = unlearn(
        model, F.cross_entropy, _batches(shape, batch, 1), _batches(shape, batch, 2), cfg, callbacks=[stamp]
    )
    if result.steps_applied != warmup + steps:
        raise RuntimeError(f"{method} stopped early: {result.stop_reason}")
    times = [b - a for a, b in zip([start, *stamps[:-1]], stamps, strict=True)]
    return times[warmup:]


def _paired_gradients(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor, FlatLayout]:
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    layout = FlatLayout.for_tensors([n for n, _ in params], [p for _, p in params])
    gen = torch.Generator().manual_seed(5)
    g_r = torch.randn(layout.numel, generator=gen) * 1e-3
    g_f = torch.randn(layout.numel, generator=gen) * 1e-3 + 0.3 * g_r
    return g_r, g_f, layout


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def _naive_transform(g_r: torch.Tensor, g_f: torch.Tensor, layout: FlatLayout, lr: float, c: float) -> None:
    """The reference's shape: a Python loop over tensors, a host sync per branch test."""
    retain, forget = layout.split(g_r), layout.split(g_f)
    weights = [float(r.norm() * f.norm()) for r, f in zip(retain, forget, strict=True)]
    total = sum(weights)
    for r, f, w in zip(retain, forget, weights, strict=True):
        solve_block(r, f, radius=lr * float(r.norm()), constraint=c * lr * w / total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--models", default="cnn,resnet20")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved gdiff/hamu-q rounds")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: every core)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads or os.cpu_count() or 1)

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu, "
        f"python {platform.python_version()}"
    )
    print(
        f"batch {args.batch}+{args.batch}, median of {args.steps} steps in {args.rounds} interleaved rounds, "
        f"each after {args.warmup} warm-up\n"
    )
    header = (
        f"{'model':<10}{'tensors':>8}{'params':>10}{'gdiff ms':>10}{'hamu-q ms':>11}"
        f"{'ratio':>8}{'transform ms':>14}{'naive ms':>10}{'speed-up':>10}"
    )
    print(header)
    print("-" * len(header))
    ratios = []
    for name in args.models.split(","):
        # Interleave the two methods in rounds (alternating which goes first) and pool the step times, so a
        # load change on a shared machine hits both methods alike instead of biasing the ratio.
        per_round = -(-args.steps // args.rounds)
        pooled: dict[str, list[float]] = {"gdiff": [], "hamu-q": []}
        for r in range(args.rounds):
            order = ("gdiff", "hamu-q") if r % 2 == 0 else ("hamu-q", "gdiff")
            for method in order:
                pooled[method] += _step_times(name, method, per_round, args.warmup, args.batch)
        gdiff = statistics.median(pooled["gdiff"])
        hamu = statistics.median(pooled["hamu-q"])
        model = build_model(name)
        g_r, g_f, layout = _paired_gradients(model)
        transform = HamuTransform(HamuConfig(constraint_ratio=0.1))
        t_fast = _median_time(lambda: transform(g_r, g_f, layout, lr=1e-4), 50)  # noqa: B023
        t_naive = _median_time(lambda: _naive_transform(g_r, g_f, layout, 1e-4, 0.1), 10)  # noqa: B023
        ratio = hamu / gdiff
        ratios.append(ratio)
        print(
            f"{name:<10}{layout.num_segments:>8}{layout.numel:>10}{gdiff * 1e3:>10.1f}{hamu * 1e3:>11.1f}"
            f"{ratio:>8.3f}{t_fast * 1e3:>14.2f}{t_naive * 1e3:>10.2f}{t_naive / t_fast:>9.1f}x"
        )
    print(f"\nhamu_over_gdiff={max(ratios):.3f}")


if __name__ == "__main__":
    main()
