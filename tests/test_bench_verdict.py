"""The trade-off benchmark's verdict rule (bench/tradeoff.py): symmetric, by the seeds' ranges alone.

A method beats another only when the two [min, max] ranges of per-seed retain costs are disjoint;
overlapping (or touching) ranges are a tie whichever median is lower.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from conftest import bench_module

ROOT = Path(__file__).resolve().parents[1]


tradeoff = bench_module("tradeoff")
compare_ranges = tradeoff.compare_ranges
setting_verdict = tradeoff.setting_verdict


# ---------------------------------------------------------------- compare_ranges


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((0.0, 1.0), (0.5, 2.0)),  # partial overlap
        ((0.0, 3.0), (1.0, 2.0)),  # nested
        ((-0.111, -0.085), (-0.086, -0.062)),  # digits near-dup: HAMU-Q vs HAMU-U
        ((0.0, 1.0), (0.0, 1.0)),  # identical
    ],
)
def test_overlapping_ranges_tie_in_both_orders(a: tuple[float, float], b: tuple[float, float]) -> None:
    assert compare_ranges(a, b) == 0
    assert compare_ranges(b, a) == 0


@pytest.mark.parametrize(("low", "high"), [((0.0, 1.0), (1.5, 2.0)), ((-0.103, -0.072), (-0.044, -0.031))])
def test_disjoint_ranges_the_lower_wins_in_both_orders(
    low: tuple[float, float], high: tuple[float, float]
) -> None:
    assert compare_ranges(low, high) == -1
    assert compare_ranges(high, low) == 1


def test_touching_ranges_tie() -> None:
    assert compare_ranges((0.0, 1.0), (1.0, 2.0)) == 0
    assert compare_ranges((1.0, 2.0), (0.0, 1.0)) == 0
    # a hair apart is no longer touching
    assert compare_ranges((0.0, 1.0), (1.0 + 1e-12, 2.0)) == -1


def test_one_seed_is_a_point_range() -> None:
    assert compare_ranges((0.3, 0.3), (0.4, 0.4)) == -1
    assert compare_ranges((0.4, 0.4), (0.3, 0.3)) == 1
    assert compare_ranges((0.3, 0.3), (0.3, 0.3)) == 0
    assert compare_ranges((0.3, 0.3), (0.0, 1.0)) == 0  # a single seed inside the other's range
    assert compare_ranges((1.0, 1.0), (0.0, 1.0)) == 0  # ... or at its edge


def test_symmetric_on_every_pair() -> None:
    points = [-1.0, 0.0, 0.5, 1.0, 2.0]
    ranges = [(lo, hi) for lo, hi in itertools.product(points, points) if lo <= hi]
    for a, b in itertools.product(ranges, ranges):
        assert compare_ranges(a, b) == -compare_ranges(b, a), (a, b)
        overlap = a[0] <= b[1] and b[0] <= a[1]
        assert (compare_ranges(a, b) == 0) == overlap, (a, b)


@pytest.mark.parametrize("bad", [(1.0, 0.0), (float("nan"), 1.0), (0.0, float("nan"))])
def test_rejects_what_is_not_a_range(bad: tuple[float, float]) -> None:
    with pytest.raises(ValueError, match="range"):
        compare_ranges(bad, (0.0, 1.0))
    with pytest.raises(ValueError, match="range"):
        compare_ranges((0.0, 1.0), bad)


# ---------------------------------------------------------------- setting_verdict


def test_overlap_with_hamu_median_lower_is_a_tie_not_a_win() -> None:
    # The old rule called this "hamu-q lowest" because HAMU-Q's median is lower.
    ranges = {"hamu-q": (-0.111, -0.085), "hamu-u": (-0.086, -0.062), "ga": (0.090, 0.110)}
    meds = {"hamu-q": -0.111, "hamu-u": -0.078, "ga": 0.098}
    assert setting_verdict(ranges, meds) == "tie within spread with hamu-u"


def test_overlap_with_baseline_median_lower_is_a_tie() -> None:
    ranges = {"hamu-q": (-0.083, -0.068), "ft": (-0.090, -0.082), "hamu-u": (-0.018, -0.016)}
    meds = {"hamu-q": -0.080, "ft": -0.084, "hamu-u": -0.018}
    assert setting_verdict(ranges, meds) == "tie within spread with ft"


def test_disjoint_both_orders_and_swapping_the_subject_swaps_the_outcome() -> None:
    meds = {"hamu-q": 0.5, "ft": 2.5}
    low_hq = {"hamu-q": (0.0, 1.0), "ft": (2.0, 3.0)}
    assert setting_verdict(low_hq, meds) == "hamu-q lowest"
    assert setting_verdict(low_hq, meds, subject="ft") == "hamu-q lower"
    high_hq = {"hamu-q": (2.0, 3.0), "ft": (0.0, 1.0)}
    meds_swapped = {"hamu-q": 2.5, "ft": 0.5}
    assert setting_verdict(high_hq, meds_swapped) == "ft lower"
    assert setting_verdict(high_hq, meds_swapped, subject="ft") == "ft lowest"


def test_touching_and_single_seed_settings_tie() -> None:
    assert setting_verdict({"hamu-q": (0.0, 1.0), "ga": (1.0, 2.0)}, {"hamu-q": 0.5, "ga": 1.5}) == (
        "tie within spread with ga"
    )
    one_seed = {"hamu-q": (0.2, 0.2), "kl": (0.2, 0.2)}
    assert setting_verdict(one_seed, {"hamu-q": 0.2, "kl": 0.2}) == "tie within spread with kl"
    apart = {"hamu-q": (0.1, 0.1), "kl": (0.2, 0.2)}
    assert setting_verdict(apart, {"hamu-q": 0.1, "kl": 0.2}) == "hamu-q lowest"


def test_medians_never_decide_the_outcome() -> None:
    ranges = {"hamu-q": (0.0, 1.0), "ft": (0.5, 1.5)}
    for meds in ({"hamu-q": 0.1, "ft": 1.4}, {"hamu-q": 0.9, "ft": 0.6}, {"hamu-q": 1.0, "ft": 0.5}):
        assert setting_verdict(ranges, meds) == "tie within spread with ft"


def test_every_baseline_is_compared_not_only_the_lowest_median() -> None:
    # GA has the lowest median but a wide range that overlaps; KL's narrow range lies below HAMU-Q's.
    ranges = {"hamu-q": (0.5, 0.6), "ga": (0.0, 0.9), "kl": (0.1, 0.2)}
    meds = {"hamu-q": 0.55, "ga": 0.05, "kl": 0.15}
    assert setting_verdict(ranges, meds) == "kl lower"
    # HAMU-Q's range is below the lowest-median baseline's but overlaps a higher-median one's.
    ranges = {"hamu-q": (0.0, 0.1), "hamu-u": (0.4, 0.6), "ga": (0.05, 1.0)}
    meds = {"hamu-q": 0.05, "hamu-u": 0.5, "ga": 0.9}
    assert setting_verdict(ranges, meds) == "tie within spread with ga"


def test_tied_names_are_listed_by_median() -> None:
    ranges = {"hamu-q": (0.0, 1.0), "scrub": (0.5, 0.9), "gdiff": (0.2, 0.8), "ga": (0.9, 2.0)}
    meds = {"hamu-q": 0.5, "scrub": 0.7, "gdiff": 0.3, "ga": 1.5}
    assert setting_verdict(ranges, meds) == "tie within spread with gdiff, scrub, ga"


def test_missing_subject_or_no_competitor() -> None:
    assert setting_verdict({"ga": (0.0, 1.0)}, {"ga": 0.5}) == "hamu-q missed the target in some seed"
    assert setting_verdict({"hamu-q": (0.0, 1.0)}, {"hamu-q": 0.5}) == "hamu-q lowest"


# ---------------------------------------------------------------- --verdicts-from


def test_parse_spread() -> None:
    assert tradeoff.parse_spread("-0.111 [-0.111, -0.085]") == (-0.111, -0.111, -0.085)
    assert tradeoff.parse_spread("+0.003 [-0.000, +0.003]") == (0.003, -0.0, 0.003)
    assert tradeoff.parse_spread("-0.241") == (-0.241, -0.241, -0.241)
    assert tradeoff.parse_spread("—") is None
    assert tradeoff.parse_spread(tradeoff.spread([0.25, -0.5, 0.125])) == (0.125, -0.5, 0.25)


MD = """\
| dataset | setting | rho | hamu-q ΔL_r@target | best baseline | its ΔL_r@target | verdict |
|---|---|---|---|---|---|---|
| toy | plain | 0.5 | -0.1000 | hamu-u | -0.0500 | hamu-q lowest |
| toy | plain | 1 | — | ga | 0.3000 | hamu-q missed the target in some seed |

| dataset | setting | rho | method | reached | ΔL_r@target med [min,max] | κ0 |
|---|---|---|---|---|---|---|
| toy | plain | 0.5 | hamu-q | 3/3 | -0.100 [-0.120, -0.040] | 0.1 |
| toy | plain | 0.5 | hamu-u | 3/3 | -0.050 [-0.060, -0.030] | 0.1 |
| toy | plain | 0.5 | ft | 2/3 | -0.900 [-0.950, -0.850] | 0.1 |
| toy | plain | 1 | hamu-q | 2/3 | -0.100 [-0.100, -0.100] | 0.1 |
| toy | plain | 1 | ga | 3/3 | +0.300 [+0.200, +0.400] | 0.1 |
"""


def test_verdicts_from_markdown(tmp_path: Path) -> None:
    settings, old = tradeoff.settings_from_markdown(MD)
    by_rho = {v["rho"]: v for v in settings}
    # FT reached 2/3 seeds, so it is left out although its printed range is the lowest.
    assert by_rho[0.5]["verdict"] == "tie within spread with hamu-u"
    assert by_rho[0.5]["ranges"] == {"hamu-q": (-0.12, -0.04), "hamu-u": (-0.06, -0.03)}
    assert by_rho[1.0]["verdict"] == "hamu-q missed the target in some seed"
    assert old[("toy", "plain", 0.5)] == "hamu-q lowest"
    path = tmp_path / "results.md"
    path.write_text(MD)
    report = tradeoff.rederive_verdicts(path)
    assert "changed verdicts (1 of 2 stored):" in report
    assert "toy plain ρ=0.5: hamu-q lowest → tie within spread with hamu-u" in report


def test_markdown_rejects_a_setting_printed_twice() -> None:
    table = MD.split("\n\n")[1]
    with pytest.raises(ValueError, match="two full tables"):
        tradeoff.settings_from_markdown(table + "\n" + table)


def _row(method: str, seed: int, cost: float, reached: bool = True) -> dict[str, object]:
    return {
        "dataset": "toy",
        "setting": "near-dup",
        "rho": 0.5,
        "seed": seed,
        "method": method,
        "reached": reached,
        "dLr_at_target": cost if reached else float("nan"),
        "dLf_max": 1.0,
        "kappa0": 0.1,
        "kappa_mean": 0.2,
        "acc_retain": 0.9,
        "acc_forget": 0.5,
        "acc_test": 0.8,
    }


def test_verdicts_from_raw_json(tmp_path: Path) -> None:
    rows = [_row("hamu-q", s, c) for s, c in enumerate((-0.111, -0.1, -0.085))]
    rows += [_row("hamu-u", s, c) for s, c in enumerate((-0.086, -0.078, -0.062))]
    rows += [_row("ga", s, c) for s, c in enumerate((0.09, 0.098, 0.11))]
    payload = {
        "args": {"methods": ["hamu-q", "hamu-u", "ga"]},
        "verdicts": {"settings": [{"dataset": "toy", "setting": "near-dup", "rho": 0.5, "verdict": "x"}]},
        "rows": rows,
    }
    path = tmp_path / "tradeoff.json"
    path.write_text(json.dumps(payload))
    report = tradeoff.rederive_verdicts(path)
    assert "| toy | near-dup | 0.5 | -0.1000 | hamu-u | -0.0780 | tie within spread with hamu-u |" in report
    assert "toy near-dup ρ=0.5: x → tie within spread with hamu-u" in report


def test_docs_results_verdicts_match_their_full_tables() -> None:
    """docs/results.md's verdict tables are what the rule gives on the ranges its full tables print."""
    settings, old = tradeoff.settings_from_markdown((ROOT / "docs" / "results.md").read_text())
    assert len(settings) == 18 and len(old) == 18
    for v in settings:
        assert old[(v["dataset"], v["setting"], v["rho"])] == v["verdict"], v
