"""The evaluation protocol (docs/protocol.md): honest references, native at its own size, the
VAE-twin check, set-level metrics per group, folder sources, custom metrics."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pid_bench.cell import run_cell
from pid_bench.cli import app
from pid_bench.manifests import load_folder, scan_folder
from pid_bench.models import load_models
from pid_bench.settings import CellSettings
from pid_bench.suite import load_suite
from pid_bench.timing import TimingPolicy
from tests.test_run import write_suite

pytestmark = pytest.mark.usefixtures("shared_local_ray")  # one Ray for the module's runs

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()

ONCE = TimingPolicy(warmup=0, repeats=1, min_time_s=0)  # cells, not timing, under test


@pytest.fixture(scope="module")
def tiny_models():
    return load_models("tiny", "2k", "cpu")


def _settings(tmp_path: Path, metrics: tuple[str, ...], **extra) -> CellSettings:
    decoders = ("pid", "native", "native+bicubic")
    return CellSettings("r", "mini", decoders, metrics, ONCE, False, str(tmp_path), **extra)


def test_kodak_at_1024_withholds_full_reference_metrics_against_an_upsampled_reference(
    tmp_path, tiny_models
):
    suite = load_suite(
        write_suite(tmp_path, source=str(REPO / "manifests" / "kodak.jsonl"), resolutions=[1024])
    )
    rows = run_cell(
        suite.cells()[0], "k", tiny_models, _settings(tmp_path, ("psnr", "ssim")), "cpu"
    )
    by = {r["decoder"]: r for r in rows}
    for decoder in ("pid", "native+bicubic"):
        row = by[decoder]
        assert row["status"] == "ok", row.get("error")
        assert row["reference_upsampled"] is True and row["metric_psnr"] is None
        assert json.loads(row["metric_notes"])["psnr"] == "reference upsampled from 384x384"
        assert (row["source_height"], row["source_width"]) == (384, 512)
    native = by["native"]  # 256x256 from a 384x384 crop: a true downsample, scored there
    assert native["reference_upsampled"] is False and native["metric_psnr"] is not None
    assert (native["scored_height"], native["scored_width"]) == (256, 256)
    opted_in = _settings(tmp_path, ("psnr",), reference="upsampled")
    again = run_cell(suite.cells()[0], "k2", tiny_models, opted_in, "cpu")
    assert all(r["metric_psnr"] is not None for r in again)


def test_native_is_scored_at_its_own_size_and_differs_from_native_bicubic(tmp_path, tiny_models):
    suite = load_suite(write_suite(tmp_path, resolutions=[256], sigmas=[0.0]))
    rows = run_cell(
        suite.cells()[0], "n", tiny_models, _settings(tmp_path, ("psnr", "ssim")), "cpu"
    )
    by = {r["decoder"]: r for r in rows}
    assert (by["native"]["scored_height"], by["native+bicubic"]["scored_height"]) == (64, 256)
    assert by["native"]["resize_kernel"] is None
    assert by["native"]["metric_psnr"] != pytest.approx(by["native+bicubic"]["metric_psnr"])
    assert by["native"]["metric_ssim"] != pytest.approx(by["native+bicubic"]["metric_ssim"])


def test_every_pid_row_of_the_smoke_suite_has_the_twin_check(tmp_path, tiny_models):
    smoke = load_suite(REPO / "suites" / "smoke.yaml")
    settings = _settings(tmp_path, tuple(smoke.metrics))
    for index in (0, 1):
        rows = run_cell(smoke.cells()[index], f"s{index}", tiny_models, settings, "cpu")
        pid = next(r for r in rows if r["decoder"] == "pid")
        assert pid["status"] == "ok", pid.get("error")
        assert pid["metric_twin_psnr"] is not None and pid["metric_twin_ssim"] is not None
        expected = float(pid["metric_twin_psnr"] >= 28 and pid["metric_twin_ssim"] >= 0.90)
        assert pid["metric_twin_pass"] == expected
        assert pid["metric_midtone_chroma_shift"] >= 0
        assert pid["outside_envelope"] is False
        native = next(r for r in rows if r["decoder"] == "native")
        assert "its own twin" in json.loads(native["metric_notes"])["twin_psnr"]


STAND_IN = '''
import torch


class Tiny(torch.nn.Module):
    """Mean colour and its square per channel: 6 features, no weights."""

    num_features = 6

    def forward(self, x):
        x = torch.nn.functional.interpolate(x, size=(32, 32), mode="area")
        m = x.mean(dim=(2, 3))
        return torch.cat([m, m**2], dim=1)


def make():
    return Tiny()
'''


def test_set_level_metrics_per_group_into_sets_with_a_stand_in_extractor(tmp_path):
    (tmp_path / "stand_in_features.py").write_text(STAND_IN)
    (tmp_path / "run_scorers.py").write_text(CUSTOM)  # imported by the Ray workers too
    suite = write_suite(
        tmp_path, sigmas=[0.0], resolutions=[64], decoders=["pid", "native"], limit=2,
        metrics=["psnr", "fid", "kid", "run_scorers:mean_red"],
        set_metrics={"feature_extractor": "stand_in_features:make"},
    )  # fmt: skip
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(suite), "--output", str(out)])
    assert result.exit_code == 0, result.output
    files = sorted((out / "sets").glob("set-*.parquet"))
    assert len(files) == 1
    rows = pq.read_table(files[0]).to_pylist()
    assert {(r["decoder"], r["metric"]) for r in rows} == {
        (d, m) for d in ("pid", "native") for m in ("fid", "kid")
    }
    for row in rows:
        assert row["value"] is not None, row["reason"]
        assert row["feature_extractor"] == "stand_in_features:make" and row["n_images"] == 2
    board = (out / "leaderboard.md").read_text()
    assert "| fid ↓ |" in board and "fid: null" not in board
    assert "run_scorers:mean_red ↑" in board and "run_scorers:mean_red: null" not in board
    rerun = runner.invoke(app, ["run", str(suite), "--output", str(out)])
    assert rerun.exit_code == 0, rerun.output
    assert len(list((out / "sets").glob("set-*.parquet"))) == 1  # members unchanged: reused
    for name in ("stand_in_features", "run_scorers"):
        sys.modules.pop(name, None)


def _image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    kodak = Path(sys.modules["numpy"].__file__).resolve().parents[1] / "ResultsCalibra/ref_dir"
    shutil.copy(kodak / "I03.bmp", folder / "caps.bmp")
    shutil.copy(kodak / "I04.bmp", folder / "hat one.bmp")
    (folder / "caps.txt").write_text("coloured caps on a wall\n")
    return folder


def test_pid_bench_manifest_writes_ids_captions_and_sizes(tmp_path):
    folder = _image_folder(tmp_path)
    result = runner.invoke(app, ["manifest", str(folder), "-o", str(folder / "m.jsonl")])
    assert result.exit_code == 0, result.output
    assert "1 image(s) without a caption (hat one.bmp)" in result.output
    records = [json.loads(line) for line in (folder / "m.jsonl").read_text().splitlines()]
    assert records[0] == {
        "id": "caps", "image": "caps.bmp", "caption": "coloured caps on a wall",
        "width": 512, "height": 384,
    }  # fmt: skip
    assert records[1]["id"] == "hat_one" and records[1]["caption"] == ""
    outside = runner.invoke(app, ["manifest", str(folder), "-o", str(tmp_path / "x" / "m.jsonl")])
    assert outside.exit_code == 2 and "may not leave its folder" in outside.output


def test_a_folder_is_a_source_and_plan_names_upsampled_references(tmp_path):
    folder = _image_folder(tmp_path)
    (folder / "captions.csv").write_text("image,caption\nhat one.bmp,a red hat\n")
    items = load_folder(folder)
    assert [(i.id, i.caption) for i in items] == [
        ("caps", "coloured caps on a wall"), ("hat_one", "a red hat"),
    ]  # fmt: skip
    assert [img.height for img in scan_folder(folder)] == [384, 384]
    suite = write_suite(tmp_path, source="imgs", resolutions=[256, 1024], sigmas=[0.0], limit=None)
    result = runner.invoke(app, ["plan", str(suite)])
    assert result.exit_code == 0, result.output
    assert "caps (384x512): reference at 1024x1024 would be upsampled from 384x384" in result.output
    assert "at 256x256" not in result.output


def test_plan_names_no_upsampled_reference_when_no_metric_compares_with_one(tmp_path):
    folder = _image_folder(tmp_path)
    (folder / "captions.csv").write_text("image,caption\nhat one.bmp,a red hat\n")
    metrics = ["niqe", "twin", "hf_energy_ratio"]
    suite = write_suite(tmp_path, source="imgs", resolutions=[1024], metrics=metrics, limit=None)
    result = runner.invoke(app, ["plan", str(suite)])
    assert result.exit_code == 0, result.output
    assert "upsampled" not in result.output


CUSTOM = '''
import torch


def mean_red(image, context):
    """Mean of the red channel."""
    return image[:, 0].mean(dim=(1, 2))


mean_red.higher_is_better = True
'''


def test_a_custom_metric_plugs_in_by_module_path(tmp_path, tiny_models):
    """The module sits next to the suite: load_suite makes the suite's folder importable."""
    (tmp_path / "my_scorers.py").write_text(CUSTOM)
    suite = load_suite(write_suite(tmp_path, metrics=["my_scorers:mean_red"], sigmas=[0.0]))
    settings = _settings(tmp_path, tuple(suite.metrics))
    rows = run_cell(suite.cells()[0], "c", tiny_models, settings, "cpu")
    for row in rows:
        value = json.loads(row["extra_metrics"])["my_scorers:mean_red"]
        assert 0 <= value <= 1
    bad = runner.invoke(
        app, ["plan", str(write_suite(tmp_path, name="bad", metrics=["nope_mod:f"]))]
    )
    assert bad.exit_code == 2 and "nope_mod:f" in bad.output
    sys.modules.pop("my_scorers", None)
