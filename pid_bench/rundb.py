"""The DuckDB view of a run directory, which every report, comparison and set-level step reads.

`connect` loads the parts of a run into an in-memory DuckDB: `all_rows` (every row on disk),
`rows` (the report's scope: the latest attempt per (cell, decoder) of the suite as last run),
the view `all_attempts`, `metric_values`, and `set_values` (the set-level rows of
``RUN_DIR/sets/``, whose schema and reader live here too). `query` runs the rollups in
`reports/*.sql`, filling in their placeholders (`{{setting_keys}}`, `{{setting_order}}`: the
setting columns of pid_bench.axes, never input) and binding values as parameters;
`null_metrics` says which requested metrics are null and why.

Values (labels, metric names, JSON paths, decoders, cell ids) reach SQL as parameters or
registered tables, never as text; column names are spliced only through `ident`. Only duckdb,
pyarrow and pandas: no plotting or templating, so the end of a run and `pid_bench.sets` can
import it cheaply.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from pid_bench.axes import SETTING_KEYS
from pid_bench.metrics import expand_metric_names, is_set_level
from pid_bench.schema import ROW_SCHEMA
from pid_bench.store import listed_parts, read_plan, read_run_json, set_aside

#: Folder of a run directory holding the set-level rows (pid_bench.sets writes them).
SETS_DIR = "sets"

#: One set-level value (fid, kid) of a (setting, decoder) group, as stored in sets/set-*.parquet;
#: the setting columns are pid_bench.axes.SETTING_KEYS, typed as in the row schema.
SET_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        *((key, ROW_SCHEMA.field(key).type) for key in SETTING_KEYS),
        ("decoder", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("reason", pa.string()),
        ("n_images", pa.int64()),
        ("n_reference", pa.int64()),
        ("reference_set", pa.string()),
        ("feature_extractor", pa.string()),
        ("patch", pa.string()),
        ("extra", pa.string()),
        ("members_digest", pa.string()),
        ("computed_at", pa.timestamp("us", tz="UTC")),
    ]
)
#: What each SET_SCHEMA column means (the setting columns: their row-schema `doc`); kept apart
#: from the schema, whose small set-*.parquet files would otherwise carry every text.
SET_COLUMN_DOCS: dict[str, str] = {
    "run_id": "run directory name (the report's label of the run)",
    **{key: ROW_SCHEMA.field(key).metadata[b"doc"].decode() for key in SETTING_KEYS},
    "decoder": "the decoder of the group's rows",
    "metric": "set-level metric (fid | kid)",
    "value": "the metric over the group's images (null: see reason)",
    "reason": "why value is null (weights missing, images not saved, too few images)",
    "n_images": "decodes in the group",
    "n_reference": "reference images the decodes were compared with",
    "reference_set": "what the decodes were compared with (from_clean: the references; "
    "from_ldm: the native decodes)",
    "feature_extractor": "the network whose features the metric compares",
    "patch": "JSON of the patch protocol for images >= 2048 px (null: whole images)",
    "extra": "JSON of further details (members from stored features / from PNGs; kid: its "
    "standard deviation over subsets, subsets, subset size, seed)",
    "members_digest": "hash of the group's members (cell ids, image files) and the extractor",
    "computed_at": "when the value was computed",
}

#: Which row of a (cell, decoder) counts: the highest attempt; among equal attempts (rows of
#: versions before `attempt`, a suite rerun with --force) the newest.
LATEST_FIRST = "attempt DESC, finished_at DESC NULLS LAST"


# ---- SQL files ---------------------------------------------------------------------------------


def reports_dir() -> Path:
    """The folder of SQL rollups and templates: $PID_BENCH_REPORTS_DIR or the checkout's reports/."""
    folder = Path(
        os.environ.get("PID_BENCH_REPORTS_DIR") or Path(__file__).resolve().parents[1] / "reports"
    )
    if not (folder / "leaderboard.sql").is_file():
        raise FileNotFoundError(
            f"pid-bench's report queries are not in {folder}: they live in reports/ of the source "
            "checkout; install it editable (pip install -e .) or set PID_BENCH_REPORTS_DIR"
        )
    return folder


def sql_names() -> list[str]:
    """Names (file stems) of every rollup in reports/."""
    return sorted(p.stem for p in reports_dir().glob("*.sql"))


#: Parameters each query binds (none binds any today): values go in as parameters, never as
#: SQL text; the only text filled in is the placeholders' (`sql_placeholders`).
QUERY_PARAMS: dict[str, dict[str, Any]] = {}

#: How a setting column sorts where it differs from itself: the output size by area, then
#: height (the width follows from both), and x0 (no x_t step) before the steps.
_SORT_AS: dict[str, str | None] = {
    "out_height": '"out_height" * "out_width", "out_height"',
    "out_width": None,
    "save_xt_step": '"save_xt_step" NULLS FIRST',
}


def sql_placeholders() -> dict[str, str]:
    """What the placeholders of reports/*.sql stand for. They are filled from code, never from
    input: `{{setting_keys}}` is pid_bench.axes.SETTING_KEYS as quoted identifiers, comma
    separated; `{{setting_order}}` the settings' sort order (those columns, the output size by
    area then height, x0 first), for an ORDER BY."""
    order = [_SORT_AS.get(k, ident(k)) for k in SETTING_KEYS]
    return {
        "setting_keys": ", ".join(ident(k) for k in SETTING_KEYS),
        "setting_order": ", ".join(o for o in order if o),
    }


_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def sql_text(name: str) -> str:
    """reports/<name>.sql with its placeholders (`sql_placeholders`) filled in; an unknown one
    is a KeyError naming the file."""
    text = (reports_dir() / f"{name}.sql").read_text()
    values = sql_placeholders()

    def fill(match: re.Match) -> str:
        if match.group(1) not in values:
            raise KeyError(f"reports/{name}.sql: unknown placeholder {match.group(0)}")
        return values[match.group(1)]

    return _PLACEHOLDER.sub(fill, text)


def query(con: duckdb.DuckDBPyConnection, name: str) -> list[dict[str, Any]]:
    """Run reports/<name>.sql (placeholders filled: `sql_text`) with its QUERY_PARAMS; rows as
    dicts (None for SQL NULL)."""
    cursor = con.execute(sql_text(name), QUERY_PARAMS.get(name) or None)
    columns = [d[0] for d in cursor.description]
    return [dict(zip(columns, values, strict=True)) for values in cursor.fetchall()]


def ident(name: str) -> str:
    """`name` as a quoted SQL identifier: the one way a column name enters SQL text."""
    return '"' + name.replace('"', '""') + '"'


def _json_path(name: str) -> str:
    """The JSON path of key `name` (quoted: metric names hold ':' and '-'), a query parameter."""
    return "$." + json.dumps(name)


# ---- the run's tables --------------------------------------------------------------------------


def run_label(run_dir: Path, meta: dict[str, Any]) -> str:
    """The report's name of a run: run.json's run_id, else the folder's name."""
    return str(meta.get("run_id") or Path(run_dir).name)


def suite_name(meta: dict[str, Any]) -> str:
    """run.json's suite name."""
    suite = meta.get("suite")
    name = suite.get("name") if isinstance(suite, dict) else suite
    return str(name or "unnamed suite")


def ran_random_weights(meta: dict[str, Any], provenance: list[dict[str, Any]]) -> bool:
    """Whether run.json or any row (reports/provenance.sql) says random networks ran."""
    return bool(meta.get("random_weights")) or any(p["random_weights"] for p in provenance)


def requested_metrics(meta: dict[str, Any]) -> list[str]:
    """The metrics the suite as last run asked for, aliases expanded, in its order."""
    names = list((meta.get("suite") or {}).get("metrics") or [])
    out: list[str] = []
    for name in names:
        try:
            expanded = expand_metric_names([name])
        except KeyError:  # a name this version of pid-bench no longer knows: still shown
            expanded = [name]
        out += [n for n in expanded if n not in out]
    return out


def connect(run_dir: Path, label: str | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB over the run's parts.

    Tables: `all_rows` (every row on disk; `attempt` 1 where a part predates the column),
    `rows` (the report's scope: the latest attempt per (cell, decoder) among the cells and
    decoders of the suite as last run, with a `metric_<name>` column for every metric the suite
    asked for, null where no row has one, and `run_id` = `label`, default `run_label`: one name
    per run, whatever its rows say), `metric_values` (cell_id, decoder, status, ordinal, metric,
    value, note): one row per requested metric and row, `note` being the row's reason for a
    null; the view `all_attempts` (every row of those cells and decoders, older attempts
    included, `superseded` true for all but the latest: for audit). Every rollup in reports/
    reads `rows`, so each counts one row, the latest, per (cell, decoder).
    """
    con = duckdb.connect()
    run_dir = Path(run_dir)
    con.register("empty_rows", ROW_SCHEMA.empty_table())
    _load_all_rows(con, run_dir)
    meta = read_run_json(run_dir)
    requested = requested_metrics(meta)
    columns = {r[0] for r in con.execute("DESCRIBE all_rows").fetchall()}
    added = [_metric_column(name, columns) for name in requested]
    label = label or run_label(run_dir, meta)
    select = ", ".join(["* REPLACE (? AS run_id)", *(expr for expr, _ in filter(None, added))])
    params = [label, *(p for _, params in filter(None, added) for p in params)]
    # a view takes no parameters: the scope's values come in as registered tables
    con.execute(
        "CREATE TEMP VIEW all_attempts AS SELECT *, row_number() OVER (PARTITION BY cell_id, "
        f"decoder ORDER BY {LATEST_FIRST}) > 1 AS superseded FROM all_rows "
        f"WHERE {_scope(con, run_dir, meta)}"
    )
    con.execute(
        f"CREATE TEMP TABLE rows AS SELECT {select} FROM all_attempts WHERE NOT superseded",
        params,
    )
    con.execute("ALTER TABLE rows DROP COLUMN superseded")
    set_level = [n for n in requested if is_set_level(n)]
    _metric_values(con, [n for n in requested if n not in set_level])
    _load_sets(con, run_dir, label)
    return con


def _load_all_rows(
    con: duckdb.DuckDBPyConnection, run_dir: Path, skip: frozenset[Path] = frozenset()
) -> None:
    """Table `all_rows` from parts/part-*.parquet. A part that is damaged or another tool's
    (it reads as rows without a cell or decoder) is quarantined (or, where it cannot be moved,
    skipped) and the rest loaded."""
    parts = [str(p) for p in listed_parts(run_dir) if p not in skip]
    source = "SELECT * FROM empty_rows"
    if parts:  # parts written before a column existed get it as null
        source = (
            "SELECT * FROM read_parquet(?, union_by_name = true, filename = true) "
            "UNION ALL BY NAME SELECT * FROM empty_rows"
        )
    try:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE all_rows AS SELECT * REPLACE (coalesce(attempt, 1) AS "
            f"attempt) FROM ({source})",
            [parts] if parts else None,
        )
        keyless = con.execute(
            "SELECT DISTINCT filename FROM all_rows WHERE cell_id IS NULL OR decoder IS NULL"
        ).fetchall() if parts else []  # fmt: skip
        bad = set_aside(Path(f) for (f,) in keyless if f is not None)
    except duckdb.Error:
        bad = set_aside(Path(p) for p in parts)
        if not bad:
            raise
    if bad:
        return _load_all_rows(con, run_dir, skip | bad)
    con.execute("ALTER TABLE all_rows DROP COLUMN IF EXISTS filename")


def _metric_column(name: str, columns: set[str]) -> tuple[str, list[Any]] | None:
    """The SELECT expression (and its parameters) giving a requested metric a column when the
    parts have none: pass-through metrics from extra_metrics, the others (set-level, unknown)
    null."""
    column = f"metric_{name}"
    if column in columns:
        return None
    if "extra_metrics" in columns:
        value = "TRY_CAST(json_extract_string(extra_metrics, ?) AS DOUBLE)"
        return f"CAST({value} AS DOUBLE) AS {ident(column)}", [_json_path(name)]
    return f"CAST(NULL AS DOUBLE) AS {ident(column)}", []


def _scope(con: duckdb.DuckDBPyConnection, run_dir: Path, meta: dict[str, Any]) -> str:
    """The WHERE clause of the report's rows: cells and decoders of the suite as last run."""
    clauses = ["true"]
    plan = read_plan(run_dir)
    if plan is not None:
        con.register("planned_cells", pa.table({"cell_id": pa.array(plan, pa.string())}))
        clauses.append("cell_id IN (SELECT cell_id FROM planned_cells)")
    decoders = (meta.get("suite") or {}).get("decoders")
    if decoders:
        con.register("suite_decoders", pa.table({"decoder": pa.array(decoders, pa.string())}))
        clauses.append("decoder IN (SELECT decoder FROM suite_decoders)")
    return " AND ".join(clauses)


def _metric_values(con: duckdb.DuckDBPyConnection, requested: list[str]) -> None:
    """Table `metric_values`: one row per requested (row-level) metric and row of `rows`."""
    if not requested:
        con.execute(
            "CREATE TEMP TABLE metric_values AS SELECT NULL::VARCHAR AS cell_id, NULL::VARCHAR "
            "AS decoder, NULL::VARCHAR AS status, NULL::INTEGER AS ordinal, NULL::VARCHAR AS "
            "metric, NULL::DOUBLE AS value, NULL::VARCHAR AS note WHERE false"
        )
        return
    select = (
        "SELECT cell_id, decoder, status, CAST(? AS INTEGER) AS ordinal, CAST(? AS VARCHAR) AS "
        "metric, {value} AS value, json_extract_string(metric_notes, ?) AS note FROM rows"
    )
    selects = [select.format(value=ident("metric_" + name)) for name in requested]
    params = [p for i, name in enumerate(requested) for p in (i, name, _json_path(name))]
    con.execute("CREATE TEMP TABLE metric_values AS " + " UNION ALL ".join(selects), params)


def metric_columns(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The metric_* columns of `rows` (metric_notes included: it is text)."""
    return [r[0] for r in con.execute("DESCRIBE rows").fetchall() if r[0].startswith("metric_")]


def ok_rows(con: duckdb.DuckDBPyConnection) -> tuple[Any, list[str]]:
    """The ok rows as a pandas DataFrame (axes, latency, metric columns), and its metric columns."""
    metrics = [c for c in metric_columns(con) if c != "metric_notes"]
    columns = [*SETTING_KEYS, "decoder", "image_id", "seed", "status"]
    columns += ["latency_ms_p50"]
    select = ", ".join(ident(c) for c in columns + metrics)
    # `rows` holds one row per (cell, decoder), its latest attempt (connect)
    return con.execute(f"SELECT {select} FROM rows WHERE status = 'ok'").df(), metrics


def measured(frame: Any, columns: list[str]) -> list[str]:
    """The `columns` of a DataFrame with a value in some row."""
    return [c for c in columns if frame[c].notna().any()]


# ---- set-level values --------------------------------------------------------------------------


def read_sets(run_dir: Path) -> list[dict[str, Any]]:
    """Every set-level row on disk; the newest per (members digest, metric)."""
    files = sorted((Path(run_dir) / SETS_DIR).glob("set-*.parquet"))
    if not files:
        return []
    rows = pa.concat_tables([pq.read_table(f, schema=SET_SCHEMA) for f in files]).to_pylist()
    latest: dict[tuple, dict] = {}
    for row in sorted(rows, key=lambda r: r["computed_at"]):
        latest[(row["members_digest"], row["metric"])] = row
    return list(latest.values())


def _load_sets(con: duckdb.DuckDBPyConnection, run_dir: Path, label: str) -> None:
    """Table `set_values`: the newest set-level row per (setting, decoder, metric) of the
    report's groups (pid_bench.sets), run_id = the run's label as in `rows`."""
    con.register("set_rows_in", pa.Table.from_pylist(read_sets(run_dir), schema=SET_SCHEMA))
    keys = ", ".join(ident(k) for k in (*SETTING_KEYS, "decoder"))
    con.execute(
        "CREATE TEMP TABLE set_values AS SELECT * REPLACE (? AS run_id) FROM set_rows_in "
        f"WHERE ({keys}) IN (SELECT ({keys}) FROM rows WHERE status = 'ok') "
        f"QUALIFY row_number() OVER (PARTITION BY {keys}, metric ORDER BY computed_at DESC) = 1",
        [label],
    )


def fill_set_values(con: duckdb.DuckDBPyConnection, leaderboard: list[dict[str, Any]]) -> None:
    """Put each group's set-level value (fid, kid) into its leaderboard row (of its run)."""
    keys = (*SETTING_KEYS, "decoder", "run_id")
    cursor = con.execute(f"SELECT {', '.join(map(ident, keys))}, metric, value FROM set_values")
    values = {tuple(r[: len(keys) + 1]): r[-1] for r in cursor.fetchall()}
    for row in leaderboard:
        for column in [c for c in row if c.startswith("metric_")]:
            key = (*(row[k] for k in keys), column.removeprefix("metric_"))
            if key in values:
                row[column] = values[key]


# ---- null metrics ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NullMetric:
    """A requested metric that is null in some ok rows of the report, with every reason."""

    metric: str
    n_ok: int
    reasons: list[tuple[str, int]]  # (reason, rows), most rows first
    unit: str = "rows"  # set-level metrics: "groups" (one value per setting and decoder)

    @property
    def n_null(self) -> int:
        return sum(n for _, n in self.reasons)

    def line(self) -> str:
        if len(self.reasons) == 1:
            why = self.reasons[0][0]
        else:
            why = "; ".join(f"{reason} ({n} {self.unit})" for reason, n in self.reasons)
        return f"{self.metric}: null in {self.n_null}/{self.n_ok} {self.unit} — {why}"


def null_metrics(
    con: duckdb.DuckDBPyConnection, requested: list[str] | None = None
) -> list[NullMetric]:
    """Requested metrics null anywhere among the report's ok rows (reports/metric_nulls.sql),
    and set-level ones null in a group (reports/set_nulls.sql) or computed for none."""
    found: dict[str, NullMetric] = {}
    for r in query(con, "metric_nulls"):
        entry = found.setdefault(r["metric"], NullMetric(r["metric"], r["n_ok"], []))
        entry.reasons.append((r["reason"], r["n_null"]))
    for r in query(con, "set_nulls"):
        entry = found.setdefault(r["metric"], NullMetric(r["metric"], r["n_groups"], [], "groups"))
        entry.reasons.append((r["reason"], r["n_null"]))
    computed = {m for (m,) in con.execute("SELECT DISTINCT metric FROM set_values").fetchall()}
    keys = ", ".join(ident(k) for k in (*SETTING_KEYS, "decoder"))
    (groups,) = con.execute(
        f"SELECT count(*) FROM (SELECT DISTINCT {keys} FROM rows WHERE status = 'ok')"
    ).fetchone()
    for name in requested or []:
        if is_set_level(name) and name not in computed and groups:
            reason = "not computed for any group (the run ended before its set-level step; rerun)"
            found[name] = NullMetric(name, groups, [(reason, groups)], "groups")
    order = {name: i for i, name in enumerate(requested or [])}
    return sorted(found.values(), key=lambda entry: order.get(entry.metric, len(order)))


def run_null_metrics(run_dir: Path) -> list[NullMetric]:
    """`null_metrics` of a run directory (the end-of-run summary prints these)."""
    with connect(Path(run_dir)) as con:
        return null_metrics(con, requested_metrics(read_run_json(Path(run_dir))))
