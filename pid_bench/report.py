"""Reports of a run directory: DuckDB rollups -> leaderboard.md, report.html, plots/*.png.

The rollups are the SQL files in `reports/` (one query per file, each headed by its grain and
inputs), run by pid_bench.rundb over a table named `rows`; this module gathers a run's data
(`_load`) and writes its pages, from the table model of pid_bench.board, the sections of
pid_bench.sections, the plots of pid_bench.plots and the renderers of pid_bench.render:

  RUN_DIR/leaderboard.md   title, provenance, status counts, leaderboard table, failures
  RUN_DIR/report.html      one self-contained page (plots and images inlined as data URIs)
  RUN_DIR/plots/*.png      latency_vs_megapixels, memory_vs_resolution, mfu_vs_megapixels,
                           quality_vs_sigma_<metric>, pareto_<backbone>_<metric>
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from pid_bench.board import Table, definitions, footnote_numbers, leaderboard_table
from pid_bench.plots import DODGE_CAPTION, plot_caption, write_plots
from pid_bench.recommend import recommendations
from pid_bench.render import (
    DEFINITIONS_MD,
    EMBEDDED_WARNING,
    LEADERBOARD_NOTE,
    RANDOM_WEIGHTS_WARNING,
    UPSAMPLED_WARNING,
    environment_items,
    jinja,
    md_cell,
    md_failures,
    md_leaderboard,
    md_section,
    recommendation_groups,
    recommendations_markdown,
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
from pid_bench.sections import Section, run_sections
from pid_bench.store import foreign_files, quarantined, read_run_json, writing
from pid_bench.viewer import data_uri


@dataclass(frozen=True)
class ReportPaths:
    """What `write_report` wrote."""

    leaderboard: Path
    html: Path
    plots: list[Path] = field(default_factory=list)


# ---- the run's data ----------------------------------------------------------------------------


@dataclass
class _RunData:
    """Everything a run's pages show, read once from its DuckDB (`_load`)."""

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
    recommendations: dict[str, Any] = field(default_factory=dict)  # pid_bench.recommend

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
        sections=run_sections(con, run_dir),
        recommendations=recommendations(
            con.execute("SELECT * FROM rows WHERE status = 'ok'").df(), meta
        ),
    )


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


# ---- the pages ---------------------------------------------------------------------------------


def _run_table(data: _RunData) -> Table:
    return leaderboard_table(data.leaderboard, data.requested, footnote_numbers(data.nulls))


def _markdown(data: _RunData) -> str:
    lines = [f"# pid-bench leaderboard: {data.suite}", ""]
    lines += [f"run `{data.run_id}` · git `{data.git_sha}` · device {data.device}", ""]
    if data.random_weights:
        lines += [f"**{RANDOM_WEIGHTS_WARNING}**", ""]
    if data.trained_embedded:
        lines += [f"**{EMBEDDED_WARNING}**", ""]
    if data.upsampled_references:
        lines += [f"**{UPSAMPLED_WARNING}**", ""]
    lines += recommendations_markdown(data.recommendations)
    lines += [f"Status: {data.status_line()}", ""]
    table = _run_table(data)
    if table.rows:
        lines += md_leaderboard(table) + [f"{LEADERBOARD_NOTE} {DEFINITIONS_MD}", ""]
    else:
        lines += ["No rows in this run yet.", ""]
    notes = footnotes(data)
    if notes:
        lines += [f"- {md_cell(note)}" for note in notes] + [""]
    for section in data.sections:
        lines += md_section(section)
    lines += md_failures(data.failures)
    return "\n".join(lines)


def leaderboard_text(run_dir: Path) -> str:
    """The markdown leaderboard of a run directory (what `pid-bench run` prints at its end)."""
    run_dir = Path(run_dir)
    with connect(run_dir) as con:
        return _markdown(_load(run_dir, con))


def _html(data: _RunData, con: duckdb.DuckDBPyConnection, plots: list[Path]) -> str:
    from pid_bench.viewer import json_for_html, viewer_data

    table = _run_table(data)
    viewer = viewer_data(data.run_dir, query(con, "grid"))
    return (
        jinja()
        .get_template("report.html.j2")
        .render(
            data=data,
            footnotes=footnotes(data),
            warning=RANDOM_WEIGHTS_WARNING if data.random_weights else None,
            embedded_warning=EMBEDDED_WARNING if data.trained_embedded else None,
            upsampled_warning=UPSAMPLED_WARNING if data.upsampled_references else None,
            environment=environment_items(data.meta),
            table=table,
            leaderboard_note=LEADERBOARD_NOTE,
            dodge_caption=DODGE_CAPTION,
            definitions=definitions(table),
            plots=[(p.stem, data_uri(p.read_bytes(), "image/png"), plot_caption(p)) for p in plots],
            viewer=viewer,
            viewer_json=json_for_html(viewer),
            recommendations=data.recommendations,
            recommendation_groups=recommendation_groups(data.recommendations),
        )
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
        answers = run_dir / "recommendations.json"
        with writing(answers):
            answers.write_text(json.dumps(data.recommendations, indent=2), encoding="utf-8")
    return ReportPaths(leaderboard=leaderboard, html=html, plots=plots)
