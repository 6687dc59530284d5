"""The driver killed at any moment never loses, duplicates or truncates a result.

Trials run the real command (`pid-bench run`) in a subprocess on a tiny suite and kill it with
SIGKILL at random moments (seeded, printed); after each kill the run directory must hold only
complete, readable parts with no (cell, decoder) twice, and the final rerun must complete every
cell exactly once. SIGINT and SIGTERM must stop after the part being written, say what remains
and exit 130 / 143.
"""

from __future__ import annotations

import json
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
from pid_bench.store import part_files
from pid_bench.suite import load_suite
from tests.test_run import write_suite

pytestmark = pytest.mark.slow

TRIALS = 3  # each trial starts Ray (~20 s on 2 cores); the seeded draws give 2 mid-run kills and 1 at start-up
DECODERS = ["pid", "native"]


def _command(suite: Path, out: Path, report: bool = False) -> list[str]:
    code = "import sys; from pid_bench.cli import app; sys.exit(app())"
    command = [sys.executable, "-c", code, "run", str(suite), "--output", str(out)]
    return command + ([] if report else ["--no-report"])


def _written(out: Path) -> list[tuple[str, str]]:
    """(cell_id, decoder) of every row in every part; a truncated part fails to read here."""
    keys = []
    for part in part_files(out):  # as every reader sees them: an interrupted compaction settled
        table = pq.read_table(part, schema=ROW_SCHEMA)
        keys += zip(table["cell_id"].to_pylist(), table["decoder"].to_pylist(), strict=True)
    return keys


@pytest.fixture
def suite(tmp_path) -> Path:
    return write_suite(
        tmp_path, sigmas=[0.0, 0.2, 0.4, 0.6], resolutions=[64, [64, 96]], decoders=DECODERS,
        limit=2, timing={"warmup": 0, "repeats": 1, "min_time_s": 0},  # cells are under test
    )  # fmt: skip


def _parts(out: Path) -> int:
    """Cells persisted so far (parts are merged as a run goes, so count cells, not files)."""
    if not (out / "parts").is_dir():
        return 0
    return len({cell for cell, _ in _written(out)})


def test_sigkill_at_random_moments_never_loses_or_duplicates_a_cell(suite, tmp_path):
    """Each trial resumes the same run and is killed at a random moment: during start-up or
    0-0.5 s after a random number (0-2) of further cells were persisted."""
    out = tmp_path / "run"
    expected = {(cid, d) for cid, _ in plan(load_suite(suite)) for d in DECODERS}
    cells = len(expected) // len(DECODERS)
    rng = random.Random(20261123)
    log = []
    for trial in range(TRIALS):
        before = _parts(out)
        target = min(before + rng.randint(0, 2), cells - 1)
        extra = rng.uniform(0.0, 0.5)
        proc = subprocess.Popen(
            _command(suite, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 120
        while _parts(out) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(extra)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        keys = _written(out)  # every part reads: none truncated
        assert len(keys) == len(set(keys)), f"trial {trial}: a row was written twice"
        assert set(keys) <= expected
        assert len(keys) % len(DECODERS) == 0, f"trial {trial}: a cell was half written"
        log.append((trial, before, target, round(extra, 2), len(keys) // len(DECODERS)))
    print("trials (n, cells before, kill after cells, + s, cells after):", log)
    final = subprocess.run(_command(suite, out), capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    assert sorted(_written(out)) == sorted(expected)  # every cell exactly once
    assert sum(after > before for _, before, _, _, after in log) >= 2, "too few mid-run kills"


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_and_sigterm_finish_the_part_and_say_what_remains(suite, tmp_path, sig, code):
    out = tmp_path / "run"
    report = sig == signal.SIGINT  # the report is written for what finished
    proc = subprocess.Popen(
        _command(suite, out, report), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
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
    summary = stdout.decode()
    assert f"INTERRUPTED ({sig.name}) after" in summary, summary  # never reads like success
    record = json.loads((out / "run.json").read_text())["invocations"][-1]
    assert record["interrupted_by"] == sig.name and record["finished_at"]
    assert record["rows_written"] == len(done)
    if report:
        assert f"Status: {len(done)} ok ({len(done)} rows)" in (out / "leaderboard.md").read_text()
    if sig == signal.SIGTERM:  # resuming after a kill is the SIGKILL trials' subject; once here
        rerun = subprocess.run(_command(suite, out), capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        assert len(_written(out)) == total


def test_a_second_driver_is_refused_naming_the_first_and_a_dead_one_leaves_no_lock(tmp_path):
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    from pid_bench.store import RunDirError, run_lock

    with run_lock(tmp_path):
        with pytest.raises(RunDirError, match=rf"host {socket.gethostname()}, pid {os.getpid()}"):
            with run_lock(tmp_path):
                pass
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from pid_bench.store import run_lock\n"
        f"with run_lock(Path({str(tmp_path)!r})):\n    print('held', flush=True); time.sleep(60)"
    )], stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunDirError, match=rf"pid {holder.pid}"):
        with run_lock(tmp_path):
            pass
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    time.sleep(0.1)
    with run_lock(tmp_path):  # the kernel released the dead holder's lock
        pass


def _three_parts(run_dir: Path) -> list:
    from pid_bench.store import write_part

    rows = [{"cell_id": f"c{i}", "decoder": "pid", "status": "ok"} for i in range(6)]
    return [write_part(run_dir, rows[i : i + 2]) for i in range(0, 6, 2)]


def test_compaction_merges_parts_and_a_kill_at_any_step_loses_no_row(tmp_path, monkeypatch):
    from pid_bench import store

    expected = {(f"c{i}", "pid") for i in range(6)}
    run = tmp_path / "whole"
    _three_parts(run)
    store.compact(run)
    assert len(store.part_files(run)) == 1 and store.finished_rows(run) == expected

    for fail_at in ("journal", "rename", "delete"):  # kill before each step of compaction
        run = tmp_path / fail_at
        _three_parts(run)
        with monkeypatch.context() as patch:
            if fail_at == "journal":
                patch.setattr(store, "write_json", _boom)
            elif fail_at == "rename":
                patch.setattr(store.os, "replace", _boom_after_journal(store.os.replace))
            else:
                patch.setattr(store, "_finish_compaction", _boom)
            with pytest.raises(KeyboardInterrupt):
                store.compact(run)
        assert store.finished_rows(run) == expected, fail_at  # recovered on the next read
        keys = [k for p in store.part_files(run) for k in _keys(p)]
        assert len(keys) == len(set(keys)) == 6, fail_at  # and no row twice
        assert (
            not list((run / "parts").glob(".*")) and not (run / "parts" / "compact.json").exists()
        )


def _boom(*args, **kwargs):
    raise KeyboardInterrupt


def _boom_after_journal(replace):
    def patched(src, dst):
        if str(dst).endswith(".parquet"):
            raise KeyboardInterrupt
        return replace(src, dst)

    return patched


def _keys(part):
    table = pq.read_table(part, columns=["cell_id", "decoder"])
    return list(zip(table["cell_id"].to_pylist(), table["decoder"].to_pylist(), strict=True))


def test_pid_bench_compact_merges_a_run_directory(tmp_path):
    from typer.testing import CliRunner

    from pid_bench.cli import app

    _three_parts(tmp_path)
    result = CliRunner().invoke(app, ["compact", str(tmp_path)])
    assert result.exit_code == 0 and "3 parts -> 1" in result.output
