"""Every suite in suites/ loads and plans here, with no weights present."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pid_bench.cli import app
from pid_bench.runner import plan
from pid_bench.suite import load_suite
from pid_models.ldm import PIPELINES
from pid_models.registry import resolve

SUITES = Path(__file__).resolve().parents[1] / "suites"
ALL = sorted(SUITES.rglob("*.yaml"))


def test_the_ready_suites_are_all_here():
    names = {p.relative_to(SUITES).as_posix() for p in ALL}
    expected = {"smoke.yaml", "from_clean_2k.yaml", "from_clean_4k.yaml", "sigma_sweep.yaml"}
    expected |= {"aspect_ratios.yaml", "paper/decode_2k.yaml", "paper/decode_4k.yaml"}
    expected |= {f"from_ldm/{tag}.yaml" for tag in PIPELINES}
    assert expected <= names


@pytest.mark.parametrize("path", ALL, ids=[p.relative_to(SUITES).as_posix() for p in ALL])
def test_pid_bench_plan_accepts_every_shipped_suite(path: Path):
    result = CliRunner().invoke(app, ["plan", str(path)])
    assert result.exit_code == 0, result.output
    suite = load_suite(path)
    planned = plan(suite)
    assert planned and len({cid for cid, _ in planned}) == len(planned)
    for _, cell in planned:
        if cell.backbone != "tiny":
            resolve(cell.backbone, cell.ckpt_type)  # a released pair


@pytest.mark.parametrize("tag", sorted(PIPELINES))
def test_from_ldm_suites_capture_the_recommended_step(tag: str):
    suite = load_suite(SUITES / "from_ldm" / f"{tag}.yaml")
    spec = PIPELINES[tag]
    assert suite.mode == "from_ldm" and suite.backbones == [tag]
    assert tuple(suite.save_xt_steps) == spec.save_xt_steps
    if spec.recommended_xt is not None:
        assert spec.recommended_xt in suite.save_xt_steps
    assert all(k <= spec.steps for k in suite.save_xt_steps)
    assert {c.save_xt_step for c in suite.cells()} == {*spec.save_xt_steps, None}


def test_the_sweeps_cover_the_papers_settings():
    sweep = load_suite(SUITES / "sigma_sweep.yaml")
    assert sweep.sigmas == [0.0, 0.2, 0.4, 0.8]
    shapes = {c.resolution for c in load_suite(SUITES / "aspect_ratios.yaml").cells()}
    assert shapes == {(2048, 2048), (1728, 2304), (2304, 1728), (1536, 2688), (2688, 1536)}
    four_k = load_suite(SUITES / "from_clean_4k.yaml").cells()
    assert {(c.backbone, c.ckpt_type) for c in four_k} == {
        ("sd3", "2kto4k"), ("sdxl", "2kto4k"), ("flux", "2kto4k_v1pt5"),
        ("flux2", "2kto4k_v1pt5"), ("qwenimage", "2kto4k_v1pt5"),
    }  # fmt: skip
    assert {c.resolution for c in four_k} == {(4096, 4096)}
    two_k = load_suite(SUITES / "from_clean_2k.yaml").cells()
    assert {c.backbone for c in two_k} == {"flux", "flux2", "sd3", "dinov2", "siglip"}
