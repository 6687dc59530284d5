"""The metric registry: definitions against references, weight plumbing, PiD-specific metrics.

Weight-needing metrics are exercised with *stand-in* weight files (right names, keys and shapes,
made-up values) in a temporary TORCH_HOME: that checks the loading path, not the scores.
"""

from __future__ import annotations

import math
import warnings
from math import prod
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pid_bench import metrics as M
from pid_bench.manifests import load_image
from pid_bench.metrics import (
    KINDS,
    METRICS,
    MetricContext,
    MetricUnavailable,
    MetricUnavailableWarning,
    ciede2000,
    get_metric,
    measure,
    registry,
    srgb_to_lab,
    to_unit_range,
    weight_status,
)

SITE = Path(np.__file__).resolve().parents[1]  # .../site-packages
CALIBRA = SITE / "ResultsCalibra"  # pyiqa's wheel: TID2013 (Kodak) references + distortions
PAIRS = sorted(p.name for p in (CALIBRA / "ref_dir").glob("*.bmp"))

# Sharma, Wu, Dalal (2005), ciede2000testdata.txt: L1 a1 b1 L2 a2 b2 dE00.
SHARMA = """
50.0000 2.6772 -79.7751 50.0000 0.0000 -82.7485 2.0425
50.0000 3.1571 -77.2803 50.0000 0.0000 -82.7485 2.8615
50.0000 2.8361 -74.0200 50.0000 0.0000 -82.7485 3.4412
50.0000 -1.3802 -84.2814 50.0000 0.0000 -82.7485 1.0000
50.0000 -1.1848 -84.8006 50.0000 0.0000 -82.7485 1.0000
50.0000 -0.9009 -85.5211 50.0000 0.0000 -82.7485 1.0000
50.0000 0.0000 0.0000 50.0000 -1.0000 2.0000 2.3669
50.0000 -1.0000 2.0000 50.0000 0.0000 0.0000 2.3669
50.0000 2.4900 -0.0010 50.0000 -2.4900 0.0009 7.1792
50.0000 2.4900 -0.0010 50.0000 -2.4900 0.0010 7.1792
50.0000 2.4900 -0.0010 50.0000 -2.4900 0.0011 7.2195
50.0000 2.4900 -0.0010 50.0000 -2.4900 0.0012 7.2195
50.0000 -0.0010 2.4900 50.0000 0.0009 -2.4900 4.8045
50.0000 -0.0010 2.4900 50.0000 0.0010 -2.4900 4.8045
50.0000 -0.0010 2.4900 50.0000 0.0011 -2.4900 4.7461
50.0000 2.5000 0.0000 50.0000 0.0000 -2.5000 4.3065
50.0000 2.5000 0.0000 73.0000 25.0000 -18.0000 27.1492
50.0000 2.5000 0.0000 61.0000 -5.0000 29.0000 22.8977
50.0000 2.5000 0.0000 56.0000 -27.0000 -3.0000 31.9030
50.0000 2.5000 0.0000 58.0000 24.0000 15.0000 19.4535
50.0000 2.5000 0.0000 50.0000 3.1736 0.5854 1.0000
50.0000 2.5000 0.0000 50.0000 3.2972 0.0000 1.0000
50.0000 2.5000 0.0000 50.0000 1.8634 0.5757 1.0000
50.0000 2.5000 0.0000 50.0000 3.2592 0.3350 1.0000
60.2574 -34.0099 36.2677 60.4626 -34.1751 39.4387 1.2644
63.0109 -31.0961 -5.8663 62.8187 -29.7946 -4.0864 1.2630
61.2901 3.7196 -5.3901 61.4292 2.2480 -4.9620 1.8731
35.0831 -44.1164 3.7933 35.0232 -40.0716 1.5901 1.8645
22.7233 20.0904 -46.6940 23.0331 14.9730 -42.5619 2.0373
36.4612 47.8580 18.3852 36.2715 50.5065 21.2231 1.4146
90.8027 -2.0831 1.4410 91.1528 -1.6435 0.0447 1.4441
90.9257 -0.5406 -0.9208 88.6381 -0.8985 -0.7239 1.5381
6.7747 -0.2908 -2.4247 5.8714 -0.0985 -2.2286 0.6377
2.0776 0.0795 -1.1350 0.9033 -0.0636 -0.5514 0.9082
"""

WEIGHTED = ("lpips", "dists", "niqe", "musiq", "clipiqa", "maniqa", "topiq_nr")


def calibra_pair(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(distorted, reference) as [1, 3, H, W] in [0, 1], read the way the runner reads images."""
    ref = to_unit_range(load_image(CALIBRA / "ref_dir" / name))[None]
    dist = to_unit_range(load_image(CALIBRA / "dist_dir" / name))[None]
    return dist, ref


def hwc(image: torch.Tensor) -> np.ndarray:
    return image[0].permute(1, 2, 0).double().numpy()


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """An empty TORCH_HOME (and HF cache) for this test; created models forgotten around it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    M.clear_caches()
    yield tmp_path / "torch" / "hub"
    M.clear_caches()


# ---- the registry -----------------------------------------------------------------------------


def test_registry_lists_every_metric_of_the_issue_with_kind_direction_and_doc():
    expected = {
        "psnr": ("full_reference", True),
        "ssim": ("full_reference", True),
        "ms_ssim": ("full_reference", True),
        "lpips": ("full_reference", False),
        "dists": ("full_reference", False),
        "niqe": ("no_reference", False),
        "musiq": ("no_reference", True),
        "clipiqa": ("no_reference", True),
        "maniqa": ("no_reference", True),
        "topiq_nr": ("no_reference", True),
        "fid": ("set_level", False),
        "kid": ("set_level", False),
        "latent_consistency_mse": ("latent", False),
        "latent_consistency_cos": ("latent", True),
        "lq_color_de2000": ("latent", False),
        "hf_energy_ratio": ("latent", None),
        "twin_psnr": ("latent", True),
        "twin_ssim": ("latent", True),
        "twin_pass": ("latent", True),
        "twin_lpips": ("latent", False),
        "midtone_chroma_shift": ("latent", False),
        "shadow_green_bias": ("latent", None),
        "speck_rate": ("no_reference", False),
        "speck_rate_skin": ("no_reference", False),
        "speck_ratio_bicubic": ("latent", False),
        "seam_score": ("latent", None),
    }
    assert {n: (m.kind, m.higher_is_better) for n, m in METRICS.items()} == expected
    assert set(KINDS) == {"full_reference", "no_reference", "set_level", "latent"}
    for metric in METRICS.values():
        assert len(metric.doc) > 40, metric.name
    assert {n for n, m in METRICS.items() if m.weights} == {*WEIGHTED, "fid", "kid", "twin_lpips"}
    assert "fid" not in M.ROW_METRICS and "psnr" in M.ROW_METRICS
    assert M.expand_metric_names(["latent_consistency", "psnr", "latent_consistency_cos"]) == [
        "latent_consistency_mse",
        "latent_consistency_cos",
        "psnr",
    ]
    with pytest.raises(KeyError, match="unknown metric 'nope'"):
        get_metric("nope")
    assert not M.is_known_metric("nope") and M.is_known_metric("pyiqa:brisque")


def test_pyiqa_passthrough_is_validated_against_pyiqa_list_models():
    import pyiqa

    assert sorted(M.pyiqa_models()) == sorted(pyiqa.list_models())
    brisque = get_metric("pyiqa:brisque")
    assert brisque.kind == "no_reference" and brisque.higher_is_better is False
    assert get_metric("pyiqa:psnr").kind == "full_reference"
    with pytest.raises(KeyError, match="unknown pyiqa metric 'not_a_metric'"):
        get_metric("pyiqa:not_a_metric")
    with pytest.raises(KeyError, match="set-level"):
        get_metric("pyiqa:fid")


def test_weight_file_names_are_the_ones_pyiqa_and_torchvision_ask_for():
    import torchvision
    from pyiqa.archs import (
        clip_model,
        dists_arch,
        inception,
        lpips_arch,
        maniqa_arch,
        musiq_arch,
        niqe_arch,
        topiq_arch,
    )

    def name(url: str) -> str:
        return url.rsplit("/", 1)[-1]

    wanted = {
        "lpips": {
            name(lpips_arch.default_model_urls["0.1_alex"]),
            name(torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url),
        },
        "dists": {
            name(dists_arch.default_model_urls["url"]),
            name(torchvision.models.VGG16_Weights.IMAGENET1K_V1.url),
        },
        "niqe": {name(niqe_arch.default_model_urls["url"])},
        "musiq": {name(musiq_arch.default_model_urls["koniq10k"])},
        "clipiqa": {name(clip_model._MODELS["RN50"])},
        "maniqa": {name(maniqa_arch.default_model_urls["koniq"])},
        "topiq_nr": {name(topiq_arch.default_model_urls["cfanet_nr_koniq_res50"])},
        "fid": {name(inception.FID_WEIGHTS_URL)},
    }
    for metric, files in wanted.items():
        assert {w.filename for w in METRICS[metric].weights} == files, metric
    assert METRICS["clipiqa"].weights[0].url == clip_model._MODELS["RN50"]


# ---- full-reference definitions against scikit-image ----------------------------------------


def test_calibration_pairs_are_shipped():
    assert len(PAIRS) == 5, f"pyiqa's ResultsCalibra pairs not found under {CALIBRA}"


@pytest.mark.parametrize("name", PAIRS)
def test_psnr_and_ssim_agree_with_scikit_image_on_kodak_pairs(name):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    dist, ref = calibra_pair(name)
    psnr = float(get_metric("psnr").compute(dist, ref)[0])
    ssim = float(get_metric("ssim").compute(dist, ref)[0])
    d, r = hwc(dist), hwc(ref)
    assert psnr == pytest.approx(peak_signal_noise_ratio(r, d, data_range=1), abs=1e-3)
    sk_ssim = structural_similarity(
        r, d, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1,
        channel_axis=-1,
    )  # fmt: skip
    assert ssim == pytest.approx(sk_ssim, abs=1e-4)
    assert 10 < psnr < 40 and 0.5 < ssim < 1


def test_torchmetrics_and_pyiqa_psnr_agree_and_ms_ssim_orders_distortions():
    values = []
    for name in PAIRS[:2]:
        dist, ref = calibra_pair(name)
        ours = float(get_metric("psnr").compute(dist, ref)[0])
        theirs = float(get_metric("pyiqa:psnr").compute(dist, ref)[0])  # no weights needed
        assert ours == pytest.approx(theirs, abs=1e-3)
        values.append(float(get_metric("ms_ssim").compute(dist, ref)[0]))
        assert float(get_metric("ms_ssim").compute(ref, ref)[0]) == pytest.approx(1.0, abs=1e-5)
    assert all(0 < v < 1 for v in values)
    small = torch.rand(1, 3, 64, 64)
    result = measure(["ms_ssim"], small, MetricContext(reference=small))
    assert result.values["ms_ssim"] is None and "161" in result.reasons["ms_ssim"]


def test_full_reference_without_reference_or_with_another_size_is_null_with_reason():
    image = torch.rand(1, 3, 32, 32)
    result = measure(["psnr", "ssim"], image)
    assert result.values == {"psnr": None, "ssim": None}
    assert "no reference" in result.reasons["psnr"]
    with pytest.raises(MetricUnavailable, match="no reference"):  # what compute itself does
        get_metric("psnr").compute(image)
    with pytest.raises(MetricUnavailable, match="set-level"):
        get_metric("fid").compute(image, image)
    other = measure(["psnr"], image, MetricContext(reference=torch.rand(1, 3, 16, 16)))
    assert other.values["psnr"] is None and "differ in size" in other.reasons["psnr"]


# ---- CIEDE2000 ---------------------------------------------------------------------------------


def test_ciede2000_matches_sharma_test_pairs_and_skimage():
    from skimage.color import deltaE_ciede2000

    data = np.array([[float(x) for x in line.split()] for line in SHARMA.strip().splitlines()])
    lab1, lab2, expected = data[:, :3], data[:, 3:6], data[:, 6]
    ours = ciede2000(torch.from_numpy(lab1), torch.from_numpy(lab2), dim=-1).numpy()
    assert len(expected) == 34
    np.testing.assert_allclose(ours, expected, atol=5.1e-5)  # the table is rounded to 1e-4
    np.testing.assert_allclose(ours, deltaE_ciede2000(lab1, lab2), atol=1e-10)
    swapped = ciede2000(torch.from_numpy(lab2), torch.from_numpy(lab1), dim=-1).numpy()
    np.testing.assert_allclose(swapped, expected, atol=5.1e-5)  # symmetric


def test_srgb_to_lab_and_mean_ciede2000_match_skimage():
    from skimage.color import deltaE_ciede2000, rgb2lab

    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 24, 40, generator=g)
    b = (a + 0.1 * torch.randn(2, 3, 24, 40, generator=g)).clamp(0, 1)
    lab_a = rgb2lab(a.permute(0, 2, 3, 1).double().numpy())
    lab_b = rgb2lab(b.permute(0, 2, 3, 1).double().numpy())
    np.testing.assert_allclose(srgb_to_lab(a).permute(0, 2, 3, 1).numpy(), lab_a, atol=1e-9)
    expected = deltaE_ciede2000(lab_a, lab_b).mean(axis=(1, 2))
    np.testing.assert_allclose(M.mean_ciede2000(a, b, rows=5).numpy(), expected, atol=1e-9)
    assert (expected > 1).all()


# ---- PiD-specific metrics ------------------------------------------------------------------------


def smooth_image(seed: int, size: int) -> torch.Tensor:
    """[1, 3, size, size] in [0, 1]: low-frequency noise (a stand-in for a natural image)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, size // 8, size // 8, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


@pytest.fixture(scope="module")
def codec():
    from pid_models.tiny import build_tiny_codec

    return build_tiny_codec(0)


class CountingCodec:
    def __init__(self, codec) -> None:
        self.codec, self.calls = codec, 0
        self.vae = codec.vae

    def encode(self, image):
        self.calls += 1
        return self.codec.encode(image)


def test_latent_consistency_on_the_tiny_codec(codec):
    scale = 4
    lq = smooth_image(0, 64)  # the native-size input the clean latent came from
    clean = codec.encode(lq * 2 - 1)
    assert clean.shape == (1, 16, 8, 8)
    faithful = F.interpolate(lq, scale_factor=scale, mode="bicubic", align_corners=False).clamp(
        0, 1
    )
    unrelated = smooth_image(1, 256)
    counting = CountingCodec(codec)
    names = ["latent_consistency"]
    good = measure(names, faithful, MetricContext(codec=counting, clean_latent=clean, scale=scale))
    assert counting.calls == 1  # both values from one re-encode
    bad = measure(names, unrelated, MetricContext(codec=codec, clean_latent=clean, scale=scale))
    assert good.reasons == {} and bad.reasons == {}
    assert good.values["latent_consistency_mse"] < 0.1 * bad.values["latent_consistency_mse"]
    assert good.values["latent_consistency_cos"] > bad.values["latent_consistency_cos"]
    assert good.values["latent_consistency_cos"] > 0.99

    # the definition, step by step
    down = F.interpolate(faithful, size=(64, 64), mode="bicubic", antialias=True).clamp(0, 1)
    again = codec.encode(down * 2 - 1).double().flatten()
    mse = float((again - clean.double().flatten()).pow(2).mean())
    cos = float(F.cosine_similarity(again, clean.double().flatten(), dim=0))
    assert good.values["latent_consistency_mse"] == pytest.approx(mse, rel=1e-5)
    assert good.values["latent_consistency_cos"] == pytest.approx(cos, rel=1e-6)

    absent = measure(names, faithful, MetricContext(scale=scale))
    assert absent.values == {"latent_consistency_mse": None, "latent_consistency_cos": None}
    assert "codec" in absent.reasons["latent_consistency_mse"]


def test_lq_color_de2000_is_ciede2000_against_the_native_decode():
    red, grey = torch.tensor([0.8, 0.2, 0.1]), torch.tensor([0.5, 0.5, 0.5])
    image = red.view(1, 3, 1, 1).expand(1, 3, 64, 64).clone()
    native = grey.view(1, 3, 1, 1).expand(1, 3, 16, 16).clone()
    value = measure(["lq_color_de2000"], image, MetricContext(native=native)).values
    expected = float(ciede2000(srgb_to_lab(red, dim=-1), srgb_to_lab(grey, dim=-1), dim=-1))
    assert value["lq_color_de2000"] == pytest.approx(expected, rel=1e-6) and expected > 10
    same = smooth_image(2, 64)
    native_same = F.interpolate(same, size=(16, 16), mode="bicubic", antialias=True).clamp(0, 1)
    close = measure(["lq_color_de2000"], same, MetricContext(native=native_same)).values
    assert close["lq_color_de2000"] == pytest.approx(0.0, abs=1e-6)
    missing = measure(["lq_color_de2000"], same)
    assert missing.values["lq_color_de2000"] is None
    assert "native decode" in missing.reasons["lq_color_de2000"]


def sinusoids(low: float, high: float, size: int = 256) -> torch.Tensor:
    """Grey [1, 3, size, size]: 0.5 + low * sin(0.05 cycles/px in x) + high * sin(0.3 in y)."""
    y, x = torch.meshgrid(torch.arange(size.__int__()), torch.arange(size), indexing="ij")
    grey = 0.5 + low * torch.sin(2 * math.pi * 0.05 * x) + high * torch.sin(2 * math.pi * 0.3 * y)
    return grey.float()[None, None].expand(1, 3, size, size).clone()


def test_hf_energy_ratio_known_answers_on_synthetic_images():
    scale = 4  # cutoff 1 / 8 = 0.125 cycles per pixel: 0.05 is below it, 0.3 above
    assert M.hf_cutoff(scale) == 0.125
    reference = sinusoids(0.1, 0.1)
    ratio = measure(["hf_energy_ratio"], sinusoids(0.1, 0.2), MetricContext(reference, scale=scale))
    assert ratio.values["hf_energy_ratio"] == pytest.approx(4.0, rel=1e-3)  # amplitude 2 -> 4x
    same = measure(["hf_energy_ratio"], reference, MetricContext(reference, scale=scale))
    assert same.values["hf_energy_ratio"] == pytest.approx(1.0, abs=1e-9)
    only_low = measure(
        ["hf_energy_ratio"], sinusoids(0.3, 0.0), MetricContext(reference, scale=scale)
    )
    assert only_low.values["hf_energy_ratio"] < 1e-4  # low frequencies do not count

    sharp = smooth_image(3, 256) * 0.5 + 0.5 * torch.rand(
        1, 3, 256, 256, generator=torch.Generator().manual_seed(4)
    )
    blurred = F.avg_pool2d(sharp, 5, stride=1, padding=2, count_include_pad=False)
    blur = measure(["hf_energy_ratio"], blurred, MetricContext(sharp, scale=scale)).values
    assert 0 < blur["hf_energy_ratio"] < 0.2
    back = measure(["hf_energy_ratio"], sharp, MetricContext(blurred, scale=scale)).values
    assert back["hf_energy_ratio"] > 5

    # no reference: the baseline is the native decode, bicubic-upscaled
    native = F.interpolate(sharp, size=(64, 64), mode="bicubic", antialias=True).clamp(0, 1)
    no_ref = measure(["hf_energy_ratio"], sharp, MetricContext(native=native, scale=scale)).values
    upscaled = F.interpolate(native, size=(256, 256), mode="bicubic", align_corners=False).clamp(
        0, 1
    )
    expected = M.hf_energy(sharp, 0.125) / M.hf_energy(upscaled, 0.125)
    assert no_ref["hf_energy_ratio"] == pytest.approx(float(expected), rel=1e-6)
    assert no_ref["hf_energy_ratio"] > 1
    no_scale = measure(["hf_energy_ratio"], sharp, MetricContext(sharp))
    assert (
        no_scale.values["hf_energy_ratio"] is None
        and "scale" in no_scale.reasons["hf_energy_ratio"]
    )


# ---- measure: nulls, reasons, warnings ------------------------------------------------------------


def test_measure_never_raises_for_a_metric_and_warns_once(monkeypatch):
    M.clear_caches()
    image = torch.rand(1, 3, 32, 32)

    def broken(image, context):
        raise RuntimeError("boom")

    def nan(image, context):
        return torch.tensor([float("nan")])

    stand_ins = (
        M.Metric("broken", "no_reference", True, broken, "x"),
        M.Metric("nan", "no_reference", True, nan, "x"),
    )
    # The registry is frozen: a copy holding the stand-ins is swapped in for this test.
    monkeypatch.setattr(registry, "METRICS", METRICS.with_metrics(*stand_ins))
    with pytest.warns(MetricUnavailableWarning, match="metric broken left null"):
        result = measure(["broken", "nan", "fid", "psnr"], image, MetricContext(reference=image))
    assert (
        result.values["broken"] is None and result.reasons["broken"] == "failed: RuntimeError: boom"
    )
    assert result.values["nan"] is None and result.reasons["nan"] == "not finite (nan)"
    assert result.values["fid"] is None and "set-level" in result.reasons["fid"]
    assert result.values["psnr"] == math.inf  # identical images: PSNR is +inf, not a null
    assert result.columns()["metric_psnr"] == math.inf
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        measure(["broken"], image)
    assert not [w for w in caught if issubclass(w.category, MetricUnavailableWarning)]
    with pytest.raises(ValueError, match="one image"):
        measure(["psnr"], torch.rand(2, 3, 8, 8))
    M.clear_caches()


def test_protocol_fields_are_constants_the_cell_can_record():
    fields = M.protocol_fields()
    assert fields == {
        "protocol_resize_kernel": "bicubic-antialias",
        "color_space": "sRGB [0,1], clamped",
        "crop_border": 0,
    }


# ---- weights: missing ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", WEIGHTED)
def test_missing_weights_give_null_and_a_reason_naming_the_exact_path(hub, name):
    metric = METRICS[name]
    image = smooth_image(0, 64)
    context = MetricContext(reference=image)
    with pytest.warns(MetricUnavailableWarning, match=f"metric {name} left null: weights missing"):
        result = measure([name], image, context)
    assert result.values[name] is None
    for weight in metric.weights:
        expected = hub / weight.folders[0] / weight.filename
        assert str(expected) in result.reasons[name]
    assert result.reasons[name].startswith("weights missing: ")
    status, files, searched, hint = weight_status(name)
    assert status == "missing" and files == ()
    assert str(hub / metric.weights[0].folders[0] / metric.weights[0].filename) in searched
    assert metric.weights[0].url in hint


def test_missing_inception_weights_leave_fid_and_kid_null(hub):
    images = [smooth_image(i, 64)[0] for i in range(3)]
    results = M.compute_set_metrics(["fid", "kid"], images, images)
    expected = str(hub / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth")
    for name in ("fid", "kid"):
        assert results[name].value is None
        assert results[name].reason == f"weights missing: {expected}"
    assert weight_status("fid").status == "missing"


def test_passthrough_never_downloads_a_missing_file(hub):
    # pyiqa's 'lpips-vgg' asks torchvision for VGG16: the download is refused, the path named.
    result = measure(["pyiqa:lpips-vgg"], smooth_image(0, 64), MetricContext(smooth_image(1, 64)))
    assert result.values["pyiqa:lpips-vgg"] is None
    assert result.reasons["pyiqa:lpips-vgg"] == (
        f"weights missing: {hub / 'checkpoints' / 'vgg16-397923af.pth'}"
    )
    assert weight_status("pyiqa:lpips-vgg").status == "unknown"
    assert weight_status("psnr").status == "no weights needed"


# ---- weights: stand-ins -------------------------------------------------------------------------


def stand_in(state: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """Made-up values of the right keys, shapes and dtypes (`state` may be on the meta device).

    Norm layers start as identities, other weights are N(0, 2/fan_in); big tensors are strided
    views of a short random vector, so a 100M-parameter stand-in is a few MB on disk.
    """
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, t in state.items():
        shape, leaf = tuple(t.shape), key.rsplit(".", 1)[-1]
        if not t.is_floating_point():
            out[key] = torch.zeros(shape, dtype=t.dtype)
        elif leaf == "running_var" or (leaf == "weight" and len(shape) == 1):
            out[key] = torch.ones(shape)
        elif leaf in ("running_mean", "bias"):
            out[key] = torch.zeros(shape)
        else:
            std = (2 / prod(shape[1:])) ** 0.5 if len(shape) > 1 else 0.02
            if prod(shape) <= 1 << 20:
                out[key] = torch.randn(shape, generator=g) * std
            else:
                pool = torch.randn(sum(s - 1 for s in shape) + 1, generator=g) * std
                out[key] = pool.as_strided(shape, (1,) * len(shape))
    return out


class Holder(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def scripted(state: dict[str, torch.Tensor]) -> torch.jit.ScriptModule:
    """A TorchScript module whose state dict is `state` (OpenAI's CLIP files are TorchScript)."""
    root = Holder()
    for key, tensor in state.items():
        *path, leaf = key.split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, Holder())
            module = getattr(module, part)
        module.register_buffer(leaf, tensor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.script(root)


def meta_state(build) -> dict[str, torch.Tensor]:
    """The state dict `build()` makes, on the meta device (shapes only, no memory, no init)."""
    from unittest import mock

    linspace = torch.linspace  # drop-path rates are read with .item(): keep them real

    def real_linspace(*args, **kwargs):
        return linspace(*args, **{**kwargs, "device": "cpu"})

    with torch.device("meta"), mock.patch("torch.linspace", real_linspace):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # meta no-op loads, torchvision deprecations
            return build().state_dict()


def save(obj, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def write_stand_ins(name: str, hub: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Stand-in files of metric `name` under `hub`; returns {file name: state dict written}."""
    import torchvision

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pyiqa  # noqa: F401
    from pyiqa.archs import (
        clip_model,
        dists_arch,
        inception,
        lpips_arch,
        maniqa_arch,
        musiq_arch,
        topiq_arch,
    )

    written = {}

    def put(folder: str, filename: str, state, wrap=None):
        save(wrap(state) if wrap else state, hub / folder / filename)
        written[filename] = state

    with M.offline_weights(hub / "pyiqa", force_timm_random=name == "maniqa"):
        if name == "lpips":
            put(
                "checkpoints",
                "alexnet-owt-7be5be79.pth",
                stand_in(meta_state(torchvision.models.alexnet)),
            )
            lpips = meta_state(lambda: lpips_arch.LPIPS(pretrained=False, net="alex"))
            # the released file holds lin0..lin4 (`lins` is the same modules again)
            lins = {k: v for k, v in lpips.items() if k[:3] == "lin" and k[3].isdigit()}
            put("pyiqa", "LPIPS_v0.1_alex-df73285e.pth", stand_in(lins, 1))
        elif name == "dists":
            put("checkpoints", "vgg16-397923af.pth", stand_in(meta_state(torchvision.models.vgg16)))
            dists = meta_state(lambda: dists_arch.DISTS(pretrained=False))
            heads = {k: stand_in({k: dists[k]}, 1)[k].abs() + 0.05 for k in ("alpha", "beta")}
            put("pyiqa", "DISTS_weights-f5e65c96.pth", heads)
        elif name == "niqe":
            from scipy.io import savemat

            g = np.random.default_rng(0)
            a = g.normal(size=(36, 36))
            params = {
                "mu_prisparam": g.normal(size=(1, 36)),
                "cov_prisparam": a @ a.T + 36 * np.eye(36),
            }
            (hub / "pyiqa").mkdir(parents=True, exist_ok=True)
            savemat(hub / "pyiqa" / "niqe_modelparameters.mat", params)
            written["niqe_modelparameters.mat"] = params
        elif name == "musiq":
            state = stand_in(meta_state(lambda: musiq_arch.MUSIQ(pretrained=False)))
            put("pyiqa", "musiq_koniq_ckpt-e95806b9.pth", state)
        elif name == "clipiqa":  # OpenAI CLIP RN50's hyper-parameters; a TorchScript file
            state = stand_in(
                meta_state(
                    lambda: clip_model.CLIP(
                        1024, 224, (3, 4, 6, 3), 64, None, 77, 49408, 512, 8, 12
                    )
                )
            )
            (hub / "clip").mkdir(parents=True, exist_ok=True)
            torch.jit.save(scripted(state), hub / "clip" / "RN50.pt")
            written["RN50.pt"] = state
        elif name == "maniqa":
            build = lambda: maniqa_arch.MANIQA(pretrained=False, train_dataset="koniq", scale=0.8)  # noqa: E731
            put("pyiqa", "ckpt_koniq10k.pt", stand_in(meta_state(build)))
        elif name == "topiq_nr":
            build = lambda: topiq_arch.CFANet(  # noqa: E731
                semantic_model_name="resnet50", model_name="cfanet_nr_koniq_res50", use_ref=False,
                pretrained=False, backbone_pretrain=False,
            )  # fmt: skip
            put(
                "pyiqa",
                "cfanet_nr_koniq_res50-9a73138b.pth",
                stand_in(meta_state(build)),
                lambda s: {"params": s},
            )
        elif name == "fid":
            from unittest import mock

            with mock.patch.object(inception, "load_pretrained_network", lambda *a, **k: None):
                state = stand_in(meta_state(inception.fid_inception_v3))
            put("checkpoints", "pt_inception-2015-12-05-6726825d.pth", state)
    return written


#: metric -> (stand-in file, key in it, attribute path of the same tensor in the pyiqa model's net)
LOADED = {
    "lpips": [
        ("LPIPS_v0.1_alex-df73285e.pth", "lin0.model.1.weight", "lin0.model.1.weight"),
        ("alexnet-owt-7be5be79.pth", "features.0.weight", "net.slice1.0.weight"),
    ],
    "dists": [
        ("DISTS_weights-f5e65c96.pth", "alpha", "alpha"),
        ("vgg16-397923af.pth", "features.0.weight", "stage1.0.weight"),
    ],
    "musiq": [("musiq_koniq_ckpt-e95806b9.pth", "conv_root.weight", "conv_root.weight")],
    "clipiqa": [("RN50.pt", "visual.conv1.weight", "clip_model.0.visual.conv1.weight")],
    "maniqa": [
        ("ckpt_koniq10k.pt", "vit.patch_embed.proj.weight", "vit.patch_embed.proj.weight"),
        ("ckpt_koniq10k.pt", "fc_score.0.weight", "fc_score.0.weight"),
    ],
    "topiq_nr": [
        (
            "cfanet_nr_koniq_res50-9a73138b.pth",
            "semantic_model.conv1.weight",
            "semantic_model.conv1.weight",
        )
    ],
}


def tensor_at(module, path: str) -> torch.Tensor:
    obj = module
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


#: metrics whose forward pass also runs here: cheap on 2 CPU cores (MANIQA's 20 ViT-B/8 crops,
#: CLIP-IQA's text tower and TOPIQ's multi-scale ResNet take seconds: their loading is checked)
FORWARD = ("lpips", "dists", "niqe", "musiq")


@pytest.mark.parametrize("name", WEIGHTED)
def test_pyiqa_loading_plumbing_with_stand_in_weights(hub, name):
    written = write_stand_ins(name, hub)
    status, files, _, hint = weight_status(name)
    assert status == "present" and hint is None
    assert sorted(Path(f).name for f in files) == sorted(w.filename for w in METRICS[name].weights)

    model = M.load_model(name, "cpu")
    assert M.load_model(name, torch.device("cpu")) is model  # one per (name, device)
    for filename, key, attribute in LOADED.get(name, []):
        loaded = tensor_at(model.net, attribute).detach().float()
        expected = written[filename][key].float()
        if name == "clipiqa":  # CLIP's loader casts to float16 and back
            expected = expected.half().float()
        assert torch.equal(loaded, expected), (name, key)
    if name == "niqe":
        mu = written["niqe_modelparameters.mat"]["mu_prisparam"].ravel()
        np.testing.assert_allclose(model.net.mu_pris_param.numpy(), mu)
    if name in FORWARD:
        image = to_unit_range(load_image(CALIBRA / "dist_dir" / PAIRS[0]))[None][..., :128, :128]
        reference = to_unit_range(load_image(CALIBRA / "ref_dir" / PAIRS[0]))[None][..., :128, :128]
        result = measure(
            [name], image.contiguous(), MetricContext(reference=reference.contiguous())
        )
        assert result.reasons == {} and math.isfinite(result.values[name]), result.reasons


def test_fid_and_kid_plumbing_with_stand_in_inception_weights_and_patches(hub):
    write_stand_ins("fid", hub)
    assert weight_status("kid").status == "present"
    g = torch.Generator().manual_seed(0)
    real = [torch.rand(3, 96, 96, generator=g) for _ in range(3)]
    shifted = [(x * 0.3 + 0.6).clamp(0, 1) for x in real]
    # One FID only: torchmetrics takes the eigenvalues of a 2048x2048 product (seconds on CPU;
    # minutes with 2 threads on 2 busy cores, where LAPACK's threads starve: so 1 thread here).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        other = M.compute_set_metrics(["fid", "kid"], shifted, real, kid_subsets=5)
    finally:
        torch.set_num_threads(threads)
    same = M.compute_set_metrics(["kid"], real, real, kid_subsets=5)
    fid = other["fid"]
    assert fid.reason is None and fid.patch is None and fid.n_images == fid.n_reference == 3
    # the Frechet distance of the same features, by the small (n x n) eigenproblem
    with torch.no_grad():
        f1 = M.load_inception("cpu")(torch.stack(real)).double()
        f2 = M.load_inception("cpu")(torch.stack(shifted)).double()
    a, b = f1 - f1.mean(0), f2 - f2.mean(0)
    eig = torch.linalg.eigvals(a @ b.T @ b @ a.T).real.clamp_min(0) / 4  # (n - 1)^2 = 4
    expected = (f1.mean(0) - f2.mean(0)).pow(2).sum() + (a.pow(2).sum() + b.pow(2).sum()) / 2
    expected -= 2 * eig.sqrt().sum()
    assert fid.value == pytest.approx(float(expected), rel=1e-3) and fid.value > 1
    assert other["kid"].value > same["kid"].value and abs(same["kid"].value) < 1e-2
    assert other["kid"].extra["subset_size"] == 3 and other["kid"].extra["seed"] == 0

    # Patches: large images are cut into random crops at a fixed, recorded seed. (KID here:
    # torchmetrics' FID takes the eigenvalues of a 2048x2048 product, seconds per call on CPU.)
    big = [torch.rand(1, 3, 160, 200, generator=g) for _ in range(2)]
    flipped = [b.flip(-1) for b in big]
    kwargs = {"patch": True, "crop_size": 64, "crops_per_image": 2, "seed": 7, "kid_subsets": 5}
    first = M.compute_set_metrics(["kid"], big, flipped, **kwargs)["kid"]
    second = M.compute_set_metrics(["kid"], big, flipped, **kwargs)["kid"]
    assert first.patch == {"crop_size": 64, "crops_per_image": 2, "seed": 7}
    assert first.n_images == 2 and first.n_samples == first.n_reference_samples == 4
    assert first.value == second.value and first.value != 0  # same seed: same crops, same KID

    def crops(seed: int) -> torch.Tensor:
        return M._patches(big[0], 64, 2, torch.Generator().manual_seed(seed))

    assert torch.equal(crops(7), crops(7)) and not torch.equal(crops(7), crops(8))
    assert M.PATCH_THRESHOLD == 2048
    whole = M.compute_set_metrics(["kid"], big[:1], flipped[:1])["kid"]  # below the threshold
    assert whole.patch is None and whole.n_samples == 1
    assert whole.value is None and "at least 2" in whole.reason


def test_pyiqa_files_are_also_found_in_an_hf_cache_snapshot(hub, tmp_path):
    from scipy.io import savemat

    repo = tmp_path / "hf" / "models--chaofengc--IQA-PyTorch-Weights"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    mu = np.linspace(0, 1, 36)[None]
    savemat(
        snapshot / "niqe_modelparameters.mat", {"mu_prisparam": mu, "cov_prisparam": np.eye(36)}
    )
    status, files, searched, _ = weight_status("niqe")
    assert status == "present" and files == (str(snapshot / "niqe_modelparameters.mat"),)
    assert searched[0] == str(hub / "pyiqa" / "niqe_modelparameters.mat")
    model = M.load_model("niqe", "cpu")  # pyiqa reads it from the snapshot folder
    np.testing.assert_allclose(model.net.mu_pris_param.numpy(), mu.ravel())
    assert not (hub / "pyiqa" / "niqe_modelparameters.mat").exists()


@pytest.mark.parametrize("level", [0.45, 0.08])  # sRGB grey: a midtone (L* 47), a shadow (L* 8)
def test_twin_check_and_colour_qa_follow_their_definitions(level):
    """The decode is brought down to the native size and compared with the native decode."""
    import math

    native = torch.full((1, 3, 16, 16), level, dtype=torch.float64)
    tinted = native.clone()
    tinted[:, 1] += 0.02  # greener, everywhere
    decode = torch.nn.functional.interpolate(tinted, scale_factor=4, mode="nearest").float()
    names = ["twin_psnr", "twin_pass", "midtone_chroma_shift", "shadow_green_bias"]
    result = measure(names, decode, MetricContext(native=native.float()))
    mse = 0.02**2 / 3
    assert result.values["twin_psnr"] == pytest.approx(10 * math.log10(1 / mse), abs=1e-3)
    lab, lab_native = srgb_to_lab(tinted), srgb_to_lab(native)
    da, db = (lab - lab_native)[0, 1, 0, 0], (lab - lab_native)[0, 2, 0, 0]
    if level == 0.45:
        shift = float(torch.sqrt(da**2 + db**2))
        assert result.values["midtone_chroma_shift"] == pytest.approx(shift, rel=1e-4)
        assert "no shadow" in result.reasons["shadow_green_bias"]
    else:
        assert result.values["shadow_green_bias"] == pytest.approx(float(-da), rel=1e-4)
        assert result.values["shadow_green_bias"] > 0  # greener shadows are positive
        assert "no midtone" in result.reasons["midtone_chroma_shift"]
    same = measure(["twin_psnr"], native.float(), MetricContext(native=native.float()))
    assert "its own twin" in same.reasons["twin_psnr"]
