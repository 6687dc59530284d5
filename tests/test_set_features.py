"""Set-level features computed in the cell (pid_bench.features): FID / KID at the end of a run
are arithmetic on the features the cells stored, never a second read of every PNG; a rerun with
another extractor recomputes from the PNGs; both paths agree; patches at per-member positions."""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from pid_bench import features, sets
from pid_bench.cell import run_cell
from pid_bench.cli import app
from pid_bench.metrics import set_level
from pid_bench.models import load_models
from pid_bench.settings import CellSettings
from pid_bench.store import StorageError, write_part
from pid_bench.suite import load_suite
from pid_bench.timing import TimingPolicy
from tests.test_run import write_suite

pytestmark = pytest.mark.usefixtures("shared_local_ray")  # one Ray for the module's runs

runner = CliRunner()
ONCE = TimingPolicy(warmup=0, repeats=1, min_time_s=0)

EXTRACTORS = '''
import torch


class Mean(torch.nn.Module):
    """Mean colour and its square per channel: 6 features, no weights."""

    num_features = 6

    def forward(self, x):
        m = torch.nn.functional.interpolate(x, size=(32, 32), mode="area").mean(dim=(2, 3))
        return torch.cat([m, m**2], dim=1)


class Spread(torch.nn.Module):
    """Per-channel standard deviation and a 2x2 pooled mean: 15 features."""

    num_features = 15

    def forward(self, x):
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)
        return torch.cat([x.std(dim=(2, 3)), pooled], dim=1)


def make():
    return Mean()


def make_other():
    return Spread()
'''


def _extractor_module(folder: Path, name: str) -> None:
    (folder / f"{name}.py").write_text(EXTRACTORS)


def _forget(*modules: str) -> None:
    for name in modules:
        sys.modules.pop(name, None)
    features.clear_cache()


def _no_pngs(*args, **kwargs):
    raise AssertionError("the end of the run read a PNG")


def _sets(out: Path) -> list[dict]:
    return [r for f in sorted((out / "sets").glob("set-*.parquet")) for r in pq.read_table(f).to_pylist()]  # fmt: skip


def _by(rows: list[dict]) -> dict[tuple[str, str], dict]:
    return {(r["decoder"], r["metric"]): r for r in rows}


def test_a_run_computes_fid_and_kid_from_stored_features_and_a_new_extractor_from_pngs(
    tmp_path, monkeypatch
):
    _extractor_module(tmp_path, "cellfeat")
    suite = write_suite(
        tmp_path, sigmas=[0.0], resolutions=[64], decoders=["pid", "native"], limit=2,
        metrics=["psnr", "fid", "kid"], set_metrics={"feature_extractor": "cellfeat:make"},
    )  # fmt: skip
    out = tmp_path / "run"
    with monkeypatch.context() as spy:
        spy.setattr(sets, "_pngs", _no_pngs)  # the end of the run must not read one
        result = runner.invoke(app, ["run", str(suite), "--output", str(out)])
    assert result.exit_code == 0, result.output
    stored = _by(_sets(out))
    assert set(stored) == {(d, m) for d in ("pid", "native") for m in ("fid", "kid")}
    for row in stored.values():
        assert row["value"] is not None, row["reason"]
        extra = json.loads(row["extra"])
        assert (extra["members_from_features"], extra["members_from_pngs"]) == (2, 0)
    slug = features.extractor_slug("cellfeat:make")
    cells = sorted((out / "features" / slug).iterdir())
    assert len(cells) == 2
    for cell in cells:  # the decodes, and one reference per scored size (native: its own)
        names = sorted(p.name for p in cell.iterdir())
        assert names == ["native.npy", "pid.npy", "reference-16x16.npy", "reference-64x64.npy"]
        assert np.load(cell / "pid.npy").shape == (1, 6)
        assert np.load(cell / "pid.npy").dtype == np.float32

    # the same run from its PNGs (no stored features): the same values
    again = _recomputed_from_pngs(out, tmp_path / "features-aside", "cellfeat:make", stored)
    assert again[("pid", "fid")]["members_digest"] == stored[("pid", "fid")]["members_digest"]

    # a rerun with another extractor: its features are not stored, so it reads the PNGs
    suite = write_suite(
        tmp_path, sigmas=[0.0], resolutions=[64], decoders=["pid", "native"], limit=2,
        metrics=["psnr", "fid", "kid"], set_metrics={"feature_extractor": "cellfeat:make_other"},
    )  # fmt: skip
    rerun = runner.invoke(app, ["run", str(suite), "--output", str(out)])
    assert rerun.exit_code == 0, rerun.output
    other = [r for r in _sets(out) if r["feature_extractor"] == "cellfeat:make_other"]
    assert len(other) == 4
    for row in other:
        assert row["value"] is not None, row["reason"]
        assert json.loads(row["extra"])["members_from_pngs"] == 2
    assert not (out / "features" / features.extractor_slug("cellfeat:make_other")).exists()
    _forget("cellfeat")


@pytest.fixture(scope="module")
def tiny_models():
    return load_models("tiny", "2k", "cpu")


def _run_cells(tmp_path: Path, out: Path, models, save_images: bool, **extra) -> list[dict]:
    suite = load_suite(write_suite(tmp_path, sigmas=[0.0], resolutions=[64], limit=2))
    settings = CellSettings(
        "r", "mini", ("pid", "native"), ("psnr", "fid", "kid"), ONCE, save_images, str(out),
        metric_paths=(str(tmp_path),), feature_extractor="patchfeat:make", **extra,
    )  # fmt: skip
    rows = []
    for index, cell in enumerate(suite.cells()):
        rows += run_cell(cell, f"{index:016x}", models, settings, "cpu")
    assert all(r["status"] == "ok" for r in rows), [r.get("error") for r in rows]
    write_part(out, rows)
    return rows


def test_patches_above_the_threshold_at_per_member_positions_agree_with_the_png_path(
    tmp_path, monkeypatch, tiny_models
):
    _extractor_module(tmp_path, "patchfeat")
    # a threshold the 64x64 decodes reach and the 16x16 native decodes do not
    monkeypatch.setattr(set_level, "PATCH_THRESHOLD", 48)
    monkeypatch.setattr(set_level, "PATCH_SIZE", 32)
    monkeypatch.setattr(set_level, "PATCHES_PER_IMAGE", 3)
    out = tmp_path / "run"
    _run_cells(tmp_path, out, tiny_models, save_images=True)
    slug = features.extractor_slug("patchfeat:make")
    cell = out / "features" / slug / f"{0:016x}"
    assert np.load(cell / "pid.npy").shape == (3, 6)  # patches
    assert np.load(cell / "reference-64x64.npy").shape == (3, 6)
    assert np.load(cell / "native.npy").shape == (1, 6)  # under the threshold: whole
    with monkeypatch.context() as spy:
        spy.setattr(sets, "_pngs", _no_pngs)
        stored = _by(sets.compute_run_sets(out, ["fid", "kid"], "patchfeat:make", tmp_path))
    patch = {"crop_size": 32, "crops_per_image": 3, "seed": 0}
    assert json.loads(stored[("pid", "kid")]["patch"]) == patch
    assert stored[("native", "kid")]["patch"] is None
    assert stored[("pid", "kid")]["n_images"] == 2
    for row in stored.values():
        assert row["value"] is not None, row["reason"]

    _recomputed_from_pngs(out, tmp_path / "aside", "patchfeat:make", stored)

    # one member stored, the other read: the mix gives the same values too
    shutil.rmtree(out / "sets")
    (out / "features").mkdir()
    shutil.move(tmp_path / "aside" / slug, out / "features" / slug)
    shutil.rmtree(out / "features" / slug / f"{1:016x}")
    mixed = _by(sets.compute_run_sets(out, ["fid", "kid"], "patchfeat:make", tmp_path))
    for key, row in stored.items():
        extra = json.loads(mixed[key]["extra"])
        assert (extra["members_from_features"], extra["members_from_pngs"]) == (1, 1)
        assert mixed[key]["value"] == pytest.approx(row["value"], rel=1e-5, abs=1e-7), key
    _forget("patchfeat")


def test_patch_positions_are_a_function_of_the_member_alone():
    image = torch.rand(1, 3, 80, 90, generator=torch.Generator().manual_seed(3))
    patch = {"crop_size": 32, "crops_per_image": 4, "seed": 0}
    first = set_level.member_samples(image, patch, "cell-a")
    assert torch.equal(first, set_level.member_samples(image, patch, "cell-a"))
    assert not torch.equal(first, set_level.member_samples(image, patch, "cell-b"))
    # in a set, a member's crops do not depend on the members before it
    alone, _ = set_level.extract_features(
        iter([image]), torch.nn.Flatten(), "cpu", patch, 16, ["b"]
    )
    pair, _ = set_level.extract_features(
        iter([image.flip(-1), image]), torch.nn.Flatten(), "cpu", patch, 16, ["a", "b"]
    )
    assert torch.equal(alone, pair[4:])


def test_without_saved_images_the_stored_features_still_give_values(tmp_path, tiny_models):
    _extractor_module(tmp_path, "patchfeat")
    out = tmp_path / "run"
    rows = _run_cells(tmp_path, out, tiny_models, save_images=False)
    assert all(r.get("image_path") is None for r in rows)
    results = sets.compute_run_sets(out, ["fid", "kid"], "patchfeat:make", tmp_path)
    assert len(results) == 4
    for row in results:
        assert row["value"] is not None, row["reason"]
        assert json.loads(row["extra"])["members_from_features"] == 2
    _forget("patchfeat")


def test_a_refused_feature_write_keeps_the_rows_and_leaves_the_features_absent(
    tmp_path, monkeypatch, tiny_models
):
    import errno

    from pid_bench import store

    def full(array, path):
        raise StorageError(errno.ENOSPC, "No space left on device", str(path))

    _extractor_module(tmp_path, "patchfeat")
    monkeypatch.setattr(store, "write_array_atomic", full)
    out = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _run_cells(tmp_path, out, tiny_models, save_images=True)  # every row ok
    assert any("features of cell" in str(w.message) for w in caught)
    assert not (out / "features").exists()
    results = sets.compute_run_sets(out, ["kid"], "patchfeat:make", tmp_path)
    assert all(json.loads(r["extra"])["members_from_pngs"] == 2 for r in results)
    assert all(r["value"] is not None for r in results)
    _forget("patchfeat")


def _recomputed_from_pngs(out: Path, aside: Path, extractor: str, stored: dict) -> dict:
    """The run's set values from its PNGs alone (stored features moved to `aside`, sets
    removed); each equals the stored one."""
    shutil.move(out / "features", aside)
    shutil.rmtree(out / "sets")
    again = _by(sets.compute_run_sets(out, ["fid", "kid"], extractor, aside.parent))
    for key, row in stored.items():
        assert json.loads(again[key]["extra"])["members_from_pngs"] == 2
        assert again[key]["value"] == pytest.approx(row["value"], rel=1e-5, abs=1e-7), key
    return again
