"""Attack metrics vs scikit-learn, per-example statistics vs slow formulas, MIAs and LiRA on digits."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from hamu.evaluation import (
    ATTACKS,
    MLPTrainer,
    OfflineLira,
    ReferenceStats,
    attack_score,
    best_balanced_accuracy,
    bootstrap_roc,
    compute_per_example,
    make_reference_specs,
    population_attack,
    roc_auc,
    roc_curve,
    run_references,
    tpr_at_fpr,
    train_shadow_model,
)
from hamu.evaluation.bootstrap import Resampler
from hamu.evaluation.metrics import ScoreGrid, summarise_counts
from hamu.evaluation.per_example import per_example_from_logits

pytestmark = pytest.mark.usefixtures("single_thread")


# -- ROC metrics vs scikit-learn -------------------------------------------------------------------------


def _scores(seed: int, n_pos: int, n_neg: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pos = rng.normal(0.6, 1.0, n_pos)
    neg = rng.normal(0.0, 1.0, n_neg)
    if kind == "ties":  # few distinct values: many ties within and across groups
        pos, neg = np.round(pos), np.round(neg)
    elif kind == "constant":
        pos, neg = np.zeros(n_pos), np.zeros(n_neg)
    return pos, neg


CASES = [
    (seed, n_pos, n_neg, kind)
    for seed in range(4)
    for n_pos, n_neg in [(1, 1), (3, 50), (40, 40), (250, 1200)]
    for kind in ("continuous", "ties", "constant")
]


@pytest.mark.parametrize(("seed", "n_pos", "n_neg", "kind"), CASES)
def test_roc_metrics_match_sklearn(seed: int, n_pos: int, n_neg: int, kind: str) -> None:
    pos, neg = _scores(seed, n_pos, n_neg, kind)
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    s = np.r_[pos, neg]
    assert roc_auc(pos, neg) == pytest.approx(roc_auc_score(y, s), abs=1e-12)

    fpr, tpr, thr = sk_roc_curve(y, s, drop_intermediate=False)
    ours_fpr, ours_tpr, ours_thr = roc_curve(pos, neg)
    np.testing.assert_allclose(ours_fpr, fpr, atol=1e-12)
    np.testing.assert_allclose(ours_tpr, tpr, atol=1e-12)
    np.testing.assert_array_equal(ours_thr[1:], thr[1:])
    for alpha in (0.0, 0.001, 0.01, 0.1, 0.5):
        expected = tpr[fpr <= alpha].max()
        assert tpr_at_fpr(pos, neg, alpha) == pytest.approx(expected, abs=1e-12), alpha

    # every threshold via broadcasting (obviously correct), and scikit-learn itself where that is cheap
    cand = np.r_[np.inf, np.unique(s)]
    brute = 0.5 * ((pos[None, :] >= cand[:, None]).mean(1) + (neg[None, :] < cand[:, None]).mean(1))
    assert best_balanced_accuracy(pos, neg) == pytest.approx(brute.max(), abs=1e-12)
    if s.size <= 200:
        best = max(balanced_accuracy_score(y, s >= t) for t in thr)
        assert best_balanced_accuracy(pos, neg) == pytest.approx(max(best, 0.5), abs=1e-12)


def test_bootstrap_fast_path_equals_sklearn_on_each_resample() -> None:
    """The vectorised count-based replicates equal scikit-learn run on each resampled data set."""
    pos, neg = _scores(7, 60, 90, "ties")
    grid = ScoreGrid.build(pos, neg)
    res = Resampler({"m": pos.size, "n": neg.size}, n_resamples=25, seed=3)
    reps = res.roc("m", "n", grid, fprs=(0.05,))
    m_idx = next(res.chunks("m"))
    n_idx = next(res.chunks("n"))
    for b in range(25):
        p, q = pos[m_idx[b]], neg[n_idx[b]]
        y = np.r_[np.ones(p.size), np.zeros(q.size)]
        assert reps["auc"][b] == pytest.approx(roc_auc_score(y, np.r_[p, q]), abs=1e-12)
        fpr, tpr, _ = sk_roc_curve(y, np.r_[p, q], drop_intermediate=False)
        assert reps["tpr@0.05"][b] == pytest.approx(tpr[fpr <= 0.05].max(), abs=1e-12)
    # the sample itself (no resampling) agrees with the point estimate
    point = summarise_counts(*grid.counts(), fprs=(0.05,))
    assert point.auc[0] == pytest.approx(roc_auc(pos, neg))


@pytest.mark.parametrize(
    ("members", "nonmembers", "message"),
    [
        ([], [1.0], "member scores is empty"),
        ([1.0], [], "non-member scores is empty"),
        ([np.nan, 1.0], [1.0], "NaN"),
        ([[1.0]], [1.0], "1-D"),
    ],
)
def test_roc_bad_input(members: list[float], nonmembers: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        roc_auc(members, nonmembers)


def test_bootstrap_roc_is_seeded_and_brackets_the_estimate() -> None:
    pos, neg = _scores(1, 80, 80, "continuous")
    a = bootstrap_roc(pos, neg, n_resamples=300, seed=5)
    b = bootstrap_roc(pos, neg, n_resamples=300, seed=5)
    c = bootstrap_roc(pos, neg, n_resamples=300, seed=6)
    assert a == b
    assert a["auc"] != c["auc"]
    assert a["auc"].low < a["auc"].estimate < a["auc"].high


# -- per-example statistics vs the textbook formulas -----------------------------------------------------


def _slow(logits: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    p = np.exp(logits - logsumexp(logits, axis=1, keepdims=True))
    rows = np.arange(len(y))
    py = p[rows, y]
    mentr = np.array(
        [
            -(1 - py[i]) * np.log(py[i])
            - sum(p[i, c] * np.log(1 - p[i, c]) for c in range(p.shape[1]) if c != y[i])
            for i in rows
        ]
    )
    return {
        "loss": -np.log(py),
        "confidence": py,
        "entropy": -(p * np.log(p)).sum(axis=1),
        "modified_entropy": mentr,
        "phi": np.log(py) - np.log(1 - py),
    }


def test_per_example_statistics_match_textbook_formulas() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(200, 7))
    y = rng.integers(0, 7, 200)
    pe = per_example_from_logits(torch.tensor(logits), torch.tensor(y))
    for name, expected in _slow(logits, y).items():
        np.testing.assert_allclose(getattr(pe, name), expected, rtol=1e-9, atol=1e-12, err_msg=name)
    np.testing.assert_array_equal(pe.correct, (logits.argmax(1) == y).astype(float))


def test_per_example_statistics_stay_finite_for_saturated_logits() -> None:
    """Confidently right (p_y → 1) and confidently wrong rows: naive log(1 − p) would give −inf/NaN."""
    logits = torch.tensor([[60.0, 0.0, 0.0], [0.0, 60.0, 0.0]], dtype=torch.float64)
    pe = per_example_from_logits(logits, torch.tensor([0, 0]))
    for name in ("loss", "entropy", "modified_entropy", "phi"):
        assert np.isfinite(getattr(pe, name)).all(), name
    assert pe.phi[0] == pytest.approx(60.0 - np.log(2.0), rel=1e-9)  # log p_y − log(1 − p_y) exactly
    assert pe.phi[1] == pytest.approx(-60.0, rel=1e-9)
    # confidently wrong: −(1 − p_y) log p_y ≈ 60 plus −p_1 log(1 − p_1) ≈ 60 − log 2
    assert pe.modified_entropy[1] == pytest.approx(120.0 - np.log(2.0), rel=1e-9)


def test_scores_are_oriented_higher_is_member() -> None:
    """A row the model fits better must score higher under every attack."""
    logits = torch.tensor([[5.0, 0.0, 0.0], [1.0, 0.5, 0.0]], dtype=torch.float64)
    pe = per_example_from_logits(logits, torch.tensor([0, 0]))
    for attack in ATTACKS:
        s = attack_score(pe, attack)
        assert s[0] > s[1], attack
    with pytest.raises(ValueError, match="unknown attack"):
        attack_score(pe, "gradnorm")


# -- attacks on a deliberately overfit digits model ------------------------------------------------------


@pytest.fixture(scope="module")
def digits(digits_data: tuple[torch.Tensor, torch.Tensor, np.ndarray]) -> dict[str, object]:
    x, y, perm = digits_data
    train, held, pool = perm[:200], perm[200:500], perm[500:]
    trainer = MLPTrainer(x, y, n_classes=10, steps=300, lr=1e-2)
    torch.manual_seed(0)
    model = trainer(train, 0)
    return {"x": x, "y": y, "train": train, "held": held, "pool": pool, "trainer": trainer, "model": model}


def test_population_attacks_detect_an_overfit_model(digits: dict[str, object]) -> None:
    x, y, model = digits["x"], digits["y"], digits["model"]
    assert isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and isinstance(model, torch.nn.Module)
    train, held = np.asarray(digits["train"]), np.asarray(digits["held"])
    members = compute_per_example(model, (x[train], y[train]))
    nonmembers = compute_per_example(model, (x[held], y[held]))
    assert members.correct.mean() == 1.0  # it really is overfit
    assert nonmembers.correct.mean() < 0.97
    for attack in ATTACKS:
        result = population_attack(members, nonmembers, attack, n_resamples=500)
        auc = result.metrics["auc"]
        assert auc.estimate > 0.55, attack
        assert auc.low > 0.5, attack  # clearly above chance, not just by a hair
        assert result.metrics["balanced_accuracy"].estimate > 0.55
        assert (result.n_members, result.n_nonmembers, result.small_sample) == (200, 300, False)
        assert result.fpr_resolved == {"0.01": True, "0.001": False}


def test_offline_lira_detects_an_overfit_model(digits: dict[str, object]) -> None:
    x, y, model, trainer = digits["x"], digits["y"], digits["model"], digits["trainer"]
    assert isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and isinstance(model, torch.nn.Module)
    assert isinstance(trainer, MLPTrainer)
    train, held, pool = (np.asarray(digits[k]) for k in ("train", "held", "pool"))
    query = (torch.cat([x[train], x[held]]), torch.cat([y[train], y[held]]))
    # references see ~200 rows like the target, drawn from a pool that excludes every query row
    specs = make_reference_specs(
        query, train_fn=trainer, candidates=pool, k=4, fraction=200 / pool.size, seed=0
    )
    assert all(np.intersect1d(s.train_indices, np.r_[train, held]).size == 0 for s in specs)
    stats = run_references(specs)
    lira = OfflineLira.fit(stats)
    scores = lira.score(compute_per_example(model, query).phi)
    assert scores.shape == (500,)
    assert np.isfinite(scores).all()
    result = bootstrap_roc(scores[:200], scores[200:], n_resamples=500)
    assert result["auc"].estimate > 0.55
    assert result["auc"].low > 0.5
    p = lira.p_value(compute_per_example(model, query).phi)
    assert ((p >= 0) & (p <= 1)).all()
    assert np.median(p[:200]) < np.median(p[200:])  # members look less like "never trained on"


def test_reference_specs_pickle_and_train_the_same(digits: dict[str, object]) -> None:
    """A spec survives pickling (process pools) and an unpickled spec gives the same statistics."""
    x, y, trainer = digits["x"], digits["y"], digits["trainer"]
    assert isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and isinstance(trainer, MLPTrainer)
    small = MLPTrainer(trainer.inputs, trainer.targets, n_classes=10, steps=30)
    spec = make_reference_specs((x[:50], y[:50]), train_fn=small, candidates=np.arange(100, 400), k=2)[0]
    direct = train_shadow_model(spec)
    again = train_shadow_model(pickle.loads(pickle.dumps(spec)))
    np.testing.assert_array_equal(direct.phi, again.phi)
    assert direct.n_train == 150 and direct.phi.shape == (50,)


def test_reference_fanout_accepts_any_map(digits: dict[str, object]) -> None:
    x, y, trainer = digits["x"], digits["y"], digits["trainer"]
    assert isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and isinstance(trainer, MLPTrainer)
    small = MLPTrainer(trainer.inputs, trainer.targets, n_classes=10, steps=20)
    specs = make_reference_specs((x[:40], y[:40]), train_fn=small, candidates=np.arange(100, 300), k=3)
    calls: list[int] = []

    def my_map(fn, items):  # type: ignore[no-untyped-def]
        for item in items:
            calls.append(item.index)
            yield fn(item)

    stats = run_references(specs, map_fn=my_map)
    assert calls == [0, 1, 2]
    assert [s.index for s in stats] == [0, 1, 2]
    assert len({s.seed for s in stats}) == 3  # references differ


def test_lira_input_errors() -> None:
    q = (torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))
    trainer = MLPTrainer(torch.zeros(10, 3), torch.zeros(10, dtype=torch.long), n_classes=2, steps=1)
    with pytest.raises(ValueError, match="k >= 2"):
        make_reference_specs(q, train_fn=trainer, candidates=10, k=1)
    with pytest.raises(ValueError, match="candidates"):
        make_reference_specs(q, train_fn=trainer, candidates=[], k=2)
    a = ReferenceStats(index=0, seed=0, n_train=5, phi=np.zeros(4), query_digest="a")
    b = ReferenceStats(index=1, seed=1, n_train=5, phi=np.ones(4), query_digest="b")
    with pytest.raises(ValueError, match="at least 2"):
        OfflineLira.fit([a])
    with pytest.raises(ValueError, match="different query rows"):
        OfflineLira.fit([a, b])
    lira = OfflineLira.fit([a, ReferenceStats(index=1, seed=1, n_train=5, phi=np.ones(4), query_digest="a")])
    with pytest.raises(ValueError, match="expected 4"):
        lira.score(np.zeros(3))
