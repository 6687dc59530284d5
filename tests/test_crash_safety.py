"""The driver killed at any moment never loses, duplicates or truncates a result.

Trials run the real command (`pid-bench run`) in a subprocess on a tiny suite and kill it with
SIGKILL at random moments (seeded, printed); after each kill the run directory must hold only
complete, readable parts with no (cell, decoder) twice, and the final rerun must complete every
cell exactly once. SIGINT and SIGTERM must stop after the part being written, say what remains
and exit 130 / 143.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pid_bench.runner import plan
from pid_bench.schema import ROW_SCHEMA
from pid_bench.suite import load_suite
from tests.test_run import write_suite

pytestmark = pytest.mark.slow

TRIALS = 10
DECODERS = ["pid", "native"]


def _command(suite: Path, out: Path) -> list[str]:
    code = "import sys; from pid_bench.cli import app; sys.exit(app())"
    return [sys.executable, "-c", code, "run", str(suite), "--output", str(out), "--no-report"]


def _written(out: Path) -> list[tuple[str, str]]:
    """(cell_id, decoder) of every row in every part; a truncated part fails to read here."""
    keys = []
    for part in sorted((out / "parts").glob("part-*.parquet")):
        table = pq.read_table(part, schema=ROW_SCHEMA)
        keys += zip(table["cell_id"].to_pylist(), table["decoder"].to_pylist(), strict=True)
    return keys


@pytest.fixture
def suite(tmp_path) -> Path:
    return write_suite(
        tmp_path, sigmas=[0.0, 0.2, 0.4], resolutions=[64, [64, 96]], decoders=DECODERS,
        limit=2, timing={"warmup": 0, "repeats": 3},
    )  # fmt: skip


def test_sigkill_at_random_moments_never_loses_or_duplicates_a_cell(suite, tmp_path):
    out = tmp_path / "run"
    expected = {(cid, d) for cid, _ in plan(load_suite(suite)) for d in DECODERS}
    rng = random.Random(20261123)
    log = []
    for trial in range(TRIALS):
        delay = rng.uniform(1.0, 10.0)
        proc = subprocess.Popen(
            _command(suite, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        keys = _written(out)
        assert len(keys) == len(set(keys)), f"trial {trial}: a row was written twice"
        assert set(keys) <= expected
        log.append((trial, round(delay, 1), proc.returncode, len(keys)))
    print("trials (n, kill after s, exit code, rows on disk):", log)
    final = subprocess.run(_command(suite, out), capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    keys = _written(out)
    assert sorted(keys) == sorted(expected)  # every cell exactly once
    assert not list((out / "parts").glob(".*.tmp")) or all(
        p.name.startswith(".") for p in (out / "parts").glob("*.tmp")
    )
    assert any(rows < len(expected) for *_, rows in log), "no trial was cut short"


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_and_sigterm_finish_the_part_and_say_what_remains(suite, tmp_path, sig, code):
    out = tmp_path / "run"
    proc = subprocess.Popen(_command(suite, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list((out / "parts").glob("part-*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    done = _written(out)
    total = len(plan(load_suite(suite))) * len(DECODERS)
    if len(done) == total:
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == code, stderr.decode()
    assert b"cells remain" in stderr and b"rerun the same command" in stderr
    assert len(done) == len(set(done)) and len(done) % len(DECODERS) == 0  # whole cells only
    rerun = subprocess.run(_command(suite, out), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert len(_written(out)) == total
