"""Figures: each one is a real, non-trivial PNG; bad input is refused with a reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from matplotlib import image as mpimg
from torch import nn

from hamu import UnlearnConfig, unlearn
from hamu.evaluation import (
    EvaluationConfig,
    MLPTrainer,
    evaluate_models,
    plot_kappa_heatmap,
    plot_loss_histograms,
    plot_roc_curves,
    plot_tradeoff,
)
from hamu.methods import METHODS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.usefixtures("single_thread")


def _check_png(path: Path, min_bytes: int = 15_000) -> tuple[int, int]:
    assert path.is_file()
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > min_bytes  # a figure with curves, labels and a legend, not an empty canvas
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] >= 300 and pixels.shape[1] >= 500
    assert float(pixels[..., :3].std()) > 0.05  # not a blank image
    return int(pixels.shape[0]), int(pixels.shape[1])


@pytest.fixture(scope="module")
def evaluation(digits_data: tuple[torch.Tensor, torch.Tensor, np.ndarray]) -> Any:
    x, y, perm = digits_data
    forget, retain, test = perm[:100], perm[100:200], perm[200:500]
    trainer = MLPTrainer(x, y, n_classes=10, steps=200, lr=1e-2)
    models = {
        "original": trainer(np.r_[forget, retain], 0),
        "retrained": trainer(retain, 0),
        "unlearned": trainer(retain, 1),
    }
    splits = {s: (x[i], y[i]) for s, i in (("retain", retain), ("forget", forget), ("test", test))}
    return evaluate_models(models, splits, config=EvaluationConfig(n_resamples=200))


@pytest.fixture(scope="module")
def runs() -> dict[str, Any]:
    """Real unlearning histories: HAMU-Q (with per-tensor κ), GDiff, and GA (retain loss evaluated only)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(96, 12, generator=gen)
    y = torch.randint(0, 3, (96,), generator=gen)
    retain, forget = [(x[:64], y[:64])], [(x[64:], y[64:])]
    out: dict[str, Any] = {}
    for method in ("hamu-q", "gdiff", "ga"):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 3))
        # c = 0.02: with the default c = 0.1 this small model is infeasible at step 0 (HAMU stops at once)
        options = {"constraint_ratio": 0.02} if method == "hamu-q" else {}
        cfg = UnlearnConfig(method=method, lr=0.2, max_steps=40, device="cpu", method_options=options)
        out[method] = unlearn(model, nn.functional.cross_entropy, retain, forget, cfg)
    return out


def test_roc_curves(evaluation: Any, tmp_path: Path) -> None:
    path = plot_roc_curves(evaluation.scores, tmp_path / "roc.png", attack="loss")
    _check_png(path)
    with pytest.raises(ValueError, match="unknown models"):
        plot_roc_curves(evaluation.scores, tmp_path / "x.png", models=["nope"])
    with pytest.raises(ValueError, match="unknown attack"):
        plot_roc_curves(evaluation.scores, tmp_path / "x.png", attack="gradnorm")
    with pytest.raises(KeyError, match="LiRA"):
        plot_roc_curves(evaluation.scores, tmp_path / "x.png", attack="lira")  # the shadow attack was not run
    with pytest.raises(ValueError, match=r"\.png"):
        plot_roc_curves(evaluation.scores, tmp_path / "roc.svg")


def test_loss_histograms(evaluation: Any, tmp_path: Path) -> None:
    path = plot_loss_histograms(evaluation.scores, tmp_path / "sub" / "hist.png")
    _, width = _check_png(path)
    assert width > 1000  # one panel per model, three models
    with pytest.raises(ValueError, match="bins"):
        plot_loss_histograms(evaluation.scores, tmp_path / "h.png", bins=1)
    with pytest.raises(ValueError, match="no models"):
        plot_loss_histograms(evaluation.scores, tmp_path / "h.png", models=[])


def test_tradeoff_from_step_records_and_pairs(runs: dict[str, Any], tmp_path: Path) -> None:
    pairs = [(1.13 - 0.004 * t, 1.1 + 0.01 * t) for t in range(30)]
    trajectories = {
        "hamu-q": runs["hamu-q"].history,
        "gdiff": [r.to_dict() for r in runs["gdiff"].history],
        "ga (evaluated losses)": pairs,
    }
    _check_png(plot_tradeoff(trajectories, tmp_path / "tradeoff.png"))


@pytest.mark.parametrize(
    ("trajectories", "message"),
    [
        ({}, "no trajectories"),
        ({"m": []}, "empty trajectory"),
        ({"m": [(1.0, float("nan"))]}, "non-finite"),
        ({"m": ["oops"]}, "StepRecord-like"),
    ],
)
def test_tradeoff_bad_input(trajectories: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        plot_tradeoff(trajectories, tmp_path / "t.png")


def test_tradeoff_refuses_records_without_retain_loss(tmp_path: Path) -> None:
    """A GA run given no retain data has no retain loss to plot: refused with the reason."""
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    cfg = UnlearnConfig(method="ga", lr=0.1, max_steps=2, device="cpu")
    result = unlearn(nn.Linear(4, 3), nn.functional.cross_entropy, None, [(x, y)], cfg)
    assert result.history[0].retain_loss is None
    with pytest.raises(ValueError, match="method 'ga', record 0: retain or forget loss is missing"):
        plot_tradeoff({"ga": result.history}, tmp_path / "t.png")


@pytest.fixture(scope="module")
def digits_model_state(digits_data: tuple[torch.Tensor, torch.Tensor, np.ndarray]) -> dict[str, torch.Tensor]:
    """A small MLP briefly trained on 360 digits rows (full-batch Adam): gradients far from zero."""
    x, y, perm = digits_data
    rows = perm[:360]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[rows]), y[rows]).backward()
        opt.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_history_draws_a_tradeoff_plot(
    method: str,
    digits_data: tuple[torch.Tensor, torch.Tensor, np.ndarray],
    digits_model_state: dict[str, torch.Tensor],
    tmp_path: Path,
) -> None:
    """Every method the CLI accepts (FT and GA included: one objective each) records both losses at every
    step, so its history draws the trade-off plot of the batch's plots stage."""
    x, y, perm = digits_data
    forget, retain = perm[:60], perm[60:360]
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    model.load_state_dict(digits_model_state)
    options = {"constraint_ratio": 0.02} if method.startswith("hamu") else {}
    cfg = UnlearnConfig(method=method, lr=0.05, max_steps=5, device="cpu", method_options=options)
    result = unlearn(
        model, nn.functional.cross_entropy, [(x[retain], y[retain])], [(x[forget], y[forget])], cfg
    )
    assert result.steps_applied == 5
    for record in result.history:
        assert record.retain_loss is not None and np.isfinite(record.retain_loss)
        assert record.forget_loss is not None and np.isfinite(record.forget_loss)
    _check_png(plot_tradeoff({method: result.history}, tmp_path / "tradeoff.png"))


def test_kappa_heatmap(runs: dict[str, Any], tmp_path: Path) -> None:
    result = runs["hamu-q"]
    assert result.steps_applied == 40
    assert result.history[0].kappa_per_tensor is not None
    path = plot_kappa_heatmap(result.history, result.tensor_names, tmp_path / "kappa.png")
    _check_png(path, min_bytes=10_000)
    with pytest.raises(ValueError, match="3 tensor names"):
        plot_kappa_heatmap(result.history, result.tensor_names[:3], tmp_path / "k.png")
    with pytest.raises(ValueError, match="no kappa_per_tensor"):
        plot_kappa_heatmap(runs["gdiff"].history, result.tensor_names, tmp_path / "k.png")
    with pytest.raises(ValueError, match="history is empty"):
        plot_kappa_heatmap([], result.tensor_names, tmp_path / "k.png")
    with pytest.raises(ValueError, match="NaN"):
        plot_kappa_heatmap([{"kappa_per_tensor": [float("nan")]}], ["w"], tmp_path / "k.png")
