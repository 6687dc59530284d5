"""`--log wandb` / `--log mlflow`: what pid_bench.trackers logs, read back from the tracker's own
files (W&B offline: the run's .wandb record log; MLflow: a SQLite store in tmp_path, read with
MlflowClient), and that logging a directory again goes to the same tracker run. No network:
W&B runs offline, MLflow's store is a local file, MLflow's telemetry is off."""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from pid_bench import report, trackers
from pid_bench.cli import app
from pid_bench.store import listed_parts

FIXTURES = Path(__file__).parent / "fixtures"
SUITE = FIXTURES / "smoke_no_images.yaml"
OLD_RUN = FIXTURES / "run_smoke_v0"  # 8 cells x 3 decoders, no images (test_old_run_dir.py)
N_ROWS = 24
runner = CliRunner()
# MLflow's SQLite store on SQLAlchemy 2.1: its own deprecation, nothing of ours
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


def _add_images(run_dir: Path) -> None:
    """Give every row of the fixture's part a decoded and a reference PNG, as a run that saves
    its images would (the fixture was run without, to stay small)."""
    (part,) = listed_parts(run_dir)
    table = pq.read_table(part)
    cells, decoders = table["cell_id"].to_pylist(), table["decoder"].to_pylist()
    images = [f"images/{c}/{d.replace('+', '_')}.png" for c, d in zip(cells, decoders, strict=True)]
    references = [f"images/{c}/reference.png" for c in cells]
    for shade, path in enumerate(images + references):
        (run_dir / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 12), (shade * 5 % 256, 90, 200)).save(run_dir / path)
    for name, values in (("image_path", images), ("reference_path", references)):
        index = table.schema.get_field_index(name)
        table = table.set_column(index, name, pa.array(values, pa.string()))
    pq.write_table(table, part)


@pytest.fixture(scope="module")
def reported_run(tmp_path_factory) -> Path:
    """The old fixture run with images and its report written: what `pid-bench run` leaves."""
    run_dir = tmp_path_factory.mktemp("reported") / "run_smoke_v0"
    shutil.copytree(OLD_RUN, run_dir)
    _add_images(run_dir)
    report.write_report(run_dir)
    return run_dir


@pytest.fixture
def run_dir(reported_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(reported_run, copy)
    return copy


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch) -> Path:
    """W&B offline, silent, with every folder it writes under tmp_path; its folder of runs."""
    for name in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("DIR", "DATA_DIR", "CACHE_DIR", "CONFIG_DIR", "ARTIFACT_DIR"):
        monkeypatch.setenv(f"WANDB_{name}", str(tmp_path / "wandb-home" / name.lower()))
    return tmp_path / "wandb-home" / "dir" / "wandb"


@pytest.fixture
def local_mlflow(tmp_path, monkeypatch) -> str:
    """MLflow on a SQLite file in tmp_path (MLflow 3 refuses new runs in a ./mlruns file store),
    its artifacts under tmp_path too (the default artifact root is ./mlruns of the CWD)."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    return uri


def _counts(run_dir: Path) -> dict[str, int]:
    """What log_run says it logged: every row, 8 pairs (of the 8 cells), report.html,
    leaderboard.md, recommendations.json and the plots, a mean per decoder and measure."""
    plots = len(list((run_dir / "plots").glob("*.png")))
    # psnr, ssim, latent_consistency_mse, ...: some measured for some decoders only (twin_*),
    # psnr and the latency for each
    counted = trackers.read_content(run_dir).means
    for decoder in ("pid", "native", "native+bicubic"):
        assert {f"{decoder}/psnr", f"{decoder}/latency_ms_p50"} <= set(counted)
    return {"rows": N_ROWS, "image_pairs": 8, "files": 3 + plots, "metrics": len(counted)}


# ---- reading W&B's offline record log ----------------------------------------------------------


def _wandb_records(path: Path):
    """The protobuf Records of a .wandb file: LevelDB's log format (32 KiB blocks of chunks,
    each a 7-byte header: checksum, length, type) after a 7-byte ':W&B' header. wandb ships no
    Python reader of its own any more (wandb-core, in Go, reads them)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, pending = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if length == 0 and kind == 0:  # the zeros that pad a block's end
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk  # full / first; middle, last
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def _wandb_logged(runs_dir: Path, run_id: str) -> dict:
    """What the offline runs of `run_id` logged: config, summary keys, artifacts, files."""
    out = {"config": {}, "summary": {}, "artifacts": [], "files": [], "folders": []}
    # offline-run-<date>_<time>-<id>, and -1, -2 ... after it for a resume in the same second
    named = re.compile(rf"offline-run-\d{{8}}_\d{{6}}-{run_id}(-\d+)?")
    for folder in sorted(p for p in runs_dir.iterdir() if named.fullmatch(p.name)):
        out["folders"].append(folder)
        for record in _wandb_records(folder / f"run-{run_id}.wandb"):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                out["config"] |= {u.key: json.loads(u.value_json) for u in record.run.config.update}
            elif kind == "config":
                out["config"] |= {u.key: json.loads(u.value_json) for u in record.config.update}
            elif kind == "summary":
                for u in record.summary.update:  # a key, or a path into a nested value
                    *parents, key = list(u.nested_key) or [u.key]
                    target = out["summary"]
                    for parent in parents:
                        target = target.setdefault(parent, {})
                    target[key] = json.loads(u.value_json)
            elif kind == "artifact":
                entries = {c.path: c.local_path for c in record.artifact.manifest.contents}
                out["artifacts"].append((record.artifact.type, record.artifact.name, entries))
            elif kind == "files":
                out["files"] += [f.path for f in record.files.files]
    return out


def test_wandb_logs_config_rows_leaderboard_pairs_and_report_and_resumes(
    run_dir, offline_wandb, monkeypatch
):
    import wandb

    first = trackers.log_run(run_dir, "wandb")
    assert first.tracker == "wandb" and not first.resumed
    assert first.logged == _counts(run_dir)
    assert json.loads((run_dir / "trackers.json").read_text())["wandb"] == {
        "id": first.run_id,
        "project": "pid-bench",
    }
    logged = _wandb_logged(offline_wandb, first.run_id)
    assert logged["config"]["suite"]["name"] == "smoke"
    assert logged["config"]["provenance"]["environment"]["git_sha"].startswith("925fcc1")
    assert logged["summary"]["rows"]["nrows"] == N_ROWS  # one per (cell, decoder)
    assert logged["summary"]["leaderboard"]["nrows"] == 12  # 4 settings x 3 decoders
    assert logged["summary"]["image_pairs"]["nrows"] == 8
    assert logged["summary"]["n_rows"] == N_ROWS
    assert (
        logged["summary"]["pid/psnr"] > 0 and "native+bicubic/latency_ms_p50" in logged["summary"]
    )
    ((_, name, entries),) = [a for a in logged["artifacts"] if a[0] == "report"]
    assert name == "smoke-report"
    assert {"report.html", "leaderboard.md"} <= set(entries)
    assert any(e.startswith("plots/") for e in entries)
    ((_, _, entries),) = [a for a in logged["artifacts"] if a[1].endswith("-image_pairs")]
    images = [Path(local) for path, local in entries.items() if path.endswith(".png")]
    assert len(images) == 16 and all(p.is_file() for p in images)  # 8 pairs of two, staged
    assert (
        sorted(Path(p).name for p in entries if p.endswith(".png"))
        == ["pid.png"] * 8 + ["reference.png"] * 8
    )
    (folder,) = logged["folders"]
    assert Path(first.where) == folder  # offline: the folder `wandb sync` uploads
    rows_file = folder / "files" / logged["summary"]["rows"]["path"]
    table = json.loads(rows_file.read_text())
    assert len(table["data"]) == N_ROWS and "metric_psnr" in table["columns"]

    # a resumed run logs to the same W&B run; rows past what W&B keeps in a logged table go
    # into the report artifact, where it keeps 20 times as many
    monkeypatch.setattr(wandb.Table, "MAX_ROWS", N_ROWS - 1)
    again = trackers.log_run(run_dir, "wandb")
    assert again.run_id == first.run_id and again.resumed and again.logged["rows"] == N_ROWS
    logged = _wandb_logged(offline_wandb, first.run_id)
    assert len(logged["folders"]) == 2
    reports = [entries for kind, _, entries in logged["artifacts"] if kind == "report"]
    assert len(reports) == 2 and "rows.table.json" in reports[1]


def test_mlflow_logs_params_tags_metrics_tables_pairs_and_report_and_resumes(run_dir, local_mlflow):
    from mlflow import MlflowClient

    first = trackers.log_run(run_dir, "mlflow")
    assert not first.resumed and first.where == local_mlflow
    assert first.logged == _counts(run_dir)
    recorded = json.loads((run_dir / "trackers.json").read_text())["mlflow"]
    assert recorded == {"run_id": first.run_id, "tracking_uri": local_mlflow}
    client = MlflowClient()
    run = client.get_run(first.run_id)
    assert run.info.run_name == "smoke" and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "pid-bench"
    assert run.data.params["suite.name"] == "smoke"
    assert json.loads(run.data.params["suite.sigmas"]) == [0.0, 0.3]
    assert run.data.tags["environment.git_sha"].startswith("925fcc1")
    assert run.data.tags["environment.versions.torch"] == "2.14.1+cu130"
    assert run.data.tags["mlflow.source.git.commit"].startswith("925fcc1")
    assert run.data.metrics["n_rows"] == N_ROWS and run.data.metrics["pid/psnr"] > 0
    assert "native_bicubic/latency_ms_p50" in run.data.metrics  # '+' is not allowed in a key
    top = {f.path for f in client.list_artifacts(first.run_id)}
    assert {"report.html", "leaderboard.md", "run.json", "rows.json", "plots"} <= top
    assert {"leaderboard.json", "image_pairs"} <= top
    pairs = {f.path for f in client.list_artifacts(first.run_id, "image_pairs")}
    assert "image_pairs/00" in pairs and "image_pairs/07" in pairs
    assert {f.path for f in client.list_artifacts(first.run_id, "image_pairs/00")} == {
        "image_pairs/00/reference.png",
        "image_pairs/00/pid.png",
    }
    table = client.load_table(run.info.experiment_id, "rows.json", [first.run_id])
    assert len(table) == N_ROWS and table["metric_psnr"].notna().all()

    again = trackers.log_run(run_dir, "mlflow")  # resumed: same run, the table replaced
    assert again.run_id == first.run_id and again.resumed
    table = client.load_table(run.info.experiment_id, "rows.json", [first.run_id])
    assert len(table) == N_ROWS
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_a_missing_or_unknown_tracker_names_the_fix(run_dir, monkeypatch):
    with pytest.raises(trackers.TrackerError, match="use one of wandb, mlflow"):
        trackers.parse_trackers(["mlflow,tensorboard"])
    assert trackers.parse_trackers(["wandb,mlflow", "wandb"]) == ["wandb", "mlflow"]
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(trackers.TrackerError, match=r"pip install 'pid-bench\[mlflow\]'"):
        trackers.log_run(run_dir, "mlflow")
    # log_runs never raises: each failure is a line naming the tracker, its fix, the rerun
    (failure,) = trackers.log_runs(run_dir, ["wandb"])
    assert isinstance(failure, trackers.TrackerFailure)
    line = failure.line(run_dir)
    assert line.startswith("--log wandb: logging to W&B needs the wandb package: pip install")
    assert f"safe in {run_dir}; rerun the same command" in line
    assert not (run_dir / "trackers.json").exists()


@pytest.mark.usefixtures("shared_local_ray")
def test_run_logs_to_mlflow_after_the_report_and_a_failure_loses_nothing(
    tmp_path, local_mlflow, monkeypatch
):
    from mlflow import MlflowClient

    run_dir = tmp_path / "old"
    shutil.copytree(OLD_RUN, run_dir)  # resumed: 0 cells to compute, then report and log
    command = ["run", str(SUITE), "--output", str(run_dir), "--log", "mlflow"]
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    assert "mlflow: run " in result.output and "24 rows" in result.output
    run_id = json.loads((run_dir / "trackers.json").read_text())["mlflow"]["run_id"]
    assert "report.html" in {f.path for f in MlflowClient().list_artifacts(run_id)}
    assert "trackers.json" not in (run_dir / "leaderboard.md").read_text()  # not a foreign file

    # a tracker that cannot be reached: the run is ok, so exit 1, the error naming the fix
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nowhere://tracker")
    result = runner.invoke(app, command)
    assert result.exit_code == 1, result.output
    assert "--log mlflow:" in result.output and "MLFLOW_TRACKING_URI" in result.output
    assert "rerun the same command" in result.output
    assert (run_dir / "report.html").is_file()


def test_run_refuses_an_unknown_tracker_before_running(tmp_path):
    result = runner.invoke(
        app, ["run", str(SUITE), "--output", str(tmp_path / "r"), "--log", "neptune"]
    )
    assert result.exit_code == 2
    assert "neptune" in result.output and "wandb, mlflow" in result.output
    assert not (tmp_path / "r").exists()
    command = ["run", str(SUITE), "--output", str(tmp_path / "r"), "--no-report", "--log", "mlflow"]
    result = runner.invoke(app, command)
    assert result.exit_code == 2 and "drop --no-report" in result.output
    assert not (tmp_path / "r").exists()
