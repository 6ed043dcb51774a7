"""The `hamu` command line: requests, batches, hardness, audit, demo.

Pipeline commands configure HAMU_HOME's environment (Prefect home, MLflow store, telemetry off) *before*
importing Prefect or MLflow, which read it at import time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from hamu_pipeline.flows.bank_cli import bank_app
from hamu_pipeline.flows.batch_options import BatchRunCommand, batch_config
from hamu_pipeline.flows.init import init as init_command
from hamu_pipeline.tasks.env import configure_environment

app = typer.Typer(help="Auditable machine unlearning with HAMU.", no_args_is_help=True)
requests_app = typer.Typer(help="Submit and inspect deletion requests.", no_args_is_help=True)
batch_app = typer.Typer(help="Run deletion batches.", no_args_is_help=True)
audit_app = typer.Typer(help="Verify and trace the audit trail.", no_args_is_help=True)
app.add_typer(requests_app, name="requests")
app.add_typer(batch_app, name="batch")
app.add_typer(audit_app, name="audit")
app.add_typer(bank_app, name="bank")
retention_app = typer.Typer(help="Delete copies that still hold erased data.", no_args_is_help=True)
app.add_typer(retention_app, name="retention")
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
    keep: bool = typer.Option(False, "--keep", help="leave the file in place once its requests are queued"),
) -> None:
    """Queue every request of a file, or none of them: a malformed file changes nothing and is kept.

    An accepted file is then deleted (unless ``--keep``): the queue holds its requests and its SHA-256, and
    a copy left in the inbox is one more place naming the records to erase. The deletion comes only after
    the queue committed, so a crash in between leaves the file, never loses a request.
    """
    from rich.markup import escape

    from hamu.governance.requests import RequestFileError, RequestQueue
    from hamu.governance.requests.intake import remove_accepted_file

    paths = configure_environment()
    with RequestQueue(paths.requests_url) as queue:
        try:
            result = queue.submit_file(path, allowed_root=allowed_root)
        except RequestFileError as exc:
            err.print(f"[red]rejected {escape(str(path))}[/red]: {escape(str(exc))}")
            raise typer.Exit(2) from None
    console.print(f"queued {result.count} requests from {path} (sha256 {result.sha256[:12]})", markup=False)
    if keep:
        return
    try:
        outcome = remove_accepted_file(result.path, result.sha256)
    except OSError as exc:
        err.print(f"kept {result.path}: cannot remove it ({exc.strerror}); delete it by hand", markup=False)
        return
    if outcome == "changed":
        err.print(
            f"kept {result.path}: it changed after it was read; only the content read then is queued",
            markup=False,
        )
    elif outcome == "removed":
        console.print(f"removed {result.path} (its requests are in the queue)", markup=False)


#: What ``requests list --status`` takes: the stored statuses in life-cycle order, then the derived one.
_LISTABLE = ("pending", "claimed", "unlearned", "erased", "rejected", "quarantined", "overdue")
_REQUEST_FIELDS = ("request_id", "record_id", "reason", "status", "verdict", "batch_id", "model_version")
_SECONDS_PER_DAY = 86_400


@requests_app.command("list")
def requests_list(
    status: str | None = typer.Option(
        None,
        help="pending, claimed, unlearned, erased, rejected, quarantined, "
        "or overdue (unlearned past the deadline)",
    ),
    deadline_days: float | None = typer.Option(
        None,
        "--deadline-days",
        help="days an unlearned request may wait for a promotion before it is overdue "
        "(default: $HAMU_PROMOTION_DEADLINE_DAYS, else 30)",
    ),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Show the queue: each request's status, verdict, batch, and how long unlearned ones await promotion.

    A request is unlearned once a candidate lacks its record, erased once a promoted version does.
    Overdue (unlearned past the deadline) is computed now, not stored: a new deadline applies at once.
    """
    from datetime import UTC, datetime

    from hamu.governance.requests import RequestQueue

    if status is not None and status not in _LISTABLE:
        err.print(f"unknown status {status!r}; accepted: {', '.join(_LISTABLE)}")
        raise typer.Exit(2)
    deadline = _promotion_deadline(deadline_days)
    paths = configure_environment()
    now = datetime.now(UTC)
    with RequestQueue(paths.requests_url) as queue:
        rows = queue.list_overdue(deadline, now=now) if status == "overdue" else queue.list(status)
    records = [
        {
            **_request_record(r, deadline, now),
            "failures": r.failures,
            "quarantine_reason": r.quarantine_reason,
        }
        for r in rows
    ]
    if as_json:
        typer.echo(json.dumps(records, indent=2))
        return
    fields: tuple[str, ...] = (*_REQUEST_FIELDS, "pending_promotion_days", "overdue")
    if status == "quarantined":  # what an operator needs to decide on a requeue, the reason unabridged
        fields = ("request_id", "record_id", "reason", "batch_id", "failures", "quarantine_reason")
    table = Table(title=f"{len(records)} requests")
    for f in fields:
        table.add_column(f, overflow="fold" if status == "quarantined" else "ellipsis")
    for rec in records:
        table.add_row(*(_cell(rec[f]) for f in fields))
    console.print(table)


def _promotion_deadline(days: float | None) -> Any:
    """``--deadline-days``, else ``$HAMU_PROMOTION_DEADLINE_DAYS``, else 30 days (a ``timedelta``).

    A bad value exits 2 naming where it came from, rather than quietly listing nothing as overdue.
    """
    import os

    from hamu.governance.requests import PROMOTION_DEADLINE_ENV, promotion_deadline

    value: float | str | None = days
    source = "--deadline-days"
    if days is None:
        value, source = os.environ.get(PROMOTION_DEADLINE_ENV), PROMOTION_DEADLINE_ENV
    try:
        return promotion_deadline(value)
    except ValueError as exc:
        err.print(f"bad {source}: {exc}")
        raise typer.Exit(2) from None


def _request_record(request: Any, deadline: Any, now: Any) -> dict[str, Any]:
    """One request as listed: its stored fields, days awaiting promotion (unlearned only), and overdue."""
    waited = request.pending_promotion(now)
    days = None if waited is None else round(waited.total_seconds() / _SECONDS_PER_DAY, 1)
    record = {f: _plain(getattr(request, f)) for f in _REQUEST_FIELDS}
    return {**record, "pending_promotion_days": days, "overdue": request.is_overdue(deadline, now)}


def _cell(value: Any) -> str:
    """A table cell: empty for none, ``true``/``false`` for flags (so ``False`` and ``0.0`` still show)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def _plain(value: Any) -> Any:
    return getattr(value, "value", value)


# ------------------------------------------------------------------------------------------------ batches
@batch_app.command("run", cls=BatchRunCommand)
def batch_run(
    ctx: typer.Context,
    preset: str = typer.Option("fashion-mnist-cpu", help="training preset of the served model"),
    method: str = typer.Option("hamu-q", help="unlearning method"),
    max_steps: int = typer.Option(100, help="unlearning step budget"),
    shadow_models: int = typer.Option(2, help="LiRA reference models (0: off)"),
    gate_policy: str = typer.Option("stop", help="stop or warn when hardness argues against unlearning"),
    exact: bool = typer.Option(False, "--exact/--no-exact", help="retrain exactly instead of unlearning"),
    config: Path | None = typer.Option(
        None,
        "--config",
        help="YAML (.yaml, .yml) or JSON file: a mapping of BatchConfig fields; options given here win",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="validate, print the resolved configuration as JSON, run nothing"
    ),
) -> None:
    """Run the deletion-batch flow now (ephemeral Prefect, or PREFECT_API_URL when set).

    Every BatchConfig field is an option; `--config FILE` sets any of them, and options given win over it.
    """
    cfg = batch_config(ctx, config)
    if dry_run:
        typer.echo(cfg.model_dump_json(indent=2))
        return
    configure_environment()
    from hamu_pipeline.flows.deletion_batch import deletion_batch

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
    preset: str = typer.Option(
        "fashion-mnist-cpu", help="workload: a built-in preset or one the project file names"
    ),
    rho: float = typer.Option(0.5, help="forget-set mixing for the ρ-split"),
    forget_class: str | None = typer.Option(
        None, help="the ρ-split's class (default: the preset's, or the workload's first class)"
    ),
    lr: float = typer.Option(0.01),
    constraint_ratio: float = typer.Option(0.1),
    batches: int = typer.Option(3),
) -> None:
    """Assess HAMU hardness of a workload's ρ-split on its (freshly trained) original model."""

    from hamu.core.transform import HamuConfig
    from hamu.hardness import assess_hardness
    from hamu.train import train_model
    from hamu.train.losses import recipe_loss
    from hamu.workloads import WorkloadError, get_workload
    from hamu_pipeline.tasks.loaders import batches as make_batches

    try:
        workload = get_workload(preset)
        split = rho_split(workload, rho, forget_class)
    except (WorkloadError, ValueError) as exc:
        err.print(f"[red]hardness refused[/red]: {exc}")
        raise typer.Exit(2) from None
    trained = train_model(split.train, workload.recipe, spec=split.spec, role="original")
    retain, forget = split.tensors("retain", trained.featurizer), split.tensors("forget", trained.featurizer)
    report = assess_hardness(
        trained.model,
        recipe_loss(workload.recipe),
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


def rho_split(workload: Any, rho: float, forget_class: str | None) -> Any:
    """The workload's ρ-split: a preset's own split options, else the first class, with ``rho`` (and
    ``forget_class``, a class name) overriding them."""
    from hamu.workloads import workload_split

    overrides: dict[str, Any] = {"strategy": "rho", "rho": rho}
    if forget_class is not None:
        overrides["forget_class"] = forget_class  # a class name (the spec maps it to its index)
    return workload_split(workload, **overrides)


# -------------------------------------------------------------------------------------------------- audit
@audit_app.command("verify")
def audit_verify() -> None:
    """Re-check the keyed chain, every artifact, and the chain against receipts, MLflow and the queue.

    Exit 1 naming every disagreement: a modified, reordered, truncated or re-written ledger; a forged
    receipt; a version, alias, checkpoint or erasure manifest the ledger does not vouch for; a request the
    queue calls unlearned or erased without its receipt.
    """
    from hamu.governance.audit import KeyedHasher, verify_ledger
    from hamu.governance.requests import RequestQueue
    from hamu_pipeline.tasks.tracking import ensure_experiment
    from hamu_pipeline.tasks.trail import cross_check

    paths = configure_environment()
    hasher = KeyedHasher(_existing_key(paths))
    result = verify_ledger(paths.audit, hasher.key())
    ensure_experiment(paths)
    with RequestQueue(paths.requests_url) as queue:
        requests = queue.list()
    problems = list(result.problems)
    if result.chain_ok:
        problems += cross_check(paths.audit, hasher, requests)
    else:
        problems.append("cross-checks against receipts, MLflow and the queue skipped: the chain is broken")
    if problems:
        err.print(f"[red]audit trail BROKEN[/red] ({result.records} records read): {len(problems)} problems")
        for problem in problems:
            err.print(f"  - {problem}")
        raise typer.Exit(1)
    console.print(
        f"audit trail intact: {result.records} records, every artifact hash matches, and receipts, "
        "model versions, aliases, checkpoints, erasure manifests and the queue agree with the ledger"
    )


def _trusted_key(paths: Any) -> bytes:
    """The audit key, after checking that the ledger's chain holds (exit 1 naming the break if not).

    Why: promotion, rollback and trace decide from ledger records (a batch's status, a version's
    registered manifest, which receipts exist); a line appended without the key must not count. A torn
    tail left by a crash is repaired first (and recorded), so a crash never blocks these commands.
    """
    from hamu.governance.audit import AuditKeyError, Ledger, verify_ledger

    key = _existing_key(paths)
    ledger = Ledger(paths.audit, key=key)
    if not ledger.path.exists():
        return key
    try:
        ledger.repair()
        result = verify_ledger(paths.audit, key, artifacts=False)
        problem = result.error
    except AuditKeyError as exc:  # the last record is not ours: nothing may be chained onto it
        problem = str(exc)
    if problem:
        err.print(
            f"[red]audit trail BROKEN[/red]: {problem}; nothing was changed. "
            "Run `hamu audit verify` for every problem"
        )
        raise typer.Exit(1)
    return key


def _existing_key(paths: Any) -> bytes:
    """The audit key, or exit 2 naming what is missing: read commands never create one."""
    from hamu.governance.audit import AuditKeyError, load_key

    try:
        return load_key(paths.home)
    except AuditKeyError as exc:
        err.print(f"[red]audit key[/red]: {exc}")
        raise typer.Exit(2) from None


@audit_app.command("trace")
def audit_trace(
    request_id: str = typer.Argument(..., help="the raw request ID (hashed with the key)"),
) -> None:
    """Print a request's path: its receipt(s) and every ledger record of its batch."""
    from hamu.governance.audit import KeyedHasher, Ledger, ReceiptStore

    paths = configure_environment()
    hashed = KeyedHasher(_trusted_key(paths)).hash(request_id)
    ledger = Ledger(paths.audit)
    receipts = ReceiptStore(ledger).find(hashed)
    if not receipts:
        err.print(f"no receipt for this request ({hashed[:24]}…): not yet handled, or unknown")
        raise typer.Exit(1)
    from hamu.governance.requests import RequestQueue

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
    from hamu.governance.audit import KeyedHasher
    from hamu_pipeline.tasks.audit import BatchAudit

    paths = configure_environment()
    return paths, BatchAudit(paths.audit, KeyedHasher(_trusted_key(paths)), batch_id)


@contextmanager
def _refuse_on(*errors: type[Exception]) -> Iterator[None]:
    """Turn a trail inconsistency found mid-decision into a refusal that changes nothing (exit 1)."""
    try:
        yield
    except errors as exc:
        err.print(f"champion unchanged: {exc}")
        raise typer.Exit(1) from None


@app.command()
def promote(
    batch: str = typer.Option(..., "--batch", help="the batch whose candidate should become champion"),
    utility_budget: float | None = typer.Option(
        None,
        help="largest allowed test-accuracy drop vs the retrained reference "
        "[default: hamu.governance.verdict.UTILITY_BUDGET]",
        show_default=False,
    ),
    accept_insufficient_evidence: bool = typer.Option(
        False,
        "--accept-insufficient-evidence",
        help="promote although the attacks cannot tell the original from the reference (needs --reason)",
    ),
    reason: str | None = typer.Option(None, "--reason", help="why insufficient evidence is accepted"),
) -> None:
    """Move `champion` to the batch's candidate only if every gate passes; its requests become erased.

    A refused promotion changes nothing (aliases, queue and ledger stay as they were) and names every
    gate that did not pass.
    """
    from hamu.governance.promotion import PromotionInputError, check_override
    from hamu.governance.requests import RequestQueue
    from hamu.governance.verdict import GatePolicy
    from hamu_pipeline.tasks.promotion import PromotionRefused, candidate_version, judge, read_batch
    from hamu_pipeline.tasks.promotion import promote as promote_version
    from hamu_pipeline.tasks.tracking import ensure_experiment
    from hamu_pipeline.tasks.trail import ManifestMismatch

    try:
        override = check_override(accept_insufficient_evidence, reason)
        policy = GatePolicy() if utility_budget is None else GatePolicy(utility_budget=utility_budget)
    except (PromotionInputError, ValueError) as exc:
        err.print(f"[red]bad parameters[/red]: {exc}")
        raise typer.Exit(2) from None
    paths, audit = _audit_for(batch)
    ensure_experiment(paths)
    try:
        evidence = read_batch(paths.audit, batch)
        candidate = candidate_version(batch)
    except PromotionRefused as exc:
        err.print(f"champion unchanged: {exc}")
        raise typer.Exit(2) from None
    with RequestQueue(paths.requests_url) as queue, _refuse_on(ManifestMismatch):
        verdict, decision = judge(
            evidence,
            candidate,
            queue,
            audit.hasher,
            audit.ledger.records(),
            policy=policy,
            accept_insufficient_evidence=accept_insufficient_evidence,
        )
        _print_gates(f"promotion gates: {candidate.name} v{candidate.version}", decision.gates)
        console.print(f"evidence: {verdict.evidence} ({verdict.evidence_reason})")
        if not decision.allowed:
            err.print(f"champion unchanged: not promotable: {decision.refusal}")
            raise typer.Exit(1)
        previous, erased = promote_version(audit, queue, candidate, verdict, decision, override)
    note = " (insufficient evidence accepted: recorded)" if decision.override_used else ""
    console.print(
        f"champion: {candidate.name} v{candidate.version} (previous: {previous or '-'}); "
        f"{erased} requests erased{note}"
    )


def _print_gates(title: str, gates: Any) -> None:
    table = Table(title=title)
    for col in ("gate", "status", "detail"):
        table.add_column(col)
    for g in gates:
        status = g.status if g.status == "pass" else f"[red]{g.status.upper()}[/red]"
        table.add_row(g.name, status, g.reason)
    console.print(table)


@app.command()
def rollback(model: str = typer.Option(..., "--model", help="registered model name")) -> None:
    """Restore the champion that the current champion replaced; record the rollback.

    Refused, with no override, when the previous champion still carries any erased record: rolling back
    would serve erased data again. A refusal changes nothing.
    """
    from mlflow import MlflowClient

    from hamu.governance.requests import RequestQueue
    from hamu_pipeline.tasks.promotion import removed_by
    from hamu_pipeline.tasks.tracking import alias_version, ensure_experiment
    from hamu_pipeline.tasks.trail import ManifestMismatch

    paths = configure_environment()
    ensure_experiment(paths)
    current = alias_version(model, "champion")
    previous = (current.tags or {}).get("previous_champion") if current else None
    if current is None or not previous:
        err.print(f"nothing to roll back for {model!r}: no champion, or it replaced none")
        raise typer.Exit(1)
    _, audit = _audit_for(str((current.tags or {}).get("batch_id", "rollback")))
    client = MlflowClient()
    with RequestQueue(paths.requests_url) as queue:
        erased = queue.served_erased_record_ids()
    target = client.get_model_version(model, previous)
    with _refuse_on(ManifestMismatch):
        carried = len(erased - removed_by(target, erased, audit.hasher, audit.ledger.records()))
    if carried:
        err.print(
            f"champion unchanged: version {previous} still carries {carried} of {len(erased)} erased "
            "records; rolling back would serve them again"
        )
        raise typer.Exit(1)
    # the record names the move before the alias makes it (a crash in between is reported by verify)
    audit.record(
        "rollback",
        decision="rolled-back",
        reason=f"champion {current.version} → {previous}",
        outputs={"model": model, "champion": str(previous)},
    )
    client.set_registered_model_alias(model, "champion", previous)
    from hamu_pipeline.tasks.registration import refresh_model_card

    refresh_model_card(model)
    console.print(f"champion: {model} v{previous} (was v{current.version})")


# ---------------------------------------------------------------------------------------------- retention
@retention_app.command("apply")
def retention_apply(
    yes: bool = typer.Option(False, "--yes", help="delete what the plan lists (default: dry run)"),
) -> None:
    """Delete the copies that still hold erased data and can never be served again; audited.

    Obsolete: a version (the original included) that is neither `champion` nor `candidate` and still
    carries an erased record (its checkpoint and pt2 model; the version stays, tagged `retention=deleted`),
    the original's checkpoint file once that version is obsolete, and cached references trained on rows
    erased since. Without `--yes` it prints what it would delete and why, and changes nothing. With it,
    one ledger record (step `retention`) names everything deleted with its SHA-256.
    """
    import os

    import mlflow

    from hamu.governance.audit import KeyedHasher, Ledger, verify_ledger
    from hamu.governance.requests import RequestQueue
    from hamu_pipeline.tasks.audit import BatchAudit
    from hamu_pipeline.tasks.retention import apply_retention, plan_retention, retention_batch_id

    paths = configure_environment()
    hasher = KeyedHasher(_existing_key(paths))
    if yes and Ledger(paths.audit).path.exists():  # a crash's torn tail must not block deletions for good
        Ledger(paths.audit, key=hasher.key()).repair()
    checked = verify_ledger(paths.audit, hasher.key())
    if not checked.ok:
        err.print(
            f"[red]nothing deleted[/red]: the ledger does not verify ({checked.error}); "
            "run `hamu audit verify`"
        )
        raise typer.Exit(1)
    # Only point MLflow at the store: a dry run must not even create the experiment.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", paths.mlflow_uri))
    with RequestQueue(paths.requests_url) as queue:
        erased = queue.served_erased_record_ids()
    plan = plan_retention(paths, hasher, erased, Ledger(paths.audit).records())
    console.print(f"retention: {len(plan.deletions)} to delete; {len(erased)} records erased", markup=False)
    for item in plan.deletions:
        console.print(f"{'delete' if yes else 'would delete'} {item.what}: {item.reason}", markup=False)
    for what, why in plan.kept:
        console.print(f"keep {what}: {why}", markup=False)
    if not yes:
        console.print("dry run: nothing was changed; run `hamu retention apply --yes` to delete")
        return
    if not plan.deletions:
        console.print("nothing to delete; no ledger record written")
        return
    audit = BatchAudit(paths.audit, hasher, retention_batch_id())
    record = apply_retention(plan, audit)
    console.print(f"deleted {len(plan.deletions)} items; ledger record {record.seq} ({audit.batch_id})")


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
    from hamu_pipeline.flows.demo import run_demo

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


# `hamu init` lives in its own module: with the demo's first run, it is the only place a champion is made.
app.command("init")(init_command)


if __name__ == "__main__":
    app()
