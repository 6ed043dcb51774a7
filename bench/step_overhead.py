"""HAMU's per-step overhead: a HAMU-Q step against a GDiff step on the same model and batches.

Both methods do two forward and two backward passes per step (one per objective); HAMU adds the transform.
We time whole unlearning steps (median over adjacent GDiff/HAMU-Q step pairs after warm-up, so a load
change on a shared machine hits both alike) and the transform alone, and compare the
vectorised transform with a naive per-tensor loop that synchronises with the host at every branch test
(:func:`hamu.solve_block` per tensor, as the public reference does). Ends with ``hamu_over_gdiff=<ratio>``
(the worst ratio over the models measured; with ``--rounds N``, the worst of the models' medians over the
rounds).

Why rounds: on a shared 2-core machine the GDiff step itself moves by a third from one run to the next, so
one run's ratio says little. ``--rounds N`` repeats the whole measurement N times in one process (fresh
models and optimizers each round) and prints each round's ratio with the median and range per model.

Usage: python bench/step_overhead.py [--steps 40] [--batch 128] [--models cnn,resnet20] [--rounds 1]
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

from hamu import HamuConfig, HamuTransform, UnlearnConfig, solve_block
from hamu.core.layout import FlatLayout
from hamu.models import build_model
from hamu.unlearner import Unlearner

SHAPES = {"cnn": (1, 28, 28), "resnet20": (3, 32, 32)}
METHODS = ("gdiff", "hamu-q")


def _batches(shape: tuple[int, ...], batch: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, *shape, generator=gen), torch.randint(0, 10, (batch,), generator=gen))]


def _runner(model_name: str, method: str, batch: int) -> Unlearner:
    torch.manual_seed(0)
    # c = 0 keeps HAMU feasible on random data so every timed step is a full step.
    options = {"constraint_ratio": 0.0} if method.startswith("hamu") else {}
    cfg = UnlearnConfig(method=method, lr=1e-4, max_steps=1, device="cpu", method_options=options)
    return Unlearner(build_model(model_name), F.cross_entropy, cfg)


def _paired_step_times(model_name: str, steps: int, warmup: int, batch: int) -> dict[str, list[float]]:
    """Whole unlearning steps of GDiff and HAMU-Q, taken in adjacent pairs (alternating which goes first).

    Why pairs: on a shared 2-core machine the step time drifts by ±15% over a minute, far more than the
    transform costs; two steps taken back to back see the same load, so the ratio of their medians
    measures the method, not the neighbours. Each step is one ``run`` of a one-step unlearner that keeps
    its model and optimizer, so both methods pay the same per-call set-up.
    """
    shape = SHAPES[model_name]
    retain, forget = _batches(shape, batch, 1), _batches(shape, batch, 2)
    runners = {m: _runner(model_name, m, batch) for m in METHODS}
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for i in range(warmup + steps):
        for method in METHODS if i % 2 == 0 else METHODS[::-1]:
            t0 = time.perf_counter()
            result = runners[method].run(retain, forget)
            elapsed = time.perf_counter() - t0
            if result.steps_applied != 1:
                raise RuntimeError(f"{method} stopped early: {result.stop_reason}")
            if i >= warmup:
                times[method].append(elapsed)
    return times


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
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--models", default="cnn,resnet20")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: every core)")
    parser.add_argument("--rounds", type=int, default=1, help="independent repeats of the step timing")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    torch.set_num_threads(args.threads or os.cpu_count() or 1)

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu, "
        f"python {platform.python_version()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"
    )
    print(
        f"batch {args.batch}+{args.batch}, median of {args.steps} steps per method taken in adjacent "
        f"gdiff/hamu-q pairs after {args.warmup} warm-up pairs; pair IQR: quartiles of the per-pair ratio\n"
    )
    header = (
        f"{'model':<10}{'tensors':>8}{'params':>10}{'gdiff ms':>10}{'hamu-q ms':>11}"
        f"{'ratio':>8}{'pair IQR':>13}{'transform ms':>14}{'naive ms':>10}{'speed-up':>10}"
    )
    print(header)
    print("-" * len(header))
    per_model: dict[str, list[float]] = {}
    for round_no in range(args.rounds):
        if args.rounds > 1:
            print(f"round {round_no + 1} of {args.rounds}")
        for name in args.models.split(","):
            per_model.setdefault(name, []).append(_measure_row(name, args))
    if args.rounds > 1:
        print("\nratio over rounds (median, range):")
        for name, ratios in per_model.items():
            listed = ", ".join(f"{r:.3f}" for r in ratios)
            spread = f"({min(ratios):.3f}-{max(ratios):.3f})"
            print(f"{name:<10} {statistics.median(ratios):.3f} {spread}: {listed}")
    print(f"\nhamu_over_gdiff={max(statistics.median(r) for r in per_model.values()):.3f}")


def _measure_row(name: str, args: argparse.Namespace) -> float:
    """One model's row of the table: paired step times and the transform alone; returns the step ratio."""
    pooled = _paired_step_times(name, args.steps, args.warmup, args.batch)
    gdiff = statistics.median(pooled["gdiff"])
    hamu = statistics.median(pooled["hamu-q"])
    pair_ratios = [h / g for h, g in zip(pooled["hamu-q"], pooled["gdiff"], strict=True)]
    q1, _, q3 = statistics.quantiles(pair_ratios, n=4)
    model = build_model(name)
    g_r, g_f, layout = _paired_gradients(model)
    transform = HamuTransform(HamuConfig(constraint_ratio=0.1))
    t_fast = _median_time(lambda: transform(g_r, g_f, layout, lr=1e-4), 50)
    t_naive = _median_time(lambda: _naive_transform(g_r, g_f, layout, 1e-4, 0.1), 10)
    ratio = hamu / gdiff
    print(
        f"{name:<10}{layout.num_segments:>8}{layout.numel:>10}{gdiff * 1e3:>10.1f}{hamu * 1e3:>11.1f}"
        f"{ratio:>8.3f}{f'{q1:.2f}-{q3:.2f}':>13}{t_fast * 1e3:>14.2f}{t_naive * 1e3:>10.2f}"
        f"{t_naive / t_fast:>9.1f}x"
    )
    return ratio


if __name__ == "__main__":
    main()
