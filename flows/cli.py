"""The `hamu` command line: requests, batches, hardness, audit, demo.

Pipeline commands configure HAMU_HOME's environment (Prefect home, MLflow store, telemetry off) *before*
importing Prefect or MLflow, which read it at import time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from tasks.env import configure_environment

app = typer.Typer(help="Auditable machine unlearning with HAMU.", no_args_is_help=True)
requests_app = typer.Typer(help="Submit and inspect deletion requests.", no_args_is_help=True)
batch_app = typer.Typer(help="Run deletion batches.", no_args_is_help=True)
audit_app = typer.Typer(help="Verify and trace the audit trail.", no_args_is_help=True)
app.add_typer(requests_app, name="requests")
app.add_typer(batch_app, name="batch")
app.add_typer(audit_app, name="audit")
console = Console()
err = Console(stderr=True)


@app.callback()
def main() -> None:
    """Auditable machine unlearning with HAMU: demo, hardness, deletion batches, audit."""


# ---------------------------------------------------------------------------------------------- requests
@requests_app.command("submit")
def requests_submit(
    path: Path = typer.Argument(..., help="CSV or JSONL with request_id, record_id, reason, received_at"),
    allowed_root: Path | None = typer.Option(None, help="refuse files outside this folder"),
) -> None:
    """Queue every request of a file, or none of them: a malformed file changes nothing."""
    from hamu.requests import RequestFileError, RequestQueue

    paths = configure_environment()
    with RequestQueue(paths.requests_url) as queue:
        try:
            result = queue.submit_file(path, allowed_root=allowed_root)
        except RequestFileError as exc:
            err.print(f"[red]rejected {path}[/red]: {exc}")
            raise typer.Exit(2) from None
    console.print(f"queued {result.count} requests from {path} (sha256 {result.sha256[:12]})")


@requests_app.command("list")
def requests_list(
    status: str | None = typer.Option(None, help="pending, claimed, rejected or erased"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Show the queue, with each request's status, verdict and batch."""
    from hamu.requests import RequestQueue, Status

    if status is not None and status not in {s.value for s in Status}:
        err.print(f"unknown status {status!r}; accepted: {', '.join(s.value for s in Status)}")
        raise typer.Exit(2)
    paths = configure_environment()
    with RequestQueue(paths.requests_url) as queue:
        rows = queue.list(status)
    fields = ("request_id", "record_id", "reason", "status", "verdict", "batch_id", "model_version")
    records = [{f: _plain(getattr(r, f, None)) for f in fields} for r in rows]
    if as_json:
        typer.echo(json.dumps(records, indent=2))
        return
    table = Table(title=f"{len(records)} requests")
    for f in fields:
        table.add_column(f)
    for rec in records:
        table.add_row(*(str(rec[f] or "") for f in fields))
    console.print(table)


def _plain(value: Any) -> Any:
    return getattr(value, "value", value)


# ------------------------------------------------------------------------------------------------ batches
@batch_app.command("run")
def batch_run(
    preset: str = typer.Option("fashion-mnist-cpu", help="training preset of the served model"),
    method: str = typer.Option("hamu-q", help="unlearning method"),
    max_steps: int = typer.Option(100, help="unlearning step budget"),
    shadow_models: int = typer.Option(2, help="LiRA reference models (0: off)"),
    gate_policy: str = typer.Option("stop", help="stop or warn when hardness argues against unlearning"),
) -> None:
    """Run the deletion-batch flow now (ephemeral Prefect, or PREFECT_API_URL when set)."""
    configure_environment()
    from flows.config import BatchConfig
    from flows.deletion_batch import deletion_batch

    try:
        cfg = BatchConfig(
            preset=preset,
            method=method,
            max_steps=max_steps,
            shadow_models=shadow_models,
            gate_policy=gate_policy,
        )
    except ValueError as exc:
        err.print(f"[red]bad parameters[/red]: {exc}")
        raise typer.Exit(2) from None
    summary = deletion_batch(cfg)
    _print_summary(summary)


def _print_summary(summary: dict[str, Any]) -> None:
    if summary.get("status") in ("empty", "busy"):
        console.print(f"batch {summary['batch_id']}: {summary['message']}")
        return
    table = Table(title=f"batch {summary['batch_id']}", show_header=False)
    for key in (
        "status",
        "requests",
        "verdicts",
        "hardness_verdict",
        "action",
        "reason",
        "evidence",
        "gates_passed",
        "model_name",
        "model_version",
        "carried_over",
        "drift",
        "mlflow_run_id",
        "report_path",
        "report_md",
        "report_uri",
    ):
        if key in summary:
            table.add_row(key, str(summary[key]))
    console.print(table)


@app.command()
def hardness(
    preset: str = typer.Option("fashion-mnist-cpu"),
    rho: float = typer.Option(0.5, help="forget-set mixing for the preset's split"),
    lr: float = typer.Option(0.01),
    constraint_ratio: float = typer.Option(0.1),
    batches: int = typer.Option(3),
) -> None:
    """Assess HAMU hardness of the preset's ρ-split on its (freshly trained) original model."""
    import torch.nn.functional as F

    from hamu.core.transform import HamuConfig
    from hamu.hardness import assess_hardness
    from hamu.train import get_preset, preset_split, train_model
    from tasks.loaders import batches as make_batches

    split = preset_split(preset, rho=rho)
    trained = train_model(split.train, get_preset(preset).recipe, spec=split.spec, role="original")
    retain, forget = split.tensors("retain", trained.featurizer), split.tensors("forget", trained.featurizer)
    report = assess_hardness(
        trained.model,
        F.cross_entropy,
        make_batches(retain, 256),
        make_batches(forget, 256, seed=1),
        hamu=HamuConfig(constraint_ratio=constraint_ratio),
        lr=lr,
        batches=batches,
    )
    data = report.to_dict()
    data.pop("kappa_per_tensor")
    table = Table(title=f"hardness: {preset}, ρ={rho}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for key, value in data.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)


# -------------------------------------------------------------------------------------------------- audit
@audit_app.command("verify")
def audit_verify() -> None:
    """Re-check the whole hash chain and every referenced artifact; exit 1 naming the first break."""
    from hamu.audit import verify_ledger

    paths = configure_environment()
    result = verify_ledger(paths.audit)
    if not result.ok:
        err.print(f"[red]audit trail BROKEN[/red] after {result.records} good records: {result.error}")
        raise typer.Exit(1)
    console.print(f"audit trail intact: {result.records} records, every artifact hash matches")


@audit_app.command("trace")
def audit_trace(
    request_id: str = typer.Argument(..., help="the raw request ID (hashed with the key)"),
) -> None:
    """Print a request's path: its receipt(s) and every ledger record of its batch."""
    from hamu.audit import KeyedHasher, Ledger, ReceiptStore, load_or_create_key

    paths = configure_environment()
    hashed = KeyedHasher(load_or_create_key(paths.home)).hash(request_id)
    ledger = Ledger(paths.audit)
    receipts = ReceiptStore(ledger).find(hashed)
    if not receipts:
        err.print(f"no receipt for this request ({hashed[:24]}…): not yet handled, or unknown")
        raise typer.Exit(1)
    from hamu.requests import RequestQueue

    with RequestQueue(paths.requests_url) as queue:
        request = queue.get(request_id)
    for receipt in receipts:
        current = request is not None and request.batch_id == receipt.batch_id
        standing = "" if current else " [yellow](superseded: that batch did not complete)[/yellow]"
        console.print(
            f"[bold]{receipt.verdict}[/bold] in batch {receipt.batch_id}: {receipt.reason or 'ok'}; "
            f"model {receipt.model_name or '-'} version {receipt.model_version or '-'}; "
            f"issued {receipt.issued_at}{standing}"
        )
        for rec in ledger.records():
            if rec.batch_id == receipt.batch_id:
                console.print(f"  #{rec.seq} {rec.time} {rec.step}: {rec.decision} {rec.reason}".rstrip())


# ---------------------------------------------------------------------------------------------- promotion
def _audit_for(batch_id: str) -> Any:
    from hamu.audit import KeyedHasher, load_or_create_key
    from tasks.audit import BatchAudit

    paths = configure_environment()
    return paths, BatchAudit(paths.audit, KeyedHasher(load_or_create_key(paths.home)), batch_id)


@app.command()
def promote(
    batch: str = typer.Option(..., "--batch", help="the batch whose candidate should become champion"),
    utility_budget: float = typer.Option(0.02, help="largest allowed test-accuracy drop vs the original"),
    ks_max: float | None = typer.Option(None, help="largest allowed KS D (default: the report's band)"),
) -> None:
    """Move `champion` to the batch's model version only if every gate passes; record the decision."""
    from mlflow import MlflowClient

    from hamu.promotion import promotion_gates
    from tasks.registration import refresh_model_card
    from tasks.tracking import alias_version, ensure_experiment

    paths, audit = _audit_for(batch)
    report_path = paths.audit / "batches" / batch / "evaluation.json"
    if not report_path.exists():
        err.print(f"no evaluation report for batch {batch!r} ({report_path})")
        raise typer.Exit(2)
    ensure_experiment(paths)
    client = MlflowClient()
    found = client.search_model_versions(f"tags.batch_id = '{batch}'")
    if len(found) != 1:
        err.print(f"expected one model version tagged batch_id={batch!r}, found {len(found)}")
        raise typer.Exit(2)
    candidate = found[0]
    gates = promotion_gates(json.loads(report_path.read_text()), utility_budget=utility_budget, ks_max=ks_max)
    gates += _lineage_gates(paths, audit.hasher, candidate)
    table = Table(title=f"promotion gates: {candidate.name} v{candidate.version}")
    for col in ("gate", "passed", "value", "limit", "detail"):
        table.add_column(col)
    for g in gates:
        table.add_row(
            g.name, "yes" if g.passed else "[red]NO[/red]", f"{g.value:.4g}", f"{g.limit:.4g}", g.detail
        )
    console.print(table)
    previous = alias_version(candidate.name, "champion")
    params = {"gates": [g.to_dict() for g in gates], "candidate": str(candidate.version)}
    if not all(g.passed for g in gates):
        failed = ", ".join(f"{g.name} ({g.value:.4g} vs {g.limit:.4g})" for g in gates if not g.passed)
        audit.record("promote", decision="refused", reason=f"failed gates: {failed}", params=params)
        err.print(f"champion unchanged: failed gates: {failed}")
        raise typer.Exit(1)
    prev = str(previous.version) if previous else ""
    client.set_model_version_tag(candidate.name, candidate.version, "previous_champion", prev)
    client.set_registered_model_alias(candidate.name, "champion", candidate.version)
    audit.record("promote", decision="promoted", reason=f"previous champion {prev or '-'}", params=params)
    refresh_model_card(candidate.name)
    console.print(f"champion: {candidate.name} v{candidate.version} (previous: {prev or '-'})")


def _lineage_gates(paths: Any, hasher: Any, version: Any) -> list[Any]:
    from hamu.promotion import lineage_gates
    from hamu.requests import RequestQueue
    from tasks.lineage import still_carried

    with RequestQueue(paths.requests_url) as queue:
        erased = queue.erased_record_ids()
    return lineage_gates(
        batch_status=(version.tags or {}).get("batch_status", ""),
        still_carried=still_carried(version, erased, hasher),
        erased_total=len(erased),
    )


@app.command()
def rollback(
    model: str = typer.Option(..., "--model", help="registered model name"),
    force: bool = typer.Option(
        False, help="roll back even if the previous champion still carries erased records (recorded)"
    ),
) -> None:
    """Restore the champion that the current champion replaced; record the rollback.

    Refused when the previous champion still carries records erased since (rolling back would serve them
    again), unless ``--force``, which the audit record states with the count.
    """
    from mlflow import MlflowClient

    from tasks.registration import refresh_model_card
    from tasks.tracking import alias_version, ensure_experiment

    paths = configure_environment()
    ensure_experiment(paths)
    current = alias_version(model, "champion")
    previous = (current.tags or {}).get("previous_champion") if current else None
    if current is None or not previous:
        err.print(f"nothing to roll back for {model!r}: no champion, or it replaced none")
        raise typer.Exit(1)
    _, audit = _audit_for(str((current.tags or {}).get("batch_id", "rollback")))
    client = MlflowClient()
    coverage = _lineage_gates(paths, audit.hasher, client.get_model_version(model, previous))[1]
    reason = f"champion {current.version} → {previous}"
    if not coverage.passed:
        carried = f"still carries {int(coverage.value)} erased records"
        if not force:
            audit.record("rollback", decision="refused", reason=f"{reason}: version {previous} {carried}")
            err.print(f"champion unchanged: version {previous} {carried} (--force to roll back anyway)")
            raise typer.Exit(1)
        reason += f"; FORCED although version {previous} {carried}"
    client.set_registered_model_alias(model, "champion", previous)
    audit.record("rollback", decision="rolled-back", reason=reason)
    refresh_model_card(model)
    console.print(f"champion: {model} v{previous} (was v{current.version})")


# --------------------------------------------------------------------------------------------------- demo
@app.command()
def demo(
    quick: bool = typer.Option(False, help="library-only demo on scikit-learn digits (no pipeline)"),
    preset: str = typer.Option("fashion-mnist-cpu", help="training preset for the pipeline demo"),
) -> None:
    """End to end on the embedded defaults: train if absent, submit a real batch, run the flow."""
    if quick:
        _quick_demo()
        return
    from flows.demo import run_demo

    run_demo(preset=preset, console=console)


def _quick_demo() -> None:
    from hamu.quickstart import run_digits_demo

    result = run_digits_demo()
    h = result.hardness
    console.print(f"hardness: κ={h.kappa:.4g} κ1={h.kappa1:.4g} κ2={h.kappa2:.4g} verdict={h.verdict}")
    for method, run in result.runs.items():
        end, start = result.end_losses[method], result.start_losses
        console.print(
            f"{method}: {run.steps_applied} steps ({run.stop_reason}); "
            f"ΔL_forget {end['forget'] - start['forget']:+.4f}, "
            f"ΔL_retain {end['retain'] - start['retain']:+.4f}"
        )


if __name__ == "__main__":
    app()
