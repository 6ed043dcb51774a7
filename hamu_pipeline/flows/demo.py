"""`make demo`: a real deletion batch through the whole pipeline on the embedded defaults.

Submits a batch of deletion requests for records of the preset's training set (plus one unknown ID and one
repeated record, to show that rejections are kept with their reason), runs the deletion-batch flow, and
prints where to look next.
"""

from __future__ import annotations

import csv
import time
from datetime import UTC, datetime, timedelta

import numpy as np
from rich.console import Console

from hamu_pipeline.tasks.env import configure_environment

DEMO_BATCH = 500


def run_demo(
    *, preset: str = "fashion-mnist-cpu", console: Console | None = None, size: int = DEMO_BATCH
) -> dict:
    out = console or Console()
    paths = configure_environment()
    start = time.perf_counter()
    from hamu.governance.requests import RequestQueue
    from hamu.governance.requests.intake import remove_accepted_file
    from hamu_pipeline.flows.config import BatchConfig
    from hamu_pipeline.flows.deletion_batch import deletion_batch
    from hamu_pipeline.flows.train_original import train_original
    from hamu_pipeline.tasks.models import load_preset_data

    data = load_preset_data(preset)
    # The demo's first run is, with `hamu init`, the only place a champion is created: a batch never does.
    train_original(preset=preset, model_name=BatchConfig(preset=preset).registered_name)
    with RequestQueue(paths.requests_url) as queue:
        erased = queue.erased_record_ids()
        ids = [i for i in data.manifest_ids if i not in erased]
        rng = np.random.default_rng(len(erased))
        chosen = [ids[i] for i in sorted(rng.choice(len(ids), size=min(size, len(ids) - 1), replace=False))]
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        received = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        rows = [(f"demo-{stamp}-{n:05d}", rid, "privacy", received) for n, rid in enumerate(chosen)]
        rows.append(
            (
                f"demo-{stamp}-unknown",
                f"{data.train[0]['record_id'].split('-')[0]}-train-999999",
                "privacy",
                received,
            )
        )
        rows.append((f"demo-{stamp}-repeat", chosen[0], "copyright", received))
        inbox = paths.home / "inbox"
        inbox.mkdir(exist_ok=True)
        path = inbox / f"demo-{stamp}.csv"
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["request_id", "record_id", "reason", "received_at"])
            writer.writerows(rows)
        submitted = queue.submit_file(path)
    remove_accepted_file(submitted.path, submitted.sha256)  # the queue holds them now (docs/requests.md)
    out.print(f"submitted {submitted.count} deletion requests from {path}")
    summary = deletion_batch(BatchConfig(preset=preset))
    elapsed = time.perf_counter() - start
    out.print(
        f"\n[bold]batch {summary['batch_id']}[/bold] finished in {elapsed:.1f} s: {summary.get('status')}"
    )
    keys = ("verdicts", "hardness_verdict", "action", "reason", "evidence_mode", "verdict", "evidence")
    for key in (*keys, "gates_passed"):
        out.print(f"  {key}: {summary.get(key)}")
    out.print(
        f"  registered model: {summary.get('model_name')} version {summary.get('model_version')} "
        "(alias 'candidate'; 'champion' unchanged until promotion)"
    )
    out.print(f"  evidence report: {summary.get('report_path')}")
    out.print(f"  batch report (Markdown; HTML beside it and in the MLflow run): {summary.get('report_md')}")
    out.print(f"  MLflow: {paths.mlflow_uri} (run {summary.get('mlflow_run_id')})")
    out.print(
        "\nnext: .venv/bin/hamu audit verify | .venv/bin/hamu requests list | "
        f".venv/bin/hamu audit trace {rows[0][0]}"
    )
    if summary.get("evidence_mode") == "exact":
        out.print(
            f"later batches: .venv/bin/hamu bank train --preset {preset} trains the lineage's reference bank "
            "once (about 4 retrains); batches are then judged by it without a retrain each, and unlearning "
            "can be cheaper than retraining (docs/evaluation.md)"
        )
    _print_outcome(out, summary)
    return summary


def _print_outcome(out: Console, summary: dict) -> None:
    """The honest end of the demo: promotable or not, and what to do next."""
    if summary.get("status") != "completed" or not summary.get("model_version"):
        out.print(f"[yellow]no candidate was registered[/yellow]: {summary.get('reason', '')}")
        return
    promote = f".venv/bin/hamu promote --batch {summary['batch_id']}"
    if summary.get("gates_passed"):
        out.print(f"[green]promotable[/green]: every gate passes. To serve it: {promote}")
        return
    out.print(f"[red]not promotable[/red]: {summary.get('verdict_reason', '')}")
    if summary.get("evidence") == "insufficient":
        out.print(
            f"next: collect stronger evidence (a larger forget set or more attack power), or accept it with "
            f"{promote} --accept-insufficient-evidence --reason TEXT (recorded in the ledger and model card)"
        )
        return
    out.print(
        "next: the batch's requests stay `unlearned` (pending promotion; overdue after 30 days, see "
        "`hamu requests list --status overdue`). The next batch (`.venv/bin/hamu batch run`) starts again "
        "from the champion and carries them over: give it a stronger method or budget (e.g. "
        "`--method ga --max-steps 300`), or retrain exactly with `--exact`."
    )
