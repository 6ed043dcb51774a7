"""Losses measured from inside an unlearning run must not unfreeze batch norm.

``model.train(was)`` after an eval-mode measurement switches *every* module back to training mode; from a
step callback, inside :class:`hamu.unlearner.FrozenBatchNorm`, that let the remaining steps update batch
norm's running statistics. ``hamu.unlearner.eval_mode`` restores each module's own mode; the benchmarks'
loss monitor (``bench/common.py``) and the controller use it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import bench_module
from torch import nn

from hamu.unlearner import eval_mode

ROOT = Path(__file__).resolve().parents[1]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    )


def test_eval_mode_restores_each_modules_own_mode() -> None:
    model = _net()
    model.train()
    model[1].eval()  # frozen batch norm inside a training model: what FrozenBatchNorm sets up
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert model.training and model[0].training and not model[1].training


def test_the_benchmark_monitor_keeps_batch_norm_frozen_during_a_run() -> None:
    common = bench_module("common")
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 8, 8, generator=gen) * 3 + 1, torch.randint(0, 3, (64,), generator=gen)
    model = _net()
    with torch.no_grad():  # statistics far from their initial values, so any update shows
        model(x)
    model.eval()
    before = model[1].running_mean.clone(), model[1].running_var.clone()
    retain, forget = [(x[:48], y[:48])], [(x[48:], y[48:])]
    _, trajectory = common.run_method(
        model, "gdiff", retain, forget, (x[:48], y[:48], x[48:], y[48:]), lr=0.05, steps=4, seed=0
    )
    assert len(trajectory.forget) == 5  # the monitor ran after every step, from inside the run
    assert torch.equal(model[1].running_mean, before[0]) and torch.equal(model[1].running_var, before[1])
    assert not model.training and not model[1].training  # the caller's modes, restored
