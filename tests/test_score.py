"""`pid_bench.score`: metrics on image files, through the runner's compute path."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pid_bench import metrics as M
from pid_bench.manifests import ManifestError
from pid_bench.score import score_images, score_sets

CALIBRA = Path(np.__file__).resolve().parents[1] / "ResultsCalibra"
PAIR = "I04.bmp"


def as_png(source: Path, target: Path) -> Path:
    Image.open(source).convert("RGB").save(target)
    return target


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    ref = as_png(CALIBRA / "ref_dir" / PAIR, tmp_path / "ref.png")
    dist = as_png(CALIBRA / "dist_dir" / PAIR, tmp_path / "dist.png")
    jpeg = tmp_path / "dist.jpg"
    Image.open(dist).save(jpeg, quality=90)
    small = tmp_path / "small.png"
    Image.open(dist).resize((128, 96)).save(small)
    return {"ref": ref, "dist": dist, "jpeg": jpeg, "small": small}


def test_scores_png_and_jpeg_like_the_metrics_on_tensors_and_like_skimage(files):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    result = score_images(
        [files["dist"], str(files["jpeg"])], ["psnr", "ssim"], files["ref"], device="cpu"
    )
    assert list(result.values) == [str(files["dist"]), str(files["jpeg"])]
    png = result[str(files["dist"])]
    assert result.reasons[str(files["dist"])] == {}

    ref = np.asarray(Image.open(files["ref"]), dtype=np.float64) / 255
    dist = np.asarray(Image.open(files["dist"]), dtype=np.float64) / 255
    assert png["psnr"] == pytest.approx(peak_signal_noise_ratio(ref, dist, data_range=1), abs=1e-3)
    ssim = structural_similarity(
        ref, dist, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1,
        channel_axis=-1,
    )  # fmt: skip
    assert png["ssim"] == pytest.approx(ssim, abs=1e-4)

    # the same numbers as the registry on tensors (the runner's path)
    def unit(path):
        return torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32) / 255).permute(
            2, 0, 1
        )[None]

    direct = M.measure(["psnr"], unit(files["dist"]), M.MetricContext(reference=unit(files["ref"])))
    assert png["psnr"] == pytest.approx(direct.values["psnr"], abs=1e-4)
    jpeg = result[str(files["jpeg"])]
    assert jpeg["psnr"] < png["psnr"] + 5 and math.isfinite(jpeg["psnr"])
    assert result.protocol["color_space"] == "sRGB [0,1], clamped"


def test_reasons_for_what_cannot_be_scored(files):
    no_ref = score_images([files["dist"]], ["psnr", "hf_energy_ratio", "fid"], device="cpu")
    values, reasons = no_ref[str(files["dist"])], no_ref.reasons[str(files["dist"])]
    assert values == {"psnr": None, "hf_energy_ratio": None, "fid": None}
    assert "no reference" in reasons["psnr"]
    assert "scale" in reasons["hf_energy_ratio"]
    assert "set-level" in reasons["fid"]

    mismatch = score_images([files["small"]], ["psnr"], files["ref"], device="cpu")
    assert mismatch[str(files["small"])]["psnr"] is None
    assert "differ in size" in mismatch.reasons[str(files["small"])]["psnr"]

    parsed = json.loads(mismatch.to_json())
    assert parsed["reference"] == str(files["ref"])
    assert parsed["values"][str(files["small"])] == {"psnr": None}

    with pytest.raises(KeyError, match="unknown metric"):
        score_images([files["dist"]], ["psnrr"], device="cpu")
    broken = files["dist"].with_name("broken.png")
    broken.write_bytes(b"not a png")
    with pytest.raises(ManifestError, match="broken.png"):
        score_images([broken], ["psnr"], files["ref"], device="cpu")


def test_hf_energy_ratio_of_a_file_against_itself_is_one(files):
    result = score_images([files["ref"]], ["hf_energy_ratio"], files["ref"], device="cpu", scale=4)
    assert result[str(files["ref"])]["hf_energy_ratio"] == pytest.approx(1.0, abs=1e-9)


def test_missing_weights_are_reported_per_image_not_raised(files, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    M.clear_caches()
    with pytest.warns(M.MetricUnavailableWarning):
        result = score_images([files["dist"]], ["lpips", "psnr"], files["ref"], device="cpu")
    values, reasons = result[str(files["dist"])], result.reasons[str(files["dist"])]
    assert values["lpips"] is None and values["psnr"] > 10
    path = tmp_path / "torch" / "hub" / "pyiqa" / "LPIPS_v0.1_alex-df73285e.pth"
    assert reasons["lpips"].startswith("weights missing: ") and str(path) in reasons["lpips"]

    sets = score_sets([files["dist"]] * 2, [files["ref"]] * 2, device="cpu")
    inception = tmp_path / "torch" / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"
    assert sets["fid"].value is None and sets["fid"].reason == f"weights missing: {inception}"
    assert sets["kid"].value is None
    with pytest.raises(KeyError, match="not set-level"):
        score_sets([files["dist"]], [files["ref"]], ["psnr"], device="cpu")
    M.clear_caches()


def test_the_score_command_matches_scikit_image_on_the_kodak_pairs():
    import json
    import sysconfig

    from skimage.io import imread
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    from typer.testing import CliRunner

    from pid_bench.cli import app

    root = Path(sysconfig.get_paths()["purelib"]) / "ResultsCalibra"
    names = sorted(p.name for p in (root / "ref_dir").glob("I*.bmp"))
    assert len(names) == 5
    for name in names:
        ref, img = root / "ref_dir" / name, root / "dist_dir" / name
        result = CliRunner().invoke(
            app, ["score", "--ref", str(ref), "--img", str(img), "--metrics", "psnr,ssim"]
        )
        assert result.exit_code == 0, result.output
        scores = json.loads(result.stdout)[str(img)]
        a, b = imread(ref) / 255.0, imread(img) / 255.0
        assert scores["psnr"] == pytest.approx(
            peak_signal_noise_ratio(a, b, data_range=1), abs=1e-3
        )
        expected = structural_similarity(
            a, b, data_range=1, channel_axis=2, gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False,
        )  # fmt: skip
        assert scores["ssim"] == pytest.approx(expected, abs=1e-4)
