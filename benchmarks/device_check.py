"""One command that says what this machine's accelerator does with PiD, and prints one table.

    python benchmarks/device_check.py [--upstream PATH] [--out runs/device_check] [--quick]

On a CUDA machine (within about 8 minutes on one GPU):
  1. the golden vectors on CUDA: float32 (TF32 off) at the oracle's standard; bf16-autocast and
     bf16 weights against the oracle's stated bf16 effect (a smoke bound, `BF16_SMOKE`);
  2. the full-size random-weight decode of the FLUX 2k experiment at 2048^2 and 4096^2 (whole
     and tiled 2048/256), eager and compiled, with upstream's network side by side when
     `--upstream PATH` names an exported checkout (benchmarks/decode.py does the timing);
  3. PNG writes overlapping a timed decode: the 2048^2 decode alone and while two threads
     write PNGs as the cells' background writer does; whether their latencies agree within their
     spread (then a suite's `overlap: true` is safe on this GPU);
  4. the smoke suite on CUDA (`pid-bench run`): every row timed with CUDA events and with its
     memory columns filled.
Without CUDA it runs what it can on the CPU in well under 3 minutes (the golden vectors in
float32 and both bf16 modes, the FLOP count against FlopCounterMode, the tiny decode benchmark,
the smoke suite), prints each skipped step with its reason, and exits 0 unless a check failed.
Results go to OUT/result.json (schema pid-bench/device-check/v1).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pid_bench.parity import NET_STANDARD, Standard, load_case  # noqa: E402
from pid_models.decoder import tf32_allowed  # noqa: E402

SCHEMA = "pid-bench/device-check/v1"
FLUX_2K = "PiD_res2k_sr4x_official_flux_distill_4step"
#: bf16 runs cannot meet the float32 standard: the oracle states that rounding the weights to
#: bf16 alone moves outputs by 0.06-1.2 max and 2e-3-5e-3 mean (pid_reference README 3.3). The
#: smoke bound is twice that statement; it catches a broken bf16 path, not a precision claim.
BF16_SMOKE = Standard(
    "bf16 smoke bound (2x the oracle's stated bf16 effect)", atol=2.4, mean_tol=1e-2
)


class Step:
    """One line of the table: a name, a status (ok / FAIL / info / skipped), figures and a detail."""

    def __init__(self, name: str) -> None:
        self.name, self.status, self.detail = name, "ok", ""
        self.figures: dict[str, Any] = {}
        self.seconds = 0.0

    def skip(self, reason: str) -> Step:
        self.status, self.detail = "skipped", reason
        return self

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "detail": self.detail,
                "seconds": round(self.seconds, 2), "figures": self.figures}  # fmt: skip


def _timed(step: Step, body: Callable[[Step], None]) -> Step:
    started = time.perf_counter()
    try:
        body(step)
    except Exception as err:  # a step that breaks is a FAIL line, not a lost table
        step.status, step.detail = "FAIL", f"{type(err).__name__}: {err}"[:300]
    step.seconds = time.perf_counter() - started
    return step


# ---- 1. golden vectors -----------------------------------------------------------------------


@torch.no_grad()
def golden_forward(reference: Path, device: torch.device, precision: str) -> list[dict]:
    """Every forward case of the oracle on `device` in `precision`, against its golden output."""
    golden = reference / "golden"
    index = json.loads((golden / "INDEX.json").read_text())
    results = []
    for entry in [e for e in index["files"] if e.get("kind") == "forward"]:
        _, t, net = load_case(golden, entry)
        net = net.to(device)
        inputs = {k: v.to(device) for k, v in t.items() if k.startswith("input.")}
        if precision == "bf16":
            net = net.to(torch.bfloat16)
        autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if precision == "bf16-autocast"
            else contextlib.nullcontext()
        )
        with autocast, tf32_allowed(False):
            out = net(inputs["input.x"], inputs["input.t"], inputs["input.y"],
                      lq_latent=inputs["input.lq_latent"].to(torch.bfloat16).float()
                      if precision != "fp32" else inputs["input.lq_latent"],
                      degrade_sigma=inputs["input.degrade_sigma"])  # fmt: skip
        standard = NET_STANDARD if precision == "fp32" else BF16_SMOKE
        agreement = standard.check(out.float().cpu(), t["output"])
        results.append({"case": entry["case"], "max_abs": agreement.max_abs,
                        "mean_abs": agreement.mean_abs, "passed": agreement.passed,
                        "failed_bound": agreement.failed_bound,
                        "standard": standard.name})  # fmt: skip
    return results


def golden_step(reference: Path | None, device: torch.device, precision: str) -> Step:
    step = Step(f"golden forward, {device.type}, {precision}")
    if reference is None:
        return step.skip("no pid_reference found (set PID_REFERENCE_DIR)")

    def body(s: Step) -> None:
        cases = golden_forward(reference, device, precision)
        worst = max(cases, key=lambda c: c["max_abs"])
        s.figures = {"cases": cases, "worst_max_abs": worst["max_abs"],
                     "worst_mean_abs": max(c["mean_abs"] for c in cases)}  # fmt: skip
        failed = [f"{c['case']} ({c['failed_bound']})" for c in cases if not c["passed"]]
        s.status = "FAIL" if failed else "ok"
        s.detail = (
            f"{len(cases) - len(failed)}/{len(cases)} within the {cases[0]['standard']}; "
            f"max_abs {worst['max_abs']:.2e}, mean_abs {s.figures['worst_mean_abs']:.2e}"
            + (f"; outside: {', '.join(failed)}" if failed else "")
        )
        if failed and precision != "fp32" and device.type == "cpu":
            # The oracle's bf16 statement is about upstream's path, CUDA autocast; CPU bf16
            # kernels differ by machine (seen: one element of 36,864 off by 5.9 on one AMD EPYC,
            # mean within bounds), so on CPU the figures are shown, not judged.
            s.status = "info"
            s.detail += " (CPU bf16: shown, not judged; the bound is checked on CUDA)"

    return _timed(step, body)


# ---- 2. FLOPs --------------------------------------------------------------------------------


def flop_step() -> Step:
    def body(s: Step) -> None:
        from pid_models.flops import counted_forward_flops, forward_flops
        from pid_models.tiny import TINY_NET_KWARGS

        counted = counted_forward_flops(TINY_NET_KWARGS, (64, 96), 7)
        estimate = forward_flops(TINY_NET_KWARGS, (64, 96), 7)
        error = abs(estimate - counted) / counted
        s.figures = {"counted": counted, "analytic": estimate, "relative_error": error}
        s.status = "ok" if error < 0.05 else "FAIL"
        s.detail = f"analytic {estimate:.3e} vs FlopCounterMode {counted:.3e} ({error:.2%})"

    return _timed(Step("FLOP count vs FlopCounterMode (tiny)"), body)


# ---- 3. decode benchmark ---------------------------------------------------------------------


def _decode_module():
    spec = importlib.util.spec_from_file_location(
        "pid_bench_decode", REPO / "benchmarks" / "decode.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def decode_step(name: str, args: list[str], out: Path) -> Step:
    def body(s: Step) -> None:
        report = _decode_module().main([*args, "--json", str(out / f"{_slug(name)}.json")])
        s.figures = {"results": [
            {k: r.get(k) for k in ("variant", "size_str", "tiles", "status", "latency_p50_ms",
                                   "latency_p90_ms", "first_decode_s", "peak_allocated_bytes",
                                   "peak_reserved_bytes", "upstream")}
            for r in report["results"]
        ], "device": report["device"]}  # fmt: skip
        bad = [r for r in report["results"] if r["status"] != "ok"]
        s.detail = "; ".join(
            f"{r['variant']} {r['size_str']}"
            + (f" x{r['tiles']} tiles" if r["tiles"] > 1 else "")
            + (f": {r['latency_p50_ms']:.1f} ms" if r["status"] == "ok" else f": {r['status']}")
            + _upstream_text(r)
            for r in report["results"]
        )
        if bad and all(r["status"] == "oom" for r in bad):
            s.status = "ok"  # an OOM is a measured result, recorded as such
        elif bad:
            s.status = "FAIL"

    return _timed(Step(name), body)


def _upstream_text(row: dict) -> str:
    up = row.get("upstream") or {}
    ratio = up.get("paired_ratio")
    if not ratio:
        return ""
    return f" (ours/upstream {ratio['median']:.3f} [{ratio['p10']:.3f}, {ratio['p90']:.3f}])"


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text).strip("_")


# ---- 4. the smoke suite ----------------------------------------------------------------------


def smoke_step(out: Path, cuda: bool) -> Step:
    def body(s: Step) -> None:
        run_dir = out / "smoke"
        proc = subprocess.run(
            [sys.executable, "-m", "pid_bench.cli", "run", str(REPO / "suites" / "smoke.yaml"),
             "--output", str(run_dir), "--force", "--no-report"],
            capture_output=True, text=True, timeout=420, cwd=REPO,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"pid-bench run exited {proc.returncode}: {proc.stderr[-300:]}")
        import pyarrow.parquet as pq

        table = pq.read_table(run_dir / "parts").to_pylist()
        ok = [r for r in table if r["status"] == "ok"]
        timers = sorted({r["timer"] for r in ok})
        with_memory = sum(r["peak_mem_allocated_bytes"] is not None for r in ok)
        s.figures = {
            "rows": len(table),
            "ok": len(ok),
            "timers": timers,
            "with_memory": with_memory,
        }
        s.detail = (
            f"{len(ok)}/{len(table)} rows ok, timer {', '.join(timers)}, allocator peak memory "
            f"in {with_memory}/{len(ok)} rows" + ("" if cuda else " (CUDA only; none on a CPU)")
        )
        expected_timer = "cuda_events" if cuda else "perf_counter"
        if len(ok) != len(table) or timers != [expected_timer] or (cuda and with_memory != len(ok)):
            s.status = "FAIL"

    return _timed(Step(f"smoke suite on {'cuda' if cuda else 'cpu'}"), body)


# ---- main ------------------------------------------------------------------------------------


def _reference_dir() -> Path | None:
    import os

    for candidate in (
        os.environ.get("PID_REFERENCE_DIR"),
        REPO.parent / "shared" / "pid_reference",
    ):
        if candidate and (Path(candidate) / "golden" / "INDEX.json").is_file():
            return Path(candidate)
    return None


# ---- 4. PNG writes beside a timed decode ------------------------------------------------------


def overlap_step(cuda: bool, quick: bool) -> Step:
    """The full-size FLUX 2k decode at 2048^2 timed alone, then while two threads write 2048^2
    PNGs the way the cells' background writer does (`pid_bench.images.write_pixels`): latencies
    agree when their p50s differ by no more than the larger p90 - p10 spread. Only then is a
    suite's `overlap: true` safe on this GPU."""
    step = Step("PNG writes overlapping a timed 2048^2 decode (suite overlap:)")
    if not cuda:
        return step.skip(
            "CPU: the cells never overlap writes with a timed decode here (they would take the "
            "decoder's cores); overlap applies to CUDA only"
        )

    def body(s: Step) -> None:
        import threading

        import numpy as np

        from pid_bench.images import write_pixels
        from pid_bench.timing import TimingPolicy, timed, timing_fields
        from pid_models.registry import experiment_by_name

        decode_module = _decode_module()
        device = torch.device("cuda")
        net_kwargs = dict(experiment_by_name(FLUX_2K).net_kwargs)
        net = decode_module.build_net(net_kwargs, device, 0, False)
        decoder = decode_module.PiDDecoder(
            net, decode_module.EmbeddingsOnly(net.config["txt_embed_dim"]), device, torch.bfloat16
        )
        per_latent = net_kwargs["latent_spatial_down_factor"] * net_kwargs["sr_scale"]
        generator = torch.Generator().manual_seed(1)
        latent = torch.randn(
            (1, net.config["lq_latent_channels"], 2048 // per_latent, 2048 // per_latent),
            generator=generator,
        ).to(device)
        y = torch.randn(
            1, net.config["txt_max_length"], net.config["txt_embed_dim"], generator=generator
        ).to(device)
        policy = TimingPolicy(warmup=2, repeats=5 if quick else 10, min_time_s=0)
        fn = lambda: decoder.decode(latent, y=y, seed=0, steps=4)  # noqa: E731
        pixels = np.random.default_rng(0).integers(0, 256, (2048, 2048, 3), dtype=np.uint8)
        stop = threading.Event()
        folder = Path(tempfile.mkdtemp(prefix="overlap_"))

        def writer(k: int) -> None:
            while not stop.is_set():
                write_pixels(pixels, folder / f"w{k}.png")

        with torch.no_grad():
            alone = timing_fields(timed(fn, policy, device).times)
            threads = [threading.Thread(target=writer, args=(k,)) for k in range(2)]
            for t in threads:
                t.start()
            try:
                overlapped = timing_fields(timed(fn, policy, device).times)
            finally:
                stop.set()
                for t in threads:
                    t.join()
        spread = max(
            alone["latency_ms_p90"] - alone["latency_ms_p10"],
            overlapped["latency_ms_p90"] - overlapped["latency_ms_p10"],
        )
        difference = overlapped["latency_ms_p50"] - alone["latency_ms_p50"]
        agree = abs(difference) <= spread
        s.figures = {"alone": alone, "overlapped": overlapped, "spread_ms": spread,
                     "difference_ms": difference, "agree": agree}  # fmt: skip
        s.status = "ok" if agree else "info"
        s.detail = (
            f"p50 alone {alone['latency_ms_p50']:.1f} ms, with writes "
            f"{overlapped['latency_ms_p50']:.1f} ms (difference {difference:+.1f}, spread "
            f"{spread:.1f}): "
            + ("agree, overlap: true is safe here" if agree else "disagree: keep overlap: false")
        )

    return _timed(step, body)


def plan(args: argparse.Namespace, cuda: bool, out: Path) -> list[Callable[[], Step]]:
    reference = _reference_dir()
    device = torch.device("cuda" if cuda else "cpu")
    steps: list[Callable[[], Step]] = [
        lambda: golden_step(reference, device, "fp32"),
        lambda: golden_step(reference, device, "bf16-autocast"),
        lambda: golden_step(reference, device, "bf16"),
        flop_step,
    ]
    upstream = ["--upstream", args.upstream] if args.upstream else []
    if cuda:
        repeats = ["--repeats", "3" if args.quick else "5", "--warmup", "1"]
        steps += [
            lambda: decode_step("FLUX 2k full size, 2048^2, eager + compiled", [
                "--experiment", FLUX_2K, "--sizes", "2048x2048", "--compile", "both",
                "--no-native", *repeats, *upstream], out),
            lambda: decode_step("FLUX 2k full size, 4096^2 whole, eager", [
                "--experiment", FLUX_2K, "--sizes", "4096x4096", "--no-native", *repeats,
                *upstream], out),
            lambda: decode_step("FLUX 2k full size, 4096^2 tiled 2048/256, eager", [
                "--experiment", FLUX_2K, "--sizes", "4096x4096", "--tile", "2048",
                "--overlap", "256", "--no-native", *repeats], out),
        ]  # fmt: skip
    else:
        steps += [
            lambda: decode_step("tiny decode benchmark, cpu, eager", [
                "--tiny", "--sizes", "64x64,128x192", "--repeats", "3", "--device", "cpu"], out),
            lambda: Step("full-size decode 2048^2 / 4096^2, eager + compiled").skip(
                "needs CUDA: on this CPU one full-size decode takes minutes"),
            lambda: Step("upstream side by side at full size").skip(
                "needs CUDA here; on CPU run benchmarks/decode.py --upstream PATH --sizes "
                "128x128 --dtype fp32 by hand (minutes)"),
        ]  # fmt: skip
    steps.append(lambda: overlap_step(cuda, args.quick))
    steps.append(lambda: smoke_step(out, cuda))
    return steps


def environment(cuda: bool) -> dict[str, Any]:
    env = {"torch": torch.__version__, "python": platform.python_version(), "cuda": cuda,
           "machine": platform.machine(), "processor": platform.processor()}  # fmt: skip
    if cuda:
        env |= {"device_name": torch.cuda.get_device_name(0), "cuda_version": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version()}  # fmt: skip
    return env


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    env = result["environment"]
    title = f"device check: {env.get('device_name', 'CPU')} · torch {env['torch']}"
    table = Table(title=title)
    for column in ("step", "status", "s", "result"):
        table.add_column(column, justify="right" if column == "s" else "left")
    for step in result["steps"]:
        table.add_row(step["name"], step["status"], f"{step['seconds']:.1f}", step["detail"])
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--upstream", default=None, metavar="PATH", help="exported upstream checkout"
    )
    parser.add_argument("--out", default=str(REPO / "runs" / "device_check"), metavar="DIR")
    parser.add_argument("--quick", action="store_true", help="fewer repeats on CUDA")
    parser.add_argument("--cpu", action="store_true", help="CPU mode even where CUDA exists")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.cpu
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    steps = [make() for make in plan(args, cuda, out)]
    result = {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(cuda),
        "mode": "cuda" if cuda else "cpu",
        "wall_s": round(time.perf_counter() - started, 1),
        "steps": [s.as_dict() for s in steps],
    }
    (out / "result.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print_table(result)
    for step in steps:
        if step.status == "skipped":
            print(f"skipped: {step.name}: {step.detail}")
    print(f"wrote {out / 'result.json'} ({result['wall_s']} s)")
    return 1 if any(s.status == "FAIL" for s in steps) else 0


if __name__ == "__main__":
    sys.exit(main())
