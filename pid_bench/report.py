"""Reports of a run directory: DuckDB rollups -> leaderboard.md, report.html, plots/*.png.

The rollups are the SQL files in `reports/` (one query per file, each headed by its grain and
inputs); this module only loads the parts into a table named `rows`, binds parameters, formats
and draws:

  RUN_DIR/leaderboard.md   title, provenance, status counts, leaderboard table, failures
  RUN_DIR/report.html      one self-contained page (plots and images inlined as data URIs)
  RUN_DIR/plots/*.png      latency_vs_megapixels, memory_vs_resolution, mfu_vs_megapixels,
                           quality_vs_sigma_<metric>
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from pid_bench.board import (
    Table,
    definitions,
    direction,
    direction_mark,
    fmt_key,
    fmt_value,
    footnote_numbers,
    leaderboard_table,
)  # fmt: skip
from pid_bench.plots import DODGE_CAPTION, plot_caption, write_plots
from pid_bench.rundb import (
    NullMetric,
    connect,
    fill_set_values,
    measured,
    null_metrics,
    ok_rows,
    query,
    reports_dir,
    requested_metrics,
    run_label,
)  # fmt: skip
from pid_bench.store import foreign_files, quarantined, read_run_json, writing
from pid_bench.viewer import data_uri

RANDOM_WEIGHTS_WARNING = (
    "The `tiny-random` backbone uses random networks: its quality numbers say nothing about PiD."
)
def uses_trained_embedded(backbones: Iterable[str]) -> bool:
    """Whether any of `backbones` is an embedded backbone trained here (`tiny`, not
    `tiny-random`): its report carries `EMBEDDED_WARNING`."""
    from pid_models.registry import EMBEDDED_PAIRS, RANDOM_BACKBONES

    trained = {b for b, _ in EMBEDDED_PAIRS} - RANDOM_BACKBONES
    return any(b in trained for b in backbones)


EMBEDDED_WARNING = (
    "The embedded `tiny` backbone is a pair of small networks trained here on CPU "
    "(pid_models.tiny_training): enough to show a wiring mistake, but its numbers say nothing "
    "about NVIDIA's PiD."
)
UPSAMPLED_WARNING = (
    "This suite says `reference: upsampled`: some full-reference metrics compare with a "
    "reference upsampled from a smaller source, which rewards blur (rows with "
    "reference_upsampled = true)."
)
MAX_FAILURES_MD = 50  # failures listed in leaderboard.md (the HTML lists them all)


@dataclass(frozen=True)
class ReportPaths:
    """What `write_report` wrote."""

    leaderboard: Path
    html: Path
    plots: list[Path] = field(default_factory=list)


# ---- the run's data ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """An extra table of the report (markdown and HTML render it the same way)."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""


@dataclass
class _RunData:
    run_dir: Path
    meta: dict[str, Any]
    status: list[dict[str, Any]]
    leaderboard: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    provenance: list[dict[str, Any]]
    sections: list[Section] = field(default_factory=list)
    requested: list[str] = field(default_factory=list)  # metrics the suite asked for
    nulls: list[NullMetric] = field(default_factory=list)
    outside_rows: int = 0  # rows on disk that the report leaves out (cells no longer planned)
    superseded_rows: int = 0  # earlier attempts of (cell, decoder)s computed again
    quarantined: list[str] = field(default_factory=list)  # parts/quarantine/ (unreadable parts)
    foreign: list[str] = field(default_factory=list)  # files pid-bench did not write

    @property
    def metrics(self) -> list[str]:
        """metric_* columns the leaderboard query found in the parts."""
        first = self.leaderboard[0] if self.leaderboard else {}
        return [c for c in first if c.startswith("metric_")]

    @property
    def suite(self) -> str:
        return suite_name(self.meta)

    @property
    def run_id(self) -> str:
        return run_label(self.run_dir, self.meta)

    @property
    def git_sha(self) -> str:
        env = self.meta.get("environment") or {}
        found = env.get("git_sha") or _distinct(self.provenance, "git_sha")
        return str(found or "unknown")

    @property
    def device(self) -> str:
        names = _distinct(self.provenance, "device_name")
        if names:
            return names
        env = self.meta.get("environment") or {}
        return str(env.get("devices") or env.get("device") or "unknown")

    @property
    def upsampled_references(self) -> bool:
        suite = self.meta.get("suite") or {}
        return suite.get("reference") == "upsampled"

    @property
    def trained_embedded(self) -> bool:
        """Rows of an embedded backbone trained here (`tiny`)."""
        named = self.meta.get("embedded_backbones") or ()
        return uses_trained_embedded([*named, *(r["backbone"] for r in self.leaderboard)])

    @property
    def random_weights(self) -> bool:
        return ran_random_weights(self.meta, self.provenance)

    def status_line(self) -> str:
        return status_line(self.status)


def suite_name(meta: dict[str, Any]) -> str:
    """run.json's suite name."""
    suite = meta.get("suite")
    name = suite.get("name") if isinstance(suite, dict) else suite
    return str(name or "unnamed suite")


def ran_random_weights(meta: dict[str, Any], provenance: list[dict[str, Any]]) -> bool:
    """Whether run.json or any row (reports/provenance.sql) says random networks ran."""
    return bool(meta.get("random_weights")) or any(p["random_weights"] for p in provenance)


def status_line(status: list[dict[str, Any]]) -> str:
    """'24 ok, 1 error (25 rows)' from reports/status.sql."""
    total = sum(s["n"] for s in status)
    counts = ", ".join(f"{s['n']} {s['status']}" for s in status)
    return f"{counts} ({total} rows)" if total else "no rows"


def _distinct(records: list[dict[str, Any]], key: str) -> str:
    return ", ".join(dict.fromkeys(str(r[key]) for r in records if r.get(key)))


def _load(run_dir: Path, con: duckdb.DuckDBPyConnection) -> _RunData:
    meta = read_run_json(run_dir)
    (total,) = con.execute("SELECT count(*) FROM all_rows").fetchone()
    (kept, superseded) = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE superseded) FROM all_attempts"
    ).fetchone()
    leaderboard = query(con, "leaderboard")
    fill_set_values(con, leaderboard)
    return _RunData(
        run_dir=run_dir,
        meta=meta,
        requested=requested_metrics(meta),
        nulls=null_metrics(con, requested_metrics(meta)),
        outside_rows=total - kept,
        superseded_rows=superseded,
        quarantined=quarantined(run_dir),
        foreign=foreign_files(run_dir),
        status=query(con, "status"),
        leaderboard=leaderboard,
        failures=query(con, "failures"),
        provenance=query(con, "provenance"),
        sections=[
            s
            for s in [
                *_paired(con), _flags(con), _not_measured(con), _end_to_end(con),
                _time_budget(con, run_dir),
            ]  # fmt: skip
            if s is not None
        ],
    )


#: Bootstrap settings of the paired comparison (recorded in the report's note).
BOOTSTRAP_SEED = 0
BOOTSTRAP_RESAMPLES = 2000


def _isna(value: Any) -> bool:
    import pandas as pd

    return value is None or bool(pd.isna(value))


def _ci(mean: float, low: float, high: float, digits: int = 4) -> str:
    if mean != mean:  # NaN: no value
        return "–"
    if low != low:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _paired(con: duckdb.DuckDBPyConnection) -> list[Section]:
    """One section per baseline at the output size (native+bicubic, native+lanczos, each
    learned SR baseline, the undistilled teacher): per setting and metric, PiD's and the baseline's means with 95 %
    bootstrap CIs over images, the paired difference PiD − baseline with its CI, and PiD's
    win rate. The native decode itself is scored at its own size and is not a baseline here."""
    from pid_bench.stats import DEFAULT_GROUP_BY, comparison_table

    frame, columns = ok_rows(con)
    metrics = [c for c in measured(frame, columns) if direction(c) is not None]
    if frame.empty or not metrics or "pid" not in set(frame.decoder):
        return []
    # pid-teacher too: what the 4-step distillation costs against the undistilled teacher
    baselines = sorted(
        d for d in set(frame.decoder) if d.startswith("native+") or d == "pid-teacher"
    )
    baselines.sort(key=lambda d: d != "native+bicubic")  # the common baseline first
    directions = {m: direction(m) for m in metrics}
    sections = []
    for baseline in baselines:
        table = comparison_table(
            frame, metrics, directions, group_by=(*DEFAULT_GROUP_BY, "pid_steps"),
            baseline=baseline, seed=BOOTSTRAP_SEED, n_resamples=BOOTSTRAP_RESAMPLES,
        )  # fmt: skip
        section = _paired_section(table, baseline)
        if section is not None:
            sections.append(section)
    return sections


def _paired_section(table, baseline: str) -> Section | None:
    rows = []
    for r in table.itertuples():
        if not r.n_pairs:
            continue
        step = "" if _isna(r.save_xt_step) else f" x_t {int(r.save_xt_step)}"
        setting = f"{r.backbone} / {r.ckpt_type} · {r.out_height}x{r.out_width} · σ={fmt_key(float(r.sigma))}{step}"
        name = str(r.metric).removeprefix("metric_")
        rows.append(
            [
                setting,
                name + direction_mark(name),
                _ci(r.candidate_mean, r.candidate_low, r.candidate_high),
                _ci(r.baseline_mean, r.baseline_low, r.baseline_high),
                _ci(r.diff_mean, r.diff_low, r.diff_high),
                f"{100 * r.win_rate:.0f} %",
                str(r.n_pairs),
            ]
        )
    if not rows:
        return None
    headers = ["setting", "metric", "pid [95 % CI]", f"{baseline} [95 % CI]"]
    headers += [f"pid − {baseline} [95 % CI]", "pid wins", "pairs"]
    note = (
        f"Means over images with percentile-bootstrap 95 % intervals ({BOOTSTRAP_RESAMPLES} "
        f"resamples, seed {BOOTSTRAP_SEED}); the difference is paired by (image, seed); a win "
        "follows the metric's direction (↑ higher is better, ↓ lower), ties count half. One "
        "image gives no interval."
    )
    return Section(f"PiD vs {baseline}, paired", headers, rows, note)


def _flags(con: duckdb.DuckDBPyConnection) -> Section | None:
    """Rows outside the checkpoint's trained envelope, or past a colour-QA threshold."""
    from pid_bench.metrics.twin import MIDTONE_CHROMA_SHIFT_MAX, SHADOW_GREEN_BIAS_MAX

    columns = {r[0] for r in con.execute("DESCRIBE rows").fetchall()}
    from pid_bench.timing import NOISY_SPREAD

    checks = [("outside_envelope", "coalesce(outside_envelope, false)", "outside the trained size")]
    checks.append(
        ("timing_noisy", "coalesce(timing_noisy, false)", f"timing noisy (spread > {NOISY_SPREAD:g})")
    )
    for column, bound, label in (
        ("metric_midtone_chroma_shift", MIDTONE_CHROMA_SHIFT_MAX, "midtone chroma shift"),
        ("metric_shadow_green_bias", SHADOW_GREEN_BIAS_MAX, "shadow green bias"),
    ):
        if column in columns:
            checks.append((column, f"coalesce({column} > {bound}, false)", f"{label} > {bound:g}"))
    flagged = " OR ".join(expr for _, expr, _ in checks)
    picks = ", ".join(f"{expr} AS flag_{i}" for i, (_, expr, _) in enumerate(checks))
    records = con.execute(
        f"SELECT backbone, ckpt_type, out_height, out_width, sigma, image_id, decoder, {picks} "
        f"FROM rows WHERE status = 'ok' AND ({flagged}) ORDER BY ALL"
    ).fetchall()
    if not records:
        return None
    rows = []
    for r in records:
        why = ", ".join(label for i, (_, _, label) in enumerate(checks) if r[7 + i])
        setting = f"{r[0]} / {r[1]} · {r[2]}x{r[3]} · σ={fmt_key(r[4])}"
        rows.append([setting, str(r[5]), str(r[6]), why])
    note = (
        "Trained sizes: 2k 2048 px, 2kto4k / 2kto4k_v1pt5 4096 px on a side. Timing noisy: "
        "(p90 - p10) / p50 of the repeats above the bound; its latency is not a steady figure. "
        "The colour "
        "thresholds are heuristics (about 2.5 just-noticeable differences), not calibrated; "
        "docs/protocol.md."
    )
    return Section(f"Flags ({len(rows)} rows)", ["setting", "image", "decoder", "flag"], rows, note)


def _not_measured(con: duckdb.DuckDBPyConnection) -> Section | None:
    """Timing, memory and compute columns left null, each with its reason and row count."""
    records = query(con, "measure_nulls")
    if not records:
        return None
    rows = [[r["decoder"], r["column_name"], r["reason"], str(r["n"])] for r in records]
    note = "A null is never a zero: each reason is the row's own (measure_notes)."
    return Section("Not measured", ["decoder", "column", "reason", "rows"], rows, note)


def _time_budget(con: duckdb.DuckDBPyConnection, run_dir: Path) -> Section | None:
    """Harness overhead: how much of the workers' and the run's wall time the decoders use."""
    (r,) = query(con, "time_budget")
    if not r["n_cells"]:
        return None
    spans = invocation_ms(read_run_json(run_dir))
    share = lambda ms: "–" if not r["wall_ms"] else f"{100 * ms / r['wall_ms']:.1f} %"  # noqa: E731
    rows = [
        ["decoders (timed repeats + warm-up)", fmt_value(r["decode_ms"], 0), share(r["decode_ms"])],
        ["encode + caption", fmt_value(r["prepare_ms"], 0), share(r["prepare_ms"])],
        ["other (I/O, resizes, metrics, PNGs, LDM)", fmt_value(r["other_ms"], 0), share(r["other_ms"])],
        ["all cells on the workers", fmt_value(r["wall_ms"], 0), share(r["wall_ms"])],
    ]
    note = f"{r['n_cells']} ok cells."
    if spans:
        each = ", ".join(f"{ms:.0f}" for ms in spans)
        note += (
            f" The run's own wall time (driver, Ray start-up, model loading, all workers; from "
            f"run.json) was {sum(spans):.0f} ms over {len(spans)} invocation(s): {each} ms."
        )
    return Section("Where the time goes", ["part", "ms", "share of cell time"], rows, note)


def invocation_ms(meta: dict[str, Any]) -> list[float]:
    """Wall time of each invocation that recorded its start and end (run.json), in ms."""
    from datetime import datetime

    spans = []
    for record in meta.get("invocations") or []:
        if record.get("started_at") and record.get("finished_at"):
            start, end = (datetime.fromisoformat(record[k]) for k in ("started_at", "finished_at"))
            spans.append((end - start).total_seconds() * 1000)
    return spans


def _end_to_end(con: duckdb.DuckDBPyConnection) -> Section | None:
    """from_ldm: "LDM to step K + decoder" against "full LDM + decoder" (x0), per setting."""
    records = query(con, "end_to_end")
    if not records:
        return None
    rows = []
    for r in records:
        step = r["save_xt_step"]
        ldm = f"LDM to step {step}" if step is not None else "full LDM (x0)"
        route = f"{ldm} + {r['decoder']}"
        rows.append(
            [
                f"{r['backbone']} / {r['ckpt_type']}",
                f"{r['out_height']}x{r['out_width']}",
                route,
                fmt_value(r["ldm_ms"], 1),
                fmt_value(r["decode_ms"], 1),
                fmt_value(r["end_to_end_ms"], 1),
                fmt_value(r["ldm_total_ms"], 1),
                str(r["n"]),
            ]
        )
    headers = ["pair", "out", "route", "LDM ms", "decode ms", "end-to-end ms ↓"]
    headers += ["full LDM ms", "n"]
    note = (
        "Medians over prompts. LDM ms is the wall time from the pipeline call to the captured "
        "step (x0: to its return); decode ms the decoder's p50; end-to-end their sum per row. "
        "Captures read from the latent cache keep the timings of the run that computed them."
    )
    return Section("End-to-end latency (from_ldm)", headers, rows, note)


def footnotes(data: _RunData) -> list[str]:
    """'[n] metric: null in k/N rows — reason' for each metric null anywhere, then the rows
    the report leaves out."""
    lines = [f"[{i}] {entry.line()}" for i, entry in enumerate(data.nulls, start=1)]
    if data.outside_rows:
        lines.append(
            f"{data.outside_rows} rows on disk belong to cells or decoders that the suite as "
            "last run no longer has; they stay in parts/ and are not counted here."
        )
    if data.superseded_rows:
        lines.append(
            f"{data.superseded_rows} rows are earlier attempts of cells computed again "
            "(--retry-failed, storage errors); they stay in parts/ (DuckDB view all_attempts) "
            "and only each cell's latest attempt is counted here."
        )
    return lines + storage_notes(data.quarantined, data.foreign)


def storage_notes(quarantine: list[str], foreign: list[str]) -> list[str]:
    """What the run directory holds besides readable parts: quarantined parts, others' files."""
    lines = []
    if quarantine:
        lines.append(
            f"{len(quarantine)} part(s) could not be read (damaged, or another tool's) and were "
            f"moved to parts/quarantine/, kept but not counted: {_listed(quarantine)}. A cell "
            "they held that no other part has counts as missing; `pid-bench run` recomputes it."
        )
    if foreign:
        lines.append(
            f"{len(foreign)} file(s) in the run directory were not written by pid-bench; left "
            f"alone: {_listed(foreign)}."
        )
    return lines


def _listed(names: list[str], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |"]
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines


LEADERBOARD_NOTE = (
    "↑ higher is better, ↓ lower is better; bold: best of its setting. Metrics are means "
    "over ok rows; latency is the median of the rows' p50 († some rows' repeats are noisy: "
    "see Flags); memory the max; – no value. `native` is scored at its own size (the codec's "
    "reconstruction, against the source at that size); the other decoders at the output size; "
    "twin_* compare a decode, downsampled to the native size, with the native decode."
)
DEFINITIONS_MD = (
    "Metric definitions: docs/metrics.md (\"Definitions\") in the pid-bench checkout, and the "
    "Definitions section of the HTML page."
)


def _run_table(data: _RunData) -> Table:
    return leaderboard_table(data.leaderboard, data.requested, footnote_numbers(data.nulls))


def _md_leaderboard(table: Table) -> list[str]:
    cells = [[f"**{c.text}**" if c.best else c.text for c in row] for row in table.rows]
    return _md_table(table.headers, cells) + [""]


def _markdown(data: _RunData) -> str:
    lines = [f"# pid-bench leaderboard: {data.suite}", ""]
    lines += [f"run `{data.run_id}` · git `{data.git_sha}` · device {data.device}", ""]
    if data.random_weights:
        lines += [f"**{RANDOM_WEIGHTS_WARNING}**", ""]
    if data.trained_embedded:
        lines += [f"**{EMBEDDED_WARNING}**", ""]
    if data.upsampled_references:
        lines += [f"**{UPSAMPLED_WARNING}**", ""]
    lines += [f"Status: {data.status_line()}", ""]
    table = _run_table(data)
    if table.rows:
        lines += _md_leaderboard(table) + [f"{LEADERBOARD_NOTE} {DEFINITIONS_MD}", ""]
    else:
        lines += ["No rows in this run yet.", ""]
    notes = footnotes(data)
    if notes:
        lines += [f"- {_md_cell(note)}" for note in notes] + [""]
    for section in data.sections:
        lines += [f"## {section.title}", ""] + _md_table(section.headers, section.rows) + [""]
        lines += [section.note, ""] if section.note else []
    lines += _failures_md(data.failures)
    return "\n".join(lines)


def _failures_md(failures: list[dict[str, Any]]) -> list[str]:
    if not failures:
        return []
    shown = failures[:MAX_FAILURES_MD]
    rows = [
        [f["decoder"] or "", f["cell_id"] or "", f["status"], f["error_first_line"]] for f in shown
    ]
    lines = [f"## Failures ({len(failures)})", ""]
    lines += _md_table(["decoder", "cell_id", "status", "error"], rows)
    if len(failures) > len(shown):
        lines.append(f"\n… and {len(failures) - len(shown)} more (see report.html)")
    return lines + [""]


def leaderboard_text(run_dir: Path) -> str:
    """The markdown leaderboard of a run directory (what `pid-bench run` prints at its end)."""
    run_dir = Path(run_dir)
    with connect(run_dir) as con:
        return _markdown(_load(run_dir, con))


# ---- the HTML page -----------------------------------------------------------------------------


def _environment(meta: dict[str, Any]) -> list[tuple[str, str]]:
    """run.json's environment and times, flattened to (key, value) strings."""
    items: list[tuple[str, str]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in sorted(value.items()):
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            items.append((prefix, value if isinstance(value, str) else json.dumps(value)))

    walk("", meta.get("environment") or {})
    for key in ("started_at", "finished_at", "random_weights"):
        if key in meta:
            items.append((key, str(meta[key])))
    return items


def _jinja() -> Any:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(reports_dir()),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


def _html(data: _RunData, con: duckdb.DuckDBPyConnection, plots: list[Path]) -> str:
    from pid_bench.viewer import json_for_html, viewer_data

    table = _run_table(data)
    viewer = viewer_data(data.run_dir, query(con, "grid"))
    return _jinja().get_template("report.html.j2").render(
        data=data,
        footnotes=footnotes(data),
        warning=RANDOM_WEIGHTS_WARNING if data.random_weights else None,
        embedded_warning=EMBEDDED_WARNING if data.trained_embedded else None,
        upsampled_warning=UPSAMPLED_WARNING if data.upsampled_references else None,
        environment=_environment(data.meta),
        table=table,
        leaderboard_note=LEADERBOARD_NOTE,
        dodge_caption=DODGE_CAPTION,
        definitions=definitions(table),
        plots=[(p.stem, data_uri(p.read_bytes(), "image/png"), plot_caption(p)) for p in plots],
        viewer=viewer,
        viewer_json=json_for_html(viewer),
    )


def write_report(run_dir: Path) -> ReportPaths:
    """Write leaderboard.md, report.html and plots/*.png into the run directory (a refused write
    is a pid_bench.store.StorageError naming the file)."""
    run_dir = Path(run_dir)
    with connect(run_dir) as con:
        data = _load(run_dir, con)
        plots = write_plots(con, run_dir / "plots")
        leaderboard = run_dir / "leaderboard.md"
        with writing(leaderboard):
            leaderboard.write_text(_markdown(data), encoding="utf-8")
        html = run_dir / "report.html"
        with writing(html):
            html.write_text(_html(data, con, plots), encoding="utf-8")
    return ReportPaths(leaderboard=leaderboard, html=html, plots=plots)
