"""Time one PiD decode (the 4-step sampler) per output size: eager and torch.compile'd.

    python benchmarks/decode.py --experiment PiD_res2k_sr4x_official_flux_distill_4step \\
        --sizes 2048x2048,1536x2688,4096x4096 --repeats 5 --compile both --dtype bf16 \\
        [--tile 2048 --overlap 256] [--upstream PATH] [--tiny]

Builds the chosen experiment's full-size network (registry net_kwargs) with random weights:
on the meta device, then `to_empty` on the target device and a cheap seeded normal init on the
device, so no checkpoint is needed and nothing is allocated twice. Inputs are a seeded random
LQ latent and a seeded random caption embedding (the caption encoder is not timed). Sizes are
HEIGHTxWIDTH of the output image. Per size and variant it records the latency p50/p90 over
`--repeats` decodes after `--warmup` more, the wall time of the first decode (compilation
included for the compiled variant), the peak allocated and reserved CUDA memory over that
size's decodes (null on CPU, never 0), and the memory model's estimate
(`pid_models.tiling.estimate_peak_bytes`) beside them. A size that runs out of memory becomes a
row with status "oom". The native decoder of the backbone (random weights, the shipped
full-size diffusers config; `--tiny`: the tiny VAE) is timed at the same latents unless
`--no-native`.

`--upstream PATH` compares against NVIDIA's own network from a checkout you have
(github.com/nv-tlabs/PiD, exported outside this repository; nothing of it is part of it):
PATH is put on sys.path and `--upstream-module` (default `pid._src.networks.pid_net:PidNet`,
upstream's layout) is imported first, so a missing dependency of upstream's (loguru:
`pip install -e '.[upstream]'`; nvidia-ml-py is a dependency of pid-bench) is named before anything is built. Upstream's
network is built on the meta device from the same net_kwargs and given our random tensors
(`assign=True`, key-exact: one copy of the weights for both), and run through the same sampler
with the same noise. Timed repeats alternate (ours, upstream; upstream, ours; ...), and the
table shows both latencies, the median of the paired ratios ours_i / upstream_i with its p10 and
p90, and the max abs difference of the decoded images; the JSON keeps every repeat. Any other network class works the same way if its
forward is `(x, t, y, lq_latent=..., degrade_sigma=...)`. Tiling an upstream network needs
`--tile-positions local`.

`--tiny` runs the tiny embedded configuration (what CI runs on CPU). Results are printed as a
table and written as JSON (`--json`, default runs/bench/decode-<experiment>-<time>.json).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import math
import platform
import statistics
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pid_bench.timing import percentile, time_once  # noqa: E402
from pid_models.decoder import PiDDecoder  # noqa: E402
from pid_models.pid_net import PidNet  # noqa: E402
from pid_models.registry import EXPERIMENTS, experiment_by_name  # noqa: E402
from pid_models.tiling import estimate_peak_bytes, plan_tiles  # noqa: E402

SCHEMA = "pid-bench/decode-benchmark/v1"
DEFAULT_EXPERIMENT = "PiD_res2k_sr4x_official_flux_distill_4step"
UPSTREAM_MODULE = "pid._src.networks.pid_net:PidNet"


class BenchError(Exception):
    """A usage or setup problem: printed as one line, exit status 2."""


# ---- arguments -----------------------------------------------------------------------------


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise BenchError(f"--sizes: {item!r} is not HEIGHTxWIDTH (e.g. 2048x2048)")
        sizes.append((int(parts[0]), int(parts[1])))
    return sizes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="registry experiment")
    parser.add_argument("--sizes", default="2048x2048", help="HxW output sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=5, help="timed decodes per size")
    parser.add_argument("--warmup", type=int, default=1, help="untimed decodes after the first")
    parser.add_argument("--compile", choices=("eager", "compiled", "both"), default="eager")
    parser.add_argument(
        "--compile-mode", default=None, help="torch.compile mode (default: its own)"
    )
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16", help="CUDA autocast")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--tile", type=int, default=None, help="tile size, output px")
    parser.add_argument("--overlap", type=int, default=256, help="tile overlap, output px")
    parser.add_argument("--tile-positions", choices=("global", "local"), default="global")
    parser.add_argument("--upstream", default=None, metavar="PATH", help="upstream checkout root")
    parser.add_argument("--upstream-module", default=UPSTREAM_MODULE, metavar="MODULE:CLASS")
    parser.add_argument("--no-native", action="store_true", help="skip the native decoder")
    parser.add_argument("--tiny", action="store_true", help="the tiny configuration (CPU, CI)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, metavar="PATH", help="where to write results")
    return parser


# ---- models --------------------------------------------------------------------------------


@torch.no_grad()
def cheap_init_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded normal init on the parameters' device: N(0, 1/fan_in) matrices (adaLN x 0.5),
    small biases, norm weights ~1 (the shape of `pid_models.tiny.randomize_`, drawn in float32
    on the device so a 1.4B-parameter net initialises in a blink)."""
    device = next(module.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.BatchNorm2d)
    norm_params = {
        id(p)
        for m in module.modules()
        if isinstance(m, norms) or type(m).__name__ == "RMSNorm"
        for p in m.parameters(recurse=False)
    }
    for name, param in module.named_parameters():
        draw = torch.randn(param.shape, generator=generator, device=device, dtype=torch.float32)
        fan_in = max(1, param[0].numel()) if param.dim() > 1 else max(1, param.numel())
        if name.endswith("log_alpha"):
            value = math.log(5.0) + 0.5 * draw
        elif id(param) in norm_params:
            value = 0.2 * draw if name.endswith("bias") else 1 + 0.2 * draw
        elif name.endswith("bias") or param.dim() < 2:
            value = 0.2 * draw
        else:
            value = draw * ((0.5 if "adaLN" in name else 1.0) / math.sqrt(fan_in))
        param.copy_(value.to(param.dtype))
    for buffer_name, buffer in module.named_buffers():
        if buffer_name.endswith("running_var"):
            buffer.fill_(1.0)
        elif buffer.is_floating_point():
            buffer.zero_()
    return module


def build_net(net_kwargs: dict[str, Any], device: torch.device, seed: int, tiny: bool) -> PidNet:
    if tiny:
        from pid_models.tiny import build_tiny_net

        return build_tiny_net(seed).to(device)
    with torch.device("meta"):
        net = PidNet(**net_kwargs)
    net = net.to_empty(device=device)
    return cheap_init_(net, seed).eval().requires_grad_(False)


class EmbeddingsOnly:
    """Stands in for the caption encoder: the benchmark passes caption embeddings directly."""

    def __init__(self, hidden_size: int) -> None:
        self.hidden_size = hidden_size

    def encode(self, captions):  # pragma: no cover - never called (y is always given)
        raise RuntimeError("the benchmark passes y; no caption encoder is loaded")


def build_native(backbone: str, device: torch.device, seed: int, tiny: bool):
    """The backbone's native codec with random weights, or (None, reason)."""
    if tiny:
        from pid_models.tiny import build_tiny_codec

        return build_tiny_codec(seed).to(device), None
    try:
        import diffusers

        from pid_models.codecs import build_codec
        from pid_models.codecs.kl import shipped_config

        try:
            config = shipped_config(backbone)
        except FileNotFoundError:
            return None, f"no shipped diffusers config for {backbone!r} in pid_models/data/codecs"
        cls = getattr(diffusers, config["_class_name"])
        known = set(inspect.signature(cls.__init__).parameters)
        tuples = ("down_block_types", "up_block_types", "block_out_channels", "patch_size")
        kwargs = {
            k: tuple(v) if k in tuples and isinstance(v, list) else v
            for k, v in config.items()
            if not k.startswith("_") and k in known
        }
        with torch.device("meta"):
            vae = cls(**kwargs)
        vae = cheap_init_(vae.to_empty(device=device), seed)
        return build_codec(backbone, vae.state_dict(), config).to(device), None
    except Exception as err:  # optional: any failure is a reason, not a crash
        return None, f"{type(err).__name__}: {err}"


class UpstreamAdapter(torch.nn.Module):
    """Upstream's network behind our positional velocity signature and size helpers."""

    def __init__(self, module: torch.nn.Module, ours: PidNet) -> None:
        super().__init__()
        self.module = module
        self.config = ours.config
        self.sr_scale = ours.sr_scale
        self.pixels_per_latent = ours.pixels_per_latent
        self.output_size = ours.output_size

    def forward(self, x, t, y, lq_latent, degrade_sigma):
        return self.module(x, t, y, lq_latent=lq_latent, degrade_sigma=degrade_sigma)


def locate_upstream(path: str, spec: str) -> tuple[Path, str, str]:
    """Check, before anything is built, that PATH holds the module SPEC names."""
    root = Path(path).expanduser().resolve()
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise BenchError(f"--upstream-module {spec!r} is not pkg.module:ClassName")
    if not root.is_dir():
        raise BenchError(f"--upstream {path}: not a directory (pass the upstream checkout root)")
    expected = root / (module_name.replace(".", "/") + ".py")
    if not expected.is_file() and not (root / module_name.replace(".", "/")).is_dir():
        raise BenchError(
            f"--upstream {path}: no module {module_name} there (expected {expected}; upstream "
            f"github.com/nv-tlabs/PiD has pid/_src/networks/pid_net.py). Pass the checkout root, "
            f"or name the class with --upstream-module pkg.module:ClassName"
        )
    return root, module_name, class_name


#: Packages upstream's network module imports beyond torch (its logging and NVML helpers), with
#: the pip name of each.
UPSTREAM_PACKAGES = {"loguru": "loguru", "pynvml": "nvidia-ml-py"}


def import_upstream(located: tuple[Path, str, str]) -> type:
    """Upstream's network class from the checkout, imported before anything is built, so a
    missing dependency is named before minutes are spent building our network."""
    root, module_name, class_name = located
    sys.path.insert(0, str(root))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        top = (err.name or "").split(".")[0]
        known = [
            pip for mod, pip in UPSTREAM_PACKAGES.items() if importlib.util.find_spec(mod) is None
        ]
        packages = known if top in UPSTREAM_PACKAGES else [top]
        raise BenchError(
            f"could not import {module_name} from {root}: it needs {err.name!r}, not installed "
            f"here: pip install {' '.join(packages)}"
            + (" (or pip install -e '.[upstream]')" if top in UPSTREAM_PACKAGES else "")
        ) from None
    except Exception as err:
        raise BenchError(
            f"could not import {module_name} from {root}: {type(err).__name__}: {err}"
        ) from None
    source = Path(getattr(module, "__file__", "") or "").resolve()
    if root not in source.parents:
        raise BenchError(f"{module_name} was imported from {source}, not from {root}")
    cls = getattr(module, class_name, None)
    if cls is None:
        raise BenchError(f"{module_name} has no {class_name}")
    return cls


def load_upstream(cls: type, ours: PidNet, device: torch.device) -> UpstreamAdapter:
    """Build upstream's network on the meta device and hand it our tensors (`assign=True`):
    both networks share one copy of the weights, key for key."""
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in ours.config.items() if takes_any or k in params}
    try:
        with torch.device("meta"):
            net = cls(**kwargs)
    except Exception as err:
        raise BenchError(f"building upstream {cls.__name__}: {type(err).__name__}: {err}") from None
    state = ours.state_dict()
    missing, unexpected = set(net.state_dict()) - set(state), set(state) - set(net.state_dict())
    if missing or unexpected:
        raise BenchError(
            f"upstream {cls.__name__} keys differ from ours: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    net.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in [*net.named_parameters(), *net.named_buffers()] if t.is_meta]
    if left:
        raise BenchError(f"upstream {cls.__name__} has tensors outside its state dict: {left[:5]}")
    return UpstreamAdapter(net.to(device).eval().requires_grad_(False), ours)


# ---- timing --------------------------------------------------------------------------------


def measure_interleaved(
    runs: dict[str, Callable[[], torch.Tensor]], device: torch.device, repeats: int, warmup: int
) -> dict[str, dict[str, Any]]:
    """Per run: the first call (timed alone), `warmup` more, its CUDA peak over those; then the
    timed repeats of all runs interleaved (A B, B A, A B, ...), so drift in clocks, heat or load
    falls on every run alike and repeat i of each is a pair."""
    cuda = device.type == "cuda"
    results: dict[str, dict[str, Any]] = {}
    for name, run in runs.items():
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        first_ms, output = time_once(run, device)
        for _ in range(warmup):
            run()
        results[name] = {
            "first_decode_s": first_ms / 1000,
            "peak_allocated_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
            "peak_reserved_bytes": torch.cuda.max_memory_reserved(device) if cuda else None,
            "latency_all_ms": [],
            "_output": output,
        }
    names = list(runs)
    for index in range(repeats):
        for name in names if index % 2 == 0 else names[::-1]:
            ms, results[name]["_output"] = time_once(runs[name], device)
            results[name]["latency_all_ms"].append(ms)
    for result in results.values():
        times = result["latency_all_ms"]
        result |= {
            "latency_p50_ms": percentile(times, 0.5),
            "latency_p90_ms": percentile(times, 0.9),
            "latency_mean_ms": statistics.fmean(times),
        }
    return results


def measure(
    run: Callable[[], torch.Tensor], device: torch.device, repeats: int, warmup: int
) -> dict[str, Any]:
    """One run alone: first call, `warmup` more, then `repeats` timed; CUDA peak over the first
    and warm-up calls."""
    return measure_interleaved({"run": run}, device, repeats, warmup)["run"]


def paired_ratio(ours: list[float], theirs: list[float]) -> dict[str, float]:
    """Ratio of repeat i of ours to repeat i of theirs: median, p10, p90, min, max."""
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    return {
        "median": percentile(ratios, 0.5),
        "p10": percentile(ratios, 0.1),
        "p90": percentile(ratios, 0.9),
        "min": min(ratios),
        "max": max(ratios),
        "n": len(ratios),
    }


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def _compile(module: torch.nn.Module, mode: str | None) -> torch.nn.Module:
    return torch.compile(module, mode=mode, dynamic=False)


# ---- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.batch < 1:
        raise BenchError("--repeats must be >= 1, --warmup >= 0, --batch >= 1")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda but CUDA is not available")

    if args.tiny:
        from pid_models.tiny import TINY_NET_KWARGS

        name, backbone, net_kwargs = "tiny", "tiny", dict(TINY_NET_KWARGS)
    else:
        experiment = experiment_by_name(args.experiment)
        if experiment is None:
            names = ", ".join(sorted(e.name for e in EXPERIMENTS.values()))
            raise BenchError(f"unknown experiment {args.experiment!r}; one of: {names}")
        name, backbone, net_kwargs = (
            experiment.name,
            experiment.backbone,
            dict(experiment.net_kwargs),
        )
        if device.type == "cpu":
            print("warning: the full-size network on CPU takes minutes per decode", file=sys.stderr)

    sizes = parse_sizes(args.sizes)
    per_latent = net_kwargs["latent_spatial_down_factor"] * net_kwargs["sr_scale"]
    for h, w in sizes:
        if h % per_latent or w % per_latent:
            raise BenchError(f"size {h}x{w} is not a multiple of {per_latent} px per latent cell")
    plans = {}
    if args.tile is not None:
        for size in sizes:
            try:
                plans[size] = plan_tiles(net_kwargs, size, args.tile, args.overlap)
            except (TypeError, ValueError) as err:
                raise BenchError(f"--tile/--overlap: {err}") from None
    if args.upstream and args.tile is not None and args.tile_positions == "global":
        raise BenchError(
            "--upstream with --tile needs --tile-positions local (global positions hand tiles "
            "crops of pid_models' position tables, which upstream's network does not read)"
        )

    upstream_cls = None
    if args.upstream:  # importable before our network is built, or a one-line error now
        upstream_cls = import_upstream(locate_upstream(args.upstream, args.upstream_module))

    torch.manual_seed(args.seed)
    net = build_net(net_kwargs, device, args.seed, args.tiny)
    autocast = torch.bfloat16 if args.dtype == "bf16" else None
    decoder = PiDDecoder(net, EmbeddingsOnly(net.config["txt_embed_dim"]), device, autocast)
    dtype_effective = "bf16-autocast" if decoder.autocast_dtype is not None else "fp32"
    upstream = load_upstream(upstream_cls, net, device) if upstream_cls else None
    native, native_reason = (
        (None, "--no-native")
        if args.no_native
        else build_native(backbone, device, args.seed, args.tiny)
    )

    generator = torch.Generator().manual_seed(args.seed + 1)
    y = torch.randn(
        args.batch, net.config["txt_max_length"], net.config["txt_embed_dim"], generator=generator
    ).to(device)
    variants = ["eager", "compiled"] if args.compile == "both" else [args.compile]
    if "compiled" in variants:
        import torch._dynamo.config as dynamo_config

        for knob in ("cache_size_limit", "recompile_limit"):
            if hasattr(dynamo_config, knob):
                setattr(dynamo_config, knob, max(64, getattr(dynamo_config, knob)))

    rows: list[dict[str, Any]] = []
    native_rows: list[dict[str, Any]] = []
    latents = {}
    for h, w in sizes:
        shape = (args.batch, net.config["lq_latent_channels"], h // per_latent, w // per_latent)
        latents[(h, w)] = torch.randn(shape, generator=generator).to(device)

    for variant in variants:
        ours_net = _compile(net, args.compile_mode) if variant == "compiled" else net
        theirs = None
        if upstream is not None:
            theirs = _compile(upstream, args.compile_mode) if variant == "compiled" else upstream
        for size in sizes:
            row = {
                "variant": variant,
                "size": list(size),
                "size_str": f"{size[0]}x{size[1]}",
                "tiles": len(plans[size]) if size in plans else 1,
                "estimated_peak_bytes": estimate_peak_bytes(
                    net.config,
                    size,
                    args.tile,
                    autocast if device.type == "cuda" else None,
                    args.batch,
                ),  # fmt: skip
                "status": "ok",
                "error": None,
            }
            rows.append(row)

            def decode(model: torch.nn.Module, size=size) -> torch.Tensor:
                decoder.net = model
                return decoder.decode(
                    latents[size], y=y, seed=args.seed, steps=args.steps, tile_size=args.tile,
                    tile_overlap=args.overlap, tile_positions=args.tile_positions,
                )  # fmt: skip

            runs = {"ours": lambda m=ours_net: decode(m)}
            if theirs is not None:
                runs["upstream"] = lambda m=theirs: decode(m)
            try:
                results = measure_interleaved(runs, device, args.repeats, args.warmup)
            except Exception as err:
                if not _is_oom(err):
                    raise
                row.update(status="oom", error=f"{type(err).__name__}: {err}".splitlines()[0])
                _free(device)
            else:
                ours_out = results["ours"].pop("_output")
                row.update(results["ours"])
                if theirs is not None:
                    row["upstream"] = _upstream_row(results["upstream"], ours_out, row)
            decoder.net = net
            print(f"[{variant}] {row['size_str']}: {row['status']}", file=sys.stderr)

    if native is not None:
        for size in sizes:
            try:
                result = measure(
                    lambda size=size: native.decode(latents[size]), device, args.repeats,
                    args.warmup,
                )  # fmt: skip
                out = result.pop("_output")
                native_rows.append(
                    {"size": list(size), "out_size": list(out.shape[-2:]), "status": "ok", **result}
                )
            except Exception as err:
                if not _is_oom(err):
                    raise
                native_rows.append({"size": list(size), "status": "oom", "error": str(err)[:200]})
                _free(device)

    report = {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "experiment": name,
        "backbone": backbone,
        "net_kwargs": net.config,
        "device": _device_name(device),
        "cuda": device.type == "cuda",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "dtype": args.dtype,
        "dtype_effective": dtype_effective,
        "steps": args.steps,
        "batch": args.batch,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "compile_mode": args.compile_mode,
        "tile": None
        if args.tile is None
        else {"size": args.tile, "overlap": args.overlap, "positions": args.tile_positions},
        "seed": args.seed,
        "upstream": None
        if upstream is None
        else {"path": args.upstream, "module": args.upstream_module},
        "native": {"available": native is not None, "reason": native_reason, "rows": native_rows},
        "results": rows,
        "peak_rss_bytes": _peak_rss_bytes(),
    }
    path = Path(args.json) if args.json else _default_json_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_table(report)
    print(f"wrote {path}")
    return report


def _upstream_row(result: dict[str, Any], ours_out: torch.Tensor, ours: dict) -> dict[str, Any]:
    out = result.pop("_output")
    return {
        "status": "ok",
        "max_abs_diff": (out.float() - ours_out.float()).abs().max().item(),
        "paired_ratio": paired_ratio(ours["latency_all_ms"], result["latency_all_ms"]),
        **result,
    }


def _peak_rss_bytes() -> int | None:
    """The process's peak resident set size (Linux and macOS; None elsewhere)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _default_json_path(name: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return REPO / "runs" / "bench" / f"decode-{name}-{stamp}.json"


def _bytes(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value / 2**30:.2f} GiB" if value >= 2**28 else f"{value / 2**20:.1f} MiB"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    tile = report["tile"]
    title = (
        f"PiD decode: {report['experiment']}, {report['steps']} steps, batch {report['batch']}, "
        f"{report['dtype_effective']}, {report['device']}"
        + (f", tiles {tile['size']}/{tile['overlap']} ({tile['positions']})" if tile else "")
    )
    table = Table(title=title)
    for column in ("variant", "size", "tiles", "p50 ms", "p90 ms", "first s", "peak alloc",
                   "peak reserved", "model", "native p50 ms"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("variant", "size") else "right")
    with_upstream = report["upstream"] is not None
    if with_upstream:
        for column in ("upstream p50 ms", "ours/upstream paired [p10, p90]", "max |diff|"):
            table.add_column(column, justify="right")
    native = {tuple(r["size"]): r for r in report["native"]["rows"]}
    for row in report["results"]:
        nat = native.get(tuple(row["size"]), {})
        cells = [
            row["variant"],
            row["size_str"],
            str(row["tiles"]),
            _ms(row.get("latency_p50_ms")) if row["status"] == "ok" else row["status"].upper(),
            _ms(row.get("latency_p90_ms")),
            "—" if row.get("first_decode_s") is None else f"{row['first_decode_s']:.2f}",
            _bytes(row.get("peak_allocated_bytes")),
            _bytes(row.get("peak_reserved_bytes")),
            _bytes(row["estimated_peak_bytes"]),
            _ms(nat.get("latency_p50_ms")),
        ]
        if with_upstream:
            up = row.get("upstream") or {}
            ratio = up.get("paired_ratio")
            cells += [
                _ms(up.get("latency_p50_ms")),
                "—"
                if not ratio
                else f"{ratio['median']:.3f} [{ratio['p10']:.3f}, {ratio['p90']:.3f}]",
                "—" if up.get("max_abs_diff") is None else f"{up['max_abs_diff']:.2e}",
            ]
        table.add_row(*cells)
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    if not report["native"]["available"]:
        print(f"native decoder not timed: {report['native']['reason']}")
    print(f"peak RSS of this process: {_bytes(report['peak_rss_bytes'])}")


if __name__ == "__main__":
    try:
        main()
    except BenchError as err:
        print(f"benchmarks/decode.py: error: {err}", file=sys.stderr)
        sys.exit(2)
