"""The `hamu` command line."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Auditable machine unlearning with HAMU.", no_args_is_help=True)
console = Console()


@app.callback()
def main() -> None:
    """Auditable machine unlearning with HAMU: demo, hardness, deletion batches, audit."""


@app.command()
def demo(
    rho: float = typer.Option(0.5, help="Forget-set mixing ρ: 0 = one class, 1 = i.i.d. sample."),
    steps: int = typer.Option(150, help="Unlearning step budget."),
    seed: int = typer.Option(0, help="Seed for split, training and unlearning."),
) -> None:
    """Unlearn a ρ-mixed forget set from a small digits MLP with HAMU-Q and GDiff; print diagnostics."""
    from hamu.quickstart import run_digits_demo

    result = run_digits_demo(rho=rho, steps=steps, seed=seed)
    h = result.hardness
    console.print(
        f"[bold]Hardness[/bold]: κ={h.kappa:.4g}  κ1={h.kappa1:.4g}  κ2={h.kappa2:.4g}  "
        f"angle={h.angle_degrees:.1f}°  verdict={h.verdict}"
    )
    table = Table(title=f"digits, ρ={rho}, {steps} steps")
    for col in ("method", "steps", "stop", "ΔL_forget", "ΔL_retain", "ΔL_test", "mean κ"):
        table.add_column(col, justify="right")
    start = result.start_losses
    for method, run in result.runs.items():
        end = result.end_losses[method]
        kappas = [r.diagnostics["kappa"] for r in run.history if "kappa" in r.diagnostics]
        mean_kappa = f"{sum(kappas) / len(kappas):.4g}" if kappas else "-"
        table.add_row(
            method,
            str(run.steps_applied),
            run.stop_reason,
            f"{end['forget'] - start['forget']:+.4f}",
            f"{end['retain'] - start['retain']:+.4f}",
            f"{end['test'] - start['test']:+.4f}",
            mean_kappa,
        )
    console.print(table)


if __name__ == "__main__":
    app()
