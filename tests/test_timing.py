"""A cell's timing: repeats until a count and a measured time, every repeat kept, spread flagged."""

from __future__ import annotations

import time

import pytest
import torch

from pid_bench.suite import Timing
from pid_bench.timing import NOISY_SPREAD, TimingPolicy, timed, timing_fields

CPU = torch.device("cpu")


def _sleeper(ms: float, calls: list[int]):
    def run() -> torch.Tensor:
        calls.append(1)
        time.sleep(ms / 1000)
        return torch.zeros(1)

    return run


def test_repeats_continue_until_both_the_count_and_the_measured_time_are_reached():
    calls: list[int] = []
    policy = TimingPolicy(warmup=2, repeats=3, min_time_s=0.06, max_repeats=1000)
    _, times, timer, _ = timed(_sleeper(10, calls), policy, CPU)
    assert timer == "perf_counter"
    assert len(times) >= 3 and sum(times) >= 60
    assert sum(times[:-1]) < 60 or len(times) == 3  # stopped as soon as both held
    assert len(calls) == len(times) + 2  # warm-up runs are not timed


def test_the_count_alone_suffices_for_slow_decodes_and_the_cap_stops_fast_ones():
    _, slow, _, _ = timed(_sleeper(30, []), TimingPolicy(0, 2, 0.01, 100), CPU)
    assert len(slow) == 2
    _, capped, _, _ = timed(_sleeper(0, []), TimingPolicy(0, 1, 10.0, 7), CPU)
    assert len(capped) == 7


def test_the_issues_cpu_example_is_reported_by_median_and_flagged_noisy():
    fields = timing_fields([5467.7, 5503.2, 283.4])
    assert fields["latency_ms_p50"] == pytest.approx(5467.7)
    assert fields["latency_ms_min"] == pytest.approx(283.4) and fields["repeats"] == 3
    assert fields["timing_spread"] > NOISY_SPREAD and fields["timing_noisy"] is True
    steady = timing_fields([100.0, 101.0, 99.5, 100.4, 100.2])
    assert steady["timing_noisy"] is False and steady["latency_ms_iqr"] == pytest.approx(0.4)
    assert steady["latency_ms_p10"] <= steady["latency_ms_p50"] <= steady["latency_ms_p90"]


def test_a_cap_below_the_count_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"max_repeats \(2\) is below repeats \(5\)"):
        Timing(repeats=5, max_repeats=2)
