"""The harness end to end on the tiny backbone: cells, rows, Parquet parts, resume, report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from pid_bench.cell import run_cell
from pid_bench.cli import app
from pid_bench.models import load_models, model_identity
from pid_bench.prepare import reference_at
from pid_bench.schema import COLUMNS, ROW_SCHEMA, to_table
from pid_bench.settings import CellSettings
from pid_bench.store import RunDirError, claim_run_dir, finished_rows, part_files, write_part
from pid_bench.suite import load_suite
from pid_bench.timing import TimingPolicy
from pid_models.flops import decode_flops

pytestmark = pytest.mark.usefixtures("shared_local_ray")  # one Ray for the module's runs

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()

ONCE = TimingPolicy(warmup=0, repeats=1, min_time_s=0)  # cells, not timing, under test
TWICE = TimingPolicy(warmup=0, repeats=2, min_time_s=0)


def write_suite(folder: Path, name: str = "mini", **overrides) -> Path:
    fields = {
        "name": name,
        "backbones": ["tiny"],
        "ckpt_types": ["2k"],
        "sigmas": [0.0, 0.3],
        "resolutions": [64, [64, 96]],
        "decoders": ["pid", "native", "native+bicubic"],
        "metrics": ["psnr", "ssim"],
        "source": str(REPO / "manifests" / "smoke.jsonl"),
        "limit": 1,
        "timing": {"warmup": 0, "repeats": 2, "min_time_s": 0},
        **overrides,
    }
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps(fields))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def tiny_models():
    return load_models("tiny", "2k", "cpu")


def test_a_cell_gives_one_ok_row_per_decoder_with_metrics_and_images(tmp_path, tiny_models):
    suite = load_suite(write_suite(tmp_path))
    cell = suite.cells()[1]  # sigma 0.3, 64x64
    settings = CellSettings(
        "r", "mini", tuple(suite.decoders), ("psnr", "ssim"), TWICE, True, str(tmp_path)
    )
    rows = run_cell(cell, "c0", tiny_models, settings, "cpu")
    assert [r["decoder"] for r in rows] == ["pid", "native", "native+bicubic"]
    for row in rows:
        assert row["status"] == "ok", row.get("error")
        assert len(row["latency_ms"]) == 2 and row["latency_ms_p50"] > 0
        assert row.get("peak_mem_allocated_bytes") is None  # CPU: null, never 0
        assert row.get("tf32") is None and row["generator_device"] == "cpu"  # TF32: CUDA only
        assert 0 < row["metric_ssim"] <= 1 and row["metric_psnr"] > 0
        assert (tmp_path / row["image_path"]).is_file()
        assert row["random_weights"] is False  # `tiny` is trained here; `tiny-random` is not
    pid, native, bicubic = rows
    assert (pid["decoded_height"], pid["decoded_width"]) == (64, 64)
    # compute and memory columns: PiD's FLOPs everywhere, GPU figures null with their reasons
    assert pid["flops"] == decode_flops(tiny_models.pid.net.config, (64, 64), 4, text_len=64)
    assert native.get("flops") is None and pid.get("mfu") is None and pid["weights_bytes"] > 0
    notes = json.loads(pid["measure_notes"])
    assert notes["mfu"] == "CPU: a GPU figure" and notes["peak_activation_bytes"].startswith("CPU")
    assert "counts PiD and its teacher only" in json.loads(native["measure_notes"])["flops"]
    assert (pid["precision"], pid["compile"], pid["dtype"]) == ("fp32", "eager", "float32")
    assert pid.get("compile_ms") is None and pid["timing_noisy"] in (True, False)
    assert (native["decoded_height"], native["decoded_width"]) == (16, 16)
    # native is scored at its own size (docs/protocol.md); the upscale at the output size
    assert native["resize_kernel"] is None and bicubic["resize_kernel"] == "bicubic-antialias"
    assert (native["scored_height"], bicubic["scored_height"]) == (16, 64)
    assert native["metric_psnr"] != pytest.approx(bicubic["metric_psnr"], abs=1e-6)
    to_table(rows)  # every key is a schema column


def test_a_failing_decoder_is_an_error_row_not_a_lost_cell(tmp_path, tiny_models):
    import dataclasses

    # A suite refuses 48 at load (not a multiple of 32); a cell that gets one anyway must fail
    # as error rows, not take the run down.
    cell = dataclasses.replace(load_suite(write_suite(tmp_path)).cells()[0], resolution=(48, 48))
    settings = CellSettings("r", "mini", ("pid", "native"), (), ONCE, False, str(tmp_path))
    rows = run_cell(cell, "c1", tiny_models, settings, "cpu")
    assert [r["status"] for r in rows] == ["error", "error"]
    assert "not a multiple of 32" in rows[0]["error"]


def test_reference_is_centre_cropped_to_the_output_aspect():
    image = torch.zeros(3, 100, 100)
    image[:, :, :10] = 1  # a bar on the left that a 2:1 crop keeps
    ref = reference_at(image, (32, 64))
    assert ref.shape == (1, 3, 32, 64)
    tall = reference_at(image, (64, 32))
    assert tall[0, :, :, 0].mean() < 0.5  # the left bar was cropped away


def test_model_identity_changes_with_the_weights():
    assert model_identity("tiny", "2k") != model_identity("flux", "2k")
    assert model_identity("zimage", "2k") != model_identity("flux", "2k")  # backbone in the id
    assert "PiD_res2k_sr4x_official_flux_distill_4step" in model_identity("flux", "2k")


def test_parts_are_atomic_and_follow_the_schema(tmp_path):
    rows = [{"cell_id": "a", "decoder": "pid", "status": "ok", "latency_ms": [1.0, 2.0]}]
    part = write_part(tmp_path, rows)
    assert pq.read_schema(part).names == list(ROW_SCHEMA.names)
    assert not list((tmp_path / "parts").glob(".*.tmp"))
    assert finished_rows(tmp_path) == {("a", "pid")}
    with pytest.raises(KeyError, match="not in pid_bench.schema"):
        write_part(tmp_path, [{"cell_id": "b", "no_such_column": 1}])
    assert len(part_files(tmp_path)) == 1


def test_a_run_dir_of_another_suite_is_refused_unless_forced(tmp_path):
    (tmp_path / "run.json").write_text(
        json.dumps({"suite_fingerprint": "aaa", "suite": {"name": "x"}})
    )
    with pytest.raises(RunDirError, match="different suite"):
        claim_run_dir(tmp_path, "bbb", force=False)
    assert claim_run_dir(tmp_path, "bbb", force=True)["suite_fingerprint"] == "aaa"


def test_run_end_to_end_then_resume_computes_nothing(tmp_path):
    suite_path = write_suite(tmp_path)
    out = tmp_path / "run"
    first = runner.invoke(app, ["run", str(suite_path), "--output", str(out)])
    assert first.exit_code == 0, first.output
    table = pq.read_table(list((out / "parts").glob("*.parquet")), schema=ROW_SCHEMA)
    assert table.num_rows == 4 * 3  # 1 image x 2 sigmas x 2 resolutions, x 3 decoders
    assert set(table["status"].to_pylist()) == {"ok"}
    assert len(set(table["cell_id"].to_pylist())) == 4
    assert set(COLUMNS) <= set(table.column_names)
    for column in ("latency_ms_p50", "metric_psnr", "metric_ssim", "git_sha", "device"):
        assert None not in table[column].to_pylist(), column
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["suite"]["name"] == "mini" and run_json["finished_at"]
    for name in ("leaderboard.md", "report.html"):
        assert (out / name).is_file()
    assert "small networks trained here" in (out / "leaderboard.md").read_text()

    parts_before = sorted(p.name for p in (out / "parts").glob("*.parquet"))
    second = runner.invoke(app, ["run", str(suite_path), "--output", str(out)])
    assert second.exit_code == 0, second.output
    assert "4 already done" in second.output and "0 rows written" in second.output
    assert sorted(p.name for p in (out / "parts").glob("*.parquet")) == parts_before


def test_a_cell_without_metric_weights_completes_with_nulls_and_reasons(
    tmp_path, tiny_models, monkeypatch
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    suite = load_suite(write_suite(tmp_path, resolutions=[64], limit=1))
    settings = CellSettings(
        "r", "mini", ("pid", "native"), ("psnr", "lpips", "niqe"), ONCE, False, str(tmp_path)
    )
    rows = run_cell(suite.cells()[0], "c2", tiny_models, settings, "cpu")
    for row in rows:
        assert row["status"] == "ok" and row["metric_psnr"] is not None
        assert row.get("metric_lpips") is None and row.get("metric_niqe") is None  # never 0
        notes = json.loads(row["metric_notes"])
        assert (
            notes["lpips"].startswith("weights missing: ") and "empty-torch-home" in notes["lpips"]
        )
        assert "niqe_modelparameters.mat" in notes["niqe"]


def test_a_tiled_pid_decode_is_recorded_in_its_row(tmp_path, tiny_models):
    suite = load_suite(write_suite(tmp_path, resolutions=[[64, 96]], limit=1, sigmas=[0.0]))
    settings = CellSettings(
        "r", "mini", ("pid", "native"), ("psnr",), ONCE, False, str(tmp_path),
        tile_size=64, tile_overlap=32,
    )  # fmt: skip
    pid, native = run_cell(suite.cells()[0], "c3", tiny_models, settings, "cpu")
    assert pid["status"] == "ok", pid.get("error")
    assert (pid["tile_size"], pid["tile_overlap"]) == (64, 32)
    assert (pid["decoded_height"], pid["decoded_width"]) == (64, 96)
    assert native.get("tile_size") is None  # only PiD is tiled
    to_table([pid, native])


def _leaderboard_header(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("| mode"))


def test_a_suite_that_grows_or_shrinks_reruns_into_its_directory(tmp_path):
    """Cells are content-addressed: a new sigma computes only its cells (no --force), a removed
    one leaves its rows on disk and out of the report; another suite name is refused."""
    out = tmp_path / "run"
    common = {"resolutions": [64], "decoders": ["pid", "native"], "limit": 1}
    quiet = ["--output", str(out), "--no-report"]  # only the last run's report is read
    first = runner.invoke(app, ["run", str(write_suite(tmp_path, sigmas=[0.0], **common)), *quiet])
    assert first.exit_code == 0, first.output
    grown = runner.invoke(
        app, ["run", str(write_suite(tmp_path, sigmas=[0.0, 0.3], **common)), *quiet]
    )
    assert grown.exit_code == 0, grown.output
    assert "2 cells (1 already done); 2 rows written: 2 ok" in grown.output
    assert len(finished_rows(out)) == 4
    shrunk = runner.invoke(
        app, ["run", str(write_suite(tmp_path, sigmas=[0.3], **common)), "--output", str(out)]
    )
    assert shrunk.exit_code == 0, shrunk.output
    assert "1 cells (1 already done); 0 rows written" in shrunk.output
    text = (out / "leaderboard.md").read_text()
    assert "Status: 2 ok (2 rows)" in text  # only the sigma of the suite as last run
    assert "| 64x64 | 0.3 |" in text and "| 64x64 | 0 |" not in text  # size, then sigma
    assert (
        "2 rows on disk belong to cells or decoders that the suite as last run no longer has"
        in text
    )
    assert len(finished_rows(out)) == 4  # nothing deleted
    run_json = json.loads((out / "run.json").read_text())
    invocations = run_json["invocations"]
    assert [i["cells_computed"] for i in invocations] == [1, 1, 0]
    # The run ended with its last computing invocation; the idle rerun keeps its own times.
    assert run_json["finished_at"] == invocations[1]["finished_at"] < invocations[2]["finished_at"]
    assert all(
        i["started_at"] <= i["finished_at"] and i["interrupted_by"] is None for i in invocations
    )
    assert "over 3 invocation(s)" in (out / "leaderboard.md").read_text()
    renamed = runner.invoke(
        app, ["run", str(write_suite(tmp_path, name="other", **common)), "--output", str(out)]
    )
    assert renamed.exit_code == 2 and "different suite ('mini', not 'other')" in renamed.output


def test_every_requested_metric_is_shown_with_its_reasons(tmp_path, monkeypatch):
    """Metrics that cannot be computed here (weights missing, image too small, set-level) keep
    their column in leaderboard.md and report.html, with each reason and its row count, and the
    run prints one line per metric; --strict-metrics turns them into exit code 1."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    metrics = ["psnr", "lpips", "niqe", "ms_ssim", "fid"]
    suite = write_suite(
        tmp_path, sigmas=[0.0], resolutions=[64], decoders=["pid", "native"], metrics=metrics
    )
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(suite), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "lpips: null in 2/2 rows — weights missing: " in result.output
    assert "niqe: null in 2/2 rows — weights missing: " in result.output
    assert "fid: null in 2/2 groups — weights missing: " in result.output  # one group a decoder
    assert "ms_ssim: null in 2/2 rows" in result.output
    assert "psnr: null" not in result.output
    text = (out / "leaderboard.md").read_text()
    header = _leaderboard_header(text)
    for name in ("lpips", "niqe", "ms_ssim", "fid"):
        assert re.search(rf"\| {name} [↑↓ ]*\[\d\]", header), (name, header)
        unit = "groups" if name == "fid" else "rows"
        assert re.search(rf"- \[\d\] {name}: null in 2/2 {unit} — ", text), name
    assert re.search(r"\| psnr ↑ \|", header)  # computed everywhere: no footnote
    html = (out / "report.html").read_text()
    assert "lpips: null in 2/2 rows — weights missing: " in html
    assert "fid: null in 2/2 groups — weights missing: " in html
    sets = pq.read_table(next((out / "sets").glob("set-*.parquet"))).to_pylist()
    assert {r["decoder"] for r in sets} == {"pid", "native"}  # one fid per (setting, decoder)
    assert all(r["value"] is None and r["reason"].startswith("weights missing: ") for r in sets)
    strict = runner.invoke(app, ["run", str(suite), "--output", str(out), "--strict-metrics"])
    assert strict.exit_code == 1 and "0 rows written" in strict.output


def test_a_compiled_pid_records_compilation_apart_from_the_timed_repeats(tmp_path, tiny_models):
    import dataclasses

    from pid_models.decoder import PiDDecoder

    pid = tiny_models.pid
    compiled = PiDDecoder(
        pid.net, pid.caption_encoder, "cpu", compile=True, compile_backend="eager"
    )
    models = dataclasses.replace(tiny_models, pid=compiled)
    suite = load_suite(write_suite(tmp_path, resolutions=[64], limit=1, sigmas=[0.0]))
    cell = dataclasses.replace(suite.cells()[0], compile="default")
    settings = CellSettings("r", "mini", ("pid",), (), TWICE, False, str(tmp_path))
    (first,) = run_cell(cell, "c4", models, settings, "cpu")
    assert first["status"] == "ok", first.get("error")
    assert first["compile"] == "default" and first["compile_ms"] > 0
    assert first["compile_graphs"] >= 1 and first["recompiles"] == 0
    (again,) = run_cell(cell, "c4", models, settings, "cpu")  # same size: the graph is reused
    assert again.get("compile_ms") is None and again["compile_graphs"] == 0


def test_weights_are_counted_once_and_nothing_moves_on_cpu(tiny_models):
    from pid_bench.memory import modules_of, place, weights_bytes

    net = tiny_models.pid.net
    expected = sum(p.numel() * p.element_size() for p in net.parameters())
    assert weights_bytes([net, net]) == expected  # shared tensors once
    gemma = modules_of(tiny_models.pid.caption_encoder)
    assert len(gemma) == 1 and weights_bytes(gemma) > 0
    place([], [net], torch.device("cpu"))  # no device memory to attribute: a no-op
    assert next(net.parameters()).device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_each_decoder_is_measured_with_only_its_own_weights(tmp_path):
    models = load_models("tiny", "2k", "cuda")
    suite = load_suite(write_suite(tmp_path, resolutions=[64], limit=1, sigmas=[0.0]))
    settings = CellSettings("r", "mini", ("pid", "native"), (), ONCE, False, str(tmp_path))
    pid, native = run_cell(suite.cells()[0], "c5", models, settings, "cuda")
    assert pid["status"] == native["status"] == "ok"
    assert pid["timer"] == "cuda_events" and pid["tf32"] is True
    # resident before the native decode = peak - activation: the codec and inputs, not PiD too
    resident = native["peak_mem_allocated_bytes"] - native["peak_activation_bytes"]
    assert native["weights_bytes"] <= resident < native["weights_bytes"] + pid["weights_bytes"]
    assert (
        pid["peak_activation_bytes"] >= 0
        and pid["peak_mem_allocated_bytes"] >= pid["weights_bytes"]
    )
    assert pid["mfu"] is None or 0 < pid["mfu"] < 1


def test_gpu_state_is_null_with_its_reason_on_cpu_and_named_when_nvml_fails(monkeypatch):
    from pid_bench import gpu

    assert gpu.gpu_state(torch.device("cpu")) == (None, "CPU: no GPU state")
    assert gpu.gpu_versions(torch.device("cpu")) == {}

    def broken(device):
        raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setattr(gpu, "_handle", broken)
    state, reason = gpu.gpu_state(torch.device("cuda"))
    assert state is None and reason == "NVML: RuntimeError: NVML Shared Library Not Found"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_state_reads_clocks_power_and_throttle_reasons():
    from pid_bench import gpu

    state, reason = gpu.gpu_state(torch.device("cuda"))
    assert reason is None
    fields = json.loads(state)
    assert fields["sm_clock_mhz"] > 0 and fields["power_w"] > 0
    assert isinstance(fields["throttle_reasons"], list)


@pytest.mark.parametrize(
    ("policy", "kept"),
    [("all", {"pid", "native", "native+bicubic"}), ("reference_and_pid", {"pid"}), ("none", set())],
)
def test_save_images_keeps_what_the_policy_names_and_rows_say_so(
    tmp_path, tiny_models, policy, kept
):
    """PNGs come from the background writer: a row names its image only when it was written,
    and the cell records the writer's time and what it waited for."""
    cell = load_suite(write_suite(tmp_path)).cells()[0]
    decoders = ("pid", "native", "native+bicubic")
    settings = CellSettings("r", "mini", decoders, ("psnr",), ONCE, policy, str(tmp_path))
    rows = run_cell(cell, "c2", tiny_models, settings, "cpu")
    assert all(r["status"] == "ok" for r in rows)
    saved = {r["decoder"] for r in rows if r.get("image_path")}
    assert saved == kept
    for row in rows:
        if row.get("image_path"):
            assert (tmp_path / row["image_path"]).is_file()
        assert bool(row.get("reference_path")) == (policy != "none")
        assert row["score_ms"] > 0 and "psnr" in json.loads(row["score_ms_by_metric"])
        assert row["warmup_ms"] == 0.0  # no warm-up asked for
    if policy == "none":
        assert rows[0]["images_ms"] is None and not (tmp_path / "images" / "c2").exists()
    else:
        assert rows[0]["images_ms"] > 0 and rows[0]["images_wait_ms"] >= 0
        files = {p.name for p in (tmp_path / "images" / "c2").iterdir()}
        assert "reference.png" in files and not any(".tmp" in f for f in files)
    to_table(rows)


def test_the_suite_reads_true_and_false_as_all_and_none(tmp_path):
    assert load_suite(write_suite(tmp_path, save_images=True)).save_images == "all"
    assert load_suite(write_suite(tmp_path, save_images=False)).save_images == "none"
    assert load_suite(write_suite(tmp_path)).overlap is False
    policy = load_suite(write_suite(tmp_path, save_images="reference_and_pid")).save_images
    assert policy == "reference_and_pid"
