"""The Python API: `run` a suite, `load_run` a run directory. The `pid-bench` commands are a thin
layer over these (they add exit codes and printing).

    import pid_bench

    run = pid_bench.run("suites/smoke.yaml", output="runs/smoke")
    run.rows.groupby("decoder")["metric_psnr"].mean()
    baseline = pid_bench.load_run("runs/smoke_main")
    run.compare(baseline, fail_on="latency=+5%").regressions

Errors are exceptions: `SuiteError` (a bad suite, every problem listed), `RunDirError` (not a
run directory, or one of another suite), `RayAddressError` / `PreflightError` (refused before
anything ran), `RunStorageError` (a refused write during the run: every cell written is safe),
`StorageError` (a refused write of the report), `CompareError` (a bad `fail_on` rule).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from pid_bench.compare import Comparison
    from pid_bench.export import ExportSummary
    from pid_bench.report import ReportPaths
    from pid_bench.runner import RunSummary
    from pid_bench.suite import Suite
    from pid_bench.trackers import TrackerFailure, TrackerRecord

    #: What `run` accepts as a suite.
    SuiteLike = str | os.PathLike | Mapping[str, Any] | Suite

__all__ = ["Run", "as_suite", "load_run", "retry_statuses", "run"]


def as_suite(suite: SuiteLike, base_dir: str | os.PathLike = ".") -> Suite:
    """A `Suite` from a suite file's path, a mapping of its keys (relative paths against
    `base_dir`) or a `Suite` (returned as is)."""
    from pid_bench.suite import Suite, load_suite, suite_from_dict

    if isinstance(suite, Suite):
        return suite
    if isinstance(suite, Mapping):
        return suite_from_dict(suite, base_dir)
    return load_suite(suite)


def retry_statuses(retry_failed: bool | str | Iterable[str]) -> frozenset[str]:
    """The failed statuses to recompute: True every one, False none, else those named
    (a comma-separated string or an iterable); an unknown name is a ValueError naming them."""
    from pid_bench.runner import FAILED_STATUSES

    if isinstance(retry_failed, bool):
        return frozenset(FAILED_STATUSES) if retry_failed else frozenset()
    names = retry_failed.split(",") if isinstance(retry_failed, str) else list(retry_failed)
    names = [name.strip() for name in names if name.strip()]
    unknown = [name for name in names if name not in FAILED_STATUSES]
    if unknown or not names:
        what = f"{', '.join(unknown)} is not a failed status" if unknown else "names no status"
        raise ValueError(
            f"retry_failed: {what}; name some of {', '.join(FAILED_STATUSES)}, or pass True for "
            "all of them"
        )
    return frozenset(names)


@dataclass
class Run:
    """A run directory: its rows, set-level values, report and comparisons. `summary` is the
    run's `RunSummary` when this process ran it (None for `load_run`)."""

    dir: Path
    summary: RunSummary | None = None
    tracker_errors: list[str] = field(default_factory=list)

    @property
    def meta(self) -> dict[str, Any]:
        """run.json: the suite as run, provenance (git sha, versions, device), attempts."""
        from pid_bench.store import read_run_json

        return read_run_json(self.dir)

    @property
    def name(self) -> str:
        from pid_bench.rundb import suite_name

        return suite_name(self.meta)

    @cached_property
    def rows(self) -> pd.DataFrame:
        """One row per (cell, decoder): its latest attempt, with a ``metric_<name>`` column per
        requested metric (the rows every report counts)."""
        from pid_bench.rundb import connect

        with connect(self.dir) as con:
            return con.execute("SELECT * FROM rows ORDER BY cell_id, decoder").df()

    @cached_property
    def sets(self) -> pd.DataFrame:
        """Set-level values (FID, KID): one row per (set of images, metric), the newest."""
        import pandas as pd

        from pid_bench.rundb import SET_SCHEMA, read_sets

        rows = read_sets(self.dir)
        return pd.DataFrame(rows, columns=SET_SCHEMA.names)

    def report(self, out: str | os.PathLike | None = None) -> ReportPaths | list[Path]:
        """Write the run's report (leaderboard.md, report.html, plots/, recommendations.json)
        into its directory; with `out`, the cross-run leaderboard of this run into `out`."""
        if out is not None:
            from pid_bench.multirun import write

            return write([self.dir], Path(out))
        from pid_bench.report import write_report

        return write_report(self.dir)

    def leaderboard(self) -> str:
        """The leaderboard as markdown (what `pid-bench report` prints)."""
        from pid_bench.report import leaderboard_text

        return leaderboard_text(self.dir)

    def compare(self, other: Run | str | os.PathLike, fail_on: str | None = None) -> Comparison:
        """This run (B) against `other` (A), matched by (cell, decoder): latency and memory
        ratios, paired metric differences; `fail_on` (e.g. "latency=+5%,psnr=-0.1") fills
        `.regressions`."""
        from pid_bench.compare import compare, parse_rules

        base = other.dir if isinstance(other, Run) else Path(other)
        return compare(base, self.dir, parse_rules(fail_on))

    def export(
        self, to: str | os.PathLike, *, images: bool = False, overwrite: bool = False
    ) -> ExportSummary:
        """The run as a Hugging Face dataset folder (rows, set values, a dataset card), as
        `pid-bench export`; `hf upload USER/NAME TO --repo-type dataset` publishes it."""
        from pid_bench.export import export_run

        return export_run(self.dir, Path(to), images=images, overwrite=overwrite)

    def log(self, trackers: Sequence[str]) -> list[TrackerRecord | TrackerFailure]:
        """Log the run (its report written) to experiment trackers ("wandb", "mlflow"), to the
        same tracker run as an earlier log of this directory. One result per tracker: a
        `TrackerRecord`, or a `TrackerFailure` (never an exception: the run stands), whose
        lines also go to `tracker_errors`."""
        from pid_bench.trackers import TrackerFailure, log_runs

        results = log_runs(self.dir, trackers)
        self.tracker_errors += [r.line(self.dir) for r in results if isinstance(r, TrackerFailure)]
        return results


def load_run(run_dir: str | os.PathLike) -> Run:
    """The run in `run_dir`; a folder without run.json is a RunDirError."""
    from pid_bench.store import RunDirError

    path = Path(run_dir)
    if not (path / "run.json").is_file():
        raise RunDirError(f"{path}: no run.json (not a pid-bench run directory)")
    return Run(path)


def run(
    suite: SuiteLike,
    output: str | os.PathLike | None = None,
    *,
    ray_address: str | None = None,
    cpu_workers: int = 1,
    force: bool = False,
    report: bool = True,
    checkpoints: str | os.PathLike | None = None,
    max_retries: int | None = None,
    retry_failed: bool | str | Iterable[str] = False,
    log: Sequence[str] = (),
    progress: bool = True,
) -> Run:
    """Run a suite as `pid-bench run` does and return the run.

    `suite`: a path, a mapping of suite keys or a `Suite`. `output`: the run directory (default
    runs/<suite name>); a rerun into it computes only the cells it lacks. `ray_address`: an
    existing Ray cluster (else $RAY_ADDRESS, else a local Ray on loopback). `retry_failed`:
    recompute failed cells (True: every failed status; or names). `report`: write the report at
    the end. `log`: experiment trackers to log to ("wandb", "mlflow"; failures land in
    `Run.tracker_errors`; an unknown or uninstalled one is a `TrackerError` before anything
    runs). An interrupted run (SIGINT/SIGTERM) returns with
    `summary.interrupted_by` set.
    """
    from pid_bench.pool import DEFAULT_MAX_RETRIES
    from pid_bench.runner import run_suite
    from pid_bench.trackers import checked_trackers

    trackers = checked_trackers(log, report)  # refused before any cell runs, not after
    loaded = as_suite(suite)
    run_dir = Path(output) if output is not None else Path("runs") / loaded.name
    summary = run_suite(
        loaded, run_dir, ray_address, cpu_workers, force, progress=progress,
        checkpoints=str(checkpoints) if checkpoints is not None else None,
        max_retries=DEFAULT_MAX_RETRIES if max_retries is None else max_retries,
        retry_failed=retry_statuses(retry_failed),
    )  # fmt: skip
    result = Run(run_dir, summary)
    if report:
        result.report()
    if trackers:
        result.log(trackers)
    return result
