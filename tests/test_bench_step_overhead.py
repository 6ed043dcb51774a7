"""``bench/step_overhead.py`` keeps its contract: a table row per model and round, the median and range over
rounds, and ``hamu_over_gdiff=<ratio>`` as its last line (what `make bench` and the docs read)."""

from __future__ import annotations

import re
import statistics
import sys

import pytest
from conftest import bench_module


def test_rounds_print_each_ratio_their_median_and_the_last_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = bench_module("step_overhead")
    argv = ["step_overhead.py", "--models", "cnn", "--steps", "4", "--warmup", "1", "--rounds", "2"]
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [line for line in lines if line.startswith("cnn ") and "x" in line.split()[-1]]
    assert len(rows) == 2  # one table row per round
    ratios = [float(row.split()[5]) for row in rows]
    summary = next(line for line in lines if line.startswith("cnn ") and ":" in line)
    listed = [float(r) for r in summary.split(":")[1].split(",")]
    assert listed == ratios  # every round's ratio, in order
    assert float(summary.split()[1]) == pytest.approx(statistics.median(ratios), abs=1e-3)
    last = re.fullmatch(r"hamu_over_gdiff=(\d+\.\d{3})", lines[-1])
    assert last is not None and float(last.group(1)) == pytest.approx(statistics.median(ratios), abs=1e-3)


def test_rounds_below_one_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = bench_module("step_overhead")
    monkeypatch.setattr(sys, "argv", ["step_overhead.py", "--rounds", "0"])
    with pytest.raises(SystemExit):
        bench.main()
