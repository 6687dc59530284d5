"""Where a sweep's wall time goes, cell by cell: is the device kept busy?

    python benchmarks/sweep_throughput.py [--sizes 1024,2048] [--limit 2] [--backbone NAME]
        [--out DIR] [--json PATH]
    python benchmarks/sweep_throughput.py --png-levels [--size 2048]

Runs a small from_clean sweep with `pid-bench run` (a subprocess, as a user runs it: local Ray,
one worker per device) per output size: the embedded tiny backbone by default; on a GPU pass
`--backbone flux` with the checkpoints in place (the suites have no full-size random-weight
backbone; benchmarks/device_check.py times that network's decode alone), four decoders (pid, native, native+bicubic,
native+lanczos), the weight-free per-row metric set of the ready suites plus fid/kid, one
warm-up and two timed repeats. Then it reads the rows back and prints, per cell:

- wall: the cell on the worker (`cell_wall_ms`);
- decode: every decoder's timed repeats plus its warm-up (`latency_ms`, `warmup_ms`): the
  device-busy time;
- prepare: native encode + caption (`encode_ms`, `caption_ms`);
- metrics: the decoders' scoring (`score_ms`), and per metric summed over the decoders
  (`score_ms_by_metric`);
- writes: the PNG writer's work on its threads (`images_ms`) and the part of it the cell waited
  for (`images_wait_ms`: what the writes cost the critical path);
- features: the set-level feature extraction (`features_ms`);
- persist: writing the cell's rows as a Parquet part (timed here by rewriting them with
  `pid_bench.store.write_part` into a scratch folder: the driver does exactly that per cell);
- busy: decode / wall, the device-busy share.

A column that an older checkout's rows lack prints as "–" (run the script with
PYTHONPATH=<old checkout> to get a "before" table: the rows say what that version measured).

--png-levels times PIL's PNG writer at each zlib level on a 2048² photograph (a Kodak image
upscaled bicubic with fine noise, like a decode): the measurement behind
`pid_bench.images.PNG_COMPRESS_LEVEL`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METRICS = [
    "psnr", "ssim", "twin_psnr", "twin_ssim", "lq_color_de2000", "midtone_chroma_shift",
    "shadow_green_bias", "hf_energy_ratio", "speck_rate", "speck_rate_skin",
    "speck_ratio_bicubic", "fid", "kid",
]  # fmt: skip
DECODERS = ["pid", "native", "native+bicubic", "native+lanczos"]


def suite_text(size: int, limit: int, backbone: str) -> str:
    return json.dumps(
        {
            "name": f"sweep_throughput_{size}",
            "mode": "from_clean",
            "backbones": [backbone],
            "ckpt_types": ["2k"],
            "sigmas": [0.0],
            "resolutions": [size],
            "decoders": DECODERS,
            "metrics": METRICS,
            "source": str(REPO / "manifests" / "kodak.jsonl"),
            "limit": limit,
            "timing": {"warmup": 1, "repeats": 2, "min_time_s": 0},
            "save_images": True,
            "reference": "upsampled",  # every full-reference metric runs: costs, not quality
        }
    )


def run_sweep(size: int, limit: int, backbone: str, out: Path) -> tuple[Path, float]:
    suite = out / f"suite_{size}.yaml"
    suite.write_text(suite_text(size, limit, backbone))  # JSON is YAML
    run_dir = out / f"run_{size}"
    cli = [sys.executable, "-c", "from pid_bench.cli import app; app()"]  # this interpreter's
    shutil.rmtree(run_dir, ignore_errors=True)  # every cell computed afresh
    command = [*cli, "run", str(suite), "--output", str(run_dir), "--no-report"]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return run_dir, time.perf_counter() - started


def read_rows(run_dir: Path):
    import pandas as pd

    from pid_bench.store import part_files

    return pd.concat([pd.read_parquet(p) for p in part_files(run_dir)], ignore_index=True)


def persist_ms(run_dir: Path, cell_id: str, scratch: Path) -> float:
    """Milliseconds `write_part` takes for the cell's rows (what the driver does per cell)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from pid_bench.store import part_files, write_part

    records = []
    for part in part_files(run_dir):
        table = pq.read_table(part)
        records += table.filter(pc.equal(table["cell_id"], cell_id)).to_pylist()
    started = time.perf_counter()
    write_part(scratch, records)
    return (time.perf_counter() - started) * 1000


def _get(frame, column, how="first"):
    if column not in frame or frame[column].isna().all():
        return None
    values = frame[column].dropna()
    return float(values.iloc[0] if how == "first" else values.sum())


def cell_table(rows, run_dir: Path, scratch: Path) -> list[dict]:
    table = []
    for cell_id, cell in rows[rows["status"] == "ok"].groupby("cell_id", sort=True):
        warmup = _get(cell, "warmup_ms", "sum")
        if warmup is None:  # older rows: the warm-up estimated at the p50, as the report does
            warmup = float((cell["latency_ms_p50"] * cell["warmup"]).sum())
        decode = sum(sum(r) for r in cell["latency_ms"]) + warmup
        by_metric: dict[str, float] = {}
        for text in cell.get("score_ms_by_metric", []):
            for name, ms in (json.loads(text) if isinstance(text, str) else {}).items():
                by_metric[name] = by_metric.get(name, 0.0) + ms
        wall = _get(cell, "cell_wall_ms")
        table.append(
            {
                "cell_id": cell_id,
                "size": f"{int(cell['out_height'].iloc[0])}²",
                "wall_ms": wall,
                "decode_ms": decode,
                "warmup_measured": "warmup_ms" in cell and cell["warmup_ms"].notna().any(),
                "prepare_ms": (_get(cell, "encode_ms") or 0) + (_get(cell, "caption_ms") or 0),
                "metrics_ms": _get(cell, "score_ms", "sum"),
                "by_metric_ms": by_metric,
                "writes_ms": _get(cell, "images_ms"),
                "writes_wait_ms": _get(cell, "images_wait_ms"),
                "features_ms": _get(cell, "features_ms"),
                "persist_ms": persist_ms(run_dir, cell_id, scratch),
                "busy": decode / wall if wall else None,
            }
        )
    return table


def fmt(value) -> str:
    return "–" if value is None else f"{value:.0f}"


def print_table(table: list[dict]) -> None:
    columns = ["size", "wall_ms", "decode_ms", "prepare_ms", "metrics_ms", "writes_ms",
               "writes_wait_ms", "features_ms", "persist_ms", "busy"]  # fmt: skip
    print("| cell | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for row in table:
        cells = [row["size"]] + [fmt(row[c]) for c in columns[1:-1]]
        busy = "–" if row["busy"] is None else f"{100 * row['busy']:.1f} %"
        print(f"| {row['cell_id']} | " + " | ".join(cells) + f" | {busy} |")
    metrics = sorted({m for row in table for m in row["by_metric_ms"]})
    if metrics:
        print("\nper metric, ms per cell (summed over the cell's decoders):")
        print("| cell | " + " | ".join(metrics) + " |")
        print("|---" * (len(metrics) + 1) + "|")
        for row in table:
            values = [fmt(row["by_metric_ms"].get(m)) for m in metrics]
            print(f"| {row['cell_id']} | " + " | ".join(values) + " |")


def summary(table: list[dict]) -> None:
    def mean(part: list[dict], key: str) -> float | None:
        values = [r[key] for r in part if r[key] is not None]
        return statistics.fmean(values) if values else None

    for size in sorted({r["size"] for r in table}):
        part = [r for r in table if r["size"] == size]

        wall, decode = mean(part, "wall_ms"), mean(part, "decode_ms")
        print(
            f"{size}: {len(part)} cells, per cell wall {fmt(wall)} ms, decode {fmt(decode)} ms, "
            f"metrics {fmt(mean(part, 'metrics_ms'))} ms, writes {fmt(mean(part, 'writes_ms'))} ms on the "
            f"writer ({fmt(mean(part, 'writes_wait_ms'))} ms waited), features "
            f"{fmt(mean(part, 'features_ms'))} ms, persist {fmt(mean(part, 'persist_ms'))} ms; device busy "
            f"{100 * decode / wall:.1f} % of the cell's wall"
        )


def png_levels(size: int) -> None:
    """Write time and size of one photograph-like image at each zlib level."""
    import numpy as np
    import torch
    from PIL import Image

    from pid_bench.manifests import load_image, load_manifest
    from pid_bench.metrics import bicubic_resize

    items = {item.id: item for item in load_manifest(REPO / "manifests" / "kodak.jsonl")}
    image = load_image(items["kodim04"])  # [3, H, W] in [-1, 1]
    big = bicubic_resize(image[None].float(), (size, size))[0]
    big = big + 0.01 * torch.randn(big.shape, generator=torch.Generator().manual_seed(0))
    pixels = ((big.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    print(f"PNG writes of a {size}² photograph-like image (PIL, median of 3):")
    print("| level | ms | MB |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "x.png"
        for level in (0, 1, 3, 6, 9):
            times = []
            for _ in range(3):
                started = time.perf_counter()
                Image.fromarray(np.ascontiguousarray(pixels)).save(path, compress_level=level)
                times.append((time.perf_counter() - started) * 1000)
            mb = path.stat().st_size / 1e6
            print(f"| {level} | {statistics.median(times):.0f} | {mb:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1024,2048")
    parser.add_argument("--limit", type=int, default=2, help="images per size")
    parser.add_argument("--backbone", default="tiny", help="flux etc. on a GPU with weights")
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here")
    parser.add_argument("--json", type=Path, default=None, help="write the table as JSON")
    parser.add_argument("--png-levels", action="store_true")
    parser.add_argument("--size", type=int, default=2048, help="--png-levels: image side")
    args = parser.parse_args()
    if args.png_levels:
        png_levels(args.size)
        return
    import torch

    backbone = args.backbone
    out = args.out or Path(tempfile.mkdtemp(prefix="sweep_throughput_"))
    out.mkdir(parents=True, exist_ok=True)
    table = []
    for size in (int(s) for s in args.sizes.split(",")):
        run_dir, seconds = run_sweep(size, args.limit, backbone, out)
        print(f"{size}²: `pid-bench run` took {seconds:.1f} s (Ray start-up and model loading "
              "included)")  # fmt: skip
        table += cell_table(read_rows(run_dir), run_dir, out / f"persist_{size}")
    print(f"\nbackbone {backbone}, device {'cuda' if torch.cuda.is_available() else 'cpu'}")
    print_table(table)
    print()
    summary(table)
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
