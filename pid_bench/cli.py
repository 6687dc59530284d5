"""The `pid-bench` command line."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand

from pid_bench import cli_fetch, cli_tools
from pid_bench.console import (
    ExitCode,
    err,
    exits,
    load_suite_or_exit,
    storage_exit,
    warnings_to_stderr,
)

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


@app.callback()
def main() -> None:
    """Benchmark and evaluate NVIDIA's PiD decoder against native decoders."""


app.command()(cli_tools.parity)


@app.command()
def plan(
    suite_path: Annotated[Path, typer.Argument(help="Suite YAML.", metavar="SUITE")],
    show_all: Annotated[
        bool, typer.Option("--all", help="List every cell, not only the first 40.")
    ] = False,
    fmt: Annotated[
        str,
        typer.Option(
            "--format", help="table (axes, counts, the first cells) | csv | jsonl (every cell)."
        ),
    ] = "table",
) -> None:
    """Print the cells a suite expands to, without computing anything.

    Exit code: 0 planned; 2 bad input.
    """
    import sys

    from pid_bench.plan_output import FORMATS, plan_values, write_rows, write_table
    from pid_bench.runner import plan as plan_cells

    if fmt not in FORMATS:
        err.print(f"[red]error:[/red] --format {escape(fmt)}: use one of {', '.join(FORMATS)}")
        raise typer.Exit(ExitCode.BAD_INPUT)
    suite = load_suite_or_exit(suite_path)
    planned = plan_cells(suite)
    rows = [(cid, plan_values(cell)) for cid, cell in planned]
    if fmt != "table":
        write_rows(sys.stdout, rows, fmt)
    else:
        title = f"{suite.name}: {len(planned)} cells x {len(suite.decoders)} decoders"
        write_table(sys.stdout, title, rows, show_all)
        typer.echo(f"{len(planned)} cells, {len(planned) * len(suite.decoders)} rows")
    for note in suite.reference_notes():
        err.print(f"[yellow]note:[/yellow] {escape(note)}")


@app.command()
def manifest(
    folder: Annotated[Path, typer.Argument(help="A folder of images (not searched recursively).")],
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Manifest to write (default FOLDER/manifest.jsonl)."),
    ] = None,
) -> None:
    """Write a JSONL manifest of a folder of images: ids from the file names, captions from
    NAME.txt sidecars or a captions.jsonl / captions.csv in the folder (else empty, with a
    warning), width and height of each image; paths relative to the manifest.

    Exit code: 0 written; 2 bad input.
    """

    from pid_bench.manifests import ManifestError, write_manifest

    target = output or folder / "manifest.jsonl"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            images = write_manifest(folder, target)
    except ManifestError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    for warning in caught:
        err.print(f"[yellow]warning:[/yellow] {escape(str(warning.message))}")
    typer.echo(f"{len(images)} images -> {target}")


class _RunCommand(TyperCommand):
    """`run`, whose --retry-failed may stand alone (every failed status) or name statuses; an
    option with an optional value is not something Click parses, so a bare one gets "all"."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _bare_retry(args))


def _bare_retry(args: list[str]) -> list[str]:
    out = []
    for i, arg in enumerate(args):
        out.append(arg)
        following = args[i + 1] if i + 1 < len(args) else None
        if arg == "--retry-failed" and (following is None or _not_statuses(following)):
            out.append("all")
    return out


def _not_statuses(text: str) -> bool:
    """A token after --retry-failed that is an option or the suite, not its value."""
    return text.startswith("-") or text.endswith((".yaml", ".yml")) or Path(text).is_file()


def _retry_statuses(text: str | None) -> bool | str:
    """--retry-failed's value as the API takes it (checked here, to exit 2 before any work)."""
    from pid_bench.api import retry_statuses

    if text is None:
        return False
    if text.strip() == "all":
        return True
    try:
        retry_statuses(text)
    except ValueError as exc:
        err.print(f"[red]error:[/red] --retry-failed {escape(text)!r}: {escape(str(exc))}")
        raise typer.Exit(ExitCode.BAD_INPUT) from exc
    return text


@app.command(cls=_RunCommand)
@exits({
    ExitCode.OK: "all ok",
    ExitCode.FAILED: "some row failed (or, with --strict-metrics, a metric is null; or a --log "
    "tracker failed, the run being ok)",
    ExitCode.BAD_INPUT: "bad input (suite, checkpoints, images, run directory, run.json, --log)",
    ExitCode.STORAGE: "the run directory's storage refused a write (disk full, read-only, no "
    "permission, I/O error): the run stopped, every cell written is safe, rerun once fixed",
    ExitCode.SIGINT: "interrupted by SIGINT (a rerun resumes)",
    ExitCode.SIGTERM: "interrupted by SIGTERM (a rerun resumes)",
})  # fmt: skip
def run(
    suite_path: Annotated[Path, typer.Argument(help="Suite YAML.", metavar="SUITE")],
    output: Annotated[
        Path | None,
        typer.Option(help="Run directory (default runs/<suite name>); reruns resume it."),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="Existing Ray cluster (else $RAY_ADDRESS, else a local Ray on 127.0.0.1)."
        ),
    ] = None,
    cpu_workers: Annotated[int, typer.Option(help="Actors when there is no GPU.")] = 1,
    force: Annotated[
        bool, typer.Option(help="Write into a run directory of a different suite.")
    ] = False,
    report: Annotated[bool, typer.Option(help="Write the report at the end.")] = True,
    checkpoints: Annotated[
        Path | None, typer.Option(help="PiD download root (else $PID_BENCH_CHECKPOINTS).")
    ] = None,
    max_retries: Annotated[
        int,
        typer.Option(min=0, help="Retries of a cell whose worker died, before 'worker_lost'."),
    ] = 2,
    retry_failed: Annotated[
        str | None,
        typer.Option(
            metavar="[STATUSES]",
            help="Recompute the cells whose latest row failed: alone, every failed status "
            "(error, oom, worker_lost, storage_error); or those named, e.g. oom,worker_lost. "
            "The new row is the next attempt; the report counts the latest, older ones stay.",
        ),
    ] = None,
    strict_metrics: Annotated[
        bool,
        typer.Option(help="Exit 1 when any metric the suite asks for is null in any row."),
    ] = False,
    log: Annotated[
        list[str] | None,
        typer.Option(
            metavar="TRACKER",
            help="After the report, log the run to wandb or mlflow (repeatable or comma-"
            "separated; extras pid-bench\\[wandb], pid-bench\\[mlflow]); a rerun logs to the same "
            "tracker run.",
        ),
    ] = None,
) -> None:
    """Run a suite: every cell on every decoder, rows to Parquet, then the report.

    A rerun into the same directory computes only the cells it lacks, also after the suite
    grew or shrank; a directory of a suite with another name is refused (--force mixes).
    Cells whose images could not be written (storage_error) are recomputed by every rerun;
    failed ones only with --retry-failed. A damaged or foreign part is moved to
    parts/quarantine/ with a warning, and its cells are recomputed.
    """
    from pid_bench import api
    from pid_bench.pool import RayAddressError
    from pid_bench.runner import PreflightError, RunStorageError
    from pid_bench.store import RunDirError, StorageError

    suite = load_suite_or_exit(suite_path)
    retry = _retry_statuses(retry_failed)
    trackers = _trackers(log or [], report)
    with warnings_to_stderr():
        try:  # the report is written below, so that the summary line comes first
            result = api.run(suite, output, ray_address=ray_address, cpu_workers=cpu_workers,
                             force=force, report=False, checkpoints=checkpoints,
                             max_retries=max_retries, retry_failed=retry)  # fmt: skip
        except (RunDirError, RayAddressError, PreflightError) as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}")
            raise typer.Exit(ExitCode.BAD_INPUT) from exc
        except RunStorageError as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}")
            raise typer.Exit(ExitCode.STORAGE) from exc
        summary, run_dir = result.summary, result.dir
        typer.echo(_summary_line(summary, run_dir))
        logged = True
        try:
            if report:
                _report(result, print_leaderboard=not summary.interrupted_by)
                logged = _log_to_trackers(result, trackers)
            nulls = _print_null_metrics(run_dir)
        except StorageError as exc:
            safe = f"Every cell is safe in {run_dir}; only the report is missing"
            raise storage_exit(exc, safe, f"pid-bench report {run_dir}") from exc
    if summary.interrupted_by:
        err.print(
            f"[yellow]interrupted by {summary.interrupted_by}:[/yellow] {summary.cells_remaining} "
            "cells remain; rerun the same command to finish them"
        )
        code = ExitCode.SIGINT if summary.interrupted_by == "SIGINT" else ExitCode.SIGTERM
        raise typer.Exit(code)
    if not summary.ok or (strict_metrics and nulls) or not logged:
        raise typer.Exit(ExitCode.FAILED)


def _trackers(values: list[str], report: bool) -> list[str]:
    """The --log trackers, checked before anything runs: known, installed, and with a report."""
    from pid_bench.trackers import TrackerError, checked_trackers

    try:
        return checked_trackers(values, report)
    except TrackerError as exc:
        err.print(f"[red]error:[/red] --log: {escape(str(exc))}")
        raise typer.Exit(ExitCode.BAD_INPUT) from exc


def _log_to_trackers(run, names: list[str]) -> bool:
    """Log the run to each tracker, one line each; whether all of them took it."""
    from pid_bench.trackers import TrackerFailure

    results = run.log(names)
    for result in results:
        if isinstance(result, TrackerFailure):
            err.print(f"[red]error:[/red] {escape(result.line(run.dir))}")
        else:
            typer.echo(result.line())
    return not any(isinstance(r, TrackerFailure) for r in results)


def _summary_line(summary, run_dir: Path) -> str:
    counts = (
        ", ".join(f"{n} {s}" for s, n in sorted(summary.status_counts.items())) or "nothing new"
    )
    done = summary.cells_total - summary.cells_remaining
    head = (
        f"INTERRUPTED ({summary.interrupted_by}) after {done} of {summary.cells_total} cells"
        if summary.interrupted_by
        else f"{summary.cells_total} cells"
    )
    return (
        f"{head} ({summary.cells_skipped} already done); "
        f"{summary.rows_written} rows written: {counts} -> {run_dir}"
    )


def _print_null_metrics(run_dir: Path) -> int:
    """One line per requested metric that is null in any row of the report; their count."""
    from pid_bench.rundb import run_null_metrics

    nulls = run_null_metrics(run_dir)
    for entry in nulls:
        err.print(f"[yellow]{escape(entry.line())}[/yellow]")
    return len(nulls)


@app.command()
def score(
    img: Annotated[
        list[Path], typer.Option("--img", help="Image to score (PNG, JPEG, ...); repeatable.")
    ],
    ref: Annotated[
        Path | None, typer.Option("--ref", help="Reference image for full-reference metrics.")
    ] = None,
    metrics: Annotated[
        str, typer.Option(help="Comma-separated metrics: registry names or pyiqa:<name>.")
    ] = "psnr,ssim",
    scale: Annotated[
        int | None, typer.Option(help="PiD's upscale factor (hf_energy_ratio needs it).")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if present).")
    ] = None,
    as_table: Annotated[bool, typer.Option("--table", help="A table instead of JSON.")] = False,
) -> None:
    """Score image files with the metrics a run records (the runner's code path); prints JSON
    {image: {metric: value}} (null where a metric cannot run; reasons on stderr).

    Exit code: 0 scored; 2 bad input.
    """
    from pid_bench.manifests import ManifestError
    from pid_bench.metrics import expand_metric_names
    from pid_bench.score import score_images

    try:
        names = expand_metric_names(m.strip() for m in metrics.split(",") if m.strip())
    except KeyError as exc:
        err.print(f"[red]error:[/red] --metrics: {escape(str(exc.args[0]))}")
        raise typer.Exit(2) from exc
    if not names:
        err.print("[red]error:[/red] --metrics names no metric")
        raise typer.Exit(2)
    import json

    from pid_bench.metrics import MetricUnavailableWarning

    try:
        with warnings.catch_warnings():  # each reason is printed once below
            warnings.simplefilter("ignore", MetricUnavailableWarning)
            result = score_images(img, names, ref, device=device, scale=scale)
    except ManifestError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    for name, reason in sorted({(n, r) for per in result.reasons.values() for n, r in per.items()}):
        err.print(f"[dim]{escape(name)}: {escape(reason)}[/dim]")
    if not as_table:
        typer.echo(json.dumps(result.values, indent=2, allow_nan=True))
        return
    from rich.table import Table

    table = Table(title=f"reference: {ref if ref is not None else 'none'}", title_justify="left")
    table.add_column("image", overflow="fold")
    for name in names:
        table.add_column(name, justify="right")
    for path, values in result.values.items():
        cells = ["-" if values[n] is None else f"{values[n]:.6g}" for n in names]
        table.add_row(escape(path), *cells)
    Console(soft_wrap=True).print(table)


@app.command("report")
@exits({
    ExitCode.OK: "written",
    ExitCode.BAD_INPUT: "not a run directory, or a damaged run.json",
    ExitCode.STORAGE: "the run directory's storage refused a write (disk full, read-only, ...)",
})  # fmt: skip
def report_cmd(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(help="Run directories written by `pid-bench run`.", metavar="RUN..."),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Folder for the cross-run leaderboard.md and leaderboard.html (default with "
            "several runs: runs/leaderboard in the current directory); never a run directory.",
        ),
    ] = None,
) -> None:
    """Write the report of a run, or one leaderboard across runs.

    One RUN: leaderboard.md, report.html and plots/ in that run directory. Several runs (or
    --out): leaderboard.md and leaderboard.html in --out, one row per setting, decoder and run
    (rows of one setting from several runs side by side) and each run's provenance (device,
    versions, git sha, date). A damaged or foreign part is moved to parts/quarantine/ with a
    warning; the report counts it, and the files pid-bench did not write (left alone).
    """
    from pid_bench.multirun import MultiRunError, write
    from pid_bench.store import RunDirError, StorageError

    for run_dir in run_dirs:
        if not (run_dir / "run.json").is_file():
            err.print(
                f"[red]error:[/red] {escape(str(run_dir))}: no run.json (not a pid-bench run "
                "directory)"
            )
            raise typer.Exit(ExitCode.BAD_INPUT)
    with warnings_to_stderr():
        try:
            if len(run_dirs) == 1 and out is None:
                from pid_bench.api import load_run

                _report(load_run(run_dirs[0]), print_leaderboard=True)
                return
            md, html = write(run_dirs, out)
        except (RunDirError, MultiRunError) as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}")
            raise typer.Exit(ExitCode.BAD_INPUT) from exc
        except StorageError as exc:
            where = ", ".join(str(r) for r in run_dirs)
            safe = f"The parts in {where} are untouched"
            raise storage_exit(
                exc, safe, "pid-bench report " + " ".join(map(str, run_dirs))
            ) from exc
    typer.echo(md.read_text(encoding="utf-8"))
    typer.echo(f"leaderboard: {md} and {html}")


def _report(result, print_leaderboard: bool) -> None:
    paths = result.report()
    if print_leaderboard:
        typer.echo(result.leaderboard())
    typer.echo(f"report: {paths.html}")


@app.command("compare")
@exits({
    ExitCode.OK: "no regression past the gate",
    ExitCode.FAILED: "a regression",
    ExitCode.BAD_INPUT: "bad input (a --fail-on rule, a run directory, a damaged run.json)",
    ExitCode.STORAGE: "compare.md / compare.html could not be written (disk full, read-only, ...)",
})  # fmt: skip
def compare_cmd(
    runs: Annotated[
        list[Path],
        typer.Argument(help="Run directories; each after the first is compared with the first."),
    ],
    fail_on: Annotated[
        str | None,
        typer.Option(
            "--fail-on",
            help="Regression gate, e.g. latency=+5%,psnr=-0.1: exit 1 when a change passes its "
            "threshold with its 95 % interval clear of no change.",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(help="Where compare.md and compare.html go (default: the last run's folder)."),
    ] = None,
) -> None:
    """Compare runs of the same cells: latency and memory ratios, paired metric differences.

    Rows match by (cell, decoder), never by code version or machine; each cell's latest attempt
    counts.
    """
    from rich.table import Table

    from pid_bench.api import Run
    from pid_bench.compare import (
        CompareError,
        counts_line,
        html_page,
        markdown,
        parse_rules,
        table_rows,
    )  # fmt: skip
    from pid_bench.store import RunDirError, StorageError, writing
    from pid_bench.text_table import aligned

    if len(runs) < 2:
        err.print("[red]error:[/red] compare needs at least two run directories (RUN_A RUN_B)")
        raise typer.Exit(ExitCode.BAD_INPUT)
    try:
        with warnings_to_stderr():
            rules = parse_rules(fail_on)
            results = [Run(Path(other)).compare(runs[0], fail_on) for other in runs[1:]]
    except (CompareError, RunDirError) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(ExitCode.BAD_INPUT) from exc
    console = Console()
    headers = ("setting", "measure", "B vs A [95 % CI]", "B better", "n")
    for result in results:
        title = f"B {result.run_b} vs A {result.run_a}"
        if console.is_terminal:
            table = Table(title=title)
            for column in headers:
                table.add_column(column)
            for row in table_rows(result):
                table.add_row(*map(escape, row))
            console.print(table)
        else:  # piped or logged: one line per row, never wrapped at 80 columns
            typer.echo(title + "\n" + aligned(headers, table_rows(result)), nl=False)
        typer.echo(counts_line(result))
        for line in result.regressions:
            err.print(f"[red]REGRESSION[/red] {escape(line)}")
        if result.ungated:
            err.print(
                f"[yellow]not gated[/yellow] (fewer than 3 matched cells): "
                f"{len(result.ungated)} setting(s)"
            )
    folder = output or runs[-1]
    try:
        for name, text in (("compare.md", markdown), ("compare.html", html_page)):
            with writing(folder / name):
                folder.mkdir(parents=True, exist_ok=True)
                (folder / name).write_text(text(results, rules), encoding="utf-8")
    except StorageError as exc:
        raise storage_exit(exc, "The runs are untouched", "pid-bench compare ...") from exc
    typer.echo(f"wrote {folder / 'compare.md'} and compare.html")
    if any(r.regressions for r in results):
        raise typer.Exit(ExitCode.FAILED)


@app.command()
@exits({
    ExitCode.OK: "done",
    ExitCode.BAD_INPUT: "not a run directory, or another driver is writing it",
    ExitCode.STORAGE: "the merged part could not be written (disk full, read-only, ...): the "
    "parts stand as they were",
})  # fmt: skip
def compact(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.", metavar="RUN_DIR")],
) -> None:
    """Merge a run's Parquet parts into one (atomically: a kill at any moment loses no row).

    A run compacts its own parts at its end; this is for directories written otherwise. A part
    that cannot be read is moved to parts/quarantine/ (with a warning), never merged or deleted.
    """
    from pid_bench.store import RunDirError, StorageError, compact, part_files, run_lock

    if not (run_dir / "parts").is_dir():
        err.print(f"[red]error:[/red] {escape(str(run_dir))}: no parts/ folder; pass a RUN_DIR")
        raise typer.Exit(ExitCode.BAD_INPUT)
    try:
        with warnings_to_stderr(), run_lock(run_dir):
            before = len(part_files(run_dir))
            compact(run_dir)
            typer.echo(f"{before} parts -> {len(part_files(run_dir))}")
    except RunDirError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(ExitCode.BAD_INPUT) from exc
    except StorageError as exc:
        safe = "The parts stand as they were"
        raise storage_exit(exc, safe, f"pid-bench compact {run_dir}") from exc


@app.command("export")
@exits({
    ExitCode.OK: "written",
    ExitCode.BAD_INPUT: "not a run directory with rows, a damaged run.json, or --to in the way",
    ExitCode.STORAGE: "the export could not be written (disk full, read-only, ...): nothing "
    "is left half-written",
})  # fmt: skip
def export_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.", metavar="RUN")],
    to: Annotated[Path, typer.Option("--to", help="Folder to write (new, or empty).")],
    images: Annotated[
        bool, typer.Option("--images", help="Copy the PNGs the rows name into DIR/images/.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a --to folder that is not empty.")
    ] = False,
    license_id: Annotated[
        str, typer.Option("--license", help="The card's license (a Hub license id).")
    ] = "other",
) -> None:
    """Write a run's results as a Hugging Face Hub dataset: data/rows.parquet (the latest
    attempt per cell and decoder), data/sets.parquet (fid, kid), a README.md dataset card
    (suite, provenance, column meanings), run.json and leaderboard.md. Publish it with
    `hf upload USER/NAME DIR --repo-type dataset`.
    """
    from pid_bench.export import ExportError, export_run
    from pid_bench.store import RunDirError, StorageError

    try:
        with warnings_to_stderr():
            done = export_run(run_dir, to, images=images, overwrite=overwrite, license=license_id)
    except (ExportError, RunDirError) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(ExitCode.BAD_INPUT) from exc
    except StorageError as exc:
        again = f"pid-bench export {run_dir} --to {to}"
        raise storage_exit(exc, "No export was left behind", again) from exc
    typer.echo(done.line())
    typer.echo(f"publish: hf upload USER/NAME {to} --repo-type dataset")


@app.command()
def doctor(
    suite_path: Annotated[
        Path | None,
        typer.Argument(help="Optional suite: say which of its cells can run.", metavar="[SUITE]"),
    ] = None,
    checkpoints: Annotated[
        Path | None, typer.Option(help="PiD download root (else $PID_BENCH_CHECKPOINTS).")
    ] = None,
) -> None:
    """Show which weights are present (PiD, codecs, caption encoder, LDM pipelines, baselines)
    and the device.

    The tables fit the terminal (80 columns when piped; COLUMNS=200 widens them), long paths
    folded; each command that fetches something missing is cited as fix [n] and printed
    whole on one line at the end, so it pastes whole.

    Exit code: 0 without a suite, or when every cell and baseline of the suite can run; 1 when
    some cannot (the tables say what is missing and the command that fetches it); 2 a suite
    that does not load.
    """
    from pid_bench.doctor import print_doctor

    if suite_path is not None:
        load_suite_or_exit(suite_path)
    raise typer.Exit(print_doctor(suite_path, checkpoints, Console(soft_wrap=True)))


app.command()(cli_tools.decode)
app.command()(cli_fetch.fetch)


if __name__ == "__main__":
    app()
