"""pid_bench.stats on synthetic data with known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pid_bench.stats import (
    PairedDifference,
    bootstrap_mean_ci,
    comparison_table,
    paired_difference_ci,
    pareto_front,
)

# ---- bootstrap_mean_ci -------------------------------------------------------------------------


def test_large_normal_sample_ci_covers_mean_with_textbook_width():
    sigma, n, true_mean = 2.0, 10_000, 3.0
    values = np.random.default_rng(1).normal(true_mean, sigma, size=n)
    mean, low, high = bootstrap_mean_ci(values, seed=0)
    assert mean == pytest.approx(values.mean())
    assert low < true_mean < high
    assert low < mean < high
    expected_width = 2 * 1.96 * sigma / math.sqrt(n)
    assert (high - low) == pytest.approx(expected_width, rel=0.10)


def test_coverage_of_repeated_small_samples_is_about_95_percent():
    rng = np.random.default_rng(2024)
    true_mean, repeats, n = 1.5, 200, 50
    covered = 0
    for i in range(repeats):
        sample = rng.normal(true_mean, 1.0, size=n)
        _, low, high = bootstrap_mean_ci(sample, seed=i)
        covered += low <= true_mean <= high
    assert abs(covered / repeats - 0.95) <= 0.04


def test_same_seed_same_interval_other_seed_other_interval():
    values = np.random.default_rng(3).exponential(size=40)
    first = bootstrap_mean_ci(values, seed=7)
    assert bootstrap_mean_ci(values, seed=7) == first
    other = bootstrap_mean_ci(values, seed=8)
    assert other[0] == first[0]  # the mean does not depend on the seed
    assert other[1:] != first[1:]


def test_none_and_nan_are_dropped():
    with_gaps = [1.0, None, 4.0, float("nan"), 2.5, np.nan]
    assert bootstrap_mean_ci(with_gaps, seed=5) == bootstrap_mean_ci([1.0, 4.0, 2.5], seed=5)
    assert bootstrap_mean_ci(pd.Series([1.0, None, 3.0]))[0] == 2.0


def test_empty_single_and_constant_samples():
    assert all(math.isnan(v) for v in bootstrap_mean_ci([]))
    assert all(math.isnan(v) for v in bootstrap_mean_ci([None, float("nan")]))
    mean, low, high = bootstrap_mean_ci([4.25])
    assert mean == 4.25 and math.isnan(low) and math.isnan(high)
    assert bootstrap_mean_ci([0.1] * 5) == (0.1, 0.1, 0.1)


def test_confidence_changes_width_and_bad_arguments_raise():
    values = np.random.default_rng(4).normal(size=200)
    _, low90, high90 = bootstrap_mean_ci(values, confidence=0.90)
    _, low99, high99 = bootstrap_mean_ci(values, confidence=0.99)
    assert low99 < low90 < high90 < high99
    with pytest.raises(ValueError):
        bootstrap_mean_ci(values, confidence=1.0)
    with pytest.raises(ValueError):
        bootstrap_mean_ci(values, n_resamples=0)
    with pytest.raises(ValueError):
        bootstrap_mean_ci(np.zeros((2, 2)))


# ---- paired_difference_ci ----------------------------------------------------------------------


def test_constant_shift_gives_exact_difference_and_zero_width_ci():
    keys = [f"img{i}" for i in range(40)]
    a = pd.Series(np.random.default_rng(5).integers(-200, 200, size=40) / 8, index=keys)
    b = a + 0.5
    result = paired_difference_ci(b, a)
    assert isinstance(result, PairedDifference)
    assert (result.mean, result.low, result.high, result.n) == (0.5, 0.5, 0.5, 40)
    assert result.win_rate == 1.0
    reverse = paired_difference_ci(a, b)
    assert (reverse.mean, reverse.low, reverse.high) == (-0.5, -0.5, -0.5)
    assert reverse.win_rate == 0.0


def test_win_rate_counts_ties_half_and_lower_is_better_flips_it():
    keys = list("abcde")
    a = pd.Series([1.0, 2.0, 3.0, 4.0, 5.0], index=keys)
    b = pd.Series([0.0, 2.0, 5.0, 4.0, 1.0], index=keys)
    # a > b on a, e; ties on b, d; a < b on c
    higher = paired_difference_ci(a, b, higher_is_better=True)
    assert higher.win_rate == pytest.approx((2 + 0.5 * 2) / 5)
    lower = paired_difference_ci(a, b, higher_is_better=False)
    assert lower.win_rate == pytest.approx((1 + 0.5 * 2) / 5)
    assert higher.win_rate + lower.win_rate == pytest.approx(1.0)
    # the difference itself does not depend on the direction
    assert (higher.mean, higher.low, higher.high) == (lower.mean, lower.low, lower.high)
    assert higher.mean == pytest.approx(np.mean([1, 0, -2, 0, 4]))


def test_pairing_is_by_key_and_drops_unmatched_and_null_pairs():
    a = pd.Series({"u": 3.0, "x": 1.0, "y": 2.0, "z": np.nan, "w": 4.0})
    b = pd.Series({"w": None, "y": 1.0, "v": 9.0, "z": 1.0, "u": 1.0}, dtype=object)
    result = paired_difference_ci(a, b, seed=1)
    # pairs: u (3 - 1), y (2 - 1); x, v unmatched; z null in a; w null in b
    assert result.n == 2
    assert result.mean == pytest.approx(1.5)
    assert 1.0 <= result.low <= result.high <= 2.0
    assert result.win_rate == 1.0


def test_pairing_on_a_multiindex_and_single_pair_has_no_interval():
    a = pd.Series(
        [5.0, 7.0], index=pd.MultiIndex.from_tuples([("img", 0), ("img", 1)], names=["id", "s"])
    )
    b = pd.Series(
        [1.0, 6.0], index=pd.MultiIndex.from_tuples([("img", 1), ("img", 2)], names=["id", "s"])
    )
    result = paired_difference_ci(a, b)
    assert result.n == 1 and result.mean == 6.0  # only (img, 1): 7 - 1
    assert math.isnan(result.low) and math.isnan(result.high)


def test_no_pairs_and_repeated_keys():
    result = paired_difference_ci(pd.Series({"a": 1.0}), pd.Series({"b": 1.0}))
    assert result.n == 0
    assert all(math.isnan(v) for v in (result.mean, result.low, result.high, result.win_rate))
    repeated = pd.Series([1.0, 2.0], index=["a", "a"])
    with pytest.raises(ValueError, match="repeated keys"):
        paired_difference_ci(repeated, pd.Series({"a": 1.0}))


def test_plain_sequences_pair_by_position():
    result = paired_difference_ci([3.0, 1.0, None], [1.0, 1.0, 2.0], seed=0)
    assert result.n == 2 and result.mean == 1.0 and result.win_rate == 0.75


# ---- comparison_table --------------------------------------------------------------------------

_AXES = {
    "mode": "from_clean",
    "backbone": "flux",
    "ckpt_type": "2k",
    "precision": "bf16",  # result rows carry every setting key (pid_bench.axes.SETTING_KEYS)
    "compile": "eager",
    "tile": 0,
    "pid_steps": 4,
    "out_height": 1024,
    "out_width": 1024,
    "save_xt_step": None,
}


def _row(decoder, sigma, image_id, psnr, lpips=np.nan, seed=0, status="ok", **extra):
    return {
        **_AXES,
        "sigma": sigma,
        "decoder": decoder,
        "status": status,
        "image_id": image_id,
        "seed": seed,
        "metric_psnr": psnr,
        "metric_lpips": lpips,
        **extra,
    }


def _hand_rows() -> pd.DataFrame:
    rows = [
        # sigma 0: both decoders
        _row("pid", 0.0, "a", 30.0, 0.125),
        _row("pid", 0.0, "b", 31.0, 0.25),
        _row("pid", 0.0, "c", 32.0, 0.375),
        _row("pid", 0.0, "d", 33.0, 0.5),
        _row("pid", 0.0, "a", 35.0, seed=1),  # no native+bicubic (a, 1): unpaired
        _row("pid", 0.0, "e", 100.0, 0.0, status="error"),  # failed: ignored everywhere
        _row("native+bicubic", 0.0, "a", 29.0, 0.25),
        _row("native+bicubic", 0.0, "b", 31.0, 0.25),
        _row("native+bicubic", 0.0, "c", 30.0, 0.125),
        _row("native+bicubic", 0.0, "d", None, 0.625),  # null psnr: no psnr pair for d
        _row("native+bicubic", 0.0, "e", 28.0, 0.75),  # pid's e failed: unpaired
        _row("native+bicubic", 0.0, "b", 20.0, seed=1),  # no pid (b, 1): unpaired
        _row("native", 0.0, "a", 10.0, 0.9),  # neither baseline nor candidate
        # sigma 0.5: only pid
        _row("pid", 0.5, "a", 20.0, 0.25),
        _row("pid", 0.5, "b", 22.0, 0.5),
        # sigma 1: only native: no row
        _row("native", 1.0, "a", 12.0, 0.5),
    ]
    return pd.DataFrame(rows)


def test_comparison_table_on_a_hand_built_frame():
    rows = _hand_rows()
    directions = {"psnr": True, "lpips": False}
    table = comparison_table(rows, ["psnr", "lpips"], directions, seed=3, n_resamples=500)

    assert len(table) == 4  # (sigma 0, sigma 0.5) x (psnr, lpips)
    assert table["sigma"].tolist() == [0.0, 0.0, 0.5, 0.5]
    assert table["metric"].tolist() == ["psnr", "lpips", "psnr", "lpips"]
    assert table["higher_is_better"].tolist() == [True, False, True, False]
    assert set(table["baseline"]) == {"native+bicubic"} and set(table["candidate"]) == {"pid"}
    assert (table["bootstrap_seed"] == 3).all() and (table["n_resamples"] == 500).all()
    assert (table["confidence"] == 0.95).all()
    assert table["out_height"].dtype == rows["out_height"].dtype

    psnr = table.iloc[0]
    assert psnr["baseline_n"] == 5 and psnr["baseline_mean"] == pytest.approx(27.6)
    assert psnr["candidate_n"] == 5 and psnr["candidate_mean"] == pytest.approx(32.2)
    assert (psnr["baseline_low"], psnr["baseline_high"]) == bootstrap_mean_ci(
        [29.0, 31.0, 30.0, 28.0, 20.0], seed=3, n_resamples=500
    )[1:]
    # pairs (a,0), (b,0), (c,0): differences 1, 0, 2
    assert psnr["n_pairs"] == 3
    assert psnr["diff_mean"] == pytest.approx(1.0)
    assert 0.0 <= psnr["diff_low"] <= psnr["diff_mean"] <= psnr["diff_high"] <= 2.0
    assert psnr["win_rate"] == pytest.approx((2 + 0.5) / 3)

    lpips = table.iloc[1]
    # pairs a..d: differences -0.125, 0, 0.25, -0.125; lower is better: wins a, d; tie b
    assert lpips["n_pairs"] == 4 and lpips["diff_mean"] == pytest.approx(0.0)
    assert lpips["win_rate"] == pytest.approx((2 + 0.5) / 4)
    assert lpips["baseline_n"] == 5 and lpips["candidate_n"] == 4

    only_pid = table.iloc[2]
    assert only_pid["candidate_mean"] == pytest.approx(21.0) and only_pid["candidate_n"] == 2
    assert only_pid["baseline_n"] == 0 and math.isnan(only_pid["baseline_mean"])
    assert only_pid["n_pairs"] == 0
    assert math.isnan(only_pid["diff_mean"]) and math.isnan(only_pid["win_rate"])

    assert comparison_table(rows, ["psnr"], directions, seed=3, n_resamples=500).equals(
        table[table["metric"] == "psnr"].reset_index(drop=True)
    )


def test_comparison_table_direction_flips_win_rate_and_is_required():
    rows = _hand_rows()
    up = comparison_table(rows, ["metric_lpips"], {"lpips": True}, n_resamples=100)
    down = comparison_table(rows, ["metric_lpips"], {"lpips": False}, n_resamples=100)
    assert up["win_rate"].iloc[0] == pytest.approx(1 - down["win_rate"].iloc[0])
    assert up["metric"].iloc[0] == "metric_lpips"
    with pytest.raises(KeyError, match="direction"):
        comparison_table(rows, ["psnr"], {"lpips": False})
    with pytest.raises(KeyError, match="ssim"):
        comparison_table(rows, ["ssim"], {"ssim": True})


def test_comparison_table_rejects_ambiguous_pairs_and_empty_input():
    rows = _hand_rows()
    clash = _row("pid", 0.0, "a", 31.0, pid_steps=8)
    stepped = pd.concat([rows, pd.DataFrame([clash])], ignore_index=True)
    # pid_steps is a setting key: by default each step count is a group of its own
    table = comparison_table(stepped, ["psnr"], {"psnr": True}, n_resamples=100)
    assert table["pid_steps"].tolist() == [4, 8, 4]
    assert table["candidate_n"].tolist() == [5, 1, 2]
    # grouped without it, (a, 0) has two pid rows in one group: ambiguous, named
    with pytest.raises(ValueError, match="pid_steps"):
        comparison_table(stepped, ["psnr"], {"psnr": True}, group_by=["sigma"])

    failed = rows.assign(status="error")
    empty = comparison_table(failed, ["psnr"], {"psnr": True})
    assert empty.empty and "diff_mean" in empty.columns and "sigma" in empty.columns


def test_comparison_table_on_rows_read_back_from_parquet(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    from pid_bench.schema import to_table

    rng = np.random.default_rng(0)
    records = []
    for i in range(12):
        truth = float(rng.normal(30, 2))
        for decoder, shift in (("native+bicubic", 0.0), ("pid", 0.75)):
            records.append(
                {
                    **_AXES,
                    "sigma": 0.1,
                    "decoder": decoder,
                    "status": "ok",
                    "image_id": f"img{i}",
                    "seed": 0,
                    "metric_psnr": truth + shift,
                    "metric_ssim": None,
                }
            )
    path = tmp_path / "part.parquet"
    pq.write_table(to_table(records), path)
    # finished_at left out: duckdb's conversion of tz-aware timestamps warns under pandas 3.1
    query = "SELECT * EXCLUDE (finished_at) FROM read_parquet(?)"
    rows = duckdb.connect().execute(query, [str(path)]).df()
    assert rows["save_xt_step"].isna().all()  # a null group key, as from_clean rows have
    table = comparison_table(rows, ["psnr", "ssim"], {"psnr": True, "ssim": True})
    psnr, ssim = table.iloc[0], table.iloc[1]
    assert psnr["n_pairs"] == 12 and psnr["diff_mean"] == pytest.approx(0.75)
    assert psnr["diff_low"] == pytest.approx(0.75) and psnr["diff_high"] == pytest.approx(0.75)
    assert psnr["win_rate"] == 1.0
    assert ssim["n_pairs"] == 0 and ssim["candidate_n"] == 0 and math.isnan(ssim["diff_mean"])
    assert (
        table["save_xt_step"].isna().all()
        and table["save_xt_step"].dtype == rows["save_xt_step"].dtype
    )


# ---- pareto_front ------------------------------------------------------------------------------


def _points() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "name": ["p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8"],
            "latency_ms_p50": [10.0, 20.0, 15.0, 20.0, 30.0, 5.0, np.nan, 10.0, 2.0],
            "metric_psnr": [30.0, 35.0, 29.0, 33.0, 35.0, 20.0, 50.0, 30.0, 15.0],
        }
    )


def test_pareto_front_higher_is_better():
    front = pareto_front(_points(), y="metric_psnr")
    # p2 dominated by p0; p3 by p1 (same latency); p4 by p1 (same quality); p6 has no latency;
    # p7 equals p0 and is kept with it
    assert front["name"].tolist() == ["p8", "p5", "p0", "p7", "p1"]
    assert front.index.tolist() == [8, 5, 0, 7, 1]
    assert front["latency_ms_p50"].is_monotonic_increasing
    assert front["metric_psnr"].is_monotonic_increasing


def test_pareto_front_lower_is_better_and_edge_cases():
    points = _points()
    front = pareto_front(points, y="metric_psnr", higher_is_better=False)
    assert front["name"].tolist() == ["p8"]  # fastest and lowest
    points.loc[8, "metric_psnr"] = 40.0
    front = pareto_front(points, y="metric_psnr", higher_is_better=False)
    assert front["name"].tolist() == ["p8", "p5"]
    assert pareto_front(points.iloc[:0], y="metric_psnr").empty
    single = pareto_front(points.iloc[[6, 2]], y="metric_psnr")
    assert single["name"].tolist() == ["p2"]
    with pytest.raises(KeyError):
        pareto_front(points, y="metric_lpips")
