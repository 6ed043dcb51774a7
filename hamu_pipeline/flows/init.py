"""``hamu init``: start a lineage. The only command (with the demo's first run) that creates a champion.

Without ``--from-version`` it trains the preset's original on its full training manifest (the
``train-original`` flow); with it, it adopts an existing registered version after checking that it is the
preset's model, trained on that manifest, with nothing erased (:mod:`hamu_pipeline.tasks.adoption`).
Either way the ledger gets a ``register-original`` record with the weights' and the manifest's digests.
"""

from __future__ import annotations

import typer
from rich.console import Console

from hamu_pipeline.tasks.env import configure_environment

err = Console(stderr=True)
out = Console()


def init(
    preset: str = typer.Option(
        "fashion-mnist-cpu",
        help="workload of the served model: a built-in preset or one the project file names",
    ),
    model_name: str | None = typer.Option(None, help="registered model name (default: hamu-<preset>)"),
    from_version: str | None = typer.Option(
        None, help="adopt this existing version of the registered model instead of training an original"
    ),
    train_seconds: float | None = typer.Option(
        None,
        min=0.0,
        help="with --from-version of a model logged without a hamu checkpoint: how long training it took "
        "(the unlearn-or-retrain gate compares unlearning with it)",
    ),
) -> None:
    """Create the first champion: train the preset's original, or adopt an existing registered version."""
    paths = configure_environment()
    from hamu.workloads import WorkloadError, get_workload
    from hamu_pipeline.tasks.adoption import AdoptionIncomplete, AdoptionRefused, adopt_version
    from hamu_pipeline.tasks.models import load_preset_data
    from hamu_pipeline.tasks.tracking import alias_version, ensure_experiment

    try:
        get_workload(preset).data()  # imports it and checks its data before anything is trained or changed
    except WorkloadError as exc:
        err.print(f"[red]workload[/red]: {exc}")
        raise typer.Exit(2) from None
    name = model_name or f"hamu-{preset}"
    ensure_experiment(paths)
    if from_version is None:
        current = alias_version(name, "champion")
        if current is not None:
            out.print(f"{name} already has champion version {current.version}; nothing to do")
            return
        from hamu_pipeline.flows.train_original import train_original

        try:
            trained = train_original(preset=preset, model_name=name)
        except (RuntimeError, ValueError) as exc:  # a loop, loss or featurizer the workload names, too
            err.print(f"[red]init refused[/red]: {exc}")
            raise typer.Exit(1) from None
        out.print(f"{name}: trained the original, version {trained['version']} is champion")
        return
    try:
        served = adopt_version(
            paths, load_preset_data(preset), name, from_version, train_seconds=train_seconds
        )
    except AdoptionIncomplete as exc:
        err.print(f"[red]adoption incomplete[/red]: {exc}")
        raise typer.Exit(1) from None
    except (AdoptionRefused, RuntimeError) as exc:
        err.print(f"[red]adoption refused[/red]: {exc}; nothing was changed")
        raise typer.Exit(1) from None
    if served.version != from_version:
        out.print(
            f"{name}: version {from_version} had no hamu checkpoint; converted into version "
            f"{served.version}, which is champion"
        )
        return
    out.print(f"{name}: adopted version {served.version} as champion")
