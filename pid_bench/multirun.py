"""`pid-bench report RUN RUN ...`: one leaderboard over several runs, with each run's provenance.

Each run is read exactly as its own report reads it (`pid_bench.rundb.connect`: the cells and
decoders of its suite as last run, the latest row per (cell, decoder), its set-level values), with
`run_id` set to the run's label; the runs' `rows` and `set_values` are then unioned by name in
one DuckDB, and the same `reports/leaderboard.sql` groups them by setting, decoder and run, so
the rows of one setting and decoder from several machines sit next to each other. Writes
OUT/leaderboard.md and OUT/leaderboard.html (self-contained); the runs are only read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from pid_bench.board import Table, definitions, fmt_key, footnote_numbers, leaderboard_table
from pid_bench.render import (
    DEFINITIONS_MD,
    EMBEDDED_WARNING,
    LEADERBOARD_NOTE,
    RANDOM_WEIGHTS_WARNING,
    jinja,
    md_cell,
    md_leaderboard,
    md_table,
    status_line,
    uses_trained_embedded,
)  # fmt: skip
from pid_bench.rundb import (
    NullMetric,
    connect,
    fill_set_values,
    null_metrics,
    query,
    ran_random_weights,
    requested_metrics,
    run_label,
    suite_name,
)  # fmt: skip
from pid_bench.store import read_run_json

#: Where a cross-run leaderboard goes without --out (relative to the working directory, beside
#: `pid-bench run`'s default runs/<suite name>).
DEFAULT_OUT = Path("runs") / "leaderboard"
OUTPUTS = ("leaderboard.md", "leaderboard.html")


class MultiRunError(ValueError):
    """Runs or an output folder that a cross-run leaderboard cannot use: one line with the fix."""


@dataclass(frozen=True)
class RunInfo:
    """One run of a cross-run leaderboard: what its provenance table and footnotes say."""

    label: str
    run_dir: Path
    meta: dict[str, Any]
    status: list[dict[str, Any]]  # reports/status.sql
    provenance: list[dict[str, Any]]  # reports/provenance.sql
    requested: list[str]
    nulls: list[NullMetric]

    @property
    def suite(self) -> str:
        return suite_name(self.meta)

    @property
    def random_weights(self) -> bool:
        return ran_random_weights(self.meta, self.provenance)

    def status_line(self) -> str:
        return status_line(self.status)

    def provenance_rows(self) -> list[dict[str, str]]:
        """One line per provenance tuple of its rows (a run resumed elsewhere has several); a
        run without rows gets one line from run.json's environment."""
        env = self.meta.get("environment") or {}
        versions = env.get("versions") or {}
        fallback = {
            "device": "–", "device_name": ", ".join(env.get("gpus") or []) or "–",
            "torch_version": versions.get("torch"), "diffusers_version": versions.get("diffusers"),
            "pid_bench_version": env.get("pid_bench_version"), "git_sha": env.get("git_sha"), "n": 0,
        }  # fmt: skip
        lines = []
        for p in self.provenance or [fallback]:
            line = {k: fmt_key(p.get(k)) for k in fallback}
            lines.append({"run": self.label, "suite": self.suite, **line,
                          "started_at": str(self.meta.get("started_at") or "–"),
                          "status": self.status_line()})  # fmt: skip
        return lines


PROVENANCE_COLUMNS = (
    ("run", "run"), ("suite", "suite"), ("device", "device"), ("device_name", "GPU / device name"),
    ("torch_version", "torch"), ("diffusers_version", "diffusers"),
    ("pid_bench_version", "pid-bench"), ("git_sha", "git sha"), ("started_at", "started"),
    ("status", "status"), ("n", "rows"),
)  # fmt: skip


def labels(run_dirs: Sequence[Path]) -> list[str]:
    """Each run's report label (run.json's run_id, else its folder's name); where two runs share
    one, those runs are named by their folder as given."""
    names = [run_label(d, read_run_json(d)) for d in run_dirs]
    out = [str(d) if names.count(n) > 1 else n for d, n in zip(run_dirs, names, strict=True)]
    if len(set(out)) < len(out):
        raise MultiRunError("a run directory is given twice; name each run once")
    return out


def _read_run(con: duckdb.DuckDBPyConnection, index: int, run_dir: Path, label: str) -> RunInfo:
    """Copy one run's report rows into `con` (as rows_<index>, sets_<index>); its RunInfo."""
    meta = read_run_json(run_dir)
    requested = requested_metrics(meta)
    with connect(run_dir, label) as one:
        con.register(f"rows_{index}", one.sql("SELECT * FROM rows").to_arrow_table())
        con.register(f"sets_{index}", one.sql("SELECT * FROM set_values").to_arrow_table())
        return RunInfo(
            label, run_dir, meta, query(one, "status"), query(one, "provenance"),
            requested, null_metrics(one, requested),
        )  # fmt: skip


def connect_runs(run_dirs: Sequence[Path]) -> tuple[duckdb.DuckDBPyConnection, list[RunInfo]]:
    """One DuckDB whose `rows` and `set_values` are every run's, unioned by name (a metric only
    one run has is null in the others' rows), `run_id` being each run's label."""
    for run_dir in run_dirs:
        if not (Path(run_dir) / "run.json").is_file():
            raise MultiRunError(f"{run_dir}: no run.json (not a pid-bench run directory)")
    con = duckdb.connect()
    runs = [
        _read_run(con, i, Path(d), label)
        for i, (d, label) in enumerate(zip(run_dirs, labels(run_dirs), strict=True))
    ]
    for table, prefix in (("rows", "rows"), ("set_values", "sets")):
        union = " UNION ALL BY NAME ".join(f"SELECT * FROM {prefix}_{i}" for i in range(len(runs)))
        con.execute(f"CREATE TEMP TABLE {table} AS {union}")
    return con, runs


def _requested(runs: list[RunInfo]) -> list[str]:
    out: list[str] = []
    for run in runs:
        out += [name for name in run.requested if name not in out]
    return out


def _footnotes(runs: list[RunInfo], numbers: dict[str, int]) -> list[str]:
    """'[n] run: metric: null in k/N rows — reason', per run, numbered by metric."""
    lines = []
    for run in runs:
        lines += [f"[{numbers[e.metric]}] {run.label}: {e.line()}" for e in run.nulls]
    return sorted(lines, key=lambda line: int(line[1 : line.index("]")]))


@dataclass(frozen=True)
class MultiReport:
    runs: list[RunInfo]
    table: Table
    footnotes: list[str]
    backbones: tuple[str, ...] = ()

    @property
    def random_weights(self) -> bool:
        return any(run.random_weights for run in self.runs)

    def warnings(self) -> list[str]:
        """The banners of the runs' own reports: random or trained-here embedded networks."""
        out = [RANDOM_WEIGHTS_WARNING] if self.random_weights else []
        if uses_trained_embedded(self.backbones):
            out.append(EMBEDDED_WARNING)
        return out

    def provenance(self) -> list[list[str]]:
        keys = [k for k, _ in PROVENANCE_COLUMNS]
        return [[line[k] for k in keys] for run in self.runs for line in run.provenance_rows()]


def build(run_dirs: Sequence[Path]) -> MultiReport:
    con, runs = connect_runs(run_dirs)
    with con:
        records = query(con, "leaderboard")
        fill_set_values(con, records)
    numbers = footnote_numbers([e for run in runs for e in run.nulls])
    table = leaderboard_table(records, _requested(runs), numbers, show_run=True)
    backbones = tuple(dict.fromkeys(str(r["backbone"]) for r in records))
    return MultiReport(runs, table, _footnotes(runs, numbers), backbones)


def markdown(multi: MultiReport) -> str:
    lines = [f"# pid-bench leaderboard: {len(multi.runs)} runs", ""]
    for warning in multi.warnings():
        lines += [f"**{warning}**", ""]
    lines += ["## Runs", ""]
    lines += md_table([t for _, t in PROVENANCE_COLUMNS], multi.provenance()) + [""]
    lines += ["## Leaderboard", ""]
    if multi.table.rows:
        lines += md_leaderboard(multi.table)
        lines += [f"{LEADERBOARD_NOTE} {CROSS_RUN_NOTE} {DEFINITIONS_MD}", ""]
    else:
        lines += ["No rows in these runs yet.", ""]
    lines += [f"- {md_cell(note)}" for note in multi.footnotes]
    return "\n".join(lines) + "\n"


CROSS_RUN_NOTE = (
    "Rows of one setting and decoder from several runs sit together, one per run; a setting's "
    "best value is marked across its decoders and runs."
)


def html_page(multi: MultiReport) -> str:
    return (
        jinja()
        .get_template("leaderboard.html.j2")
        .render(
            multi=multi,
            provenance_headers=[t for _, t in PROVENANCE_COLUMNS],
            warning=" ".join(multi.warnings()) or None,
            note=f"{LEADERBOARD_NOTE} {CROSS_RUN_NOTE}",
            definitions=definitions(multi.table),
        )
    )


def write(run_dirs: Sequence[Path], out: Path | None = None) -> list[Path]:
    """Write OUT/leaderboard.md and OUT/leaderboard.html (OUT default DEFAULT_OUT)."""
    out = Path(out) if out is not None else DEFAULT_OUT
    if (out / "run.json").is_file():
        raise MultiRunError(
            f"{out} is a run directory: its own leaderboard.md would be overwritten; pass another "
            "--out"
        )
    multi = build([Path(d) for d in run_dirs])
    out.mkdir(parents=True, exist_ok=True)
    md, html = (out / name for name in OUTPUTS)
    md.write_text(markdown(multi), encoding="utf-8")
    html.write_text(html_page(multi), encoding="utf-8")
    return [md, html]
