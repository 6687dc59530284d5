"""What the per-row metrics cost per decoder output, on this machine.

    python benchmarks/metric_cost.py [--size 2048] [--repeats 3] [--metrics a,b,...]
        [--device cpu] [--json PATH]

Builds one realistic cell at ``--size``² the way `pid_bench.cell.metric_context` does: a shipped
Kodak photograph (kodim04, a portrait: the skin metrics get a value) upsampled bicubic to the
size is the reference, its bicubic downsample to size/4 (PiD's scale 4) plus a slight colour
cast is the native decode, and the "decode" is the reference with a colour cast, fine noise and
a few bright specks (so every metric has work to do). A 2x2 tile plan (seams at the centre,
period 32 as FLUX 2k's) feeds seam_score. Then it calls `pid_bench.metrics.measure` --repeats
times (after one warm-up), each time on a fresh copy of the decode (so no per-image memo is
reused across calls), and prints per metric the median milliseconds `measure` recorded, and
the median wall time of the whole call: the cost per decoder output.

--metrics defaults to the weight-free per-row metrics the shipped suites use (suites/*.yaml):
the ones with weights (lpips, twin_lpips, dists, niqe, musiq, clipiqa, ...) are added only
when `weight_status` finds their files; latent_consistency needs a codec and is left out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: Per-row metrics of the shipped suites that need no weights.
WEIGHT_FREE = (
    "psnr",
    "ssim",
    "twin_psnr",
    "twin_ssim",
    "twin_pass",
    "lq_color_de2000",
    "midtone_chroma_shift",
    "shadow_green_bias",
    "hf_energy_ratio",
    "speck_rate",
    "speck_rate_skin",
    "speck_ratio_bicubic",
    "seam_score",
)
#: Metrics of the shipped suites that need weights: measured only where they are present.
WITH_WEIGHTS = ("lpips", "twin_lpips", "niqe", "musiq", "clipiqa", "maniqa", "topiq_nr")


def default_metrics() -> list[str]:
    from pid_bench.metrics import weight_status

    present = [n for n in WITH_WEIGHTS if weight_status(n).status == "present"]
    return [*WEIGHT_FREE, *present]


def build_cell(size: int, device: str):
    """(decode [1, 3, size, size] in [0, 1], MetricContext) of one realistic cell."""
    import torch

    from pid_bench.manifests import load_image, load_manifest
    from pid_bench.metrics import MetricContext
    from pid_bench.metrics.base import bicubic_resize, to_unit_range

    items = {i.id: i for i in load_manifest(REPO / "manifests" / "kodak.jsonl")}
    source = to_unit_range(load_image(items["kodim04"]))[None]  # [1, 3, 768, 512]
    reference = bicubic_resize(source, (size, size)).clamp(0, 1)
    g = torch.Generator().manual_seed(0)
    cast = torch.tensor([0.01, -0.005, 0.004]).view(1, 3, 1, 1)
    native = (bicubic_resize(reference, (size // 4, size // 4)) - 0.5 * cast).clamp(0, 1)
    decode = reference + cast + 0.02 * torch.randn(reference.shape, generator=g)
    ys = torch.randint(0, size, (200,), generator=g)
    xs = torch.randint(0, size, (200,), generator=g)
    decode[0, :, ys, xs] += 0.4  # isolated bright specks
    decode = decode.clamp(0, 1)
    middle = size // 2
    context = MetricContext(
        reference=reference.to(device),
        native=native.to(device),
        scale=4,
        tile_boundaries=((middle,), (middle,)),
        seam_period=32,
    )
    return decode.to(device), context


def run(size: int, repeats: int, names: list[str], device: str) -> dict:
    import torch

    from pid_bench.metrics import measure

    decode, context = build_cell(size, device)
    per_metric: dict[str, list[float]] = {n: [] for n in names}
    totals: list[float] = []
    values = {}
    for i in range(repeats + 1):  # the first call warms up (imports, allocator)
        image = decode.clone()
        if device != "cpu":
            torch.cuda.synchronize()
        started = time.perf_counter()
        result = measure(names, image, context)
        if device != "cpu":
            torch.cuda.synchronize()
        total = (time.perf_counter() - started) * 1000
        if i == 0:
            values = {n: result.values.get(n) for n in names}
            reasons = dict(result.reasons)
            continue
        totals.append(total)
        for n in names:
            per_metric[n].append(result.milliseconds[n])
    return {
        "size": size,
        "repeats": repeats,
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "ms": {n: statistics.median(v) for n, v in per_metric.items()},
        "total_ms": statistics.median(totals),
        "values": values,
        "reasons": reasons,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=2048, help="decode side in px (default 2048)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after one warm-up")
    parser.add_argument("--metrics", default=None, help="comma-separated (default: see --help)")
    parser.add_argument("--device", default="cpu", help="where the images live (cpu, cuda)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    names = args.metrics.split(",") if args.metrics else default_metrics()
    out = run(args.size, args.repeats, names, args.device)
    width = max(len(n) for n in [*names, "total (per decoder output)"])
    print(
        f"metric cost at {args.size}x{args.size}, device {out['device']}, "
        f"{out['torch_threads']} torch threads, median of {args.repeats}"
    )
    print(f"{'metric':<{width}}  {'ms':>9}  value")
    for n in names:
        value = out["values"][n]
        shown = f"{value:.6g}" if value is not None else f"null ({out['reasons'].get(n)})"
        print(f"{n:<{width}}  {out['ms'][n]:9.1f}  {shown}")
    print(f"{'total (per decoder output)':<{width}}  {out['total_ms']:9.1f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
