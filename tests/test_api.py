"""The Python API: `pid_bench.run` and `pid_bench.load_run` return a `Run` with its rows, sets,
report and comparisons; the CLI's `run` is a thin layer over it."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

import pid_bench
from pid_bench import api
from pid_bench.cli import app
from pid_bench.compare import CompareError
from pid_bench.store import RunDirError
from pid_bench.suite import SuiteError
from tests.test_run import REPO

pytestmark = pytest.mark.usefixtures("shared_local_ray")

SUITE = {
    "name": "api_tiny",
    "backbones": ["tiny"],
    "ckpt_types": ["2k"],
    "sigmas": [0.0, 0.3],
    "resolutions": [64],
    "decoders": ["pid", "native+bicubic"],
    "metrics": ["psnr"],
    "source": "manifests/smoke.jsonl",  # relative: against the base directory
    "limit": 1,
    "timing": {"warmup": 0, "repeats": 2, "min_time_s": 0},
    "save_images": False,
}


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> pid_bench.Run:
    out = tmp_path_factory.mktemp("api") / "run"
    suite = pid_bench.api.as_suite(SUITE, base_dir=REPO)
    return pid_bench.run(suite, output=out, progress=False)


def test_run_returns_the_run_with_one_row_per_cell_and_decoder(first):
    assert first.summary.ok and first.summary.cells_total == 2
    rows = first.rows
    assert len(rows) == 4 and set(rows["status"]) == {"ok"}
    assert set(rows["decoder"]) == {"pid", "native+bicubic"}
    assert rows["metric_psnr"].notna().all() and (rows["latency_ms_p50"] > 0).all()
    assert (first.dir / "report.html").is_file() and (first.dir / "leaderboard.md").is_file()
    assert first.name == "api_tiny" and "pid" in first.leaderboard()


def test_load_run_reads_the_same_rows_and_the_sets(first):
    loaded = pid_bench.load_run(first.dir)
    assert loaded.summary is None
    columns = ["cell_id", "decoder", "metric_psnr"]
    assert loaded.rows[columns].equals(first.rows[columns])  # ordered by cell, decoder
    assert loaded.sets.empty and "metric" in loaded.sets.columns  # no fid/kid asked for
    assert loaded.meta["suite"]["name"] == "api_tiny"


def test_compare_matches_every_row_and_gates_on_fail_on(first, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(first.dir, copy)
    result = pid_bench.load_run(copy).compare(first, fail_on="psnr=-0.1")
    assert result.matched == 4 and result.only_a == result.only_b == 0
    assert result.regressions == []  # the same rows: no change at all
    with pytest.raises(CompareError, match="not name="):
        first.compare(copy, fail_on="psnr")


def test_a_rerun_computes_nothing_and_a_report_can_go_elsewhere(first, tmp_path):
    again = pid_bench.run(first.meta["suite"]["path"] or SUITE | {"source": str(REPO / "manifests/smoke.jsonl")},
                          output=first.dir, report=False, progress=False)  # fmt: skip
    assert again.summary.cells_skipped == 2 and again.summary.rows_written == 0
    md, html = again.report(out=tmp_path / "board")
    assert md.is_file() and html.is_file()


def test_a_folder_that_is_not_a_run_is_refused(tmp_path):
    with pytest.raises(RunDirError, match="no run.json"):
        pid_bench.load_run(tmp_path)


def test_a_suite_given_as_data_is_checked_like_a_file():
    with pytest.raises(SuiteError, match="<suite dict>.*sigmass"):
        api.as_suite(SUITE | {"sigmass": [0.1]}, base_dir=REPO)
    suite = api.as_suite(SUITE, base_dir=REPO)
    assert suite.source == str(REPO / "manifests" / "smoke.jsonl")
    assert api.as_suite(suite) is suite


def test_retry_failed_takes_true_false_or_names():
    assert api.retry_statuses(False) == frozenset()
    assert api.retry_statuses(True) == {"error", "oom", "worker_lost", "storage_error"}
    assert api.retry_statuses("oom, error") == {"oom", "error"}
    with pytest.raises(ValueError, match="bogus is not a failed status"):
        api.retry_statuses(["bogus"])


def test_the_cli_run_is_the_api_run(monkeypatch, tmp_path, first):
    seen = {}

    def fake_run(suite, output, **options):
        seen.update(options, suite=suite.name, output=output)
        return api.Run(first.dir, first.summary)

    monkeypatch.setattr(api, "run", fake_run)
    out = CliRunner().invoke(app, ["run", str(REPO / "suites" / "smoke.yaml"), "--output", str(tmp_path / "o"),
                                   "--retry-failed", "oom", "--max-retries", "1"])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert seen["suite"] == "smoke" and seen["output"] == tmp_path / "o"
    assert seen["retry_failed"] == "oom" and seen["max_retries"] == 1
    assert "report:" in out.output


def test_an_unknown_tracker_is_refused_before_any_cell(tmp_path):
    from pid_bench.trackers import TrackerError

    with pytest.raises(TrackerError, match="unknown tracker 'bogus'"):
        pid_bench.run(api.as_suite(SUITE, base_dir=REPO), output=tmp_path / "r", log=["bogus"])
    assert not (tmp_path / "r").exists()
