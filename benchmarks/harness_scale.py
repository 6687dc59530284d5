"""How the harness itself scales: planning, resuming, reporting and per-cell overhead.

    python benchmarks/harness_scale.py [--cells 100000] [--parts 10000] [--rows 100000]

Measures, on this machine, with the tiny backbone and synthetic rows (no decoding):
  plan     expand and hash a suite of --cells cells (`pid_bench.runner.plan`);
  plan as typed
           `pid-bench plan SUITE` in a fresh process on a suite of --cells cells shaped as
           users write them (N sigmas x 5 sizes x 10 seeds x 2 images): wall time and peak RSS;
  resume   scan a run directory of --parts one-cell parts for finished cells
           (`store.finished_rows`), before and after `pid-bench compact` merges them;
  report   build the report (leaderboard, sections, plots) over --rows rows;
  overhead the driver's own work per cell: persisting its rows as a part (write_part).
Targets (issue "Compare, scale"): plan 100k cells < 10 s, resume 10k parts < 5 s, report 100k
rows < 60 s, overhead < 5 ms per cell. Prints one table; writes --json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TARGETS = {"plan": 10.0, "plan_cli": 10.0, "resume": 5.0, "report": 60.0, "overhead_ms": 5.0}


def _suite(folder: Path, cells: int) -> Path:
    """A tiny-backbone suite of about `cells` cells: 10 sigmas x 10 sizes x N seeds x 2 images."""
    seeds = max(1, cells // (10 * 10 * 2))
    spec = {
        "name": "scale", "backbones": ["tiny"], "ckpt_types": ["2k"],
        "sigmas": [round(0.1 * i, 1) for i in range(10)],
        "resolutions": [64 * (i + 1) for i in range(10)], "seeds": list(range(seeds)),
        "decoders": ["pid", "native", "native+bicubic"], "metrics": ["psnr"],
        "source": str(REPO / "manifests" / "smoke.jsonl"),
    }  # fmt: skip
    path = folder / "scale.yaml"
    path.write_text(json.dumps(spec))
    return path


def _typed_plan(folder: Path, cells: int) -> tuple[float, float, int]:
    """`pid-bench plan` as a user types it: (wall s, peak RSS MB, lines printed)."""
    import resource
    import subprocess

    sigmas = max(1, cells // (5 * 10 * 2))
    spec = {
        "name": "scale_cli", "backbones": ["tiny"], "ckpt_types": ["2k"],
        "sigmas": [round(i / sigmas, 6) for i in range(sigmas)],
        "resolutions": [64 * (i + 1) for i in range(5)], "seeds": list(range(10)),
        "decoders": ["pid", "native", "native+bicubic"], "metrics": ["psnr"],
        "source": str(REPO / "manifests" / "smoke.jsonl"),
    }  # fmt: skip
    path = folder / "scale_cli.yaml"
    path.write_text(json.dumps(spec))
    command = [str(Path(sys.executable).with_name("pid-bench")), "plan", str(path)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return wall, peak_mb, len(done.stdout.splitlines())


def _rows(planned, decoders, limit: int) -> list[dict]:
    from pid_bench.timing import utc_now

    rows = []
    for cid, cell in planned:
        for decoder in decoders:
            rows.append({
                "run_id": "scale", "suite": "scale", "cell_id": cid, "decoder": decoder,
                "status": "ok", "mode": cell.mode, "backbone": cell.backbone,
                "ckpt_type": cell.ckpt_type, "sigma": cell.sigma, "seed": cell.seed,
                "pid_steps": cell.pid_steps, "image_id": cell.item.id,
                "out_height": cell.resolution[0], "out_width": cell.resolution[1],
                "latency_ms": [1.0, 1.1], "latency_ms_p50": 1.05, "metric_psnr": 30.0 + cell.sigma,
                "finished_at": utc_now(), "precision": "fp32", "compile": "eager",
            })  # fmt: skip
            if len(rows) >= limit:
                return rows
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--parts", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from pid_bench.report import write_report
    from pid_bench.runner import plan
    from pid_bench.store import compact, finished_rows, write_json, write_part, write_plan
    from pid_bench.suite import load_suite

    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        suite = load_suite(_suite(folder, args.cells))
        started = time.perf_counter()
        planned = plan(suite)
        results["plan"] = time.perf_counter() - started
        results["cells"] = len(planned)
        results["plan_cli"], results["plan_cli_rss_mb"], results["plan_cli_lines"] = _typed_plan(
            folder, args.cells
        )

        run_dir = folder / "run"
        run_dir.mkdir()
        rows = _rows(planned, suite.decoders, max(args.rows, args.parts * len(suite.decoders)))
        per_cell = len(suite.decoders)
        started = time.perf_counter()
        for i in range(0, per_cell * args.parts, per_cell):  # one part per cell, as a run writes
            write_part(run_dir, rows[i : i + per_cell])
        results["overhead_ms"] = (time.perf_counter() - started) * 1000 / args.parts
        results["parts"] = args.parts
        started = time.perf_counter()
        done = finished_rows(run_dir)
        results["resume"] = time.perf_counter() - started
        results["rows_found"] = len(done)
        started = time.perf_counter()
        compact(run_dir)
        results["compact"] = time.perf_counter() - started
        started = time.perf_counter()
        finished_rows(run_dir)
        results["resume_compacted"] = time.perf_counter() - started

        if len(rows) > per_cell * args.parts:  # the rest of the report's rows in one part
            write_part(run_dir, rows[per_cell * args.parts :])
        cells = sorted({r["cell_id"] for r in rows})
        write_plan(run_dir, cells)
        write_json(run_dir / "run.json", {"run_id": "run", "suite": suite.resolved(),
                                          "cells": len(cells), "invocations": []})  # fmt: skip
        started = time.perf_counter()
        write_report(run_dir)
        results["report"] = time.perf_counter() - started
        results["report_rows"] = len(rows)
    _print(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


def _print(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="harness scale")
    for column in ("step", "size", "measured", "target", "ok"):
        table.add_column(column)
    lines = [
        ("plan", f"{results['cells']:,} cells", results["plan"], "s"),
        (
            "pid-bench plan (as typed)",
            f"{results['cells']:,} cells, "
            f"{results['plan_cli_lines']} lines, {results['plan_cli_rss_mb']:.0f} MB RSS",
            results["plan_cli"],
            "s",
        ),
        ("resume", f"{results['parts']:,} parts", results["resume"], "s"),
        ("resume after compact", "1 part", results["resume_compacted"], "s"),
        ("compact", f"{results['parts']:,} parts", results["compact"], "s"),
        ("report", f"{results['report_rows']:,} rows", results["report"], "s"),
        ("overhead", "per cell (write_part)", results["overhead_ms"], "ms"),
    ]
    keys = {"plan": "plan", "pid-bench plan (as typed)": "plan_cli", "resume": "resume",
            "report": "report", "overhead": "overhead_ms"}  # fmt: skip
    for name, size, value, unit in lines:
        target = TARGETS.get(keys.get(name, ""))
        verdict = "" if target is None else ("yes" if value < target else "NO")
        shown = f"{value:.2f} {unit}"
        table.add_row(name, size, shown, "" if target is None else f"< {target:g} {unit}", verdict)
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
