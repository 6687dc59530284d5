"""from_ldm end to end: a tiny FLUX pipeline built here, `pid-bench run`, x_t rows, LDM timings,
and the on-disk latent cache reused by a second run."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from pid_bench.cli import app
from pid_bench.schema import ROW_SCHEMA
from pid_models import ldm
from pid_models.tiny import build_tiny_codec
from tests.test_ldm import build_flux

pytestmark = pytest.mark.usefixtures("shared_local_ray")  # one Ray for the module's runs

runner = CliRunner()


def read_rows(out: Path):
    return pq.read_table(sorted((out / "parts").glob("*.parquet")), schema=ROW_SCHEMA).to_pandas()


@pytest.fixture(scope="module")
def suite_path(tmp_path_factory) -> Path:
    """A from_ldm suite on the tiny backbone, its LDM a saved tiny FluxPipeline whose VAE is the
    tiny codec's (so the native decoder is the pipeline's own)."""
    folder = tmp_path_factory.mktemp("from_ldm")
    pipe = build_flux(folder, vae=build_tiny_codec(0).vae)
    pipe.save_pretrained(folder / "tiny_flux")
    (folder / "prompts.txt").write_text("a red fox in snow\na lighthouse at dusk\n")
    suite = {
        "name": "ldm-mini",
        "mode": "from_ldm",
        "backbones": ["tiny"],
        "ckpt_types": ["2k"],
        "save_xt_steps": [2, 3],
        "resolutions": [256],  # LDM at 256 / 4 = 64 px -> an 8x8 latent
        "decoders": ["pid", "native+bicubic"],
        "metrics": ["psnr"],
        "source": "prompts.txt",
        "timing": {"warmup": 1, "repeats": 1, "min_time_s": 0},
        "ldm": {"steps": 4, "pipelines": {"tiny": "tiny_flux"}, "cache_dir": "latents"},
    }
    path = folder / "ldm.yaml"
    path.write_text(json.dumps(suite))
    return path


@pytest.fixture(scope="module")
def first_run(suite_path: Path):
    out = suite_path.parent / "run1"
    result = runner.invoke(app, ["run", str(suite_path), "--output", str(out)])
    assert result.exit_code == 0, result.output
    return out, read_rows(out)


def test_from_ldm_rows_cover_every_xt_step_and_x0(first_run):
    _, rows = first_run
    assert len(rows) == 2 * 3 * 2  # prompts x (x_t 2, x_t 3, x0) x decoders
    assert (rows.status == "ok").all(), rows.error.dropna().tolist()
    assert set(rows.save_xt_step.dropna().astype(int)) == {2, 3}
    assert rows.save_xt_step.isna().sum() == 4
    assert (rows["mode"] == "from_ldm").all() and (rows.ldm_steps == 4).all()
    assert set(rows.caption) == {"a red fox in snow", "a lighthouse at dusk"}  # caption = prompt
    pid = rows[rows.decoder == "pid"]
    assert (pid.out_height == 256).all() and (pid.decoded_height == 256).all()
    assert (pid.in_height == 64).all() and (pid.latent_shape == "16x8x8").all()


def test_from_ldm_sigma_and_timings_come_from_the_capture(first_run):
    out, rows = first_run
    cache = ldm.LatentCache(out.parent / "latents")
    for _, row in rows.iterrows():
        capture = cache.get(row.ldm_capture_key)
        step = None if row.save_xt_step != row.save_xt_step else int(row.save_xt_step)
        assert row.sigma == pytest.approx(capture.sigmas[step])
        assert row.ldm_ms_to_step == pytest.approx(capture.ldm_ms_to_step[step])
        assert row.ldm_total_ms == pytest.approx(capture.ldm_total_ms)
    x0 = rows[rows.save_xt_step.isna()]
    assert (x0.sigma == 0.0).all() and (x0.ldm_ms_to_step == x0.ldm_total_ms).all()
    xt = rows[rows.save_xt_step.notna()]
    assert (xt.sigma > 0).all() and (xt.ldm_ms_to_step < xt.ldm_total_ms).all()
    by_step = xt.groupby(["image_id", "save_xt_step"]).ldm_ms_to_step.first().unstack()
    assert (by_step[3.0] > by_step[2.0]).all()  # later steps take longer
    assert (rows.ldm_cache == "computed").all()


def test_from_ldm_has_no_reference_so_full_reference_metrics_are_null_with_a_reason(first_run):
    _, rows = first_run
    assert rows.metric_psnr.isna().all()
    reasons = {json.loads(n)["psnr"] for n in rows.metric_notes}
    assert len(reasons) == 1 and "reference" in reasons.pop()
    assert rows.reference_path.isna().all()


def test_cached_latents_equal_a_fresh_capture(first_run, suite_path):
    out, rows = first_run
    pipe = ldm.load_pipeline("tiny", suite_path.parent / "tiny_flux", "cpu", torch.float32)
    row = rows[(rows.image_id == "p0000") & (rows.decoder == "pid")].iloc[0]
    fresh = ldm.capture(pipe, "tiny", row.caption, 64, 64, steps=4, save_xt_steps=[2, 3])
    cached = ldm.LatentCache(out.parent / "latents").get(row.ldm_capture_key)
    for step in (2, 3, None):
        assert torch.allclose(fresh.latents[step], cached.latents[step], atol=1e-6)
        assert fresh.sigmas[step] == cached.sigmas[step]


def test_a_second_run_reads_the_latent_cache_and_decodes_the_same(first_run, suite_path):
    first, rows1 = first_run
    second = suite_path.parent / "run2"
    result = runner.invoke(app, ["run", str(suite_path), "--output", str(second)])
    assert result.exit_code == 0, result.output
    rows2 = read_rows(second)
    assert (rows2.ldm_cache == "disk").all()
    one = rows1.set_index(["cell_id", "decoder"]).sort_index()
    two = rows2.set_index(["cell_id", "decoder"]).sort_index()
    assert one.index.equals(two.index)  # same cells, same ids
    assert (one.ldm_ms_to_step == two.ldm_ms_to_step).all()  # timings of the original capture
    for (cid, decoder), row in one.iterrows():
        image1 = (first / row.image_path).read_bytes()
        image2 = (second / two.loc[(cid, decoder)].image_path).read_bytes()
        assert image1 == image2, f"{cid}/{decoder} decoded differently from the cached latent"


def test_the_report_compares_early_exit_pid_with_the_full_ldm(first_run):
    from pid_bench.report import leaderboard_text

    out, rows = first_run
    text = leaderboard_text(out)
    assert "## End-to-end latency (from_ldm)" in text
    section = text.split("## End-to-end latency (from_ldm)")[1]
    for route in ("LDM to step 2 + pid", "LDM to step 3 + pid", "full LDM (x0) + native+bicubic"):
        assert f"| {route} |" in section
    x0 = rows[rows.save_xt_step.isna() & (rows.decoder == "native+bicubic")]
    expected = (x0.ldm_ms_to_step + x0.latency_ms_p50).median()
    line = next(ln for ln in section.splitlines() if "full LDM (x0) + native+bicubic" in ln)
    assert line.split("|")[6].strip() == f"{expected:.1f}"
