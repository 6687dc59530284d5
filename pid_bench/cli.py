"""The `pid-bench` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
err = Console(stderr=True)


@app.callback()
def main() -> None:
    """Benchmark and evaluate NVIDIA's PiD decoder against native decoders."""


@app.command()
def parity(
    root: Annotated[
        Path,
        typer.Argument(
            help="A folder in the pid_reference layout (golden/INDEX.json, keys/*.json)."
        ),
    ],
) -> None:
    """Check our PiD against the reference oracle: golden forward/sampler vectors and key manifests.

    Prints one line per case, then `N/M cases pass`; exits 1 if any case fails.
    """
    from pid_bench.parity import run_parity

    if not root.is_dir():
        err.print(f"[red]error:[/red] {root}: not a folder (expected the pid_reference layout)")
        raise typer.Exit(2)
    results = []
    for result in run_parity(root):
        typer.echo(result.line())
        results.append(result)
    counted = [r for r in results if r.kind != "skipped"]
    if not counted:
        err.print(
            f"[red]error:[/red] {root}: no golden/INDEX.json cases and no keys/*.json manifests"
        )
        raise typer.Exit(2)
    passed = sum(r.passed for r in counted)
    typer.echo(f"{passed}/{len(counted)} cases pass")
    if passed != len(counted):
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
