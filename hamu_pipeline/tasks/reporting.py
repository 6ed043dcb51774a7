"""Prefect artifacts for people: a markdown summary of the batch and a table of verdict counts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE


def summary_markdown(summary: Mapping[str, Any]) -> str:
    lines = [
        f"# Deletion batch `{summary['batch_id']}`",
        "",
        f"- requests: {summary.get('requests', 0)}; verdicts: {summary.get('verdicts', {})}",
        f"- hardness: {summary.get('hardness_verdict', '-')} (κ={summary.get('kappa', float('nan')):.4g})",
        f"- decision: **{summary.get('action', '-')}**: {summary.get('reason', '')}",
        f"- evidence: {summary.get('evidence', '-')}; gates passed: {summary.get('gates_passed', '-')}",
        f"- model: `{summary.get('model_name', '-')}` version {summary.get('model_version', '-')}"
        " (alias `candidate`)",
        f"- MLflow run: `{summary.get('mlflow_run_id', '-')}`",
        f"- evidence report: `{summary.get('report_path', '-')}`",
    ]
    timings = summary.get("stage_seconds", {})
    if timings:
        lines += ["", "| stage | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in timings.items()]
    return "\n".join(lines)


@task(name="publish-artifacts", cache_policy=NO_CACHE)
def publish(summary: Mapping[str, Any]) -> None:
    key = f"deletion-batch-{summary['batch_id']}".lower().replace("_", "-")[:60]
    create_markdown_artifact(summary_markdown(summary), key=key, description="deletion batch summary")
    counts = summary.get("verdicts", {})
    create_table_artifact(
        [{"verdict": v, "count": n} for v, n in counts.items()], key=f"{key}-verdicts", description="verdicts"
    )
