"""Faults inside a run, driven by the test-only fault injection (PID_BENCH_FAULTS): an exception
in a cell, a (simulated) CUDA out-of-memory, and an actor process that dies."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pid_bench.cli import app
from pid_bench.runner import FAULTS_ENV, plan
from pid_bench.schema import ROW_SCHEMA
from pid_bench.suite import load_suite
from tests.test_run import write_suite

pytestmark = pytest.mark.usefixtures("shared_local_ray")  # one Ray for the module's runs

runner = CliRunner()


def _rows(out):
    parts = sorted((out / "parts").glob("*.parquet"))
    return pq.read_table(parts, schema=ROW_SCHEMA).to_pandas()


@pytest.fixture
def suite(tmp_path):
    path = write_suite(tmp_path, resolutions=[64], limit=2, decoders=["pid", "native"])
    cids = [cid for cid, _ in plan(load_suite(path))]
    assert len(cids) == 4
    return path, cids


def _run(path, out, monkeypatch, faults, *extra):
    monkeypatch.setenv(FAULTS_ENV, json.dumps(faults))
    return runner.invoke(app, ["run", str(path), "--output", str(out), "--no-report", *extra])


def test_error_oom_and_a_dead_actor_each_settle_and_the_run_goes_on(suite, tmp_path, monkeypatch):
    path, (c_error, c_oom, c_kill, c_ok) = suite
    faults = {"error": [c_error], "oom": [c_oom], "kill": [c_kill], "marker_dir": str(tmp_path)}
    result = _run(path, tmp_path / "out", monkeypatch, faults)
    assert result.exit_code == 1, result.output  # not everything succeeded
    rows = _rows(tmp_path / "out").set_index(["cell_id", "decoder"])
    assert rows.index.is_unique and len(rows) == 8  # every cell once, each decoder
    assert rows.loc[(c_error, "pid")].status == "error"
    assert "RuntimeError: injected fault" in rows.loc[(c_error, "pid")].error
    assert rows.loc[(c_oom, "pid")].status == "oom"
    assert "OutOfMemoryError" in rows.loc[(c_oom, "pid")].error
    for cid in (c_error, c_oom):  # the other decoder of a faulty cell still ran
        assert rows.loc[(cid, "native")].status == "ok"
    assert (rows.loc[c_kill].status == "ok").all()  # retried on a fresh actor
    assert len(list(tmp_path.glob(f"kill-{c_kill}-*"))) == 1
    assert (rows.loc[c_ok].status == "ok").all()
    assert "6 ok" in result.output and "1 error" in result.output and "1 oom" in result.output


def test_a_cell_that_keeps_killing_its_worker_is_worker_lost(suite, tmp_path, monkeypatch):
    path, (c0, c1, c_kill, c3) = suite
    faults = {"kill": [c_kill], "kill_times": 10, "marker_dir": str(tmp_path)}
    result = _run(path, tmp_path / "out", monkeypatch, faults, "--max-retries", "1")
    assert result.exit_code == 1, result.output
    rows = _rows(tmp_path / "out").set_index(["cell_id", "decoder"])
    assert rows.index.is_unique and len(rows) == 8
    assert (rows.loc[c_kill].status == "worker_lost").all()
    assert len(list(tmp_path.glob(f"kill-{c_kill}-*"))) == 2  # first try + 1 retry
    for cid in (c0, c1, c3):
        assert (rows.loc[cid].status == "ok").all()
    assert "2 worker_lost" in result.output


def test_images_that_cannot_be_written_stop_the_run_cleanly_on_real_workers(
    suite, tmp_path, monkeypatch
):
    """A worker's image write refused (ENOSPC, injected): its rows are storage_error, the run
    stops with exit code 74 and says how many cells are safe; the actors are let go."""
    path, (c_oom, c_storage, _, _) = suite
    out = tmp_path / "out"
    result = _run(path, out, monkeypatch, {"oom": [c_oom], "storage": [c_storage]})
    assert result.exit_code == 74, result.output
    message = " ".join(result.output.split())
    assert f"could not write {out}/images/{c_storage}: No space left on device [ENOSPC]" in message
    assert "1 of 4 cells are safe" in message and "Traceback" not in result.output
    rows = _rows(out).set_index(["cell_id", "decoder"])
    assert rows.loc[(c_oom, "pid")].status == "oom" and (rows.attempt == 1).all()
    assert (rows.loc[c_storage].status == "storage_error").all()  # not a decoder error
    assert set(rows.index.get_level_values(0)) == {c_oom, c_storage}
