"""Write the per-batch report (Markdown + HTML) into the audit trail and the MLflow run, and link it from a
Prefect artifact. The content is rendered by :mod:`hamu.governance.audit.batch_report`; this task only
gathers the
batch's aggregates, redacts IDs, and files the result in the three places reviewers look."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
from prefect.artifacts import create_link_artifact

from hamu.governance.audit.batch_report import BatchReportInput, render_html, render_markdown
from hamu.governance.requests import JudgedRequest
from hamu_pipeline.tasks.audit import BatchAudit, redact_ids


def write_batch_report(
    audit: BatchAudit,
    *,
    summary: Mapping[str, Any],
    judged: Sequence[JudgedRequest],
    hardness: Mapping[str, Any],
    decision: Mapping[str, Any],
    evaluation: Mapping[str, Any] | None,
    verdict: Mapping[str, Any] | None,
    drift: Mapping[str, Any],
    plots: Mapping[str, Path],
    folder: Path,
) -> dict[str, str]:
    raw = {i for r in judged for i in (r.request_id, r.record_id)}
    rejected = [
        (audit.hasher.hex(r.request_id), r.verdict, redact_ids(r.reason, raw, audit.hasher))
        for r in judged
        if r.verdict != "accepted"
    ]
    counts = Counter(r.verdict for r in judged)
    links = {"MLflow run": str(summary.get("mlflow_run_id", "-"))}
    if summary.get("prefect_flow_run_id"):
        links["Prefect flow run"] = str(summary["prefect_flow_run_id"])
    inp = BatchReportInput(
        batch_id=audit.batch_id,
        model_name=str(summary.get("model_name", "")),
        source_version=str(summary.get("source_version", "")),
        candidate_version=str(summary.get("model_version", "")),
        action=str(summary.get("action", "none")),
        reason=str(summary.get("reason", "")),
        verdict_counts=counts,
        rejected=rejected,
        hardness=hardness,
        decision=decision,
        evaluation=evaluation,
        verdict=verdict,
        drift=drift,
        carried_over=int(summary.get("carried_over", 0)),
        links=links,
        plots=plots,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    markdown = render_markdown(inp)
    page = render_html(inp, markdown)
    folder.mkdir(parents=True, exist_ok=True)
    md_path, html_path = folder / "report.md", folder / "report.html"
    md_path.write_text(markdown, encoding="utf-8")
    html_path.write_text(page, encoding="utf-8")
    audit.record(
        "report",
        decision="written",
        artifacts={
            "report_md": ("report.md", markdown.encode()),
            "report_html": ("report.html", page.encode()),
        },
    )
    out = {"report_md": str(audit.ledger.root / "batches" / audit.batch_id / "report.md")}
    if mlflow.active_run() is not None:
        mlflow.log_artifact(str(md_path), artifact_path="report")
        mlflow.log_artifact(str(html_path), artifact_path="report")
        for path in plots.values():
            mlflow.log_artifact(str(path), artifact_path="report/plots")
        out["report_uri"] = mlflow.get_artifact_uri("report/report.html")
    create_link_artifact(
        link=out.get("report_uri", Path(out["report_md"]).resolve().as_uri()),
        link_text=f"batch report {audit.batch_id}",
        key=f"batch-report-{audit.batch_id}".lower().replace("_", "-")[:60],
        description="Markdown/HTML report: requests, hardness, evidence with CIs, utility, gates, drift",
    )
    return out
