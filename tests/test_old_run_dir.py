"""A run directory written before the code changed still resumes (no cell recomputed), reports
and compares. The fixture was written by `pid-bench run tests/fixtures/smoke_no_images.yaml`
at git 925fcc1 (run.json says so); this test pins every later code against it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pid_bench.cli import app
from pid_bench.store import part_files

pytestmark = pytest.mark.usefixtures("shared_local_ray")

FIXTURES = Path(__file__).parent / "fixtures"
SUITE = FIXTURES / "smoke_no_images.yaml"
OLD_RUN = FIXTURES / "run_smoke_v0"
runner = CliRunner()


@pytest.fixture
def old_run(tmp_path) -> Path:
    copy = tmp_path / "run_smoke_v0"
    shutil.copytree(OLD_RUN, copy)
    return copy


def test_an_old_run_dir_resumes_without_recomputing_a_cell(old_run):
    parts_before = sorted(p.name for p in part_files(old_run))
    result = runner.invoke(app, ["run", str(SUITE), "--output", str(old_run)])
    assert result.exit_code == 0, result.output
    assert "8 already done" in result.output and "0 rows written" in result.output
    assert sorted(p.name for p in part_files(old_run)) == parts_before


def test_an_old_run_dir_reports(old_run):
    result = runner.invoke(app, ["report", str(old_run)])
    assert result.exit_code == 0, result.output
    board = (old_run / "leaderboard.md").read_text()
    for decoder in ("pid", "native", "native+bicubic"):
        assert board.count(f"| {decoder} |") >= 4, decoder  # a row per setting (2 σ x 2 sizes)
    assert (old_run / "report.html").stat().st_size > 0


def test_an_old_run_dir_compares_with_itself_as_no_change(old_run, tmp_path):
    again = tmp_path / "again"
    shutil.copytree(OLD_RUN, again)
    result = runner.invoke(app, ["compare", str(old_run), str(again), "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "24 rows matched; 0 only in" in result.output  # every (cell, decoder) row
    assert (tmp_path / "compare.md").is_file()
