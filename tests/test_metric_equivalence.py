"""The fast metric implementations against the computations they replaced (issue: metrics at most
half the cost per decoder output, values unchanged). Each reference below is the previous
implementation: torchmetrics' padded SSIM map cropped to its valid part (and the same map in
float64: the new SSIM centres the images before the float32 variances, so it is closer to the
float64 value than torchmetrics' float32 one, which is up to ~2e-5 off on Kodak pairs),
torchmetrics' PSNR one image at a time, a NumPy CIEDE2000 of the NumPy sRGB -> CIELAB, the
dense max-propagation of speck labels, the 7x7 max-pool minimum and avg-pool skin share; and
`measure` (which shares one `Conversions` between its metrics) against each metric alone."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pid_bench.metrics import MetricContext, get_metric, measure
from pid_bench.metrics import base as metric_base
from pid_bench.metrics import failure_modes as fm
from pid_bench.metrics.base import Conversions, conversions, resize, sharing
from pid_bench.metrics.catalog import (
    SKIN_NEIGHBOURHOOD_MIN,
    SPECK_SIGMAS,
    SPECK_THRESHOLD,
    SPECK_WINDOW,
)
from pid_bench.metrics.pid_specific import D65_WHITE, XYZ_FROM_RGB, luma
from tests.test_failure_modes import photo
from tests.test_metrics import PAIRS, calibra_pair

# ---- the previous implementations (references) ------------------------------------------------


def old_ssim(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    from torchmetrics.functional.image import structural_similarity_index_measure

    _, full = structural_similarity_index_measure(
        image.float(), reference.float(), data_range=1.0, reduction="none", return_full_image=True
    )
    return full[..., 5:-5, 5:-5].double().mean((1, 2, 3)).float()


def exact_ssim(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The same map in float64 (torchmetrics on doubles): the definition without float32."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    _, full = structural_similarity_index_measure(
        image.double(), reference.double(), data_range=1.0, reduction="none",
        return_full_image=True,
    )  # fmt: skip
    return full[..., 5:-5, 5:-5].mean((1, 2, 3))


def assert_ssim_matches(image: torch.Tensor, reference: torch.Tensor) -> None:
    """ssim equals torchmetrics' float32 value within that value's own float32 error (its
    distance from the float64 map) plus 3e-6, and the float64 value within 3e-6."""
    new = get_metric("ssim").compute(image, reference).double()
    old, exact = old_ssim(image, reference).double(), exact_ssim(image, reference)
    assert ((new - exact).abs() <= 3e-6).all(), (new, exact)
    assert ((new - old).abs() <= (old - exact).abs() + 3e-6).all(), (new, old, exact)


def old_psnr(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return torch.stack(
        [
            peak_signal_noise_ratio(i[None].float(), r[None].float(), data_range=1.0)
            for i, r in zip(image, reference, strict=True)
        ]
    )


def numpy_lab(rgb: np.ndarray) -> np.ndarray:
    """``[..., 3]`` sRGB in [0, 1] -> CIELAB (D65, 2°), float64, in NumPy."""
    x = rgb.astype(np.float64)
    linear = np.where(x > 0.04045, ((x + 0.055) / 1.055) ** 2.4, x / 12.92)
    t = linear @ np.array(XYZ_FROM_RGB).T / np.array(D65_WHITE)
    f = np.where(t > 0.008856, np.cbrt(np.clip(t, 0, None)), 7.787 * t + 16 / 116)
    return np.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1
    )


def numpy_ciede2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """Sharma, Wu, Dalal (2005), kL = kC = kH = 1, in NumPy (L, a, b on the last axis)."""
    L1, a1, b1 = np.moveaxis(lab1, -1, 0)
    L2, a2, b2 = np.moveaxis(lab2, -1, 0)
    c_bar = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(c_bar**7 / (c_bar**7 + 25.0**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.arctan2(b1, a1p) % (2 * np.pi)
    h2p = np.arctan2(b2, a2p) % (2 * np.pi)
    zero = c1p * c2p == 0
    dh = h2p - h1p
    dh = np.where(dh > np.pi, dh - 2 * np.pi, np.where(dh < -np.pi, dh + 2 * np.pi, dh))
    dh = np.where(zero, 0.0, dh)
    d_h = 2 * np.sqrt(c1p * c2p) * np.sin(dh / 2)
    l_bar, cp_bar = (L1 + L2) / 2, (c1p + c2p) / 2
    h_sum = h1p + h2p
    h_bar = np.where(
        np.abs(h1p - h2p) <= np.pi,
        h_sum / 2,
        np.where(h_sum < 2 * np.pi, (h_sum + 2 * np.pi) / 2, (h_sum - 2 * np.pi) / 2),
    )
    h_bar = np.where(zero, h_sum, h_bar)
    rad = np.pi / 180
    t = (
        1
        - 0.17 * np.cos(h_bar - 30 * rad)
        + 0.24 * np.cos(2 * h_bar)
        + 0.32 * np.cos(3 * h_bar + 6 * rad)
        - 0.20 * np.cos(4 * h_bar - 63 * rad)
    )
    d_theta = 30 * rad * np.exp(-(((h_bar / rad - 275) / 25) ** 2))
    r_c = 2 * np.sqrt(cp_bar**7 / (cp_bar**7 + 25.0**7))
    s_l = 1 + 0.015 * (l_bar - 50) ** 2 / np.sqrt(20 + (l_bar - 50) ** 2)
    s_c, s_h = 1 + 0.045 * cp_bar, 1 + 0.015 * cp_bar * t
    r_t = -np.sin(2 * d_theta) * r_c
    lc, cc, hc = (L2 - L1) / s_l, (c2p - c1p) / s_c, d_h / s_h
    return np.sqrt(np.clip(lc**2 + cc**2 + hc**2 + r_t * cc * hc, 0, None))


def old_small_components(mask: torch.Tensor, max_area: int = 4) -> torch.Tensor:
    """The dense max-propagation over the whole image (the implementation replaced)."""
    h, w = mask.shape
    out = torch.zeros(h, w, dtype=torch.int64)
    if not bool(mask.any()):
        return out
    index = torch.arange(1, h * w + 1, dtype=torch.float64).view(1, 1, h, w)
    zero = torch.zeros((), dtype=torch.float64)
    m = mask.view(1, 1, h, w)
    labels = torch.where(m, index, zero)
    for _ in range(max_area - 1):
        labels = torch.where(m, F.max_pool2d(labels, 3, 1, 1), zero)
    high = F.max_pool2d(labels, 3, 1, 1)
    low = -F.max_pool2d(torch.where(m, -labels, -torch.inf), 3, 1, 1)
    conflict = (high != labels) | (low != labels)
    values = labels[m].long()
    groups, inverse, counts = torch.unique(values, return_inverse=True, return_counts=True)
    bad = torch.zeros(len(groups), dtype=torch.bool)
    bad[inverse[conflict[m]]] = True
    keep = (counts <= max_area) & ~bad
    out[mask] = torch.where(keep[inverse], values, 0)
    return out


def old_candidates_low(image: torch.Tensor) -> torch.Tensor:
    """The 7x7 window minimum by a 2-D max-pool (replaced by the separable one)."""
    pad = SPECK_WINDOW // 2
    padded = F.pad(luma(image)[:, None], (pad, pad, pad, pad), mode="reflect")
    return -F.max_pool2d(-padded, SPECK_WINDOW, 1)[:, 0]


def old_count_specks(image: torch.Tensor) -> list[fm.SpeckCount]:
    image = image.float()
    candidates = fm.speck_candidates(image)
    skin = fm.skin_mask(image)
    window = SPECK_WINDOW
    skin_share = F.avg_pool2d(
        skin[:, None].float(), window, 1, window // 2, count_include_pad=False
    )[:, 0]
    out = []
    for i in range(image.shape[0]):
        labels = old_small_components(candidates[i])
        specks = labels[labels > 0].unique()
        on_skin = labels[(labels > 0) & (skin_share[i] >= SKIN_NEIGHBOURHOOD_MIN)].unique()
        out.append(
            fm.SpeckCount(len(specks), len(on_skin), int(labels.numel()), int(skin[i].sum()))
        )
    return out


# ---- inputs -----------------------------------------------------------------------------------


def perturbed(image: torch.Tensor, seed: int, noise: float = 0.03) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    cast = torch.tensor([0.02, -0.01, 0.015]).view(1, 3, 1, 1)
    return (image + cast + noise * torch.randn(image.shape, generator=g)).clamp(0, 1)


def random_pair(shape, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    reference = torch.rand(shape, generator=g)
    return perturbed(reference, seed + 1, 0.1), reference


def specky(image: torch.Tensor, seed: int, n: int = 60) -> torch.Tensor:
    """`image` with n bright 1-2 px specks and a few larger bright blobs (not specks)."""
    g = torch.Generator().manual_seed(seed)
    out = image.clone()
    b, _, h, w = image.shape
    for i in range(b):
        ys = torch.randint(2, h - 3, (n,), generator=g)
        xs = torch.randint(2, w - 3, (n,), generator=g)
        out[i, :, ys, xs] += 0.4
        out[i, :, ys[: n // 3], xs[: n // 3] + 1] += 0.4  # two-pixel specks
        out[i, :, ys[-3:, None] + torch.arange(3), xs[-3:, None]] += 0.4  # 3x1 bars: specks too
    return out.clamp(0, 1)


# ---- full-reference ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 3, 64, 48), (1, 3, 11, 40), (1, 3, 257, 129)])
def test_ssim_and_psnr_match_torchmetrics_on_random_images(shape):
    image, reference = random_pair(shape, sum(shape))
    context = MetricContext(reference=reference)
    ssim = get_metric("ssim").compute(image, context)
    psnr = get_metric("psnr").compute(image, context)
    assert ssim.dtype == torch.float32 and psnr.dtype == torch.float32
    assert_ssim_matches(image, reference)
    torch.testing.assert_close(psnr, old_psnr(image, reference), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", PAIRS)
def test_ssim_and_psnr_match_torchmetrics_on_kodak_pairs(name):
    dist, ref = calibra_pair(name)
    for image in (dist, perturbed(ref, 3, 0.01)):
        assert_ssim_matches(image, ref)
        psnr = get_metric("psnr").compute(image, ref)
        torch.testing.assert_close(psnr, old_psnr(image, ref), rtol=0, atol=1e-5)


def test_psnr_of_identical_images_is_still_infinite():
    image = torch.rand(1, 3, 16, 16)
    assert math.isinf(float(get_metric("psnr").compute(image, image.clone())[0]))


# ---- CIELAB and CIEDE2000 -----------------------------------------------------------------------


@pytest.mark.parametrize("source", ["random", "kodim04", "kodim19"])
def test_lq_color_de2000_and_colour_qa_match_a_numpy_reference(source):
    if source == "random":
        native = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(5))
        image = perturbed(F.interpolate(native, scale_factor=4, mode="nearest"), 6, 0.05)
    else:
        native = photo(source)
        image = perturbed(resize(native, (native.shape[-2] * 2, native.shape[-1] * 2)), 7)
    context = MetricContext(native=native, scale=2)
    got = measure(["lq_color_de2000", "midtone_chroma_shift", "shadow_green_bias"], image, context)
    down = resize(image, tuple(native.shape[-2:]))[0].permute(1, 2, 0).double().numpy()
    lab = numpy_lab(down)
    lab_native = numpy_lab(native[0].permute(1, 2, 0).double().numpy())
    de = numpy_ciede2000(lab, lab_native).mean()
    assert got.values["lq_color_de2000"] == pytest.approx(de, rel=1e-12)
    light = lab_native[..., 0]
    mid = (light >= 30) & (light <= 70)
    if mid.any():
        shift = np.sqrt(((lab[..., 1:] - lab_native[..., 1:]) ** 2).sum(-1))[mid].mean()
        assert got.values["midtone_chroma_shift"] == pytest.approx(shift, rel=1e-12)
    shadow = light < 25
    if shadow.any():
        green = (lab_native[..., 1] - lab[..., 1])[shadow].mean()
        assert got.values["shadow_green_bias"] == pytest.approx(green, rel=1e-10, abs=1e-12)


# ---- specks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("density", [0.01, 0.05, 0.2, 0.5])
def test_small_components_equal_the_dense_propagation(density):
    g = torch.Generator().manual_seed(int(density * 100))
    for shape in ((37, 53), (1, 40), (64, 64)):
        mask = torch.rand(shape, generator=g) < density
        assert torch.equal(fm.small_components(mask), old_small_components(mask))
    assert torch.equal(fm.small_components(torch.zeros(8, 8, dtype=torch.bool)), torch.zeros(8, 8))


@pytest.mark.parametrize("name", ["kodim04", "astronaut", "kodim19"])
def test_speck_counts_equal_the_previous_computation(name):
    image = specky(photo(name), seed=len(name))
    pad = SPECK_WINDOW // 2
    y = luma(image)
    low = fm.F.pad(y[:, None], (pad, pad, pad, pad), mode="reflect")[:, 0]
    low = low.unfold(1, SPECK_WINDOW, 1).amin(-1).unfold(2, SPECK_WINDOW, 1).amin(-1)
    assert torch.equal(low, old_candidates_low(image))
    counts = fm.count_specks(image)
    assert counts == old_count_specks(image)
    assert counts[0].specks > 0
    assert SPECK_THRESHOLD > 0 and SPECK_SIGMAS > 0


def test_speck_skin_share_counts_windows_clipped_at_the_borders():
    # Skin in a corner block: specks at the image's corner and edge see clipped windows.
    image = torch.full((1, 3, 48, 64), 0.3)
    image[:, :, :12, :12] = torch.tensor([224 / 255, 172 / 255, 140 / 255]).view(1, 3, 1, 1)
    for y, x in ((0, 0), (2, 11), (11, 2), (47, 63), (0, 30)):
        image[0, :, y, x] = 1.0
    assert fm.count_specks(image) == old_count_specks(image)
    assert fm.count_specks(image)[0].skin_specks >= 3


# ---- measure shares one Conversions -------------------------------------------------------------


NAMES = [
    "psnr",
    "ssim",
    "twin_psnr",
    "twin_ssim",
    "twin_pass",
    "lq_color_de2000",
    "midtone_chroma_shift",
    "shadow_green_bias",
    "hf_energy_ratio",
    "speck_rate",
    "speck_rate_skin",
    "speck_ratio_bicubic",
]


def cell(seed: int = 0):
    reference = resize(photo("kodim04"), (256, 192))
    native = (resize(reference, (64, 48)) - 0.01).clamp(0, 1)
    image = specky(perturbed(reference, seed), seed)
    return image, MetricContext(reference=reference, native=native, scale=4)


def test_measure_equals_each_metric_alone_and_resizes_once(monkeypatch):
    image, context = cell()
    alone = {n: float(get_metric(n).compute(image, context)[0]) for n in NAMES}
    calls = []
    real = metric_base.resize
    monkeypatch.setattr(metric_base, "resize", lambda *a: calls.append(a) or real(*a))
    result = measure(NAMES, image, context)
    assert result.values == alone and not result.reasons
    assert len(calls) == 1  # the decode brought to the native size once, for every metric
    assert set(result.milliseconds) == set(NAMES)


def test_conversions_are_shared_only_for_the_same_image_and_context():
    image, context = cell()
    other = image.clone()
    with sharing(image, context) as shared:
        assert conversions(image, context) is shared
        assert conversions(other, context) is not shared
        assert conversions(image, MetricContext(native=context.native)) is not shared
        down = shared.down()
        assert shared.down() is down
        assert shared.native(clamped=True) is shared.native()  # already in [0, 1]
    assert conversions(image, context) is not shared  # closed
    fresh = Conversions(image, MetricContext(native=context.native * 2))
    assert fresh.native(clamped=True).max() <= 1 < fresh.native().max()


def test_a_failed_conversion_is_not_kept_and_nulls_carry_the_reason():
    image, _ = cell()
    result = measure(NAMES, image, MetricContext(scale=4))
    assert result.values["psnr"] is None and result.reasons["psnr"] == "no reference image"
    assert result.reasons["twin_pass"] == "no native decode in the cell's context"
    assert result.reasons["lq_color_de2000"] == "no native decode in the cell's context"
    assert result.values["speck_rate"] is not None
