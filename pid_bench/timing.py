"""The timing protocol, one place: warm-up, repeats until a count and a minimum time, CUDA
events on a GPU and perf_counter elsewhere, percentiles over every repeat (docs/protocol.md,
"Time"). Cells and `benchmarks/` both time with it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, NamedTuple

import torch

#: A row is `timing_noisy` when (p90 - p10) / p50 of its repeats exceeds this: on a GPU with
#: fixed clocks repeated decodes agree within a few percent; 10 % means something else ran.
NOISY_SPREAD = 0.10


@dataclass(frozen=True)
class TimingPolicy:
    """suite.timing: warm-up, then repeat until `repeats` runs and `min_time_s`, at most
    `max_repeats` (`pid_bench.suite.Timing`)."""

    warmup: int = 1
    repeats: int = 5
    min_time_s: float = 1.0
    max_repeats: int = 100

    def more(self, times: list[float]) -> bool:
        if len(times) >= self.max_repeats:
            return False
        return len(times) < self.repeats or sum(times) < self.min_time_s * 1000


class Timed(NamedTuple):
    """What `timed` measured: the last output, every timed repeat (ms), the timer's name and
    the wall time of the warm-up calls (ms; sync'd on CUDA: the device was busy that long)."""

    output: Any
    times: list[float]
    timer: str
    warmup_ms: float


def timed(fn: Callable[[], torch.Tensor], policy: TimingPolicy, device: torch.device) -> Timed:
    """Warm up, then time repeats as `policy` says.

    CUDA: CUDA events around each call, synchronised before and after; CPU: perf_counter.
    """
    warmup_ms = 0.0
    if policy.warmup:
        warmup_ms, _ = time_once(lambda: [fn() for _ in range(policy.warmup)], device)
    times: list[float] = []
    cuda = device.type == "cuda"
    while policy.more(times):
        ms, out = time_once(fn, device) if not cuda else _time_events(fn, device)
        times.append(ms)
    return Timed(out, times, "cuda_events" if cuda else "perf_counter", warmup_ms)


def _time_events(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)
    start.record()
    out = fn()
    end.record()
    torch.cuda.synchronize(device)
    return start.elapsed_time(end), out


def time_once(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Wall milliseconds of one call, the device synchronised before and after (encode,
    caption, LDM: work that is timed once)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) * 1000, out


def timing_fields(times: list[float]) -> dict[str, Any]:
    """The row's latency columns from every timed repeat."""
    p10, p25, p50, p75, p90 = (percentile(times, q) for q in (0.1, 0.25, 0.5, 0.75, 0.9))
    spread = (p90 - p10) / p50 if p50 > 0 else None
    return {
        "repeats": len(times),
        "latency_ms": times,
        "latency_ms_p50": p50,
        "latency_ms_p90": p90,
        "latency_ms_p10": p10,
        "latency_ms_min": min(times),
        "latency_ms_iqr": p75 - p25,
        "timing_spread": spread,
        "timing_noisy": None if spread is None else spread > NOISY_SPREAD,
    }


def percentile(values: list[float], q: float) -> float:
    return float(torch.quantile(torch.tensor(values, dtype=torch.float64), q))


def utc_now() -> datetime:
    """Now, in UTC (row timestamps)."""
    return datetime.now(timezone.utc)
