"""Recommendations: the report's answers to the questions people bring to a run.

Per backbone × checkpoint type, computed from the run's ok rows with the statistics the report
already uses (pid_bench.stats: percentile-bootstrap intervals over images, paired differences,
win rates):

- ``pid_or_baseline``: PiD against each baseline of the run (every decoder but pid, pid-teacher
  and native), one verdict per metric family: quality, latency, memory;
- ``sigma``: the σ values on the front of quality against an artifact measure (from_clean), or
  the LDM steps saved by decoding x_t with PiD (from_ldm);
- ``steps``: the smallest ``pid_steps`` whose quality is within the interval of the best;
- ``checkpoint``: the checkpoint types of one backbone at the same output size;
- ``fits``: per GPU memory size, the largest output each checkpoint decodes whole and the tile
  size beyond it (measured peaks where the run has them, else the memory model).

Each answer says how much evidence it rests on and links the viewer's settings; a question the
run cannot answer is kept with ``answer: null`` and its ``reason``. The JSON layout is
documented in docs/recommendations.md.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pid_bench.axes import SETTING_KEYS
from pid_bench.board import direction
from pid_bench.metrics import get_metric
from pid_bench.stats import bootstrap_mean_ci, paired_difference_ci, pareto_front

#: The headline quality metric: the first of these the run measured (else any full- or
#: no-reference metric it measured).
QUALITY_PREFERENCE = ("lpips", "dists", "ssim", "ms_ssim", "psnr", "musiq", "clipiqa", "niqe")
#: The artifact a σ trades quality against: the first of these the run measured.
ARTIFACT_PREFERENCE = ("speck_rate", "lq_color_de2000", "midtone_chroma_shift")
#: Decoders that are not "what you use now".
NOT_BASELINES = frozenset({"pid", "pid-teacher", "native"})
#: GPU memory sizes every run answers "what fits" for (GiB), besides the run's own GPU.
GPU_SIZES_GB = (16, 24, 48, 80)
#: Square output sides "what fits" tries, in order.
FIT_SIDES = (1024, 2048, 3072, 4096, 6144, 8192)
#: Version of recommendations.json's layout.
SCHEMA_VERSION = 1
GIB = 1 << 30


@dataclass
class Answer:
    """One answer (or its absence) for one scope."""

    question: str
    scope: dict[str, Any]
    answer: str | None
    reason: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    numbers: dict[str, Any] = field(default_factory=dict)
    links: list[dict[str, str]] = field(default_factory=list)


def _absent(question: str, scope: dict[str, Any], reason: str) -> Answer:
    return Answer(question, scope, None, reason)


# ---- what the rows hold --------------------------------------------------------------------


def _kind(name: str) -> str | None:
    try:
        return get_metric(name).kind
    except KeyError:
        return None


def quality_metric(rows: pd.DataFrame) -> str | None:
    """The metric the quality verdicts use (bare name), or None."""
    measured = [
        c.removeprefix("metric_")
        for c in rows.columns
        if c.startswith("metric_") and c != "metric_notes" and rows[c].notna().any()
    ]
    for name in QUALITY_PREFERENCE:
        if name in measured:
            return name
    quality = [m for m in measured if _kind(m) in ("full_reference", "no_reference")]
    return next((m for m in quality if direction(m) is not None), None)


def artifact_metric(rows: pd.DataFrame) -> str | None:
    return next(
        (
            m
            for m in ARTIFACT_PREFERENCE
            if f"metric_{m}" in rows and rows[f"metric_{m}"].notna().any()
        ),
        None,
    )


def reference_condition(rows: pd.DataFrame) -> tuple[pd.Series, str]:
    """(mask, description) of the condition PiD is judged at: the smallest σ (from_clean) or
    the final latent x0 (from_ldm), at the most PiD steps of the run."""
    mask = pd.Series(True, index=rows.index)
    parts = []
    clean = rows["mode"] == "from_clean"
    if clean.any():
        sigma = rows.loc[clean, "sigma"].min()
        mask &= ~clean | (rows["sigma"] == sigma)
        parts.append(f"σ={sigma:g}")
    if (~clean).any():
        mask &= clean | rows["save_xt_step"].isna()
        parts.append("x0")
    if "tile" in rows and (rows["tile"] == 0).any() and (rows["tile"] != 0).any():
        mask &= rows["tile"] == 0
        parts.append("whole (untiled)")
    steps = rows.loc[rows["decoder"] == "pid", "pid_steps"].max()
    if not pd.isna(steps):
        mask &= rows["pid_steps"] == steps
        parts.append(f"{int(steps)} PiD steps")
    return mask, ", ".join(parts)


def whole(rows: pd.DataFrame) -> pd.DataFrame:
    """The untiled decodes, when the run has both (tiling is judged by its own measures)."""
    if "tile" in rows and (rows["tile"] == 0).any() and (rows["tile"] != 0).any():
        return rows[rows["tile"] == 0]
    return rows


def _images(rows: pd.DataFrame) -> int:
    return int(rows[["image_id", "seed"]].drop_duplicates().shape[0])


def _settings(rows: pd.DataFrame) -> int:
    keys = [k for k in SETTING_KEYS if k in rows]
    return int(rows[keys].drop_duplicates().shape[0])


def _per_image(rows: pd.DataFrame, column: str, log: bool = False) -> pd.Series:
    values = rows[column].astype("float64")
    if log:
        values = np.log(values.where(values > 0))
    return values.groupby([rows["image_id"], rows["seed"]]).mean()


def _links(rows: pd.DataFrame, backbone: str, ckpt_type: str) -> list[dict[str, str]]:
    """Viewer filters of the settings an answer rests on (one per output size and noise)."""
    out = []
    columns = ["mode", "sigma", "save_xt_step", "out_height", "out_width"]
    # sorted: the rows come in the database's order, which a report must not depend on
    settings = rows[columns].drop_duplicates().assign(pixels=rows.out_height * rows.out_width)
    settings = settings.sort_values(
        ["mode", "pixels", "out_height", "sigma", "save_xt_step"], na_position="first"
    )
    for record in settings.to_dict("records"):
        if record["mode"] == "from_ldm":
            step = record["save_xt_step"]
            noise = "x0" if pd.isna(step) else f"x_t {int(step)}"
        else:
            noise = f"σ={record['sigma']:g}"
        out.append(
            {
                "backbone": f"{backbone} / {ckpt_type}",
                "noise": noise,
                "size": f"{int(record['out_height'])}x{int(record['out_width'])}",
            }
        )
    return out[:12]


def _fmt(value: float, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}g}"


def _interval(low: float, high: float, digits: int = 4) -> str:
    if math.isnan(low) or math.isnan(high):
        return "(one image: no interval)"
    return f"[{_fmt(low, digits)}, {_fmt(high, digits)}]"


# ---- PiD or a baseline ---------------------------------------------------------------------


def _paired_frames(rows: pd.DataFrame, baseline: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """PiD's and the baseline's rows of the same cells (paired by cell)."""
    pid = rows[rows["decoder"] == "pid"]
    base = rows[rows["decoder"] == baseline]
    cells = sorted(set(pid["cell_id"]) & set(base["cell_id"]))
    return pid[pid["cell_id"].isin(cells)], base[base["cell_id"].isin(cells)]


def quality_verdict(pid: pd.DataFrame, base: pd.DataFrame, metric: str, baseline: str) -> dict:
    column = f"metric_{metric}"
    better_high = bool(direction(metric))
    diff = paired_difference_ci(
        _per_image(pid, column), _per_image(base, column), higher_is_better=better_high
    )
    if diff.n == 0:
        return {"family": "quality", "metric": metric, "verdict": None,
                "reason": f"{metric} has no value in both decoders' rows"}  # fmt: skip
    crosses = math.isnan(diff.low) or diff.low <= 0 <= diff.high
    gain = diff.mean if better_high else -diff.mean
    verdict = "no clear difference" if crosses else ("PiD better" if gain > 0 else "PiD worse")
    arrow = "↑" if better_high else "↓"
    text = (
        f"quality ({metric} {arrow}): {verdict}; pid − {baseline} {diff.mean:+.4g} "
        f"{_interval(diff.low, diff.high)}, PiD wins {100 * diff.win_rate:.0f} % of {diff.n} images"
    )
    return {"family": "quality", "metric": metric, "verdict": verdict, "text": text,
            "diff": diff.mean, "low": diff.low, "high": diff.high,
            "win_rate": diff.win_rate, "images": diff.n}  # fmt: skip


def ratio_verdict(
    pid: pd.DataFrame, base: pd.DataFrame, column: str, family: str, unit_note: str
) -> dict:
    """PiD / baseline as a geometric mean ratio over images, with its interval."""
    if column not in pid or pid[column].notna().sum() == 0 or base[column].notna().sum() == 0:
        return {"family": family, "verdict": None, "reason": unit_note or f"{column} not measured"}
    diff = paired_difference_ci(
        _per_image(pid, column, log=True),
        _per_image(base, column, log=True),
        higher_is_better=False,
    )
    if diff.n == 0:
        return {"family": family, "verdict": None, "reason": f"{column} has no paired values"}
    ratio, low, high = math.exp(diff.mean), math.exp(diff.low), math.exp(diff.high)
    crosses = math.isnan(diff.low) or diff.low <= 0 <= diff.high
    word = {"latency": ("faster", "slower"), "memory": ("less memory", "more memory")}[family]
    verdict = (
        "no clear difference" if crosses else (f"PiD {word[0]}" if ratio < 1 else f"PiD {word[1]}")
    )
    text = (
        f"{family}: {verdict}; pid / baseline ×{ratio:.3g} {_interval(low, high, 3)}, PiD lower in "
        f"{100 * diff.win_rate:.0f} % of {diff.n} images{unit_note and f' ({unit_note})'}"
    )
    return {"family": family, "verdict": verdict, "text": text, "ratio": ratio, "low": low,
            "high": high, "win_rate": diff.win_rate, "images": diff.n}  # fmt: skip


def pid_or_baseline(rows: pd.DataFrame, scope: dict[str, Any], device: str) -> list[Answer]:
    baselines = sorted(d for d in set(rows["decoder"]) if d not in NOT_BASELINES)
    if "pid" not in set(rows["decoder"]):
        return [_absent("pid_or_baseline", scope, "no ok pid rows")]
    if not baselines:
        return [
            _absent(
                "pid_or_baseline", scope,
                "no baseline in the run: add native+bicubic (and native+lanczos or a learned SR "
                "baseline) to decoders:",
            )
        ]  # fmt: skip
    mask, condition = reference_condition(rows)
    judged = rows[mask]
    metric = quality_metric(judged)
    answers = []
    for baseline in baselines:
        pid, base = _paired_frames(judged, baseline)
        if pid.empty:
            answers.append(_absent("pid_or_baseline", {**scope, "baseline": baseline},
                                   f"no cell has ok rows of both pid and {baseline}"))  # fmt: skip
            continue
        families = [
            quality_verdict(pid, base, metric, baseline)
            if metric
            else {"family": "quality", "verdict": None, "reason": "no quality metric measured"},
            ratio_verdict(pid, base, "latency_ms_p50", "latency",
                          "CPU figures, not GPU ones" if device == "cpu" else ""),
            ratio_verdict(pid, base, "peak_mem_allocated_bytes", "memory",
                          "CPU run: peak memory is measured on CUDA only" if device == "cpu" else ""),
        ]  # fmt: skip
        lines = [f.get("text") or f"{f['family']}: – ({f['reason']})" for f in families]
        answers.append(
            Answer(
                "pid_or_baseline", {**scope, "baseline": baseline},
                f"PiD vs {baseline} at {condition}: " + "; ".join(lines),
                evidence={"images": _images(pid), "settings": _settings(pid), "cells": len(pid)},
                numbers={"condition": condition, "families": families},
                links=_links(pid, scope["backbone"], scope["ckpt_type"]),
            )
        )  # fmt: skip
    return answers


# ---- σ -----------------------------------------------------------------------------------------


def sigma(rows: pd.DataFrame, scope: dict[str, Any]) -> Answer:
    pid = rows[rows["decoder"] == "pid"]
    if pid.empty:
        return _absent("sigma", scope, "no ok pid rows")
    steps = pid["pid_steps"].max()
    pid = whole(pid[pid["pid_steps"] == steps])
    if (pid["mode"] == "from_ldm").all():
        return ldm_steps(pid, scope)
    pid = pid[pid["mode"] == "from_clean"]
    sigmas = sorted(pid["sigma"].dropna().unique())
    if len(sigmas) < 2:
        return _absent(
            "sigma",
            scope,
            f"one σ only ({_fmt(sigmas[0]) if sigmas else '–'}): sweep sigmas: in the suite",
        )
    quality, artifact = quality_metric(pid), artifact_metric(pid)
    if quality is None:
        return _absent("sigma", scope, "no quality metric measured")
    if artifact is None:
        return _absent(
            "sigma",
            scope,
            f"no artifact measure ({', '.join(ARTIFACT_PREFERENCE)}) in the suite's metrics",
        )
    points = []
    for value in sigmas:
        at = pid[pid["sigma"] == value]
        q = bootstrap_mean_ci(_per_image(at, f"metric_{quality}"))
        a = bootstrap_mean_ci(_per_image(at, f"metric_{artifact}"))
        points.append({"sigma": float(value), "quality": q[0], "quality_low": q[1],
                       "quality_high": q[2], "artifact": a[0], "images": _images(at)})  # fmt: skip
    frame = pd.DataFrame(points)
    front = pareto_front(
        frame, y="quality", x="artifact", higher_is_better=bool(direction(quality))
    )
    on_front = [float(s) for s in front["sigma"]]
    best_q = max(points, key=lambda p: p["quality"] if direction(quality) else -p["quality"])
    fewest = min(points, key=lambda p: p["artifact"])
    text = (
        f"σ on the front of {quality} against {artifact}: {', '.join(f'{s:g}' for s in on_front)}; "
        f"best {quality} at σ={best_q['sigma']:g} ({_fmt(best_q['quality'])}), "
        f"least {artifact} at σ={fewest['sigma']:g} ({_fmt(fewest['artifact'])})"
    )
    return Answer("sigma", scope, text,
                  evidence={"images": _images(pid), "sigmas": len(sigmas), "cells": len(pid)},
                  numbers={"quality_metric": quality, "artifact_metric": artifact,
                           "points": points, "front": on_front},
                  links=_links(pid, scope["backbone"], scope["ckpt_type"]))  # fmt: skip


def ldm_steps(pid: pd.DataFrame, scope: dict[str, Any]) -> Answer:
    """from_ldm: stop the LDM at step K and decode x_t with PiD, against the full LDM (x0)."""
    steps = sorted(int(s) for s in pid["save_xt_step"].dropna().unique())
    if not steps:
        return _absent("sigma", scope, "from_ldm with x0 only: list save_xt_steps: in the suite")
    quality = quality_metric(pid)
    full = pid[pid["save_xt_step"].isna()]
    points = []
    for step in steps:
        at = pid[pid["save_xt_step"] == step]
        saved = float((at["ldm_total_ms"] - at["ldm_ms_to_step"]).mean())
        point = {
            "step": step,
            "ldm_ms_saved": saved,
            "ldm_total_ms": float(at["ldm_total_ms"].mean()),
        }
        if quality and not full.empty:
            diff = paired_difference_ci(
                _per_image(at, f"metric_{quality}"), _per_image(full, f"metric_{quality}"),
                higher_is_better=bool(direction(quality)),
            )  # fmt: skip
            point |= {
                "quality_diff": diff.mean,
                "low": diff.low,
                "high": diff.high,
                "images": diff.n,
            }
        points.append(point)
    lines = []
    for p in points:
        share = 100 * p["ldm_ms_saved"] / p["ldm_total_ms"] if p["ldm_total_ms"] else float("nan")
        line = f"step {p['step']}: saves {p['ldm_ms_saved']:.0f} ms of the LDM ({share:.0f} %)"
        if "quality_diff" in p:
            line += f", {quality} vs x0 {p['quality_diff']:+.4g} {_interval(p['low'], p['high'])}"
        lines.append(line)
    text = "stop the LDM at step K and decode x_t with PiD: " + "; ".join(lines)
    return Answer("sigma", scope, text, evidence={"images": _images(pid), "steps": len(steps)},
                  numbers={"quality_metric": quality, "points": points},
                  links=_links(pid, scope["backbone"], scope["ckpt_type"]))  # fmt: skip


# ---- PiD steps -----------------------------------------------------------------------------


def steps(rows: pd.DataFrame, scope: dict[str, Any]) -> Answer:
    pid = whole(rows[rows["decoder"] == "pid"])
    values = sorted(int(s) for s in pid["pid_steps"].dropna().unique())
    if len(values) < 2:
        return _absent(
            "steps",
            scope,
            f"one pid_steps value ({values[0] if values else '–'}): list pid_steps: [1, 2, 3, 4] in the suite",
        )
    clean = pid["mode"] == "from_clean"
    if clean.any():
        pid = pid[~clean | (pid["sigma"] == pid.loc[clean, "sigma"].min())]
    quality = quality_metric(pid)
    if quality is None:
        return _absent("steps", scope, "no quality metric measured")
    better_high = bool(direction(quality))
    column = f"metric_{quality}"
    means = {s: _per_image(pid[pid["pid_steps"] == s], column) for s in values}
    best = max(values, key=lambda s: means[s].mean() if better_high else -means[s].mean())
    enough = best
    points = []
    for s in values:
        diff = paired_difference_ci(means[s], means[best], higher_is_better=better_high)
        within = s == best or (not math.isnan(diff.low) and diff.low <= 0 <= diff.high)
        points.append({"pid_steps": s, "mean": float(means[s].mean()), "diff_vs_best": diff.mean,
                       "low": diff.low, "high": diff.high, "within_best": within})  # fmt: skip
    enough = min(p["pid_steps"] for p in points if p["within_best"])
    text = (
        f"{enough} PiD {'step suffices' if enough == 1 else 'steps suffice'}: the smallest count "
        f"whose {quality} is within the 95 % interval of the best ({best} "
        f"{'step' if best == 1 else 'steps'}, {_fmt(points[values.index(best)]['mean'])})"
    )
    return Answer("steps", scope, text,
                  evidence={"images": _images(pid), "step_counts": len(values)},
                  numbers={"quality_metric": quality, "best": best, "enough": enough, "points": points},
                  links=_links(pid, scope["backbone"], scope["ckpt_type"]))  # fmt: skip


# ---- checkpoint type -----------------------------------------------------------------------


def checkpoint(rows: pd.DataFrame, backbone: str) -> list[Answer]:
    scope = {"backbone": backbone}
    pid = rows[(rows["decoder"] == "pid") & (rows["backbone"] == backbone)]
    types = sorted(pid["ckpt_type"].unique())
    if len(types) < 2:
        return [
            _absent(
                "checkpoint",
                scope,
                f"one checkpoint type ({', '.join(types) or '–'}): list ckpt_types: in the suite",
            )
        ]
    mask, condition = reference_condition(pid)
    pid = pid[mask]
    quality = quality_metric(pid)
    answers = []
    for (h, w), at in pid.groupby(["out_height", "out_width"]):
        present = sorted(at["ckpt_type"].unique())
        size_scope = {**scope, "size": f"{h}x{w}"}
        if len(present) < 2 or quality is None:
            why = (
                "no quality metric measured"
                if quality is None
                else f"only {present[0]} at this size"
            )
            answers.append(_absent("checkpoint", size_scope, why))
            continue
        better_high = bool(direction(quality))
        means = {t: _per_image(at[at["ckpt_type"] == t], f"metric_{quality}") for t in present}
        best = max(present, key=lambda t: means[t].mean() if better_high else -means[t].mean())
        parts, points = [], []
        for t in present:
            diff = paired_difference_ci(means[t], means[best], higher_is_better=better_high)
            points.append({"ckpt_type": t, "mean": float(means[t].mean()), "diff_vs_best": diff.mean,
                           "low": diff.low, "high": diff.high})  # fmt: skip
            if t != best:
                clear = not math.isnan(diff.low) and not (diff.low <= 0 <= diff.high)
                parts.append(f"{t} {diff.mean:+.4g} {_interval(diff.low, diff.high)}"
                             + ("" if clear else " (no clear difference)"))  # fmt: skip
        text = f"at {h}x{w} ({condition}) best {quality}: {best}; against it " + "; ".join(parts)
        answers.append(Answer("checkpoint", size_scope, text,
                              evidence={"images": _images(at), "checkpoint_types": len(present)},
                              numbers={"quality_metric": quality, "best": best, "points": points},
                              links=[link for t in present for link in _links(at[at["ckpt_type"] == t], backbone, t)]))  # fmt: skip
    return answers


# ---- what fits -----------------------------------------------------------------------------


def _net_config(backbone: str, ckpt_type: str) -> dict[str, Any] | None:
    from pid_models.registry import EMBEDDED_PAIRS, resolve

    if (backbone, ckpt_type) in EMBEDDED_PAIRS:
        from pid_models.tiny import TINY_NET_KWARGS

        return dict(TINY_NET_KWARGS)
    try:
        return dict(resolve(backbone, ckpt_type).net_kwargs)
    except Exception:  # an unknown pair: nothing to model
        return None


def _largest_tile(config: dict[str, Any], side: int, budget: int) -> int | None:
    from pid_models.tiling import MemoryBudgetError, check_memory_budget, tile_unit

    unit = tile_unit(config)
    tile = (side // 2 // unit) * unit
    while tile >= 4 * unit:
        try:
            check_memory_budget(config, (side, side), budget, tile, min(256, tile // 2))
            return tile
        except (MemoryBudgetError, ValueError):
            tile = ((tile // 2) // unit) * unit
    return None


def fits(rows: pd.DataFrame, backbone: str, ckpt_type: str, gpu_gb: list[float]) -> Answer:
    """Per GPU size: the largest square output decoded whole, then the tile size that fits at the
    next size; measured peaks (CUDA rows of PiD, untiled) where the run has them."""
    from pid_models.tiling import estimate_peak_bytes, full_config

    scope = {"backbone": backbone, "ckpt_type": ckpt_type}
    config = _net_config(backbone, ckpt_type)
    if config is None:
        return _absent("fits", scope, "no network configuration known for this pair")
    config = full_config(config)
    pid = rows[rows["decoder"] == "pid"]
    if "tile_size" in pid:
        pid = pid[pid["tile_size"].isna()]
    measured = {}
    if "peak_mem_allocated_bytes" in pid:
        for (h, w), at in pid.groupby(["out_height", "out_width"]):
            peak = at["peak_mem_allocated_bytes"].max()
            if not pd.isna(peak):
                measured[max(h, w)] = int(peak)
    table = []
    for gb in gpu_gb:
        budget = int(gb * GIB)
        whole, source = None, "memory model"
        for side in FIT_SIDES:
            need = measured.get(side)
            src = "measured" if need is not None else "memory model"
            if need is None:
                need = estimate_peak_bytes(config, (side, side))
            if need * 1.10 > budget:
                break  # larger outputs need more
            whole, source = side, src
        beyond = next((s for s in FIT_SIDES if whole is None or s > whole), None)
        tile = _largest_tile(config, beyond, budget) if beyond else None
        table.append({"gpu_gb": gb, "whole": whole, "whole_source": source, "next_side": beyond,
                      "tile": tile, "tile_source": "memory model"})  # fmt: skip
    parts = []
    for t in table:
        largest = "≥ " if t["whole"] == FIT_SIDES[-1] else ""
        whole = (
            f"{largest}{t['whole']}² whole ({t['whole_source']})" if t["whole"] else "no size whole"
        )
        tile = f", {t['next_side']}² in tiles of {t['tile']}" if t["tile"] else ""
        parts.append(f"{t['gpu_gb']:g} GB: {whole}{tile}")
    text = "; ".join(parts) + " (PiD's decode only, bf16, 10 % headroom)"
    tiled = tiling_cost(rows)
    if tiled:
        text += ". Measured tiled decodes: " + "; ".join(t["text"] for t in tiled)
    return Answer("fits", scope, text, evidence={"measured_sizes": sorted(measured)},
                  numbers={"table": table, "tiled": tiled})  # fmt: skip


def tiling_cost(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """Per PiD tile size the run decoded with (`tiles:`): PiD's mean seam_score beside the
    baselines' at the same boundaries (their no-seam level), and PiD's quality against its whole
    decode of the same images (a paired difference with its interval)."""
    if "tile" not in rows or "metric_seam_score" not in rows:
        return []
    ok = rows[rows["status"] == "ok"]
    pid = ok[ok["decoder"] == "pid"]
    quality = quality_metric(pid)
    costs = []
    for tile, at in pid[pid["tile"] > 0].groupby("tile"):
        others = ok[(ok["tile"] == tile) & ~ok["decoder"].isin(["pid", "pid-teacher"])]
        seam, level = at["metric_seam_score"].mean(), others["metric_seam_score"].mean()
        if pd.isna(seam):
            continue
        entry = {"tile": int(tile), "seam_score": float(seam),
                 "seam_score_baselines": None if pd.isna(level) else float(level)}  # fmt: skip
        text = f"tiles of {int(tile)}: seam_score {_fmt(seam, 3)}"
        if not pd.isna(level):
            text += f" (the other decoders {_fmt(level, 3)} at the same boundaries)"
        untiled = pid[pid["tile"] == 0]
        if quality and not untiled.empty:
            keys = [k for k in ("sigma", "pid_steps", "out_height", "out_width") if k in pid]
            column = f"metric_{quality}"
            both = at.merge(untiled, on=[*keys, "image_id", "seed"], suffixes=("", "_whole"))
            diff = paired_difference_ci(
                both[column].tolist(),
                both[f"{column}_whole"].tolist(),
                higher_is_better=bool(direction(quality)),
            )
            if diff.n:
                entry |= {"quality_metric": quality, "diff_vs_whole": diff.mean,
                          "low": diff.low, "high": diff.high, "n_pairs": diff.n}  # fmt: skip
                text += (
                    f", {quality} tiled − whole {_fmt(diff.mean)} "
                    f"{_interval(diff.low, diff.high)} over {diff.n} pairs"
                )
        costs.append(entry | {"text": text})
    return costs


# ---- the whole run -------------------------------------------------------------------------


def recommendations(rows: pd.DataFrame, meta: dict[str, Any]) -> dict[str, Any]:
    """Every answer of the run as JSON-able data (recommendations.json)."""
    from pid_bench.render import uses_trained_embedded

    on_cuda = "device" in rows and rows["device"].astype(str).str.startswith("cuda").any()
    device = "cuda" if on_cuda else "cpu"
    gpus = [float(g) for g in (meta.get("environment") or {}).get("gpu_memory_gb", []) if g]
    sizes = sorted({*GPU_SIZES_GB, *gpus})
    answers: list[Answer] = []
    for (backbone, ckpt_type), part in rows.groupby(["backbone", "ckpt_type"], sort=True):
        scope = {"backbone": backbone, "ckpt_type": ckpt_type}
        answers += pid_or_baseline(part, scope, device)
        answers.append(sigma(part, scope))
        answers.append(steps(part, scope))
        answers.append(fits(part, backbone, ckpt_type, sizes))
    for backbone in sorted(rows["backbone"].unique()):
        answers += checkpoint(rows, backbone)
    notes = []
    if uses_trained_embedded(list(rows["backbone"].unique())) or set(rows["backbone"]) & {
        "tiny-random"
    }:
        notes.append(
            "These recommendations are about the tiny embedded networks of a CPU smoke run, "
            "not about NVIDIA's PiD: run the GPU suite (suites/questions.yaml) for real answers."
        )
    if device == "cpu":
        notes.append("CPU run: latencies are CPU figures, and no peak memory was measured.")
    return {
        "schema_version": SCHEMA_VERSION,
        "device": device,
        "notes": notes,
        "answers": [_jsonable(asdict(a)) for a in answers],
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) or math.isinf(value) else float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value
