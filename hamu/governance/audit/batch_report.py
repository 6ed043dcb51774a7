"""The per-batch report a reviewer reads: Markdown (diffable, archived in the ledger) and standalone HTML.

It answers, for one deletion batch: what was asked, what was accepted or rejected and why, the hardness
verdict and the decision it led to, the forgetting evidence against the retrained reference (with CIs),
the utility change, the promotion gates and cumulative drift, and which model versions were involved.

It is built from aggregates only. Requests appear as short keyed hashes; the caller must pass reasons
that were already redacted (``hamu_pipeline.tasks.audit.redact_ids``). The HTML embeds its plots as data URIs
so the
single file is the whole report, whether it is opened from MLflow, from the audit folder or from email.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt

MAX_LISTED_REQUESTS = 200
_MODELS = ("original", "retrained", "unlearned")


@dataclass
class BatchReportInput:
    """Everything the report shows; every field is already free of raw record and request IDs."""

    batch_id: str
    model_name: str
    source_version: str
    candidate_version: str
    action: str
    reason: str
    verdict_counts: Mapping[str, int]
    rejected: Sequence[tuple[str, str, str]]  # (request hash, verdict, redacted reason)
    hardness: Mapping[str, Any]
    decision: Mapping[str, Any]
    evaluation: Mapping[str, Any] | None
    verdict: Mapping[str, Any] | None = None  # hamu.governance.verdict.Verdict.to_dict()
    drift: Mapping[str, Any] = field(default_factory=dict)
    carried_over: int = 0
    links: Mapping[str, str] = field(default_factory=dict)
    plots: Mapping[str, Path] = field(default_factory=dict)
    created_at: str = ""


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else ("yes" if value else "no")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return [*lines, ""]


def _ci(block: Mapping[str, Any]) -> str:
    return f"{block['estimate']:.4f} [{block['ci_low']:.4f}, {block['ci_high']:.4f}]"


def _requests(inp: BatchReportInput) -> list[str]:
    total = sum(inp.verdict_counts.values())
    out = ["## Requests", "", f"{total} request(s) in this batch.", ""]
    out += _table(["verdict", "count"], sorted(inp.verdict_counts.items()))
    if inp.carried_over:
        out += [
            f"{inp.carried_over} record(s) erased by earlier batches whose candidates were never promoted "
            "are still carried by the source model, so they are forgotten again here.",
            "",
        ]
    if inp.rejected:
        shown = list(inp.rejected)[:MAX_LISTED_REQUESTS]
        out += ["Rejected requests (keyed hashes of the request IDs; `hamu audit trace` resolves them):", ""]
        out += _table(["request", "verdict", "reason"], [(f"`{h[:20]}`", v, r) for h, v, r in shown])
        if len(inp.rejected) > len(shown):
            out += [f"… and {len(inp.rejected) - len(shown)} more (see the receipts).", ""]
    return out


def _hardness(inp: BatchReportInput) -> list[str]:
    h, d = inp.hardness, inp.decision
    keys = (
        "verdict",
        "kappa",
        "kappa1",
        "kappa2",
        "cosine",
        "feasible_fraction",
        "degradation_fraction",
        "predicted_forget_change",
        "predicted_retain_change",
    )
    out = ["## Hardness and decision", ""]
    out += _table(["quantity", "value"], [(k, h[k]) for k in keys if k in h])
    out += [f"**Decision: {inp.action}**: {inp.reason}", ""]
    run = d.get("unlearning") or {}
    if run:
        reached = "reached" if run.get("reached") else "**not reached**"
        out += [
            f"- forget target {reached}: {run.get('why', '')}",
            f"- the controller ran {len(run.get('controller', []))} chunk(s); each chunk's step size, "
            "constraint and measured update norm are in the ledger's `unlearn` record",
        ]
        if d.get("outcome") == "retrain":
            out += [f"- **outcome: the exact retrain**: {inp.reason}"]
        out += [""]
    for warning in d.get("warnings", []) or []:
        out += [f"- warning: {warning}"]
    cost = d.get("cost")
    if cost:
        out += [
            f"- predicted cost: unlearning {cost['unlearn_seconds']:.1f} s, "
            f"exact retraining {cost['retrain_seconds']:.1f} s"
            + (
                f" ({cost['steps']} {cost['method']} steps timed on {cost['device']})"
                if cost.get("method") and cost.get("device")
                else ""
            )
        ]
    return [*out, ""]


def _interval(gate: Mapping[str, Any]) -> str:
    if gate.get("ci_low") is None:
        return "-"
    return f"[{gate['ci_low']:+.4f}, {gate['ci_high']:+.4f}]"


def _evidence(report: Mapping[str, Any], verdict: Mapping[str, Any] | None) -> list[str]:
    reference = report.get("reference", {})
    kind = reference.get("kind", "-")
    if kind == "bank":
        out = [
            "## Forgetting evidence against the reference bank",
            "",
            f"Reference: the lineage's bank {reference.get('bank_id', '-')} of "
            f"{reference.get('n_models', '-')} models, each trained with the served recipe on half the "
            "manifest; no retrain. The candidate's offline LiRA scores on the forget rows, against the "
            "members that never saw each row, are "
            "compared with its scores on the test rows (AUC ½ for a model that never saw them). "
            f"Rows erased by earlier batches re-checked: {reference.get('erased_rows_rechecked', 0)}.",
            "",
        ]
    else:
        out = [
            "## Forgetting evidence against the retrained reference",
            "",
            f"Reference: {kind}.",
            "",
        ]
    if not verdict:
        return out
    outcome = "**promotable**" if verdict["passed"] else "**not promotable**"
    out += [
        f"Verdict: **{verdict['status']}**, evidence **{verdict['evidence']}**: {outcome}. "
        f"{verdict['reason']}",
        "",
        f"Evidence: {verdict['evidence_reason']}.",
        "",
        "Each gate passes only when the whole interval of the candidate's gap to the reference lies inside "
        "its band (equivalence); an interval that crosses the band is *inconclusive*. The control column is "
        "the unmodified original through the same gate: it must fail at least one, or the evidence cannot "
        "tell a model that has not forgotten from the reference.",
        "",
    ]
    control = {g["name"]: g for g in verdict.get("control", [])}
    rows = []
    for g in verdict["gates"]:
        c = control.get(g["name"])
        gap = "-" if g.get("gap") is None else f"{g['gap']:+.4f}"
        band = "-" if g.get("band") is None else f"±{g['band']:.4f}"
        rows.append((g["name"], g["status"], gap, _interval(g), band, g.get("direction") or "-",
                     c["status"] if c else "-"))  # fmt: skip
    out += _table(["gate", "status", "gap", "95% CI", "band", "direction", "original (control)"], rows)
    return out


def _utility(report: Mapping[str, Any]) -> list[str]:
    utility = report.get("utility", {})
    splits = ("retain", "forget", "test")
    rows = [
        [m] + [_ci(utility[m][s]["accuracy"]) if s in utility[m] else "-" for s in splits]
        for m in _MODELS
        if m in utility
    ]
    out = ["## Utility (accuracy, 95% bootstrap CI)", ""]
    out += _table(["model", *splits], rows)
    if "original" in utility and "unlearned" in utility:
        drop = (
            utility["original"]["test"]["accuracy"]["estimate"]
            - utility["unlearned"]["test"]["accuracy"]["estimate"]
        )
        out += [f"Test-accuracy change against the original: {-drop:+.4f}.", ""]
    return out


def _gates_and_drift(inp: BatchReportInput) -> list[str]:
    out = ["## Promotion", ""]
    if inp.verdict:
        out += [
            "The candidate is a *candidate*: its requests are `unlearned`, and become `erased` only when "
            "`hamu promote` moves `champion` to it, re-checking the gates above plus the lineage gates.",
            "",
        ]
        if not inp.verdict["passed"]:
            out += [f"**Not promotable**: {inp.verdict['reason']}", ""]
    else:
        out += ["No gates evaluated (no candidate was registered).", ""]
    if inp.drift:
        state, budget = inp.drift.get("state", {}), inp.drift.get("budget", {})
        out += ["## Cumulative drift since the last exact retrain", ""]
        out += _table(
            ["quantity", "value", "budget"],
            [
                ("unlearning batches", state.get("batches", 0), budget.get("max_batches")),
                ("utility deficit", state.get("utility", 0.0), budget.get("utility")),
                ("Σ |AUC gap|", state.get("mia", 0.0), budget.get("mia")),
            ],
        )
        for breach in inp.drift.get("breaches", []):
            out += [f"- **budget exceeded**: {breach}"]
        if inp.drift.get("recommendation"):
            out += [f"- recommendation: {inp.drift['recommendation']}"]
        out += [""]
    return out


def render_markdown(inp: BatchReportInput) -> str:
    out = [
        f"# Deletion batch `{inp.batch_id}`",
        "",
        f"- created: {inp.created_at or '-'}",
        f"- model: `{inp.model_name}`, source version {inp.source_version or '-'} → "
        f"candidate version {inp.candidate_version or '-'} (champion moves only through `hamu promote`)",
    ]
    out += [f"- {k}: `{v}`" for k, v in inp.links.items()]
    out += [""]
    out += _requests(inp)
    if inp.hardness:
        out += _hardness(inp)
    if inp.evaluation:
        out += _evidence(inp.evaluation, inp.verdict)
        out += _utility(inp.evaluation)
    out += _gates_and_drift(inp)
    if inp.plots:
        out += ["## Plots", ""]
        out += [f"![{name}](plots/{path.name})" for name, path in sorted(inp.plots.items())]
        out += [""]
    return "\n".join(out)


def render_html(inp: BatchReportInput, markdown: str | None = None) -> str:
    """Standalone HTML of the same content, plots inlined."""
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown or render_markdown(inp))
    for path in inp.plots.values():
        data = base64.b64encode(Path(path).read_bytes()).decode()
        body = body.replace(f'src="plots/{path.name}"', f'src="data:image/png;base64,{data}"')
    title = html.escape(f"Deletion batch {inp.batch_id}")
    style = (
        "body{font-family:system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem}"
        "table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.2rem .5rem}"
        "img{max-width:48%;margin:.5rem}"
    )
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{style}</style></head><body>\n{body}</body></html>\n"
    )
