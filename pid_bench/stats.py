"""Paired statistics for the report: bootstrap CIs, paired differences, win rates, Pareto fronts.

Pure numpy/pandas (no torch), so the report can import it cheaply.

* `bootstrap_mean_ci`     mean of a sample with a percentile-bootstrap CI (resampling images)
* `paired_difference_ci`  mean of a - b over images present in both, its CI, and a's win rate
* `comparison_table`      per (group, metric): baseline and candidate means with CIs, the paired
                          difference candidate - baseline with its CI, the candidate's win rate
* `pareto_front`          rows on the quality-vs-latency Pareto front

Every bootstrap draws its resamples from `np.random.default_rng(seed)`: the same inputs and seed
give the same bounds, and `comparison_table` records the seed and the number of resamples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pid_bench.axes import SETTING_KEYS

#: Columns a comparison is grouped by by default: the leaderboard's grain, less the decoder
#: (pid_bench.axes.SETTING_KEYS). `mode` is in it because from_clean rows and from_ldm x0 rows
#: both have a null save_xt_step.
DEFAULT_GROUP_BY: tuple[str, ...] = SETTING_KEYS
#: Columns that pair a candidate row with its baseline row inside a group.
PAIR_KEYS: tuple[str, ...] = ("image_id", "seed")
#: Axes that, if they vary inside a group, make a (image_id, seed) key ambiguous.
_OTHER_AXES = ("mode", "experiment", "pid_steps", "dtype", "run_id")
#: Most indices drawn at once (resamples x sample size); bounds the bootstrap's memory (~64 MB).
_MAX_DRAWS = 1 << 22


# ---- one sample ----------------------------------------------------------------------------------


def _to_float(values: Any) -> np.ndarray:
    """A 1-D float64 array; None, NaN and pd.NA become NaN. Text that is not a number raises."""
    if isinstance(values, pd.Series):
        series = values
    else:
        array = np.asarray(values, dtype=object)
        if array.ndim != 1:
            raise ValueError(f"expected a 1-D sequence of numbers, got shape {array.shape}")
        series = pd.Series(array, dtype=object)
    if series.dtype == object:
        series = pd.to_numeric(series)
    return series.to_numpy(dtype=np.float64, na_value=np.nan)


def _check(confidence: float, n_resamples: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples}")


def _bootstrap(x: np.ndarray, confidence: float, n_resamples: int, seed: int) -> tuple[float, ...]:
    """(mean, low, high) of a NaN-free sample (the caller drops NaN and checks the arguments)."""
    n = x.size
    if n == 0:
        return (np.nan, np.nan, np.nan)
    mean = float(x.mean())
    if n == 1:
        return (mean, np.nan, np.nan)
    if np.all(x == x[0]):
        # Every resample is the sample itself: the interval is exactly the one value.
        value = float(x[0])
        return (value, value, value)
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    chunk = max(1, _MAX_DRAWS // n)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = x[idx].mean(axis=1)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return (mean, float(low), float(high))


def bootstrap_mean_ci(
    values: Any,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(mean, low, high): the sample mean and its percentile-bootstrap confidence interval.

    `values` is one number per image (any 1-D sequence or a pandas Series); None and NaN are
    dropped first. `n_resamples` resamples of the images, with replacement and of the sample's
    size, are drawn at once (in chunks bounded in memory) from `np.random.default_rng(seed)`;
    low and high are the (1 - confidence)/2 and (1 + confidence)/2 quantiles of their means.

    * no values: (NaN, NaN, NaN).
    * one value v: (v, NaN, NaN). Every resample of one value is that value, so the bootstrap
      would report a zero-width interval, claiming certainty a single image cannot give; NaN
      bounds say "unknown" instead.
    * two or more values all equal to v: (v, v, v), the bootstrap's exact answer.

    Infinite values (the PSNR of an exact reconstruction) are kept: they are real values, and
    make the mean infinite (its bounds then may be infinite or NaN).
    """
    _check(confidence, n_resamples)
    x = _to_float(values)
    return _bootstrap(x[~np.isnan(x)], confidence, int(n_resamples), seed)


# ---- paired samples -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PairedDifference:
    """The mean of a - b over paired images, its bootstrap CI, and how often a beats b.

    win_rate: the fraction of pairs where a is better than b (higher when higher_is_better, lower
    otherwise), a tie counting half: (wins + ties / 2) / n. 0.5 means "as often better as worse".
    With no pairs every number is NaN and n is 0; with one pair low and high are NaN.
    """

    mean: float
    low: float
    high: float
    n: int
    win_rate: float


def _as_series(values: Any, name: str) -> pd.Series:
    if isinstance(values, pd.Series):
        series = values
    else:
        series = pd.Series(_to_float(values))  # no keys: paired by position
    if series.index.has_duplicates:
        dupes = series.index[series.index.duplicated()].unique()[:5].tolist()
        raise ValueError(
            f"{name} has repeated keys {dupes}: pairing by key needs one value per key"
        )
    return series


def _paired(
    a: np.ndarray,
    b: np.ndarray,
    higher_is_better: bool,
    confidence: float,
    n_resamples: int,
    seed: int,
) -> PairedDifference:
    """From two NaN-free float arrays of equal length, paired by position."""
    n = int(a.size)
    if n == 0:
        return PairedDifference(np.nan, np.nan, np.nan, 0, np.nan)
    mean, low, high = _bootstrap(a - b, confidence, n_resamples, seed)
    wins = int(np.count_nonzero(a > b if higher_is_better else a < b))
    ties = int(np.count_nonzero(a == b))
    return PairedDifference(mean, low, high, n, (wins + 0.5 * ties) / n)


def paired_difference_ci(
    a: Any,
    b: Any,
    *,
    higher_is_better: bool = True,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> PairedDifference:
    """The mean of a - b over images with a value in both, its bootstrap CI, n and a's win rate.

    `a` and `b` are pandas Series indexed by the image key (a MultiIndex works, e.g. (image_id,
    seed)); they are inner-joined on the key, and a pair where either value is None/NaN is
    dropped. A key repeated within one series is ambiguous and raises ValueError. Plain
    sequences (no index) are paired by position. The CI is the percentile bootstrap of the
    per-pair differences (see `bootstrap_mean_ci`, whose n = 0 / n = 1 rules apply); the win rate
    follows `higher_is_better` (see `PairedDifference`).
    """
    _check(confidence, n_resamples)
    joined = pd.concat({"a": _as_series(a, "a"), "b": _as_series(b, "b")}, axis=1, join="inner")
    x = _to_float(joined["a"])
    y = _to_float(joined["b"])
    keep = ~(np.isnan(x) | np.isnan(y))
    return _paired(x[keep], y[keep], higher_is_better, confidence, int(n_resamples), seed)


# ---- the report's comparison table ----------------------------------------------------------------


def _metric_column(rows: pd.DataFrame, name: str) -> str:
    """`name` itself if it is a column, else `metric_<name>`."""
    for column in (name, f"metric_{name}"):
        if column in rows.columns:
            return column
    raise KeyError(f"metric {name!r}: neither {name!r} nor 'metric_{name}' is a column of rows")


def _direction(higher_is_better: Mapping[str, bool], name: str) -> bool:
    for key in (name, name.removeprefix("metric_")):
        if key in higher_is_better:
            return bool(higher_is_better[key])
    raise KeyError(
        f"metric {name!r} has no direction: say in higher_is_better whether higher is better"
    )


def _comparison_columns(group_by: Sequence[str]) -> list[str]:
    return [
        *group_by,
        "metric",
        "higher_is_better",
        "baseline",
        "candidate",
        "baseline_mean",
        "baseline_low",
        "baseline_high",
        "baseline_n",
        "candidate_mean",
        "candidate_low",
        "candidate_high",
        "candidate_n",
        "diff_mean",
        "diff_low",
        "diff_high",
        "n_pairs",
        "win_rate",
        "confidence",
        "n_resamples",
        "bootstrap_seed",
    ]


def _keyed(part: pd.DataFrame, decoder: str, key: tuple[Any, ...]) -> pd.DataFrame:
    """The decoder's rows of one group indexed by (image_id, seed); a repeated key raises."""
    rows = part[part["decoder"] == decoder]
    repeated = rows.duplicated(list(PAIR_KEYS), keep=False)
    if repeated.any():
        clash = rows[repeated]
        varying = [c for c in _OTHER_AXES if c in clash.columns and clash[c].nunique() > 1]
        hint = f" ({', '.join(varying)} vary there; add them to group_by)" if varying else ""
        raise ValueError(
            f"group {key}: decoder {decoder!r} has {int(repeated.sum())} ok rows sharing an "
            f"(image_id, seed) key, so pairing is ambiguous{hint}"
        )
    return rows.set_index(list(PAIR_KEYS))


def comparison_table(
    rows: pd.DataFrame,
    metrics: Sequence[str],
    higher_is_better: Mapping[str, bool],
    group_by: Sequence[str] = DEFAULT_GROUP_BY,
    baseline: str = "native+bicubic",
    candidate: str = "pid",
    seed: int = 0,
    n_resamples: int = 2000,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """One row per (group, metric): each decoder's mean with its CI, and candidate vs baseline.

    `rows` are result rows (pid_bench.schema columns); only status == 'ok' rows count. A metric
    is named bare ('psnr', read from column metric_psnr) or by its column; `higher_is_better`
    must give its direction (keyed by either name; KeyError if missing) and is recorded in the
    `higher_is_better` column.

    Per group (the `group_by` columns; null is a group value of its own) and metric:

    * baseline_* / candidate_*: mean, low, high (percentile bootstrap, `confidence`) and n over
      that decoder's rows with a value (NaN/None skipped). A decoder absent from the group has
      NaN there and n = 0; the other decoder's numbers are still given. Groups with neither
      decoder are left out.
    * diff_*: mean, low, high of candidate - baseline over pairs matched on (image_id, seed) in
      the group, dropping unmatched rows and pairs with a null; n_pairs counts them.
    * win_rate: fraction of those pairs where the candidate is better (per higher_is_better),
      ties counting half; NaN with no pairs.
    * confidence, n_resamples, bootstrap_seed: how the CIs were drawn. Every bootstrap of the
      table uses `seed`, so a table is reproducible from its own columns.

    A decoder with two ok rows for one (image_id, seed) in a group (an axis outside group_by
    varies, e.g. pid_steps) makes the pairing ambiguous: ValueError naming the group.
    """
    _check(confidence, n_resamples)
    group_by = list(group_by)
    metrics = list(metrics)
    needed = [*group_by, "decoder", "status", *PAIR_KEYS]
    missing = [c for c in needed if c not in rows.columns]
    if missing:
        raise KeyError(f"rows lack columns {missing} (pass group_by to group on other columns)")
    columns = {name: _metric_column(rows, name) for name in metrics}
    directions = {name: _direction(higher_is_better, name) for name in metrics}

    ok = rows[rows["status"] == "ok"]
    ok = ok[ok["decoder"].isin([baseline, candidate])]
    if group_by:
        groups = ok.groupby(group_by, dropna=False, sort=True)
    else:
        groups = [((), ok)] if len(ok) else []

    records = []
    for key, part in groups:
        key = key if isinstance(key, tuple) else (key,)
        base = _keyed(part, baseline, key)
        cand = _keyed(part, candidate, key)
        for name in metrics:
            column, better = columns[name], directions[name]
            b_val, c_val = _to_float(base[column]), _to_float(cand[column])
            b_ci = _bootstrap(b_val[~np.isnan(b_val)], confidence, n_resamples, seed)
            c_ci = _bootstrap(c_val[~np.isnan(c_val)], confidence, n_resamples, seed)
            joined = pd.concat({"c": cand[column], "b": base[column]}, axis=1, join="inner")
            x, y = _to_float(joined["c"]), _to_float(joined["b"])
            keep = ~(np.isnan(x) | np.isnan(y))
            diff = _paired(x[keep], y[keep], better, confidence, n_resamples, seed)
            records.append(
                [
                    *key,
                    name,
                    better,
                    baseline,
                    candidate,
                    *b_ci,
                    int(np.count_nonzero(~np.isnan(b_val))),
                    *c_ci,
                    int(np.count_nonzero(~np.isnan(c_val))),
                    diff.mean,
                    diff.low,
                    diff.high,
                    diff.n,
                    diff.win_rate,
                    confidence,
                    int(n_resamples),
                    seed,
                ]
            )
    table = pd.DataFrame(records, columns=_comparison_columns(group_by))
    for column in group_by:
        table[column] = table[column].astype(rows[column].dtype)
    for column in ("baseline_n", "candidate_n", "n_pairs", "n_resamples", "bootstrap_seed"):
        table[column] = table[column].astype("int64")
    table["higher_is_better"] = table["higher_is_better"].astype(bool)
    float_columns = [c for c in table.columns if c.endswith(("_mean", "_low", "_high"))]
    table[[*float_columns, "win_rate", "confidence"]] = table[
        [*float_columns, "win_rate", "confidence"]
    ].astype("float64")
    return table


# ---- Pareto front ---------------------------------------------------------------------------------


def pareto_front(
    points: pd.DataFrame,
    *,
    y: str,
    x: str = "latency_ms_p50",
    higher_is_better: bool = True,
) -> pd.DataFrame:
    """The rows of `points` on the Pareto front of quality `y` against latency `x`.

    Lower x is better; higher y is better when `higher_is_better`, lower otherwise. A row is on
    the front when no other row is at least as good in both and strictly better in one; rows
    with identical (x, y) are both kept. Rows with a null x or y are left out. The front comes
    sorted by x ascending (its quality then improves along it), with the original index.
    """
    for column in (x, y):
        if column not in points.columns:
            raise KeyError(f"points have no column {column!r}")
    xs = _to_float(points[x])
    ys = _to_float(points[y])
    valid = np.flatnonzero(~(np.isnan(xs) | np.isnan(ys)))
    score = ys if higher_is_better else -ys  # higher score is better
    # Sorted by x, then best score first: a row is dominated iff an earlier one beats it.
    order = valid[np.lexsort((-score[valid], xs[valid]))]
    keep: list[int] = []
    best = best_x = np.nan
    for i in order:
        if not keep or score[i] > best or (score[i] == best and xs[i] == best_x):
            keep.append(int(i))
            best, best_x = score[i], xs[i]
    return points.iloc[keep]
