"""Unlearning methods as equivalent-gradient rules (w ← w − η·G), each against its formula written here
independently in numpy (the table in hamu/methods/baselines.py's docstring), plus the registry and the
HAMU rule's contract G = −δ/η."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hamu.core.layout import FlatLayout
from hamu.core.solver import BRANCH_LABELS
from hamu.core.transform import HamuConfig, HamuTransform
from hamu.methods import METHODS, make_method

pytestmark = pytest.mark.usefixtures("single_thread")

SHAPES = [(3, 2), (4,), (1,)]
LR = 0.1
ALL_NAMES = ("hamu-q", "hamu-u", "ft", "ga", "gdiff", "neggrad+", "kl", "scrub", "gru", "pcgrad")


def layout_for(n: int) -> FlatLayout:
    if n == sum(int(np.prod(s)) for s in SHAPES):
        tensors = [torch.zeros(s, dtype=torch.float64) for s in SHAPES]
    else:
        tensors = [torch.zeros(n, dtype=torch.float64)]
    return FlatLayout.for_tensors([f"t{i}" for i in range(len(tensors))], tensors)


def apply(name: str, g_r: np.ndarray | None, g_f: np.ndarray | None, **options) -> tuple[np.ndarray, dict]:
    method = make_method(name, **options)
    n = (g_r if g_r is not None else g_f).size
    out = method(
        None if g_r is None else torch.from_numpy(g_r),
        None if g_f is None else torch.from_numpy(g_f),
        layout_for(n),
        lr=LR,
    )
    return out.grad.numpy(), out.diagnostics


# --- independent numpy formulas -------------------------------------------------------------------------


def gru_formula(g_r: np.ndarray, g_f: np.ndarray) -> np.ndarray:
    """GRU: ascend the forget loss along g_f, projected off g_r when the two conflict (κ > 0)."""
    d = g_f.copy()
    kappa = g_r @ g_f
    if kappa > 0:
        d = d - kappa / (g_r @ g_r) * g_r
    return -d


def pcgrad_formula(g_r: np.ndarray, g_f: np.ndarray) -> np.ndarray:
    """PCGrad on the two descent directions G_r = g_r (retain) and G_f = −g_f (ascend forget)."""
    G_r, G_f = g_r.copy(), -g_f
    dot = G_r @ G_f
    if dot < 0:
        G_r_p = G_r - dot / (G_f @ G_f) * G_f
        G_f_p = G_f - dot / (G_r @ G_r) * G_r
    else:
        G_r_p, G_f_p = G_r, G_f
    return 0.5 * (G_r_p + G_f_p)


FORMULAS = {
    "ft": (lambda r, f: r),
    "ga": (lambda r, f: -f),
    "gdiff": (lambda r, f: 0.5 * (r - f)),
    "neggrad+": (lambda r, f: 0.75 * r - 0.25 * f),  # default retain weight 0.75
    "kl": (lambda r, f: 0.5 * (r - f)),  # r: gradient of KL(p_orig‖p_θ) on retain
    "scrub": (lambda r, f: 0.5 * (r - f)),  # r: ∇(α·KL_r + γ·CE_r), f: ∇KL_f
    "gru": gru_formula,
    "pcgrad": pcgrad_formula,
}

OBJECTIVES = {
    "ft": ("task", None),
    "ga": (None, "task"),
    "gdiff": ("task", "task"),
    "neggrad+": ("task", "task"),
    "kl": ("kl", "task"),
    "scrub": ("scrub", "kl"),
    "gru": ("task", "task"),
    "pcgrad": ("task", "task"),
    "hamu-q": ("task", "task"),
    "hamu-u": ("task", "task"),
}


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_baseline_matches_formula(name: str) -> None:
    rng = np.random.default_rng(len(name))
    n = sum(int(np.prod(s)) for s in SHAPES)
    retain_obj, forget_obj = OBJECTIVES[name]
    n_conflict = 0
    for i in range(200):
        g_r = rng.normal(size=n) * rng.uniform(0.1, 3)
        # Mix of aligned, opposed and unrelated pairs, so both sides of every sign test are exercised.
        g_f = rng.uniform(-1.5, 1.5) * g_r + rng.normal(size=n) * rng.uniform(0.1, 3)
        n_conflict += g_r @ g_f > 0
        grad, _ = apply(
            name, g_r if retain_obj is not None else None, g_f if forget_obj is not None else None
        )
        np.testing.assert_allclose(
            grad, FORMULAS[name](g_r, g_f), rtol=1e-12, atol=1e-12, err_msg=f"draw {i}"
        )
    assert 40 < n_conflict < 160


@pytest.mark.parametrize("name", ALL_NAMES)
def test_objectives_declared(name: str) -> None:
    method = make_method(name)
    assert (method.retain_objective, method.forget_objective) == OBJECTIVES[name]
    assert method.name == name


def test_neggrad_plus_weight() -> None:
    rng = np.random.default_rng(0)
    g_r, g_f = rng.normal(size=7), rng.normal(size=7)
    grad, _ = apply("neggrad+", g_r, g_f, retain_weight=0.3)
    np.testing.assert_allclose(grad, 0.3 * g_r - 0.7 * g_f, rtol=1e-12)
    with pytest.raises(ValueError, match="retain_weight"):
        make_method("neggrad+", retain_weight=1.5)


def test_scrub_options() -> None:
    method = make_method("scrub", alpha=0.01, gamma=0.5)
    assert (method.alpha, method.gamma) == (0.01, 0.5)
    default = make_method("scrub")
    assert (default.alpha, default.gamma) == (0.001, 0.99)


def test_gru_on_conflicting_pair_projects_and_does_not_raise_retain_loss() -> None:
    g_r, g_f = np.array([1.0, 0.0]), np.array([1.0, 1.0])  # κ = 1 > 0: forget ascent raises the retain loss
    grad, diag = apply("gru", g_r, g_f)
    assert bool(diag["projected"])
    np.testing.assert_allclose(grad, [0.0, -1.0], atol=1e-15)  # −(g_f − (κ/‖g_r‖²)·g_r)
    step = -grad  # the update direction (w ← w − η·G)
    assert g_r @ step <= 0  # first-order retain change: not an increase
    assert g_f @ step > 0  # the forget loss still rises


def test_gru_on_non_conflicting_pair_does_not_project() -> None:
    g_r, g_f = np.array([1.0, 0.0]), np.array([-1.0, 1.0])  # κ = −1: ascent already lowers the retain loss
    grad, diag = apply("gru", g_r, g_f)
    assert not bool(diag["projected"])
    np.testing.assert_allclose(grad, -g_f)
    assert g_r @ (-grad) < 0


def test_pcgrad_on_conflicting_pair_projects_and_improves_both() -> None:
    g_r, g_f = np.array([1.0, 0.0]), np.array([1.0, 1.0])
    grad, diag = apply("pcgrad", g_r, g_f)
    assert bool(diag["projected"])
    assert float(diag["kappa"]) == pytest.approx(1.0)
    # G_r' = (1,0) − (−1/2)(−1,−1) = (0.5,−0.5); G_f' = (−1,−1) − (−1)(1,0) = (0,−1); G = ½(G_r' + G_f').
    np.testing.assert_allclose(grad, [0.25, -0.75], atol=1e-15)
    step = -grad
    assert g_r @ step <= 0  # retain loss does not rise
    assert g_f @ step > 0  # forget loss rises


def test_pcgrad_on_non_conflicting_pair_is_gdiff() -> None:
    g_r, g_f = np.array([1.0, 0.0]), np.array([-1.0, 1.0])
    grad, diag = apply("pcgrad", g_r, g_f)
    assert not bool(diag["projected"])
    np.testing.assert_allclose(grad, 0.5 * (g_r - g_f))


def test_projection_rules_never_hurt_on_conflict() -> None:
    """On random conflicting pairs (κ > 0), GRU's step keeps the retain loss flat to first order and PCGrad's
    step improves both objectives to first order (the published guarantees of both methods)."""
    rng = np.random.default_rng(1)
    for _ in range(200):
        g_r = rng.normal(size=9)
        g_f = rng.uniform(0.2, 2.0) * g_r + rng.normal(size=9)
        if g_r @ g_f <= 0:
            continue
        scale = np.linalg.norm(g_r) * np.linalg.norm(g_f)
        gru, _ = apply("gru", g_r, g_f)
        assert abs(g_r @ -gru) <= 1e-12 * scale
        pc, _ = apply("pcgrad", g_r, g_f)
        assert g_r @ -pc <= 1e-12 * scale
        assert g_f @ -pc >= -1e-12 * scale


@pytest.mark.parametrize("name", ["gdiff", "kl", "scrub", "gru", "pcgrad", "hamu-q", "hamu-u"])
def test_paired_methods_require_both_gradients(name: str) -> None:
    method = make_method(name)
    g = torch.ones(7, dtype=torch.float64)
    with pytest.raises(ValueError, match=name.replace("+", r"\+")):
        method(g, None, layout_for(7), lr=LR)
    with pytest.raises(ValueError):
        method(None, g, layout_for(7), lr=LR)


def test_single_objective_methods_require_their_gradient() -> None:
    g = torch.ones(7, dtype=torch.float64)
    with pytest.raises(ValueError, match="retain"):
        make_method("ft")(None, g, layout_for(7), lr=LR)
    with pytest.raises(ValueError, match="forget"):
        make_method("ga")(g, None, layout_for(7), lr=LR)


def test_unknown_method_lists_accepted_names() -> None:
    with pytest.raises(ValueError) as err:
        make_method("nope")
    message = str(err.value)
    assert "nope" in message
    for name in ALL_NAMES:
        assert name in message
    assert set(METHODS) == set(ALL_NAMES)


def test_bad_method_options_raise_value_error() -> None:
    with pytest.raises(ValueError, match="ft"):
        make_method("ft", retain_weight=0.5)
    with pytest.raises(ValueError):
        make_method("hamu-q", split="uniform")


@pytest.mark.parametrize("variant", ["hamu-q", "hamu-u"])
def test_hamu_rule_is_minus_update_over_lr(variant: str) -> None:
    """G = −δ/η, so SGD(η) applies w − η·G = w + δ; diagnostics mirror the transform."""
    rng = np.random.default_rng(3)
    n = sum(int(np.prod(s)) for s in SHAPES)
    g_r = rng.normal(size=n)
    g_f = 0.5 * g_r + rng.normal(size=n)
    layout = layout_for(n)
    rule = make_method(variant, constraint_ratio=0.2)
    out = rule(torch.from_numpy(g_r), torch.from_numpy(g_f), layout, lr=LR)
    ref = HamuTransform(HamuConfig(variant=variant, constraint_ratio=0.2))(  # type: ignore[arg-type]
        torch.from_numpy(g_r), torch.from_numpy(g_f), layout, lr=LR
    )
    torch.testing.assert_close(out.grad, -ref.update / LR)
    torch.testing.assert_close(-LR * out.grad, ref.update)
    d = out.diagnostics
    for key in ("kappa", "kappa1", "kappa2", "predicted_retain_change", "predicted_forget_change"):
        assert key in d
    assert float(d["kappa"]) == pytest.approx(g_r @ g_f)
    assert d["kappa_per_tensor"].numel() == len(SHAPES)
    assert sum(float(d[f"branch_{b}"]) for b in BRANCH_LABELS) == len(SHAPES)
    assert out.stop_infeasible is not None and not bool(out.stop_infeasible)
