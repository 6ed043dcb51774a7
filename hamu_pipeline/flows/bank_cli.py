"""``hamu bank``: train and inspect the lineage's reference bank (docs/evaluation.md, reference modes)."""

from __future__ import annotations

import json

import typer
from rich.console import Console

from hamu_pipeline.tasks.env import configure_environment

bank_app = typer.Typer(
    help="Train and inspect the reference bank a lineage is judged by.", no_args_is_help=True
)
out = Console()
err = Console(stderr=True)


@bank_app.command("train")
def bank_train(
    preset: str = typer.Option(
        "fashion-mnist-cpu",
        help="workload of the served model: a built-in preset or one the project file names",
    ),
    model_name: str | None = typer.Option(None, help="registered model name (default: hamu-<preset>)"),
    models: int = typer.Option(8, min=2, help="bank members (even); each trains on half the manifest"),
    seed: int = typer.Option(0, help="seed of the members' halves and initialisations"),
) -> None:
    """Train (or replace) the bank: the champion's recipe on seeded halves of the manifest, erased rows
    left out."""
    configure_environment()
    from hamu.train.bank import BankError
    from hamu.workloads import WorkloadError
    from hamu_pipeline.flows.train_bank import train_bank
    from hamu_pipeline.tasks.models import NoChampionError

    try:
        result = train_bank(preset=preset, model_name=model_name, n_models=models, seed=seed)
    except (BankError, WorkloadError, NoChampionError) as exc:
        err.print(f"[red]bank refused[/red]: {exc}")
        raise typer.Exit(2) from None
    recorded = result.get("champion_train_seconds")
    ratio = f" (the champion's own training took {recorded} s when it was recorded)" if recorded else ""
    out.print(
        f"{result['model_name']}: bank {result['bank_id']} of {result['n_models']} members trained in "
        f"{result['train_seconds']} s{ratio}"
    )


@bank_app.command("show")
def bank_show(
    preset: str = typer.Option("fashion-mnist-cpu", help="workload of the served model"),
    model_name: str | None = typer.Option(None, help="registered model name (default: hamu-<preset>)"),
) -> None:
    """Print the bank's record and whether it matches the champion's manifest and recipe (exit 1 if not)."""
    paths = configure_environment()
    from hamu.train.bank import BankError, read_bank_file
    from hamu_pipeline.tasks.bank import bank_folder, find_bank
    from hamu_pipeline.tasks.models import load_preset_data, require_champion

    name = model_name or f"hamu-{preset}"
    folder = bank_folder(paths, name)
    if not (folder / "bank.json").exists():
        err.print(f"{name} has no reference bank: train one with `hamu bank train --preset {preset}`")
        raise typer.Exit(1)
    body = read_bank_file(folder)
    out.print(json.dumps({k: body[k] for k in ("plan", "train_seconds", "refreshed") if k in body}, indent=1))
    try:
        find_bank(paths, load_preset_data(preset), require_champion(name))
    except BankError as exc:
        err.print(f"[red]not usable[/red]: {exc}")
        raise typer.Exit(1) from None
    out.print("usable: matches the champion's manifest and recipe, every file verified")
