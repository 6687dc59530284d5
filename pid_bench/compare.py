"""`pid-bench compare RUN_A RUN_B [RUN_C ...]`: what changed between runs of the same cells.

Rows are matched by what was measured, `(cell_id, decoder)`: the cell id hashes every axis,
the image and the model identity (precision, compile, tiling and TF32 included when set), and
never the code version, the run id or the machine, so a run after a driver update or on
another GPU matches its baseline row for row. Each later run is compared with the first.

Per setting (the report's group keys and decoder): the latency ratio B / A of the rows' p50
(mean of per-cell ratios with a bootstrap 95 % interval), the peak-memory ratio, and per metric
the paired difference B − A with its interval and B's win rate. Cells in only one run are
counted, never hidden.

`--fail-on` (`name=+N%` or `name=-N`, comma-separated) turns a regression into exit code 1 when
the change passes its threshold *and* its interval is clear of no change:

A setting with fewer than `MIN_PAIRS` (3) matched cells is reported "not gated".

* `latency=+5%`: B is more than 5 % slower (ratio mean > 1.05 and interval low > 1);
* `memory=+10%`: the peak allocated memory grew by more than 10 % (CUDA runs);
* `psnr=-0.1`: PSNR fell by more than 0.1 (mean difference < -0.1 and interval high < 0);
  `lpips=+0.01` for a lower-is-better metric; `N%` on a metric is relative to A's mean.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pid_bench.axes import SETTING_KEYS
from pid_bench.board import direction
from pid_bench.rundb import connect
from pid_bench.stats import bootstrap_mean_ci

MATCH_KEYS = ("cell_id", "decoder")
#: A gate judges a setting only with at least this many matched cells: the bootstrap interval
#: of two values says little, and CPU timing noise alone moves a tiny decode by 5-15 %.
MIN_PAIRS = 3
#: What one comparison record is of: a setting (pid_bench.axes) and a decoder.
GROUP_KEYS = (*SETTING_KEYS, "decoder")
_RULE = re.compile(r"^\s*([A-Za-z0-9_:.\-]+)\s*=\s*([+-])\s*([0-9]*\.?[0-9]+)\s*(%?)\s*$")


class CompareError(ValueError):
    """Bad runs or a bad --fail-on rule: one line naming the fix."""


@dataclass(frozen=True)
class Rule:
    """One --fail-on threshold: a regression is `sign` * change > `amount`."""

    name: str
    sign: int  # +1: an increase is the regression; -1: a decrease
    amount: float
    relative: bool

    def text(self) -> str:
        unit = "%" if self.relative else ""
        value = self.amount * 100 if self.relative else self.amount
        return f"{self.name}={'+' if self.sign > 0 else '-'}{value:g}{unit}"


def parse_rules(text: str | None) -> list[Rule]:
    """`latency=+5%,psnr=-0.1` -> rules; a malformed item is a CompareError naming it."""
    rules = []
    for item in (text or "").split(","):
        if not item.strip():
            continue
        match = _RULE.match(item)
        if match is None:
            raise CompareError(
                f"--fail-on: {item.strip()!r} is not name=+N%, name=-N (e.g. latency=+5%,psnr=-0.1)"
            )
        name, sign, amount, percent = match.groups()
        value = float(amount) / (100 if percent else 1)
        rules.append(Rule(name, 1 if sign == "+" else -1, value, bool(percent)))
    return rules


@dataclass
class Comparison:
    """B against A: one record per (setting, measure), plus the counts of unmatched rows."""

    run_a: str
    run_b: str
    records: list[dict[str, Any]] = field(default_factory=list)
    only_a: int = 0
    only_b: int = 0
    matched: int = 0
    regressions: list[str] = field(default_factory=list)
    ungated: list[str] = field(default_factory=list)  # settings with fewer than MIN_PAIRS cells


def run_labels(run_dirs: Sequence[Path]) -> list[str]:
    """Names that tell the runs apart: each folder's name, or as many trailing path parts as it
    takes when two share a name (runs/a/smoke and runs/b/smoke: a/smoke, b/smoke)."""
    paths = [Path(p).resolve() for p in run_dirs]
    for depth in range(1, max(len(p.parts) for p in paths) + 1):
        labels = [Path(*p.parts[-depth:]).as_posix() for p in paths]
        if len(set(labels)) == len(set(paths)):
            return labels
    return [p.as_posix() for p in paths]


def ok_rows(run_dir: Path) -> pd.DataFrame:
    """The report's rows of a run (latest per cell and decoder), ok ones only."""
    if not (Path(run_dir) / "run.json").is_file():
        raise CompareError(f"{run_dir}: not a run directory (no run.json); pass RUN_DIR paths")
    with connect(Path(run_dir)) as con:
        return con.execute("SELECT * FROM rows WHERE status = 'ok'").df()


def compare(
    run_a: Path, run_b: Path, rules: Sequence[Rule] = (), seed: int = 0, n_resamples: int = 2000
) -> Comparison:
    a, b = ok_rows(run_a), ok_rows(run_b)
    merged = a.merge(b, on=list(MATCH_KEYS), suffixes=("_a", "_b"))
    label_a, label_b = run_labels([Path(run_a), Path(run_b)])
    result = Comparison(label_a, label_b, matched=len(merged))
    result.only_a, result.only_b = len(a) - len(merged), len(b) - len(merged)
    metrics = [c for c in a.columns if c.startswith("metric_") and c != "metric_notes" and c in b]
    keys = [f"{k}_a" if f"{k}_a" in merged else k for k in GROUP_KEYS]
    for setting, group in merged.groupby(keys, dropna=False, sort=True):
        label = _setting_label(dict(zip(GROUP_KEYS, setting, strict=True)))
        for record in _measures(group, metrics, direction, seed, n_resamples):
            result.records.append({"setting": label, **record})
    gated = [(r, rule) for r in result.records for rule in rules if r["measure"] == rule.name]
    result.regressions = [
        f"{r['setting']}: {r['measure']} {r['change']} passes {rule.text()}"
        for r, rule in gated
        if r["n"] >= MIN_PAIRS and _is_regression(r, rule)
    ]
    result.ungated = sorted({r["setting"] for r, _ in gated if r["n"] < MIN_PAIRS})
    return result


def _measures(group: pd.DataFrame, metrics, direction, seed: int, n: int) -> list[dict]:
    out = []
    ratio = (group["latency_ms_p50_b"] / group["latency_ms_p50_a"]).to_numpy(float)
    out.append(_ratio_record("latency", ratio, seed, n, higher_is_worse=True))
    if group["peak_mem_allocated_bytes_a"].notna().any():
        memory = group["peak_mem_allocated_bytes_b"] / group["peak_mem_allocated_bytes_a"]
        out.append(_ratio_record("memory", memory.to_numpy(float), seed, n, higher_is_worse=True))
    for column in metrics:
        a, b = group[f"{column}_a"].to_numpy(float), group[f"{column}_b"].to_numpy(float)
        keep = ~(np.isnan(a) | np.isnan(b))
        if not keep.any():
            continue
        name = column.removeprefix("metric_")
        higher = direction(name)
        diff = b[keep] - a[keep]
        mean, low, high = bootstrap_mean_ci(diff, seed=seed, n_resamples=n)
        better = diff > 0 if higher is not False else diff < 0
        wins = (better.sum() + 0.5 * (diff == 0).sum()) / len(diff)
        out.append({
            "measure": name, "kind": "difference", "mean": mean, "low": low, "high": high,
            "base_mean": float(np.mean(a[keep])), "n": int(keep.sum()), "win_rate": float(wins),
            "higher_is_better": higher,
            "change": f"{mean:+.4g} [{_num(low)}, {_num(high)}]",
        })  # fmt: skip
    return out


def _ratio_record(name: str, ratio: np.ndarray, seed: int, n: int, higher_is_worse: bool) -> dict:
    ratio = ratio[np.isfinite(ratio)]
    mean, low, high = bootstrap_mean_ci(ratio, seed=seed, n_resamples=n)
    return {
        "measure": name, "kind": "ratio", "mean": mean, "low": low, "high": high,
        "n": int(len(ratio)), "win_rate": float(np.mean(ratio < 1)) if len(ratio) else np.nan,
        "higher_is_better": not higher_is_worse,
        "change": f"x{mean:.3f} [{_num(low, 3)}, {_num(high, 3)}]",
    }  # fmt: skip


def _num(value: float, digits: int = 4) -> str:
    return "–" if value is None or np.isnan(value) else f"{value:.{digits}g}"


def _is_regression(record: dict, rule: Rule) -> bool:
    if record["measure"] != rule.name or np.isnan(record["mean"]):
        return False
    if record["kind"] == "ratio":
        change, low, high = record["mean"] - 1, record["low"] - 1, record["high"] - 1
    else:
        change, low, high = record["mean"], record["low"], record["high"]
        if rule.relative:
            base = abs(record["base_mean"]) or np.nan
            change, low, high = change / base, low / base, high / base
    if rule.sign > 0:  # an increase is the regression: the interval must be above zero
        return change > rule.amount and not np.isnan(low) and low > 0
    return change < -rule.amount and not np.isnan(high) and high < 0


def _setting_label(setting: dict[str, Any]) -> str:
    parts = [f"{setting['backbone']}/{setting['ckpt_type']}"]
    if not _missing(setting.get("precision")) and setting.get("precision") != "auto":
        parts.append(str(setting["precision"]))
    if not _missing(setting.get("compile")) and setting.get("compile") != "eager":
        parts.append(str(setting["compile"]))
    parts.append(f"{int(setting['out_height'])}x{int(setting['out_width'])}")
    parts.append(f"σ={float(setting['sigma']):g}")
    if not _missing(setting.get("save_xt_step")):
        parts.append(f"x_t {int(setting['save_xt_step'])}")
    return " · ".join(parts) + f" · {setting['decoder']}"


def _missing(value: Any) -> bool:
    return value is None or bool(pd.isna(value))


# ---- output ------------------------------------------------------------------------------------

_HEADERS = ("setting", "measure", "B vs A [95 % CI]", "B better", "n")


def table_rows(result: Comparison) -> list[list[str]]:
    return [
        [r["setting"], r["measure"], r["change"],
         "–" if np.isnan(r["win_rate"]) else f"{100 * r['win_rate']:.0f} %", str(r["n"])]
        for r in result.records
    ]  # fmt: skip


def counts_line(result: Comparison) -> str:
    """How many rows matched, and how many each run has that the other lacks."""
    return (
        f"{result.matched} rows matched; {result.only_a} only in {result.run_a}, "
        f"{result.only_b} only in {result.run_b}"
    )


def _summary(result: Comparison) -> str:
    return f"B {result.run_b} vs A {result.run_a}: {counts_line(result)} (matched by cell, decoder)"


def markdown(results: Sequence[Comparison], rules: Sequence[Rule]) -> str:
    lines = ["# pid-bench compare", ""]
    if rules:
        lines += [f"Regression gate: {', '.join(r.text() for r in rules)}", ""]
    for result in results:
        lines += [f"## {result.run_b} vs {result.run_a}", "", _summary(result), ""]
        lines += ["| " + " | ".join(_HEADERS) + " |", "|" + "---|" * len(_HEADERS)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"
                  for row in table_rows(result)]  # fmt: skip
        lines += [""] + [f"- REGRESSION {r}" for r in result.regressions]
        lines += [f"- not gated ({MIN_PAIRS}+ cells needed): {u}" for u in result.ungated] + [""]
    lines.append(
        "Latency and memory: mean of per-cell ratios B / A (< 1: B faster or smaller). Metrics: "
        "mean paired difference B − A. Intervals: percentile bootstrap over cells."
    )
    return "\n".join(lines) + "\n"


def html_page(results: Sequence[Comparison], rules: Sequence[Rule]) -> str:
    esc = html.escape
    body = ["<h1>pid-bench compare</h1>"]
    if rules:
        body.append(f"<p>Regression gate: {esc(', '.join(r.text() for r in rules))}</p>")
    for result in results:
        body.append(
            f"<h2>{esc(result.run_b)} vs {esc(result.run_a)}</h2><p>{esc(_summary(result))}</p>"
        )
        head = "".join(f"<th>{esc(h)}</th>" for h in _HEADERS)
        rows = "".join(
            "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
            for row in table_rows(result)
        )
        body.append(f'<div class="scroll"><table><tr>{head}</tr>{rows}</table></div>')
        body += [f'<p class="bad">REGRESSION {esc(r)}</p>' for r in result.regressions]
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px}.scroll{overflow-x:auto}.bad{color:#b00}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>pid-bench compare</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )
