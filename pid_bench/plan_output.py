"""What `pid-bench plan` prints: the axes, the counts and the first cells, or every cell as CSV /
JSONL. Plain text, so a 100,000-cell plan prints in seconds (a rich table of every row took 55 s
and 1.1 GB)."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from typing import TextIO

from pid_bench.axes import PLAN_COLUMNS
from pid_bench.text_table import aligned

#: The plan's columns after `cell_id`, in the order of the suite's product.
COLUMNS = tuple(label for label, _ in PLAN_COLUMNS)
#: Cells shown by default; `--all` shows every one.
HEAD_ROWS = 40
#: Values of one axis listed in the axes summary before "…".
AXIS_VALUES_SHOWN = 8
FORMATS = ("table", "csv", "jsonl")


def plan_values(cell) -> dict[str, str]:
    """One planned cell as the plan's column strings."""
    return {label: axis.plan_value(cell) for label, axis in PLAN_COLUMNS}


def write_rows(out: TextIO, rows: Sequence[tuple[str, dict[str, str]]], fmt: str) -> None:
    """Every cell, one line each: CSV with a header, or one JSON object a line."""
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(("cell_id", *COLUMNS))
        writer.writerows((cid, *values.values()) for cid, values in rows)
    else:
        out.writelines(json.dumps({"cell_id": cid, **values}) + "\n" for cid, values in rows)


def write_table(
    out: TextIO,
    title: str,
    rows: Sequence[tuple[str, dict[str, str]]],
    show_all: bool,
) -> None:
    """The axes (values and counts), the first `HEAD_ROWS` cells (all with `show_all`) as an
    aligned table of the axes that vary, and what was left out."""
    distinct = {c: list(dict.fromkeys(values[c] for _, values in rows)) for c in COLUMNS}
    varying = [c for c in COLUMNS if len(distinct[c]) > 1]
    fixed = [f"{c} {distinct[c][0]}" for c in COLUMNS if c not in varying and any(distinct[c])]
    out.write(title + "\n")
    if fixed:
        out.write("every cell: " + " · ".join(fixed) + "\n")
    for column in varying:
        out.write(f"  {column}: {len(distinct[column])} values ({_listing(distinct[column])})\n")
    shown = rows if show_all else rows[:HEAD_ROWS]
    out.write(aligned(("cell_id", *varying), [(cid, *(v[c] for c in varying)) for cid, v in shown]))
    if len(shown) < len(rows):
        out.write(
            f"… {len(rows) - len(shown)} more: `--all` to list them, "
            "`--format csv|jsonl` to export\n"
        )


def _listing(values: list[str]) -> str:
    if len(values) <= AXIS_VALUES_SHOWN:
        return ", ".join(values)
    return ", ".join(values[: AXIS_VALUES_SHOWN - 1]) + f", …, {values[-1]}"
