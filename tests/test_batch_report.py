"""The per-batch review report (Markdown + standalone HTML) built from a real evaluation of tiny digits
models, and the model card's erasure-history section."""

from __future__ import annotations

import base64
import dataclasses
import random
import re
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from markdown_it import MarkdownIt

from hamu.evaluation import EvaluationConfig, MLPTrainer, evaluate_models
from hamu.governance.audit import KeyedHasher
from hamu.governance.audit.batch_report import (
    MAX_LISTED_REQUESTS,
    BatchReportInput,
    render_html,
    render_markdown,
)
from hamu.governance.audit.model_card import HEADER, VersionEntry, erasure_history, with_erasure_history
from hamu.governance.decision import CostEstimate, decide
from hamu.governance.drift import DriftBudget, DriftState, advance, breaches
from hamu.governance.verdict import decide as judge_evidence
from hamu.hardness import assess_hardness

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HASH = KeyedHasher(b"k" * 32).hash
_TABLE_RULE = re.compile(r"^\|(---\|)+$", re.MULTILINE)
_UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def batch(digits_data: tuple[torch.Tensor, torch.Tensor, np.ndarray]) -> dict[str, Any]:
    """A real evaluation report, hardness report and decision for a tiny digits batch (~2 s)."""
    x, y, perm = digits_data
    forget, retain, test = perm[:60], perm[60:260], perm[260:460]
    trainer = MLPTrainer(x, y, n_classes=10, hidden=(32,), steps=120, lr=1e-2)
    splits = {s: (x[idx], y[idx]) for s, idx in (("retain", retain), ("forget", forget), ("test", test))}
    models = {
        "original": trainer(np.r_[forget, retain], 0),
        "retrained": trainer(retain, 0),
        "unlearned": trainer(retain, 1),
    }
    report = evaluate_models(models, splits, config=EvaluationConfig(n_resamples=200)).report.to_dict()
    hardness = assess_hardness(
        models["original"], F.cross_entropy, [splits["retain"]], [splits["forget"]], batches=1, device="cpu"
    )
    # force a verdict against unlearning under the warn policy, so the decision carries a warning and a cost
    hardness = dataclasses.replace(hardness, feasible_fraction=0.0)
    decision = decide(hardness, CostEstimate(unlearn_seconds=2.0, retrain_seconds=30.0), policy="warn")
    return {"report": report, "hardness": hardness.to_dict(), "decision": decision.to_dict()}


@pytest.fixture
def plots(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name, file in (("roc", "roc.png"), ("loss histogram", "loss-hist.png")):
        fig, ax = plt.subplots(figsize=(2, 2), dpi=40)
        ax.plot([0, 1], [0, 1] if name == "roc" else [1, 0])
        path = tmp_path / file
        fig.savefig(path, format="png")
        plt.close(fig)
        out[name] = path
    return out


def _input(batch: dict[str, Any], **overrides: Any) -> BatchReportInput:
    report = batch["report"]
    state = DriftState()
    for deficit, gap in ((0.01, 0.06), (0.035, 0.07), (0.02, 0.05)):
        state = advance(state, exact=False, utility_deficit=deficit, auc_gap=gap)
    budget = DriftBudget()
    fields: dict[str, Any] = {
        "batch_id": "batch-0007",
        "model_name": "digits-mlp",
        "source_version": "3",
        "candidate_version": "4",
        "action": batch["decision"]["action"],
        "reason": batch["decision"]["reason"],
        "verdict_counts": {"accepted": 12, "rejected-not-found": 3, "rejected-duplicate": 2},
        "rejected": [
            (
                HASH("req-1"),
                "rejected-not-found",
                "record digits-train-<redacted> is not | in the training set",
            ),
            (HASH("req-2"), "rejected-duplicate", "already erased in batch-0005"),
        ],
        "hardness": batch["hardness"],
        "decision": batch["decision"],
        "evaluation": report,
        "verdict": judge_evidence(report).to_dict(),
        "drift": {
            "state": state.to_dict(),
            "budget": dataclasses.asdict(budget),
            "breaches": breaches(state, budget),
            "recommendation": "retrain from scratch",
        },
        "carried_over": 4,
        "links": {"ledger": "audit/ledger.jsonl"},
        "created_at": "2024-05-01T12:00:00Z",
    }
    fields.update(overrides)
    return BatchReportInput(**fields)


def _cells(row: str) -> list[str]:
    """Cells of a Markdown table row, splitting on unescaped pipes only."""
    return _UNESCAPED_PIPE.split(row.strip())[1:-1]


def _rows_after(markdown: str, header: str) -> list[str]:
    """The body rows of the table whose header row starts with ``header``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


# -- Markdown ------------------------------------------------------------------------------------------


def test_markdown_has_every_section(batch: dict[str, Any], plots: dict[str, Path]) -> None:
    md = render_markdown(_input(batch, plots=plots))
    assert md.startswith("# Deletion batch `batch-0007`")
    for heading in (
        "## Requests",
        "## Hardness and decision",
        "## Forgetting evidence against the retrained reference",
        "## Utility (accuracy, 95% bootstrap CI)",
        "## Promotion",
        "## Cumulative drift since the last exact retrain",
        "## Plots",
    ):
        assert f"\n{heading}" in md, heading
    assert "source version 3 → candidate version 4" in md
    assert "- ledger: `audit/ledger.jsonl`" in md
    assert "![roc](plots/roc.png)" in md and "![loss histogram](plots/loss-hist.png)" in md


def test_optional_sections_are_left_out(batch: dict[str, Any]) -> None:
    md = render_markdown(_input(batch, evaluation=None, drift={}, verdict=None, hardness={}, carried_over=0))
    for absent in ("## Hardness", "## Forgetting evidence", "## Utility", "## Cumulative drift", "## Plots"):
        assert absent not in md, absent
    assert "No gates evaluated" in md
    assert "erased by earlier batches" not in md


def test_every_gate_is_listed_once_with_its_control(batch: dict[str, Any]) -> None:
    inp = _input(batch)
    md = render_markdown(inp)
    assert inp.verdict is not None
    gates = inp.verdict["gates"]
    control = {g["name"]: g["status"] for g in inp.verdict["control"]}
    rows = _rows_after(md, "| gate | status | gap |")
    assert len(rows) == len(gates)
    assert [_cells(r)[0].strip() for r in rows] == [g["name"] for g in gates]
    for row, gate in zip(rows, gates, strict=True):
        cells = [c.strip() for c in _cells(row)]
        assert len(cells) == 7
        assert cells[1] == gate["status"] and cells[6] == control.get(gate["name"], "-")
        if gate["gap"] is not None:
            assert cells[2] == f"{gate['gap']:+.4f}"
    assert f"evidence **{inp.verdict['evidence']}**" in md
    assert ("**promotable**" in md) == inp.verdict["passed"]


def test_utility_gates_hardness_and_drift_values(batch: dict[str, Any]) -> None:
    inp = _input(batch)
    md = render_markdown(inp)
    utility = batch["report"]["utility"]
    change = (
        utility["unlearned"]["test"]["accuracy"]["estimate"]
        - utility["original"]["test"]["accuracy"]["estimate"]
    )
    assert f"Test-accuracy change against the original: {change:+.4f}." in md
    assert len(_rows_after(md, "| model | retain | forget | test |")) == 3
    assert inp.verdict is not None
    for gate in inp.verdict["gates"]:
        assert f"| {gate['name']} | {gate['status']} |" in md
    assert f"| verdict | {batch['hardness']['verdict']} |" in md
    assert f"**Decision: {inp.action}**" in md
    assert "- warning: hardness gate (warn policy)" in md
    assert "- predicted cost: unlearning 2.0 s, exact retraining 30.0 s" in md
    assert "| unlearning batches | 3 | 20 |" in md
    assert "- **budget exceeded**: cumulative MIA drift 0.1800 > budget 0.1500" in md
    assert "- recommendation: retrain from scratch" in md


def test_verdict_counts_and_rejected_rows(batch: dict[str, Any]) -> None:
    inp = _input(batch)
    md = render_markdown(inp)
    assert "17 request(s) in this batch." in md
    for verdict, count in inp.verdict_counts.items():
        assert f"| {verdict} | {count} |" in md
    assert "4 record(s) erased by earlier batches" in md
    rows = _rows_after(md, "| request | verdict | reason |")
    assert len(rows) == 2
    for row, (h, verdict, _) in zip(rows, inp.rejected, strict=True):
        cells = [c.strip() for c in _cells(row)]
        assert cells[:2] == [f"`{h[:20]}`", verdict]
    assert "… and" not in md


def test_pipes_in_reasons_keep_the_column_count(batch: dict[str, Any]) -> None:
    rejected = [(HASH("r"), "rejected|odd", "a | b || c |"), (HASH("s"), "rejected", "multi\nline | reason")]
    inp = _input(batch, rejected=rejected)
    md = render_markdown(inp)
    rows = _rows_after(md, "| request | verdict | reason |")
    assert [len(_cells(r)) for r in rows] == [3, 3]
    html = render_html(inp)
    table = next(t for t in html.split("<table>") if "<th>request</th>" in t)
    body_rows = table.split("</table>")[0].split("<tbody>")[1].split("<tr>")[1:]
    assert [r.count("<td>") for r in body_rows] == [3, 3]
    assert "a | b || c |" in table and "rejected|odd" in table


@pytest.mark.parametrize("extra", [0, 1, 57])
def test_rejected_list_is_truncated(batch: dict[str, Any], extra: int) -> None:
    n = MAX_LISTED_REQUESTS + extra
    rejected = [(HASH(f"req-{i}"), "rejected-not-found", f"reason {i}") for i in range(n)]
    md = render_markdown(_input(batch, rejected=rejected))
    rows = _rows_after(md, "| request | verdict | reason |")
    assert len(rows) == MAX_LISTED_REQUESTS
    assert [_cells(r)[0].strip() for r in rows] == [
        f"`{h[:20]}`" for h, _, _ in rejected[:MAX_LISTED_REQUESTS]
    ]
    for h, _, _ in rejected[MAX_LISTED_REQUESTS:]:
        assert h[:20] not in md
    more = [line for line in md.splitlines() if line.startswith("… and")]
    assert more == ([f"… and {extra} more (see the receipts)."] if extra else [])


# -- HTML ----------------------------------------------------------------------------------------------


def test_html_is_standalone_with_inlined_plots(batch: dict[str, Any], plots: dict[str, Path]) -> None:
    inp = _input(batch, plots=plots)
    md = render_markdown(inp)
    html = render_html(inp)
    assert html == render_html(inp, md)
    assert html.startswith("<!doctype html>") and html.rstrip().endswith("</html>")
    assert "<title>Deletion batch batch-0007</title>" in html and '<meta charset="utf-8">' in html
    n_tables = len(_TABLE_RULE.findall(md))
    assert n_tables == 6  # verdicts, rejected, hardness, evidence gates, utility, drift
    assert html.count("<table>") == n_tables
    assert 'src="plots/' not in html
    inlined = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(inlined) == len(plots)
    assert {base64.b64decode(d) for d in inlined} == {p.read_bytes() for p in plots.values()}
    assert base64.b64decode(inlined[0])[:8] == b"\x89PNG\r\n\x1a\n"


def test_html_escapes_markup_in_reasons(batch: dict[str, Any]) -> None:
    evil = '<script>alert("x")</script>'
    inp = _input(
        batch,
        reason=f"because {evil}",
        rejected=[(HASH("r"), "rejected", f"see {evil} <img src=x onerror=alert(1)>")],
        batch_id="b<script>",
    )
    html = render_html(inp)
    assert "<script" not in html.lower()
    assert "<img src=x" not in html
    assert "&lt;script&gt;" in html


# -- model card ----------------------------------------------------------------------------------------


def _entries() -> list[VersionEntry]:
    drift = DriftState(3, 0.012, 0.08).to_tags()
    return [
        VersionEntry.from_tags("1", "2024-01-01", {"role": "original"}, aliases=["legacy"]),
        VersionEntry.from_tags(
            "10",
            "2024-03-01",
            {
                "role": "candidate",
                "batch_id": "b-10",
                "source_version": "9",
                "action": "unlearn",
                "erased_in_batch": "5",
                "erased_records": "40",
                "evidence": "adequate",
                "gates_passed": "3/3",
                "batch_status": "completed",
                **drift,
            },
            aliases=["champion", "a|b"],
        ),
        VersionEntry.from_tags("9", "2024-02-01", {"batch_id": "b-9", "erased_records": "35"}),
        VersionEntry.from_tags("2", "2024-01-15", {"batch_id": "b-2", "erased_in_batch": ""}),
        VersionEntry.from_tags("11", "2024-04-01", {"batch_id": "b-11", "batch_status": "abandoned"}),
    ]


def _history_rows(text: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| version |"))
    return [line for line in lines[start + 2 :] if line.startswith("|")]


def test_history_lists_versions_newest_first() -> None:
    entries = _entries()
    for seed in range(5):
        random.Random(seed).shuffle(entries)
        rows = _history_rows(erasure_history(entries))
        assert [_cells(r)[0].strip() for r in rows] == ["11", "10", "9", "2", "1"]
    assert all(len(_cells(r)) == 12 for r in rows)  # the "a|b" alias and "Σ|AUC gap|" do not split cells
    html = MarkdownIt("commonmark").enable("table").render(erasure_history(entries))
    assert [tr.count("<td>") for tr in html.split("<tbody>")[1].split("<tr>")[1:]] == [12] * 5
    by_version = {_cells(r)[0].strip(): [c.strip() for c in _cells(r)] for r in rows}
    assert by_version["10"][6] == "5 / 40" and by_version["10"][10] == "completed"
    assert by_version["10"][11] == r"3 batch(es), utility 0.0120, Σ\|AUC gap\| 0.0800"
    assert (
        by_version["1"][3] == "original"
        and by_version["1"][10] == "original"
        and by_version["1"][6] == "0 / 0"
    )
    assert by_version["1"][11] == "-"
    assert by_version["11"][10] == "abandoned"


def test_from_tags_without_drift_has_no_drift() -> None:
    entry = VersionEntry.from_tags(
        "4", "now", {"batch_id": "b", "erased_in_batch": "2", "erased_records": "7"}
    )
    assert entry.drift == ""
    assert (entry.erased_in_batch, entry.erased_total, entry.aliases) == (2, 7, ())
    assert VersionEntry.from_tags("5", "now", DriftState().to_tags()).drift.startswith("0 batch(es)")


def test_with_history_replaces_the_section_and_is_idempotent() -> None:
    entries = _entries()
    description = "Digits MLP served to the demo app.\n\nOwner: ml-platform.\n"
    once = with_erasure_history(description, entries)
    assert once.startswith("Digits MLP served to the demo app.\n\nOwner: ml-platform.\n\n" + HEADER)
    assert once.count(HEADER) == 1
    assert with_erasure_history(once, entries) == once
    fewer = with_erasure_history(once, entries[:2])
    assert fewer.count(HEADER) == 1
    assert fewer == with_erasure_history(description, entries[:2])
    assert len(_history_rows(fewer)) == 2
    assert with_erasure_history(None, entries) == erasure_history(entries)
    assert with_erasure_history("", entries) == erasure_history(entries)
