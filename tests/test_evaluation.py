"""evaluate_models end to end on digits: gaps, uncertainty, report privacy; judged by
hamu.governance.verdict."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from scipy import stats as sps
from torch import nn

from hamu.evaluation import (
    EvaluationConfig,
    MissingReferenceError,
    MLPTrainer,
    NonFiniteOutputError,
    RecordIdLeakError,
    ShadowConfig,
    assert_free_of_ids,
    bootstrap_mean,
    bootstrap_roc,
    digest_ids,
    evaluate_models,
    gap_row,
    ks_forget_quality,
)
from hamu.evaluation.bootstrap import Interval
from hamu.governance.verdict import RunFacts, decide

FAST = EvaluationConfig(n_resamples=400)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def setting(digits_data: tuple[torch.Tensor, torch.Tensor, np.ndarray]) -> dict[str, Any]:
    """Overfit original (train = retain ∪ forget), two retrained references (seeds 0 and 1), the splits."""
    x, y, perm = digits_data
    forget, retain, test = perm[:100], perm[100:200], perm[200:500]
    trainer = MLPTrainer(x, y, n_classes=10, steps=300, lr=1e-2)
    splits = {s: (x[idx], y[idx]) for s, idx in (("retain", retain), ("forget", forget), ("test", test))}
    return {
        "splits": splits,
        "original": trainer(np.r_[forget, retain], 0),
        "retrained": trainer(retain, 0),
        "retrained_b": trainer(retain, 1),
        "ids": {
            s: [f"digits-train-{i:06d}" if s != "test" else f"digits-test-{i:06d}" for i in idx]
            for s, idx in (("retain", retain), ("forget", forget), ("test", test))
        },
        "forget_inputs": x[forget],
    }


# -- building blocks -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seed", "n_a", "n_b", "ties"), [(0, 10, 12, False), (1, 100, 80, False), (2, 300, 300, True)]
)
def test_ks_matches_scipy(seed: int, n_a: int, n_b: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(0, 1, n_a), rng.normal(0.3, 1.2, n_b)
    if ties:
        a, b = np.round(a, 1), np.round(b, 1)
    ours = ks_forget_quality(a, b)
    ref = sps.ks_2samp(a, b)
    assert ours.d == pytest.approx(ref.statistic, abs=1e-15)
    assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-12)
    assert (ours.n_model, ours.n_reference) == (n_a, n_b)
    assert ours.small_sample == (min(n_a, n_b) < 30)


def test_ks_bad_input() -> None:
    with pytest.raises(ValueError, match="empty"):
        ks_forget_quality(np.array([]), np.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        ks_forget_quality(np.array([np.nan, 1.0]), np.ones(3))


def _binomial_band(reps: int, level: float = 0.95) -> tuple[float, float]:
    """99.9% band for the number of covering intervals out of ``reps`` when coverage is exactly ``level``."""
    lo, hi = sps.binom.ppf([0.0005, 0.9995], reps, level)
    return lo / reps, hi / reps


def test_bootstrap_mean_covers_at_the_nominal_rate() -> None:
    """200 samples of 100 Bernoulli(0.3) rows (an accuracy): the 95% interval covers 0.3 ~95% of the time."""
    rng = np.random.default_rng(123)
    reps = 200
    hits = sum(
        bootstrap_mean(rng.binomial(1, 0.3, 100).astype(float), n_resamples=1000, seed=i).contains(0.3)
        for i in range(reps)
    )
    lo, hi = _binomial_band(reps)
    assert lo <= hits / reps <= hi, hits / reps


def test_bootstrap_auc_covers_at_the_nominal_rate() -> None:
    """Members ~ N(1, 1), non-members ~ N(0, 1): true AUC = Φ(1/√2)."""
    truth = float(sps.norm.cdf(1 / np.sqrt(2)))
    rng = np.random.default_rng(321)
    reps = 200
    hits = 0
    for i in range(reps):
        ci = bootstrap_roc(rng.normal(1, 1, 80), rng.normal(0, 1, 120), n_resamples=1000, seed=i)["auc"]
        hits += ci.contains(truth)
    lo, hi = _binomial_band(reps)
    assert lo <= hits / reps <= hi, hits / reps


def test_gap_row_keeps_the_interval_and_the_reference_noise() -> None:
    row = gap_row(
        "attacks.forget_vs_test.loss.auc", 0.52, 0.5, Interval(0.02, -0.01, 0.05), Interval(0.5, 0.44, 0.56)
    )
    assert (row.gap, row.gap_ci_low, row.gap_ci_high) == (0.02, -0.01, 0.05)
    assert row.reference_half_width == pytest.approx(0.06)
    bare = gap_row("utility.forget.loss", 3.0, 0.5, None, None)
    assert bare.gap == 2.5 and bare.gap_ci_low is None and bare.reference_half_width is None
    with pytest.raises(ValueError, match="no pass band"):
        gap_row("utility.test.mystery", 1.0, 1.0, None, None)


def test_digest_ids_is_order_free_and_keyed() -> None:
    ids = ["digits-train-000001", "digits-train-000002"]
    assert digest_ids(ids) == digest_ids(ids[::-1])
    assert digest_ids(ids).startswith("sha256:")
    keyed = digest_ids(ids, key=b"secret")
    assert keyed.startswith("hmac-sha256:") and keyed != digest_ids(ids, key=b"other")


# -- evaluate_models -------------------------------------------------------------------------------------


def _all_numbers(obj: Any) -> Iterator[list[Any]]:
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _all_numbers(v)
    elif isinstance(obj, list):
        yield obj
        for v in obj:
            yield from _all_numbers(v)


def test_identical_models_give_zero_gaps_and_pass(setting: dict[str, Any]) -> None:
    model = setting["original"]
    ev = evaluate_models(
        {"original": model, "retrained": model, "unlearned": model}, setting["splits"], config=FAST
    )
    report = ev.report
    for name in ("original", "unlearned"):
        rows = report.gaps[name]
        assert len(rows) > 30
        for row in rows:
            assert row["gap"] == 0.0, row
            assert row["gap_ci_low"] in (0.0, None) and row["gap_ci_high"] in (0.0, None), row
        assert decide(report.to_dict(), model=name).status == "pass"
        assert report.forget_quality[name]["d"] == 0.0
        assert report.forget_quality[name]["p_value"] == 1.0
    # the original equals the reference, so nothing could have been detected: the verdict must say so
    verdict = decide(report.to_dict())
    assert verdict.evidence == "insufficient" and not verdict.passed
    assert "cannot tell" in verdict.evidence_reason
    assert report.detection_floor["significant_attacks"] == []


def test_overfit_original_is_detected_and_a_second_retrain_is_not(setting: dict[str, Any]) -> None:
    models = {
        "original": setting["original"],
        "retrained": setting["retrained"],
        "retrained_seed1": setting["retrained_b"],
    }
    ev = evaluate_models(models, setting["splits"], config=FAST)
    report = ev.report
    verdict = decide(report.to_dict(), RunFacts(action="retrain"), model="retrained_seed1")
    assert verdict.evidence == "adequate", verdict.evidence_reason
    assert report.detection_floor["significant_attacks"]
    auc = report.attacks["original"]["forget_vs_test"]["loss"]["metrics"]["auc"]
    assert auc["estimate"] > 0.55 and auc["ci_low"] > 0.5  # the original still remembers its forget rows
    control = {g.name: g for g in verdict.control}
    assert "fail" in {g.status for g in control.values()}
    assert control["forget-accuracy"].direction == "under-unlearning"
    assert not any(g.direction == "over-unlearning" for g in control.values())

    # two retrains with the same recipe: the forget-vs-test attack gaps are ≈ 0, within their intervals
    rows = {r["metric"]: r for r in report.gaps["retrained_seed1"]}
    for name, row in rows.items():
        if name.startswith("attacks.forget_vs_test.") and name.endswith(".auc"):
            assert row["gap_ci_low"] <= 0.0 <= row["gap_ci_high"], row
            assert abs(row["gap"]) < 0.05, row
    assert report.forget_quality["retrained_seed1"]["p_value"] > 0.05


class _Streisand(nn.Module):
    """Confidently wrong on exactly the forget rows, the reference elsewhere: textbook over-unlearning."""

    def __init__(self, base: nn.Module, forget_inputs: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.register_buffer("forget_inputs", forget_inputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.base(x)
        hit = (x[:, None, :] == self.forget_inputs[None, :, :]).all(-1).any(-1)
        wrong = torch.nn.functional.one_hot((logits.argmax(1) + 1) % logits.shape[1], logits.shape[1]) * 20.0
        return torch.where(hit[:, None], wrong.to(logits.dtype), logits)


def test_over_unlearning_fails_the_band(setting: dict[str, Any]) -> None:
    streisand = _Streisand(setting["retrained_b"], setting["forget_inputs"])
    models = {"original": setting["original"], "retrained": setting["retrained"], "streisand": streisand}
    report = evaluate_models(models, setting["splits"], config=FAST).report
    verdict = decide(report.to_dict(), RunFacts(action="retrain"), model="streisand")
    gates = {g.name: g for g in verdict.gates}
    assert not verdict.passed and verdict.status == "fail"
    forget_acc = gates["forget-accuracy"]
    assert (forget_acc.status, forget_acc.direction) == ("fail", "over-unlearning")
    for attack in ("loss", "confidence", "modified_entropy"):  # the label-aware attacks see it
        assert gates[f"mia-{attack}"].direction == "over-unlearning"
    # the label-free entropy attack reads confident (wrong) predictions as memorisation: the signals
    # contradict each other, and the verdict fails either way
    assert gates["mia-entropy"].direction == "under-unlearning"
    assert gates["ks"].status == "fail"
    assert report.forget_quality["streisand"]["d"] > 0.9


def test_report_contains_no_record_ids(setting: dict[str, Any]) -> None:
    ids = setting["ids"]
    models = {
        "original": setting["original"],
        "retrained": setting["retrained"],
        "unlearned": setting["retrained_b"],
    }
    ev = evaluate_models(
        models,
        setting["splits"],
        config=FAST,
        record_ids=ids,
        digest_key=b"kept-in-a-secret-store",
        metadata={"request": "req-42", "n_forget": 100},
    )
    text = ev.report.to_json()
    for split_ids in ids.values():
        for record_id in split_ids:
            assert record_id not in text
    assert ev.report.digests["forget_ids"] == digest_ids(ids["forget"], key=b"kept-in-a-secret-store")
    assert ev.report.counts == {"retain": 100, "forget": 100, "test": 300}
    assert json.loads(text) == ev.report.to_dict()
    # aggregates only: no list of per-example numbers anywhere
    for values in _all_numbers(ev.report.to_dict()):
        if values and all(isinstance(v, int | float) for v in values):
            assert len(values) <= 4, values

    # an ID smuggled in through metadata or a model name is refused, not written
    with pytest.raises(RecordIdLeakError, match="1 record ID"):
        evaluate_models(
            models, setting["splits"], config=FAST, record_ids=ids, metadata={"note": ids["forget"][3]}
        )
    renamed = {**models, ids["forget"][0]: setting["retrained_b"]}
    with pytest.raises(RecordIdLeakError):
        evaluate_models(renamed, setting["splits"], config=FAST, record_ids=ids)


def test_id_guard_walks_the_structure() -> None:
    report = {"metadata": {"note": "see Zoë-ärende-000017"}, "counts": {"forget": 3}, "x": [1.5, "a"]}
    assert "Zoë-ärende-000017" not in json.dumps(report)  # escaped in JSON text: a text search misses it
    with pytest.raises(RecordIdLeakError, match="1 record ID"):
        assert_free_of_ids(report, ["Zoë-ärende-000017", "digits-train-000001"])
    assert_free_of_ids(report, ["digits-train-000001"])
    assert_free_of_ids(report, ["3", "note"])  # too short to check without false alarms


def test_per_example_scores_stay_in_memory_until_saved(setting: dict[str, Any], tmp_path: Any) -> None:
    models = {"original": setting["original"], "retrained": setting["retrained"]}
    ev = evaluate_models(models, setting["splits"], config=FAST)
    assert list(tmp_path.iterdir()) == []
    assert ev.scores.scores("original", "forget", "loss").shape == (100,)
    written = ev.scores.save(tmp_path / "work")
    assert sorted(p.name for p in written) == ["original.npz", "retrained.npz"]
    with np.load(written[0]) as saved:
        assert saved["forget.loss"].shape == (100,)
        assert saved["test.phi"].shape == (300,)


def test_offline_lira_inside_evaluate_models(setting: dict[str, Any]) -> None:
    models = {"original": setting["original"], "retrained": setting["retrained"]}
    ev = evaluate_models(models, setting["splits"], config=FAST, shadow=ShadowConfig(k=4, num_threads=1))
    shadow = ev.report.shadow
    assert shadow["status"] == "run" and shadow["k"] == 4
    assert ev.scores.scores("original", "forget", "lira").shape == (100,)
    assert ev.scores.scores("original", "test", "lira").shape == (300,)
    original_auc = shadow["models"]["original"]["forget_vs_test"]["metrics"]["auc"]["estimate"]
    retrained_auc = shadow["models"]["retrained"]["forget_vs_test"]["metrics"]["auc"]["estimate"]
    assert original_auc > retrained_auc
    assert "shadow" in ev.report.detection_floor["attacks"]
    assert any(r["metric"] == "shadow.forget_vs_test.auc" for r in ev.report.gaps["original"])


def test_missing_reference_is_an_error_or_an_explicit_proxy(setting: dict[str, Any]) -> None:
    with pytest.raises(MissingReferenceError, match="retrained"):
        evaluate_models(
            {"original": setting["original"], "unlearned": setting["retrained_b"]}, setting["splits"]
        )
    with pytest.raises(MissingReferenceError, match="original"):
        evaluate_models({"retrained": setting["retrained"]}, setting["splits"])
    proxy = evaluate_models(
        {"original": setting["original"], "retrained": setting["retrained"]},
        setting["splits"],
        reference_kind="proxy",
        config=FAST,
    ).report
    assert proxy.reference == {"name": "retrained", "kind": "proxy"}
    proxy_gate = decide(proxy.to_dict(), RunFacts(action="retrain"), model="original").gates[0]
    assert (proxy_gate.name, proxy_gate.status) == ("reference-retrained", "fail")
    assert "proxy" in proxy_gate.reason
    assert any("proxy" in w for w in proxy.warnings)


def test_small_sets_are_computed_but_flagged(setting: dict[str, Any]) -> None:
    splits = dict(setting["splits"])
    fx, fy = splits["forget"]
    splits["forget"] = (fx[:20], fy[:20])
    report = evaluate_models(
        {"original": setting["original"], "retrained": setting["retrained"]}, splits, config=FAST
    ).report
    block = report.attacks["original"]["forget_vs_test"]["loss"]
    assert block["small_sample"] and block["n_members"] == 20
    assert 0.0 <= block["metrics"]["auc"]["estimate"] <= 1.0
    assert report.forget_quality["original"]["small_sample"]
    assert any("only 20 members" in w for w in report.warnings)


class _NaNModel(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], 10)
        out[0, 0] = torch.nan
        return out


def test_bad_inputs_raise_specific_errors(setting: dict[str, Any]) -> None:
    models = {"original": setting["original"], "retrained": setting["retrained"]}
    splits = setting["splits"]
    x, y = splits["forget"]
    with pytest.raises(ValueError, match="'forget': inputs and targets have different lengths"):
        evaluate_models(models, {**splits, "forget": (x, y[:-1])})
    with pytest.raises(ValueError, match="split 'forget' is empty"):
        evaluate_models(models, {**splits, "forget": (x[:0], y[:0])})
    with pytest.raises(ValueError, match="missing"):
        evaluate_models(models, {"retain": splits["retain"], "test": splits["test"]})
    with pytest.raises(ValueError, match="integer class indices"):
        evaluate_models(models, {**splits, "forget": (x, y.float())})
    with pytest.raises(
        NonFiniteOutputError, match="model 'unlearned' produced NaN/Inf logits on split 'retain'"
    ):
        evaluate_models({**models, "unlearned": _NaNModel()}, splits)
    with pytest.raises(
        ValueError, match=r"model 'original' on split 'forget': targets must lie in \[0, 10\)"
    ):
        evaluate_models(models, {**splits, "forget": (x, y + 10)})
    with pytest.raises(ValueError, match="has 99 IDs but the split has 100 rows"):
        evaluate_models(models, splits, record_ids={"forget": setting["ids"]["forget"][:-1]})
    with pytest.raises(ValueError, match="n_resamples"):
        EvaluationConfig(n_resamples=10)
    with pytest.raises(ValueError, match="unknown attack"):
        EvaluationConfig(attacks=("gradnorm",))


def test_evaluation_leaves_the_models_as_it_found_them(setting: dict[str, Any]) -> None:
    model = setting["retrained_b"]
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    evaluate_models({"original": setting["original"], "retrained": model}, setting["splits"], config=FAST)
    assert model.training
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    model.eval()
