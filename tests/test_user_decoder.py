"""A decoder from outside the package (``module.path:Class``) runs like a built-in: timed,
memory-attributed, scored, saved and in the report."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pid_bench.cli import app
from pid_bench.decoders import build_decoder, check_name, style
from pid_bench.schema import ROW_SCHEMA
from tests.test_run import write_suite
from tests.user_decoder import NativeBilinear

pytestmark = pytest.mark.usefixtures("shared_local_ray")

REPO = Path(__file__).resolve().parents[1]
USER = "tests.user_decoder:NativeBilinear"
runner = CliRunner()


def test_a_user_decoder_runs_through_a_suite_like_a_built_in(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the directory pid-bench runs in is importable, as for metrics
    suite = write_suite(tmp_path, decoders=["pid", USER], sigmas=[0.3], resolutions=[64])
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(suite), "--output", str(out)])
    assert result.exit_code == 0, result.output
    rows = pq.read_table(list((out / "parts").glob("*.parquet")), schema=ROW_SCHEMA).to_pylist()
    user = [r for r in rows if r["decoder"] == USER]
    assert len(user) == 1 and user[0]["status"] == "ok", user
    row = user[0]
    assert row["latency_ms_p50"] > 0 and row["repeats"] == 2
    assert row["weights_bytes"] is not None  # what it keeps on the device
    assert json.loads(row["measure_notes"])["peak_mem_allocated_bytes"]  # CPU: null, with why
    assert row["resize_kernel"] == "bilinear"
    assert (row["scored_height"], row["scored_width"]) == (64, 64)
    assert row["metric_psnr"] is not None and row["metric_ssim"] is not None
    assert (out / row["image_path"]).is_file()
    report = (out / "report.html").read_text()
    assert USER in report and USER in (out / "leaderboard.md").read_text()


def test_a_suite_refuses_a_decoder_it_cannot_import_or_that_is_no_decoder(tmp_path):
    for name, why in [
        ("tests.no_such_module:X", "cannot import"),
        ("tests.user_decoder:NotADecoder", "not a subclass"),
    ]:
        result = runner.invoke(app, ["plan", str(write_suite(tmp_path, decoders=["pid", name]))])
        assert result.exit_code == 2 and name in result.output and why in result.output


def test_a_user_decoder_is_built_from_its_name_and_gets_a_style_of_its_own():
    assert check_name(USER) == USER
    decoder = build_decoder(USER)
    assert isinstance(decoder, NativeBilinear) and decoder.name == USER
    assert style(USER) not in {style(n) for n in ("pid", "native", "native+bicubic")}
