"""The report's plots (plots/*.png): latency, memory and MFU against size, quality against σ,
and per backbone quality against latency with its Pareto front.

Each plot reads one rollup of reports/ (or the ok rows) from a `pid_bench.rundb` connection and
draws on a bare matplotlib `Figure` (no pyplot: no global state, no display). Every decoder has
one colour and one marker in every plot (`pid_bench.decoders.style`); in the line plots decoders are
dodged horizontally so coinciding lines stay visible.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
from matplotlib.figure import Figure

from pid_bench.axes import SETTING_KEYS
from pid_bench.board import MiB, direction, direction_mark, safe_name
from pid_bench.decoders import style
from pid_bench.rundb import measured, metric_columns, ok_rows, query
from pid_bench.store import writing


def new_figure(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Any]:
    """A figure of the report's size with one gridded axes, titled and labelled."""
    fig = Figure(figsize=(6.4, 4.0), dpi=100, layout="constrained")
    ax = fig.subplots()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def no_data(ax: Any, text: str) -> None:
    """An empty plot saying why (`text`) instead of axes ticks."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def decoder_series(records: list[dict[str, Any]], x: str, y: str) -> dict[str, tuple[list, list]]:
    """decoder -> (xs, ys) of the records with a value of y."""
    out: dict[str, tuple[list, list]] = {}
    for r in records:
        if r[y] is not None and r[x] is not None:
            xs, ys = out.setdefault(r["decoder"], ([], []))
            xs.append(r[x])
            ys.append(r[y])
    return out


#: Horizontal offset between neighbouring decoders, as a fraction of the x range: lines that
#: coincide (twin metrics of native+bicubic and native+lanczos, say) stay apart.
DODGE = 0.015
DODGE_CAPTION = (
    f"Each decoder has its own marker and colour. In the line plots its points are dodged "
    f"horizontally by {100 * DODGE:g} % of the x range per decoder, so coinciding lines stay "
    "visible: the true x of a point is the centre of its group."
)
PARETO_CAPTION = (
    "Each decoder has its own marker and colour; points are semi-transparent and not dodged "
    "(latencies are exact); the dashed line joins the Pareto front."
)


def marker(decoder: str) -> str:
    """The decoder's marker (`pid_bench.decoders.style`'s second half)."""
    return style(decoder)[1]


def dodge(series: dict[str, tuple[list, list]]) -> dict[str, float]:
    """decoder -> its horizontal offset: DODGE of the x range per decoder, centred on 0."""
    xs = [x for values, _ in series.values() for x in values]
    span = (max(xs) - min(xs)) or abs(xs[0]) or 1.0
    names = sorted(series)
    middle = (len(names) - 1) / 2
    return {name: (i - middle) * DODGE * span for i, name in enumerate(names)}


def draw(ax: Any, series: dict[str, tuple[list, list]], empty: str) -> None:
    """One dodged line per decoder, in its style; `empty` says why when there is none."""
    if not series:
        no_data(ax, empty)
        return
    offsets = dodge(series)
    for decoder, (xs, ys) in sorted(series.items()):
        shifted = [x + offsets[decoder] for x in xs]
        color, shape = style(decoder)
        ax.plot(shifted, ys, marker=shape, label=decoder, color=color, alpha=0.85, markersize=6)
    if len(series) > 1:
        ax.set_xlabel(f"{ax.get_xlabel()} (decoders dodged, {100 * DODGE:g} % of range each)")
    ax.legend()


def plot_caption(path: Path) -> str:
    """What the page says under a plot beyond DODGE_CAPTION, which it states once for all."""
    return PARETO_CAPTION if path.stem.startswith("pareto_") else ""


def save(fig: Figure, path: Path) -> Path:
    """The figure as a PNG at `path` (a refused write is a pid_bench.store.StorageError)."""
    with writing(path):
        fig.savefig(path, format="png")
    return path


def plot_latency(con: duckdb.DuckDBPyConnection, folder: Path) -> Path:
    """Median latency against output megapixels (reports/latency.sql)."""
    fig, ax = new_figure("Decode latency", "output megapixels", "median latency p50 (ms) ↓")
    draw(ax, decoder_series(query(con, "latency"), "out_megapixels", "latency_ms_p50"), "no data")
    return save(fig, folder / "latency_vs_megapixels.png")


def plot_memory(con: duckdb.DuckDBPyConnection, folder: Path) -> Path:
    """Peak allocated memory per output size, sizes by area (reports/memory.sql)."""
    records = query(con, "memory")
    sizes = sorted(
        {(r["out_height"], r["out_width"]) for r in records}, key=lambda s: (s[0] * s[1], s)
    )
    index = {size: i for i, size in enumerate(sizes)}
    for r in records:
        r["x"] = index[(r["out_height"], r["out_width"])]
        r["mib"] = (
            None if r["peak_mem_allocated_bytes"] is None else r["peak_mem_allocated_bytes"] / MiB
        )
    fig, ax = new_figure("Peak GPU memory", "output resolution (H x W)", "peak allocated (MiB) ↓")
    series = decoder_series(records, "x", "mib")
    empty = "no GPU memory readings (CPU run)" if records else "no data"
    draw(ax, series, empty)
    if series:
        ax.set_xticks(range(len(sizes)), [f"{h}x{w}" for h, w in sizes])
    return save(fig, folder / "memory_vs_resolution.png")


def plot_mfu(con: duckdb.DuckDBPyConnection, folder: Path) -> Path:
    """PiD's model FLOPs utilisation against output megapixels (reports/mfu.sql)."""
    fig, ax = new_figure(
        "PiD model FLOPs utilisation", "output megapixels", "median MFU (dense bf16 peak) ↑"
    )
    records = query(con, "mfu")
    empty = "no MFU (CPU run, or a GPU without a peak in pid_models.flops)"
    measured_mfu = [r for r in records if r["mfu"] is not None]
    draw(ax, decoder_series(measured_mfu, "out_megapixels", "mfu"), empty)
    return save(fig, folder / "mfu_vs_megapixels.png")


def plot_quality(con: duckdb.DuckDBPyConnection, folder: Path) -> list[Path]:
    """One plot per measured metric against σ (reports/quality_vs_sigma.sql)."""
    records = query(con, "quality_vs_sigma")
    columns = list(records[0]) if records else metric_columns(con)
    paths = []
    measured = [
        c
        for c in columns
        if c.startswith("metric_")
        and c != "metric_notes"
        and any(r[c] is not None for r in records)
    ]
    for column in measured:
        name = column.removeprefix("metric_")
        ylabel = f"mean {name}{direction_mark(name)}"
        fig, ax = new_figure(f"{name} vs latent noise", "sigma", ylabel)
        draw(ax, decoder_series(records, "sigma", column), "no data")
        paths.append(save(fig, folder / f"quality_vs_sigma_{safe_name(name)}.png"))
    return paths


def plot_pareto(con: duckdb.DuckDBPyConnection, folder: Path) -> list[Path]:
    """Per backbone: quality (the first measured metric with a direction, PSNR if present)
    against latency, one point per (decoder, output size, σ / x_t step); the front is joined."""
    from pid_bench.stats import pareto_front

    frame, columns = ok_rows(con)
    metrics = [c for c in measured(frame, columns) if direction(c) is not None]
    if frame.empty or not metrics:
        return []
    metric = "metric_psnr" if "metric_psnr" in metrics else metrics[0]
    name = metric.removeprefix("metric_")
    higher = direction(name)
    keys = [*SETTING_KEYS, "decoder"]
    points = (
        frame.groupby(keys, dropna=False)
        .agg(latency_ms_p50=("latency_ms_p50", "median"), quality=(metric, "mean"))
        .reset_index()
    )
    paths = []
    for backbone, group in points.groupby("backbone"):
        fig, ax = new_figure(
            f"{backbone}: {name} vs latency",
            "median latency p50 (ms) ↓",
            f"mean {name}{direction_mark(name)}",
        )
        for decoder, sub in group.groupby("decoder"):
            color, shape = style(decoder)
            ax.scatter(sub.latency_ms_p50, sub.quality, label=decoder, color=color, marker=shape,
                       alpha=0.75)  # fmt: skip
        front = pareto_front(group, y="quality", higher_is_better=higher)
        ax.plot(
            front.latency_ms_p50, front.quality, color="0.3", linestyle="--", label="Pareto front"
        )
        ax.set_xscale("log")
        ax.legend()
        stem = f"pareto_{safe_name(str(backbone))}_{safe_name(name)}"
        paths.append(save(fig, folder / f"{stem}.png"))
    return paths


def write_plots(con: duckdb.DuckDBPyConnection, folder: Path) -> list[Path]:
    """Every plot of the report into `folder` (created); their paths in page order."""
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
    return [
        plot_latency(con, folder),
        plot_memory(con, folder),
        plot_mfu(con, folder),
        *plot_quality(con, folder),
        *plot_pareto(con, folder),
    ]
