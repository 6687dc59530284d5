"""`pid-bench fetch`: the command line over `pid_bench.fetch` (what a suite needs, listed or
downloaded, with a table of every file and where it goes)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from pid_bench.console import ExitCode, err, exits, load_suite_or_exit

#: FetchError.kind -> the exit code that reports it.
EXIT_FOR = {
    "unreachable": ExitCode.UNREACHABLE,
    "gated": ExitCode.GATED,
    "checksum": ExitCode.CHECKSUM,
    "failed": ExitCode.FAILED,
}


@exits({
    ExitCode.OK: "everything the suite needs is here (or, with --dry-run, was listed)",
    ExitCode.FAILED: "a source failed for another reason (named in its error line)",
    ExitCode.BAD_INPUT: "bad input (suite, or no download root: --checkpoints / "
    "$PID_BENCH_CHECKPOINTS)",
    ExitCode.CHECKSUM: "a download did not match its published checksum (it was deleted)",
    ExitCode.UNREACHABLE: "the Hub ($HF_ENDPOINT) or a URL could not be reached",
    ExitCode.GATED: "a gated or private repository refused this account (accept the licence, "
    "`hf auth login`)",
})  # fmt: skip
def fetch(
    suite_path: Annotated[Path, typer.Argument(help="Suite YAML.", metavar="SUITE")],
    checkpoints: Annotated[
        Path | None,
        typer.Option(
            help="PiD download root (else $PID_BENCH_CHECKPOINTS): where PiD's "
            "checkpoints and codecs go, as `hf download nvidia/PiD --local-dir`."
        ),
    ] = None,  # fmt: skip
    dry_run: Annotated[
        bool, typer.Option(help="List each file, its size and where it goes; download nothing.")
    ] = False,
    verify: Annotated[
        bool,
        typer.Option(help="Also check the checksum of files already present (reads them whole)."),
    ] = False,
) -> None:
    """Download everything SUITE's cells need, and nothing else.

    PiD checkpoints (and the undistilled teacher when `pid-teacher` is listed) and codecs into
    the download root; the caption encoder, RAE encoders and LDM / upscaler pipelines into the
    HF cache; every requested metric's weights where pyiqa and torchvision read them; SR
    baselines with a `url:`. A file already there with the published size is skipped; a
    download is checked against its published checksum. Resumes an interrupted download.
    Afterwards `pid-bench doctor SUITE` shows the cells runnable and the run reads offline.
    """
    from pid_bench import fetch as fetching
    from pid_models.checkpoints import CheckpointError

    suite = load_suite_or_exit(suite_path)
    try:
        wanted = fetching.suite_needs(suite, checkpoints)
    except CheckpointError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}; or pass --checkpoints DIR")
        raise typer.Exit(ExitCode.BAD_INPUT) from exc
    console = Console(soft_wrap=True)
    console.print(f"{suite.name}: what its cells need (Hub: {fetching.hub_endpoint()})")
    result = fetching.plan(wanted, verify)
    for line in plan_lines(result):
        console.print(line, highlight=False)
    if not dry_run:
        _warn_if_short(result, checkpoints)
        result = fetching.download(result)
    _report(console, result, dry_run, suite_path)


def plan_lines(result) -> list[str]:
    """Three lines a file: who needs it, its size and state; where from; where to. Each path
    prints whole on its line (a table folds them in narrow terminals)."""
    lines = []
    for planned in result.files:
        state = "[green]present[/green]" if planned.present else "[yellow]to fetch[/yellow]"
        if planned.note:
            state += f" [dim]({escape(planned.note)})[/dim]"
        needed_by = escape(", ".join(dict.fromkeys(planned.needed_by)))
        lines += [f"[bold]{needed_by}[/bold] · {human_size(planned.size)} · {state}",
                  f"  {escape(planned.source)}", f"  [dim]→ {escape(planned.dest)}[/dim]"]  # fmt: skip
    return lines


def human_size(size: int | None) -> str:
    if size is None:
        return "?"
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def _warn_if_short(result, checkpoints: Path | None) -> None:
    from pid_bench.fetch import disk_free
    from pid_bench.paths import hf_cache_dir

    free = disk_free(hf_cache_dir() if checkpoints is None else checkpoints)
    if result.bytes_to_fetch > free:
        err.print(f"[yellow]warning:[/yellow] {human_size(result.bytes_to_fetch)} to fetch, "
                  f"{human_size(free)} free")  # fmt: skip


def _report(console: Console, result, dry_run: bool, suite_path: Path) -> None:
    waiting = [f for f in result.files if not f.present]
    if dry_run:
        unknown = sum(f.size is None for f in waiting)
        sized = f", {unknown} of unknown size" if unknown else ""
        console.print(f"{len(result.files)} files, {len(waiting)} to fetch "
                      f"({human_size(result.bytes_to_fetch)}{sized}); nothing downloaded "
                      "(--dry-run)")  # fmt: skip
    else:
        console.print(f"fetched {len(result.fetched)} files; {len(result.files) - len(waiting)} "
                      f"were already present")  # fmt: skip
    for failure in result.failures:
        err.print(f"[red]error:[/red] {escape(str(failure))}")
    if result.exit_kind:
        raise typer.Exit(EXIT_FOR[result.exit_kind])
    if not dry_run:
        console.print(f"next: pid-bench doctor {suite_path}")
