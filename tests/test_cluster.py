"""Ray cluster use: placement on a simulated two-node cluster with fake GPUs, model-affinity
scheduling, a real `ray job submit` to a head node the test starts, and a dead address."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pid_bench.cli import app
from pid_bench.pool import WORKER_DEVICE_ENV, ActorPool
from pid_bench.runner import plan, run_suite
from pid_bench.schema import ROW_SCHEMA
from pid_bench.suite import Cell, load_suite
from pid_models.ldm import PIPELINES  # noqa: F401  (imports diffusers once, outside timing)
from tests.test_run import REPO, write_suite

pytestmark = pytest.mark.slow
RAY = Path(sys.executable).with_name("ray")


def _rows(out: Path) -> pd.DataFrame:
    parts = sorted((out / "parts").glob("part-*.parquet"))
    return pq.read_table(parts, schema=ROW_SCHEMA).to_pandas()


@pytest.fixture
def two_node_cluster(monkeypatch):
    """Two nodes with 2 fake GPUs each (CPU processes; actors compute on the CPU)."""
    import ray
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setenv(WORKER_DEVICE_ENV, "cpu")
    monkeypatch.setenv("PID_BENCH_THREADS", "1")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "num_gpus": 2, "include_dashboard": False},
    )
    cluster.add_node(num_cpus=1, num_gpus=2)
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_one_actor_per_fake_gpu_and_never_two_cells_on_a_gpu_at_once(two_node_cluster, tmp_path):
    suite = load_suite(
        write_suite(tmp_path, sigmas=[0.0, 0.1, 0.2, 0.3], resolutions=[64], limit=2,
                    decoders=["pid", "native"], metrics=[])
    )  # fmt: skip
    summary = run_suite(suite, tmp_path / "out", progress=False)
    assert summary.ok and summary.rows_written == 16
    rows = _rows(tmp_path / "out")
    workers = rows.groupby("worker").gpu_ids.unique()
    assert len(workers) == 4  # one actor per fake GPU, all used
    assert all(len(ids) == 1 and "," not in ids[0] for ids in workers)  # one GPU each
    nodes = {w.split(":")[0] for w in workers.index}
    assert len(nodes) == 2
    placements = {(w.split(":")[0], ids[0]) for w, ids in workers.items()}
    assert len(placements) == 4  # no GPU of a node shared by two actors
    for _, cells in rows.drop_duplicates("cell_id").groupby("worker"):
        spans = sorted(
            (r.started_at, r.started_at + pd.Timedelta(milliseconds=r.cell_wall_ms))
            for r in cells.itertuples()
        )
        assert all(end <= nxt for (_, end), (nxt, _) in zip(spans, spans[1:], strict=False))


class _RecordingWorker:
    """Stands in for CellWorker: records which models it loads and when it switches."""

    def __init__(self, device, settings) -> None:
        self.loaded: list[str] = []

    def run(self, cid, cell):
        if not self.loaded or self.loaded[-1] != cell.backbone:
            self.loaded.append(cell.backbone)
        return [{"cell_id": cid, "decoder": "pid", "status": "ok", "pid": os.getpid(),
                 "model": cell.backbone, "loads": list(self.loaded)}]  # fmt: skip


def test_actors_take_whole_model_groups_and_load_each_model_once(two_node_cluster):
    from pid_bench.manifests import SourceItem

    item = SourceItem(id="i", image=None, caption="c", location="-")
    todo = [
        (f"{model}-{n}", Cell("from_clean", model, "2k", 0.0, None, (64, 64), n, 4, item))
        for model in ("m1", "m2", "m3", "m4", "m5", "m6")
        for n in range(3)
    ]
    pool = ActorPool(None, 1, todo, worker=_RecordingWorker)
    results = []
    while pool.busy:
        for rows in pool.next_results(max_retries=0):
            results += rows
    assert sorted(r["cell_id"] for r in results) == sorted(cid for cid, _ in todo)
    by_actor: dict[int, list[dict]] = {}
    for r in results:
        by_actor.setdefault(r["pid"], []).append(r)
    assert len(by_actor) == 4  # 6 groups over 4 fake-GPU actors
    for rows in by_actor.values():
        loads = max((r["loads"] for r in rows), key=len)
        assert len(loads) == len(set(loads)), f"an actor went back to a model: {loads}"
    owners = {r["model"]: r["pid"] for r in results}
    assert all(owners[r["model"]] == r["pid"] for r in results)  # a group stays on one actor


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def head_node():
    """A Ray head on 127.0.0.1 run in the foreground (`--block`), so stopping it stops only it.

    Its temp dir is short: Ray's unix sockets live there and pytest's tmp paths are too long.
    """
    temp = Path(tempfile.mkdtemp(prefix="pbray-", dir="/tmp"))
    gcs, dashboard = _free_port(), _free_port()
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--include-dashboard=true",
         "--num-cpus=2", "--disable-usage-stats", f"--temp-dir={temp}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
            break
        except OSError:
            time.sleep(1)
    else:
        proc.terminate()
        pytest.fail("the test's Ray head did not start within 120 s")
    yield url, env
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
    shutil.rmtree(temp, ignore_errors=True)


def test_ray_job_submit_runs_a_suite_on_a_cluster(head_node, tmp_path):
    url, env = head_node
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    suite = write_suite(job_dir, resolutions=[64], limit=1, decoders=["pid", "native"])
    out = tmp_path / "out"
    code = "import sys; from pid_bench.cli import app; sys.exit(app())"
    submitted = subprocess.run(
        [str(RAY), "job", "submit", "--address", url, "--working-dir", str(job_dir), "--",
         sys.executable, "-c", code, "run", suite.name, "--output", str(out),
         "--no-report"],
        env=env, capture_output=True, text=True, timeout=400, cwd=REPO,
    )  # fmt: skip
    log = submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert submitted.returncode == 0 and "succeeded" in log, log
    rows = _rows(out)
    assert len(rows) == 4 and (rows.status == "ok").all(), log
    assert {cid for cid, _ in plan(load_suite(suite))} == set(rows.cell_id)


def test_a_ray_address_that_does_not_answer_is_bad_input(tmp_path):
    suite = write_suite(tmp_path, resolutions=[64], limit=1)
    port = _free_port()  # nothing listens there
    result = CliRunner().invoke(
        app, ["run", str(suite), "--output", str(tmp_path / "o"), "--ray-address",
              f"127.0.0.1:{port}"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert f"Ray address 127.0.0.1:{port} does not answer" in result.output
