"""`pid-bench doctor`: presence of every component from local files only, and runnable cells."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from pid_bench.cli import app
from pid_bench.doctor import check_components, check_environment, runnable_cells
from pid_bench.suite import load_suite
from pid_models.caption import GEMMA_ID
from pid_models.registry import resolve
from tests.test_run import write_suite

runner = CliRunner()


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    hub.mkdir()
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub))
    return hub


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "pid"
    pid = root / resolve("flux", "2k").checkpoint_relpath
    pid.parent.mkdir(parents=True)
    pid.write_bytes(b"")
    (root / "checkpoints" / "ae.safetensors").write_bytes(b"")
    return root


def _status(rows, backbone, ckpt_type, component):
    return next(
        r
        for r in rows
        if (r.backbone, r.ckpt_type, r.component) == (backbone, ckpt_type, component)
    )


def test_present_and_missing_files_with_the_exact_fix(root, empty_hf_cache):
    rows = check_components(root)
    assert _status(rows, "flux", "2k", "pid_checkpoint").status == "present"
    assert _status(rows, "zimage", "2k", "codec").status == "present"
    missing = _status(rows, "sd3", "2kto4k", "pid_checkpoint")
    assert missing.status == "missing"
    assert missing.path == str(root / resolve("sd3", "2kto4k").checkpoint_relpath)
    assert 'hf download nvidia/PiD --include "checkpoints/PiD_res2kto4k' in missing.hint
    assert _status(rows, "dinov2", "2k", "codec").status == "not implemented"
    assert _status(rows, "flux", "2k", "caption_encoder").hint == f"hf download {GEMMA_ID}"
    assert _status(rows, "flux", "2k", "ldm_pipeline").status == "missing"
    assert _status(rows, "siglip", "2k", "ldm_pipeline").status == "not available"
    tiny = {r.component: r.status for r in rows if r.backbone == "tiny"}
    assert tiny == {"pid_checkpoint": "embedded", "codec": "embedded",
                    "caption_encoder": "embedded", "ldm_pipeline": "not available"}  # fmt: skip


def test_a_cached_snapshot_counts_as_present(root, empty_hf_cache):
    repo = empty_hf_cache / f"models--{GEMMA_ID.replace('/', '--')}"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    status = _status(check_components(root), "flux", "2k", "caption_encoder")
    assert status.status == "present" and status.path.endswith("abc123")


def test_suite_cells_runnable_or_blocked_by_named_components(tmp_path, root, empty_hf_cache):
    suite = load_suite(write_suite(tmp_path, backbones=["tiny", "flux"], ckpt_types=["2k"]))
    runnable, blocked = runnable_cells(suite, check_components(root))
    assert {c.backbone for c in runnable} == {"tiny"}
    assert blocked and all(c.backbone == "flux" for c, _ in blocked)
    assert blocked[0][1] == ["caption_encoder"]


def test_environment_lists_device_and_versions():
    env = check_environment()
    assert {"torch", "diffusers", "cuda_available", "devices", "driver", "hf_cache"} <= set(env)


def test_cli_exit_code_says_whether_the_suite_can_run(tmp_path, root, empty_hf_cache):
    tiny = write_suite(tmp_path, name="t")
    assert runner.invoke(app, ["doctor", str(tiny), "--checkpoints", str(root)]).exit_code == 0
    mixed = write_suite(tmp_path, name="m", backbones=["tiny", "flux"])
    result = runner.invoke(app, ["doctor", str(mixed), "--checkpoints", str(root)])
    assert result.exit_code == 1 and "cells can run" in result.output
