"""The report's extra tables, after the leaderboard: paired comparisons of PiD with each
baseline, flagged rows, columns not measured, end-to-end latency (from_ldm), where the time goes.

Each is a `Section` (title, headers, rows of text, note) that markdown and HTML render alike
(pid_bench.render); `run_sections` gives a run's sections in page order, leaving out those with
nothing to show.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from pid_bench.axes import SETTING_KEYS
from pid_bench.board import direction, direction_mark, fmt_key, fmt_value
from pid_bench.rundb import ident, measured, ok_rows, query
from pid_bench.store import read_run_json
from pid_bench.timing import NOISY_SPREAD


@dataclass(frozen=True)
class Section:
    """An extra table of the report (markdown and HTML render it the same way)."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""


#: Bootstrap settings of the paired comparison (recorded in the report's note).
BOOTSTRAP_SEED = 0
BOOTSTRAP_RESAMPLES = 2000


def _apart(
    records: list[dict[str, Any]], shown: tuple[str, ...], hidden: Iterable[str]
) -> list[str]:
    """Those `hidden` keys (setting keys a section's labels leave out) that tell apart records
    whose `shown` keys are equal: each label then names its own, or two rows would read alike."""
    apart = []
    for key in hidden:
        values: dict[tuple, set[str]] = {}
        for r in records:
            values.setdefault(tuple(str(r[k]) for k in shown), set()).add(str(r[key]))
        if any(len(found) > 1 for found in values.values()):
            apart.append(key)
    return apart


def _named(record: dict[str, Any], keys: list[str]) -> str:
    return "".join(f" · {key} {fmt_key(record[key])}" for key in keys)


def _isna(value: Any) -> bool:
    import pandas as pd

    return value is None or bool(pd.isna(value))


def _ci(mean: float, low: float, high: float, digits: int = 4) -> str:
    if mean != mean:  # NaN: no value
        return "–"
    if low != low:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def paired(con: duckdb.DuckDBPyConnection) -> list[Section]:
    """One section per baseline at the output size (native+bicubic, native+lanczos, each
    learned SR baseline, the undistilled teacher): per setting and metric, PiD's and the
    baseline's means with 95 % bootstrap CIs over images, the paired difference PiD − baseline
    with its CI, and PiD's win rate. The native decode itself is scored at its own size and is
    not a baseline here."""
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
            frame, metrics, directions, group_by=DEFAULT_GROUP_BY,
            baseline=baseline, seed=BOOTSTRAP_SEED, n_resamples=BOOTSTRAP_RESAMPLES,
        )  # fmt: skip
        section = paired_section(table, baseline)
        if section is not None:
            sections.append(section)
    return sections


def paired_section(table: Any, baseline: str) -> Section | None:
    """The section of one baseline from its pid_bench.stats.comparison_table; None when no
    setting has a pair."""
    # the other setting keys split the settings (stats.DEFAULT_GROUP_BY) but are not in the label
    shown = ("backbone", "ckpt_type", "out_height", "out_width", "sigma", "save_xt_step", "metric")
    paired = table[table["n_pairs"] > 0].to_dict("records")
    apart = _apart(paired, shown, [k for k in SETTING_KEYS if k not in shown])
    rows = []
    for r in table.itertuples():
        if not r.n_pairs:
            continue
        step = "" if _isna(r.save_xt_step) else f" x_t {int(r.save_xt_step)}"
        sigma = fmt_key(float(r.sigma))
        size = f"{r.out_height}x{r.out_width}"
        setting = f"{r.backbone} / {r.ckpt_type} · {size} · σ={sigma}{step}"
        setting += _named(r._asdict(), apart)
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


def flags(con: duckdb.DuckDBPyConnection) -> Section | None:
    """Rows outside the checkpoint's trained envelope, or past a colour-QA threshold."""
    from pid_bench.metrics.twin import MIDTONE_CHROMA_SHIFT_MAX, SHADOW_GREEN_BIAS_MAX

    columns = {r[0] for r in con.execute("DESCRIBE rows").fetchall()}
    # (expression, its parameters, label); a threshold is a parameter, a column an identifier
    checks: list[tuple[str, list[Any], str]] = [
        ("coalesce(outside_envelope, false)", [], "outside the trained size or aspect"),
        ("coalesce(timing_noisy, false)", [], f"timing noisy (spread > {NOISY_SPREAD:g})"),
    ]
    for column, bound, label in (
        ("metric_midtone_chroma_shift", MIDTONE_CHROMA_SHIFT_MAX, "midtone chroma shift"),
        ("metric_shadow_green_bias", SHADOW_GREEN_BIAS_MAX, "shadow green bias"),
    ):
        if column in columns:
            expr = f"coalesce({ident(column)} > ?, false)"
            checks.append((expr, [bound], f"{label} > {bound:g}"))
    flagged = " OR ".join(expr for expr, _, _ in checks)
    picks = ", ".join(f"{expr} AS flag_{i}" for i, (expr, _, _) in enumerate(checks))
    params = [p for _, values, _ in checks for p in values]
    records = con.execute(
        f"SELECT backbone, ckpt_type, out_height, out_width, sigma, image_id, decoder, {picks} "
        f"FROM rows WHERE status = 'ok' AND ({flagged}) ORDER BY ALL",
        params + params,  # once for the picks, once for the filter
    ).fetchall()
    if not records:
        return None
    rows = []
    for r in records:
        why = ", ".join(label for i, (_, _, label) in enumerate(checks) if r[7 + i])
        setting = f"{r[0]} / {r[1]} · {r[2]}x{r[3]} · σ={fmt_key(r[4])}"
        rows.append([setting, str(r[5]), str(r[6]), why])
    note = (
        "Trained envelope: at most 2048² pixels (2k) or 4096² (2kto4k, 2kto4k_v1pt5), aspect "
        "up to 16:9. Timing noisy: "
        "(p90 - p10) / p50 of the repeats above the bound; its latency is not a steady figure. "
        "The colour "
        "thresholds are heuristics (about 2.5 just-noticeable differences), not calibrated; "
        "docs/protocol.md."
    )
    return Section(f"Flags ({len(rows)} rows)", ["setting", "image", "decoder", "flag"], rows, note)


def envelope_colour(con: duckdb.DuckDBPyConnection) -> Section | None:
    """PiD's colour QA per setting, inside and outside the checkpoint's trained size, when the
    run has settings outside it: "green outside the envelope" reads off one table."""
    from pid_bench.metrics.twin import MIDTONE_CHROMA_SHIFT_MAX, SHADOW_GREEN_BIAS_MAX

    columns = {r[0] for r in con.execute("DESCRIBE rows").fetchall()}
    colour = [
        (c, bound)
        for c, bound in (
            ("metric_shadow_green_bias", SHADOW_GREEN_BIAS_MAX),
            ("metric_midtone_chroma_shift", MIDTONE_CHROMA_SHIFT_MAX),
        )
        if c in columns
    ]
    if not colour or "outside_envelope" not in columns:
        return None
    (outside,) = con.execute(
        "SELECT count(*) FROM rows WHERE status = 'ok' AND decoder = 'pid' AND outside_envelope"
    ).fetchone()
    if not outside:
        return None
    keys = ", ".join(ident(k) for k in SETTING_KEYS)
    picks = ", ".join(
        f"avg({ident(c)}), count(*) FILTER (WHERE {ident(c)} > ?), count({ident(c)})"
        for c, _ in colour
    )
    records = con.execute(
        f"SELECT {keys}, bool_or(coalesce(outside_envelope, false)) AS outside, {picks} "
        f"FROM rows WHERE status = 'ok' AND decoder = 'pid' GROUP BY ALL "
        f"ORDER BY outside DESC, {keys}",
        [bound for _, bound in colour],
    ).df()
    rows = []
    for r in records.to_dict("records"):
        setting = f"{r['backbone']} / {r['ckpt_type']} · {r['out_height']}x{r['out_width']}"
        setting += f" · σ={fmt_key(r['sigma'])}"
        setting += "" if _isna(r["pid_steps"]) else f" · {int(r['pid_steps'])} steps"
        cells = [setting, "outside" if r["outside"] else "inside"]
        values = list(r.values())[len(SETTING_KEYS) + 1 :]
        for i, (_, bound) in enumerate(colour):
            mean, past, n = values[3 * i : 3 * i + 3]
            cells.append(f"{fmt_value(mean)} ({past}/{n} > {bound:g})" if n else "–")
        rows.append(cells)
    headers = ["setting", "trained envelope"]
    headers += [c.removeprefix("metric_") + " (images past bound)" for c, _ in colour]
    note = (
        "PiD rows only. Outside: more pixels than the checkpoint's largest trained shape (2k "
        "2048², 2kto4k / 2kto4k_v1pt5 4096²) or an aspect beyond 16:9 "
        "(pid_models.registry.outside_envelope, from upstream's README). Integrators report "
        "green casts outside it (ComfyUI PR #14103); the bounds are the Flags section's "
        "heuristics."
    )
    return Section("Colour inside and outside the trained envelope", headers, rows, note)


def not_measured(con: duckdb.DuckDBPyConnection) -> Section | None:
    """Timing, memory and compute columns left null, each with its reason and row count."""
    records = query(con, "measure_nulls")
    if not records:
        return None
    rows = [[r["decoder"], r["column_name"], r["reason"], str(r["n"])] for r in records]
    note = "A null is never a zero: each reason is the row's own (measure_notes)."
    return Section("Not measured", ["decoder", "column", "reason", "rows"], rows, note)


def time_budget(con: duckdb.DuckDBPyConnection, run_dir: Path) -> Section | None:
    """Harness overhead: how much of the workers' and the run's wall time the decoders use, and
    where the rest goes (metrics one by one, PNG writes, features)."""
    (r,) = query(con, "time_budget")
    if not r["n_cells"]:
        return None
    run_info = read_run_json(run_dir)
    spans = invocation_ms(run_info)
    share = lambda ms: "–" if not r["wall_ms"] or ms is None else f"{100 * ms / r['wall_ms']:.1f} %"  # noqa: E731
    parts = [
        ("decoders (timed repeats + warm-up): the device-busy time", "decode_ms"),
        ("encode + caption", "prepare_ms"),
        ("metrics (every decoder's scoring)", "score_ms"),
        ("PNG writes the cells waited for", "images_wait_ms"),
        ("set-level features (fid/kid)", "features_ms"),
        ("other (image loading, LDM, model moves, resizes)", "other_ms"),
        ("all cells on the workers", "wall_ms"),
    ]
    rows = [[part, fmt_value(r[column], 0), share(r[column])] for part, column in parts]
    rows[3:3] = [[f"· {name}", fmt_value(ms, 0), share(ms)] for name, ms in metric_ms(con)]
    note = f"{r['n_cells']} ok cells."
    if r["images_ms"] is not None:
        images = (run_info or {}).get("images") or {}
        overlap = (
            "they may overlap timed decodes (overlap: true, CUDA only)"
            if images.get("overlap")
            else "never during a timed decode (overlap: false; always so on a CPU device, where "
            "they would take the decoder's cores)"
        )
        note += (
            f" PNG writes took {r['images_ms']:.0f} ms on background threads, overlapping the "
            f"metrics; {overlap}; zlib level {images.get('png_compress_level', '?')}."
        )
    if spans:
        each = ", ".join(f"{ms:.0f}" for ms in spans)
        note += (
            f" The run's own wall time (driver, Ray start-up, model loading, all workers; from "
            f"run.json) was {sum(spans):.0f} ms over {len(spans)} invocation(s): {each} ms."
        )
    return Section("Where the time goes", ["part", "ms", "share of cell time"], rows, note)


def metric_ms(con: duckdb.DuckDBPyConnection) -> list[tuple[str, float]]:
    """Milliseconds per metric over the run's ok rows (score_ms_by_metric), largest first."""
    import json

    columns = {r[0] for r in con.execute("DESCRIBE rows").fetchall()}
    if "score_ms_by_metric" not in columns:
        return []
    totals: dict[str, float] = {}
    texts = con.execute(
        "SELECT score_ms_by_metric FROM rows WHERE status = 'ok' AND score_ms_by_metric NOTNULL"
    ).fetchall()
    for (text,) in texts:
        for name, ms in json.loads(text).items():
            totals[name] = totals.get(name, 0.0) + ms
    return sorted(totals.items(), key=lambda item: -item[1])


def invocation_ms(meta: dict[str, Any]) -> list[float]:
    """Wall time of each invocation that recorded its start and end (run.json), in ms."""
    from datetime import datetime

    spans = []
    for record in meta.get("invocations") or []:
        if record.get("started_at") and record.get("finished_at"):
            start, end = (datetime.fromisoformat(record[k]) for k in ("started_at", "finished_at"))
            spans.append((end - start).total_seconds() * 1000)
    return spans


def end_to_end(con: duckdb.DuckDBPyConnection) -> Section | None:
    """from_ldm: "LDM to step K + decoder" against "full LDM + decoder" (x0), per setting."""
    records = query(con, "end_to_end")
    if not records:
        return None
    shown = ("backbone", "ckpt_type", "out_height", "out_width", "save_xt_step", "decoder")
    apart = _apart(records, shown, [k for k in SETTING_KEYS if k not in shown])
    rows = []
    for r in records:
        step = r["save_xt_step"]
        ldm = f"LDM to step {step}" if step is not None else "full LDM (x0)"
        route = f"{ldm} + {r['decoder']}"
        rows.append(
            [
                f"{r['backbone']} / {r['ckpt_type']}{_named(r, apart)}",
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


def run_sections(con: duckdb.DuckDBPyConnection, run_dir: Path) -> list[Section]:
    """Every section of a run's report with something to show, in page order."""
    found = [*paired(con), flags(con), envelope_colour(con), not_measured(con), end_to_end(con)]
    return [s for s in [*found, time_budget(con, run_dir)] if s is not None]
