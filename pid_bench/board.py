"""The leaderboard as a table model: columns in header groups, rows of cells, best values marked.

Both renderers (markdown and HTML, pid_bench.render) and both leaderboards (one run's report,
the cross-run one of pid_bench.multirun) draw the same `Table`, built by `leaderboard_table`
from the rows of reports/leaderboard.sql. Also here: which way each measure is better
(`direction`), how values print (`fmt_value`, `fmt_key`), footnote numbers and the definitions
each measured column links to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pid_bench.axes import SETTING_KEYS
from pid_bench.metrics import METRICS, get_metric
from pid_bench.rundb import NullMetric

#: Which way is better, per measure: the metric registry's declarations plus timing and memory.
#: A metric missing here is resolved by the registry (`direction`), else shown unmarked.
HIGHER_IS_BETTER: dict[str, bool] = {
    **{name: metric.higher_is_better for name, metric in METRICS.items()},
    "latency_ms_p50": False,
    "peak_mem_allocated_bytes": False,
}


def direction(name: str) -> bool | None:
    """Whether higher is better for a measure or metric (pyiqa:<name> and custom metrics
    included: the registry resolves them); None when it has no better direction."""
    name = name.removeprefix("metric_")
    if name in HIGHER_IS_BETTER:
        return HIGHER_IS_BETTER[name]
    try:
        return get_metric(name).higher_is_better
    except KeyError:
        return None


def direction_mark(name: str) -> str:
    """' ↑' / ' ↓' after a measure whose direction is known, '' otherwise."""
    better = direction(name)
    return "" if better is None else (" ↑" if better else " ↓")


def _display_keys(keys: tuple[str, ...]) -> tuple[str, ...]:
    # the output size reads as one column, "HxW"
    out: list[str] = []
    for key in keys:
        shown = "out" if key in ("out_height", "out_width") else key
        if shown not in out:
            out.append(shown)
    return tuple(out)


#: The setting columns of the leaderboard: pid_bench.axes.SETTING_KEYS with the output size as
#: one column `out` ("HxW"); a row's `best` is judged among the rows of its setting.
DISPLAY_KEYS = _display_keys(SETTING_KEYS)
MiB = 2**20


def fmt_value(value: Any, digits: int = 4) -> str:
    """A measure: fixed `digits` decimals; '–' for null."""
    if value is None:
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def fmt_key(value: Any) -> str:
    """An axis value: shortest form (sigma 0.1, not 0.1000); '–' for null."""
    if value is None:
        return "–"
    return f"{value:g}" if isinstance(value, float) else str(value)


def fmt_mib(value: int | None) -> str:
    """Bytes as MiB with one decimal; '–' for null."""
    return fmt_value(None if value is None else value / MiB, 1)


def safe_name(name: str) -> str:
    """`name` with every character but letters, digits, '-' and '_' as '_' (file names, ids)."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


#: The leaderboard's header groups, in their order on the page.
GROUPS = ("setting", "latency", "memory", "quality")
#: After a latency whose setting has rows with noisy repeats (timing_noisy).
NOISY_MARK = " †"
LATENCY_DEFINITION = (
    "Median over the setting's ok rows of each row's latency_ms_p50: the median of the "
    "timed repeats of one decode after warm-up (CUDA events on CUDA, perf_counter on CPU; "
    "docs/protocol.md, Time). † marks a setting with rows whose repeats spread by more "
    "than 10 % (listed under Flags)."
)
MEMORY_DEFINITION = (
    "Max over the setting's ok rows of peak_mem_allocated_bytes: the CUDA allocator's peak "
    "over the decoder's calls with only its own modules on the device (docs/protocol.md, "
    "Memory); null on CPU."
)


@dataclass(frozen=True)
class Cell:
    """One cell of the table: its text, and whether it holds its setting's best value."""

    text: str
    best: bool = False


@dataclass(frozen=True)
class Measure:
    """A measured column of the leaderboard: where it comes from and how it is shown."""

    column: str  # the leaderboard query's column
    title: str
    group: str  # one of GROUPS
    fmt: Callable[[Any], str]
    noisy_if: str | None = None  # a count column: when > 0, NOISY_MARK follows the value

    @property
    def name(self) -> str:
        return self.column.removeprefix("metric_")

    def text(self, row: dict[str, Any]) -> str:
        text = self.fmt(row[self.column])
        return text + NOISY_MARK if self.noisy_if and row.get(self.noisy_if) else text


@dataclass(frozen=True)
class Column:
    """A column header: its title, header group and, for a measure, its definition's anchor."""

    title: str
    group: str  # one of GROUPS
    measure: str | None = None  # a measure's name (latency_ms_p50, psnr, ...): it has a definition

    @property
    def anchor(self) -> str | None:
        """The id of its definition on the HTML page."""
        return None if self.measure is None else "def-" + safe_name(self.measure)


@dataclass(frozen=True)
class Table:
    """The leaderboard as both renderers see it: columns in header groups, rows of cells."""

    columns: list[Column]
    rows: list[list[Cell]]

    @property
    def headers(self) -> list[str]:
        return [c.title for c in self.columns]

    def groups(self) -> list[tuple[str, int]]:
        """(group, span) of each run of consecutive columns: the first header row."""
        spans: list[tuple[str, int]] = []
        for column in self.columns:
            if spans and spans[-1][0] == column.group:
                spans[-1] = (column.group, spans[-1][1] + 1)
            else:
                spans.append((column.group, 1))
        return spans


def _fmt_latency(value: Any) -> str:
    return fmt_value(value, 2)


def measures(board: list[dict[str, Any]], requested: list[str]) -> list[Measure]:
    """Each measured column of the leaderboard: latency, memory, then every requested metric
    and every other metric column with a value."""
    out = [
        Measure("latency_ms_p50", "latency p50 ms", "latency", _fmt_latency, "n_noisy"),
        Measure("peak_mem_allocated_bytes", "peak mem MiB", "memory", fmt_mib),
    ]
    wanted = [f"metric_{m}" for m in requested]
    found = [c for c in (board[0] if board else {}) if c.startswith("metric_")]
    for column in wanted + [c for c in found if c not in wanted]:
        if column in wanted or any(r.get(column) is not None for r in board):
            out.append(Measure(column, column.removeprefix("metric_"), "quality", fmt_value))
    return out


def footnote_numbers(nulls: list[NullMetric]) -> dict[str, int]:
    """metric name -> its footnote number, for metrics null anywhere in the report."""
    numbers: dict[str, int] = {}
    for entry in nulls:
        numbers.setdefault(entry.metric, len(numbers) + 1)
    return numbers


def best(rows: list[dict[str, Any]], column: str) -> set[int]:
    """Indexes of the rows holding the best value of `column` within their setting (across
    decoders, and across runs in a cross-run leaderboard)."""
    higher = direction(column)
    if higher is None:
        return set()
    groups: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        if row[column] is not None:
            groups.setdefault(tuple(row[k] for k in DISPLAY_KEYS), []).append(i)
    found: set[int] = set()
    for members in groups.values():
        if len(members) > 1:
            pick = max if higher else min
            top = pick(rows[i][column] for i in members)
            found.update(i for i in members if rows[i][column] == top)
    return found


def leaderboard_table(
    board: list[dict[str, Any]],
    requested: list[str],
    numbers: dict[str, int],
    show_run: bool = False,
) -> Table:
    """The leaderboard's columns and cells; `numbers` gives each null metric's footnote, and
    `show_run` adds the run each row came from (cross-run leaderboards)."""
    rows = [{**r, "out": f"{r['out_height']}x{r['out_width']}"} for r in board]
    keys = [k for k in DISPLAY_KEYS if any(r[k] is not None for r in rows)] + ["decoder"]
    keys += ["run_id"] if show_run else []
    shown = measures(board, requested)

    def title(m: Measure) -> str:
        number = numbers.get(m.name)
        return m.title + direction_mark(m.column) + (f" [{number}]" if number else "")

    columns = [Column("run" if k == "run_id" else k, "setting") for k in keys]
    columns.append(Column("ok / rows", "setting"))
    columns += [Column(title(m), m.group, m.name) for m in shown]
    marked = {m.column: best(rows, m.column) for m in shown}
    table = []
    for i, row in enumerate(rows):
        cells = [Cell(fmt_key(row[k])) for k in keys] + [Cell(f"{row['n_ok']} / {row['n_rows']}")]
        cells += [Cell(m.text(row), i in marked[m.column]) for m in shown]
        table.append(cells)
    return Table(columns, table)


def definitions(table: Table) -> list[dict[str, str]]:
    """What each measured column of the table means (the registry's docs for metrics), for the
    page's Definitions section that the headers link to."""
    return [
        {"anchor": c.anchor, "title": c.title, "text": definition(c.measure)}
        for c in table.columns
        if c.measure is not None
    ]


def definition(name: str) -> str:
    """The definition of one measure: latency, memory, or a metric from the registry."""
    if name == "latency_ms_p50":
        return LATENCY_DEFINITION
    if name == "peak_mem_allocated_bytes":
        return MEMORY_DEFINITION
    if name in METRICS:
        return f"{METRICS[name].doc} Mean over the setting's ok rows. ({METRICS[name].kind})"
    if name.startswith("pyiqa:"):
        return f"pyiqa's {name.removeprefix('pyiqa:')!r} metric, as pyiqa defines it; mean over ok rows."
    return (
        "Not in this pid-bench's metric registry (a custom metric, or a column written by "
        "another version); mean over the setting's ok rows."
    )
