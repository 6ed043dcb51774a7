"""A small, self-contained unlearning run on scikit-learn digits (the library's smoke demo).

It follows the CPU-sized protocol of the paper's reproduction: a ρ-mixed forget set around class 0, a
deliberately under-trained MLP (so the clipped gradients stay usable), then HAMU-Q and GDiff for the same
step budget from the same starting weights.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from hamu.hardness import HardnessReport, assess_hardness
from hamu.unlearner import UnlearnConfig, UnlearnResult, unlearn


@dataclass(frozen=True)
class DigitsSplit:
    retain: tuple[torch.Tensor, torch.Tensor]
    forget: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]


def digits_split(rho: float = 0.5, *, seed: int = 0, forget_class: int = 0) -> DigitsSplit:
    """70/30 stratified split; forget = (1−ρ) of ``forget_class`` plus ⌊ρ·|class|⌋ drawn from the rest."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, stratify=y, random_state=seed)
    rng = np.random.default_rng(seed)
    cls = rng.permutation(np.flatnonzero(y_tr == forget_class))
    moved = int(np.floor(rho * len(cls)))
    pool = rng.permutation(np.concatenate([cls[:moved], np.flatnonzero(y_tr != forget_class)]))
    forget_idx = np.concatenate([cls[moved:], pool[:moved]])
    mask = np.zeros(len(y_tr), dtype=bool)
    mask[forget_idx] = True

    def pair(a: np.ndarray, b: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(a), torch.from_numpy(b).long()

    return DigitsSplit(
        retain=pair(x_tr[~mask], y_tr[~mask]),
        forget=pair(x_tr[mask], y_tr[mask]),
        test=pair(x_te, y_te),
    )


def digits_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))


def train_briefly(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], *, steps: int = 50) -> nn.Module:
    """Full-batch Adam for a few steps: ~90% train accuracy, far from zero loss."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = data
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model


@dataclass(frozen=True)
class DemoResult:
    hardness: HardnessReport
    runs: dict[str, UnlearnResult]
    start_losses: dict[str, float]
    end_losses: dict[str, dict[str, float]]


def _losses(model: nn.Module, split: DigitsSplit) -> dict[str, float]:
    with torch.no_grad():
        model.eval()
        return {
            name: float(F.cross_entropy(model(x), y))
            for name, (x, y) in (("retain", split.retain), ("forget", split.forget), ("test", split.test))
        }


def run_digits_demo(
    *, rho: float = 0.5, steps: int = 150, lr: float = 0.01, constraint_ratio: float = 0.1, seed: int = 0
) -> DemoResult:
    split = digits_split(rho, seed=seed)
    original = train_briefly(
        digits_mlp(seed),
        (torch.cat([split.retain[0], split.forget[0]]), torch.cat([split.retain[1], split.forget[1]])),
    )
    hardness = assess_hardness(
        copy.deepcopy(original),
        F.cross_entropy,
        [split.retain],
        [split.forget],
        lr=lr,
        batches=1,
        device="cpu",
    )
    runs: dict[str, UnlearnResult] = {}
    for method, options in (("hamu-q", {"constraint_ratio": constraint_ratio}), ("gdiff", {})):
        cfg = UnlearnConfig(
            method=method, lr=lr, max_steps=steps, seed=seed, device="cpu", method_options=options
        )
        runs[method] = unlearn(copy.deepcopy(original), F.cross_entropy, [split.retain], [split.forget], cfg)
    return DemoResult(
        hardness=hardness,
        runs=runs,
        start_losses=_losses(original, split),
        end_losses={m: _losses(r.model, split) for m, r in runs.items()},
    )
