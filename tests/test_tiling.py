"""Tiled decoding (pid_models/tiling.py): exactness, agreement, seams, options, memory model."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from pid_models.decoder import PiDDecoder
from pid_models.pid_net import PidNet, pixel_sincos_table
from pid_models.registry import resolve
from pid_models.sampler import sample
from pid_models.tiling import (
    GiB,
    LiveTensorBytes,
    MemoryBudgetError,
    Tile,
    TiledVelocity,
    check_memory_budget,
    estimate_memory,
    estimate_peak_bytes,
    plan_tiles,
    tile_unit,
    window_pixel_table,
)

FLUX_2K = dict(resolve("flux", "2k").net_kwargs)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: the tiny nets are too small to gain from two on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    return PiDDecoder.tiny(seed=0, cache_dir=tmp_path_factory.mktemp("captions"))


@pytest.fixture(scope="module")
def y(decoder):
    return decoder.encode_captions("a cat", 1)


@pytest.fixture(scope="module")
def latent():
    return torch.randn(1, 16, 8, 12, generator=torch.Generator().manual_seed(0))  # 256 x 384


@pytest.fixture(scope="module")
def whole(decoder, latent, y):
    return decoder.decode(latent, y=y, seed=1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR for images in [-1, 1] (peak-to-peak 2)."""
    return 10 * math.log10(4 / (a - b).pow(2).mean().item())


# ---- exactness -----------------------------------------------------------------------------


def test_a_tile_that_covers_the_image_is_the_untiled_decode_exactly(decoder, latent, y, whole):
    assert torch.equal(decoder.decode(latent, y=y, seed=1, tile_size=384), whole)
    assert torch.equal(decoder.decode(latent, y=y, seed=1, tile_size=(512, 1024)), whole)


@pytest.mark.parametrize("positions", ["global", "local"])
def test_the_tiled_machinery_with_one_tile_reproduces_the_sampler_bit_for_bit(
    decoder, latent, y, positions
):
    """Through TiledVelocity itself (crops, weights, table overrides, accumulation)."""
    plan = plan_tiles(decoder.net.config, (256, 384), 384, 0)
    assert len(plan) == 1
    tiled = TiledVelocity(decoder.net, plan, positions=positions)
    sigma = torch.tensor([0.3])
    with torch.no_grad():
        got = sample(
            tiled, y, latent, sigma, (1, 3, 256, 384), generator=torch.Generator().manual_seed(5)
        )
        want = sample(decoder.net, y, latent, sigma, (1, 3, 256, 384), generator=torch.Generator().manual_seed(5))  # fmt: skip
    assert torch.equal(got.unclamped, want.unclamped)


def test_tiles_get_exact_crops_of_the_whole_images_position_tables(decoder):
    tile = Tile(96, 224, 160, 352)
    full = pixel_sincos_table(256, 384, 4).float()
    assert torch.equal(window_pixel_table(tile, 4), full[96:224, 160:352])

    plan = plan_tiles(decoder.net.config, (256, 384), 192, 64)
    tiled = TiledVelocity(decoder.net, plan)
    cos, sin = PidNet._rope_2d(decoder.net, 16, 24, 16, torch.device("cpu"))
    got_cos, got_sin = tiled._rope_window(tile, 16, torch.device("cpu"))
    assert torch.equal(got_cos, cos.reshape(16, 24, -1)[6:14, 10:22].reshape(96, -1))
    assert torch.equal(got_sin, sin.reshape(16, 24, -1)[6:14, 10:22].reshape(96, -1))
    assert "_rope_2d" not in vars(decoder.net)  # the overrides are gone afterwards


# ---- agreement with the whole-image decode -------------------------------------------------


def test_tiled_decode_agrees_with_the_whole_image_decode(decoder, latent, y, whole):
    """Random tiny weights attend across the whole image, so this is a pessimistic case."""
    scores = {}
    for tile, overlap in [(192, 64), (256, 128), (320, 128)]:
        out = decoder.decode(latent, y=y, seed=1, tile_size=tile, tile_overlap=overlap)
        assert out.shape == whole.shape and out.min() >= -1 and out.max() <= 1
        scores[tile] = psnr(out, whole)
    local = psnr(
        decoder.decode(
            latent, y=y, seed=1, tile_size=256, tile_overlap=128, tile_positions="local"
        ),
        whole,
    )
    print(f"tiled vs whole PSNR (dB): {scores}, local positions at 256: {local:.2f}")
    assert scores[256] > 27.0  # measured 30.9 dB
    assert scores[192] < scores[256] < scores[320]  # converges as tiles grow
    assert scores[256] > local + 6  # global positions: measured 30.9 vs 15.9 dB


# ---- seams ---------------------------------------------------------------------------------


def boundary_energy_ratio(image: torch.Tensor, cuts_y: list[int], cuts_x: list[int]) -> float:
    """Squared neighbour difference across each cut row/column over that of the rows/columns
    2..8 px beside it (a seam is a local excess), worst cut."""
    dx = (image[..., :, 1:] - image[..., :, :-1]).pow(2).mean(dim=(0, 1, 2))  # [W - 1]
    dy = (image[..., 1:, :] - image[..., :-1, :]).pow(2).mean(dim=(0, 1, 3))  # [H - 1]
    ratios = []
    for energy, cuts in ((dx, cuts_x), (dy, cuts_y)):
        for cut in cuts:
            beside = [cut - 1 + d for d in (*range(-8, -1), *range(2, 9)) if 0 <= cut - 1 + d < len(energy)]  # fmt: skip
            ratios.append((energy[cut - 1] / energy[beside].mean()).item())
    return max(ratios)


def smooth_tile_x0(lq: torch.Tensor) -> torch.Tensor:
    """A smooth image from an LQ crop, plus an offset that differs from tile to tile."""
    return F.interpolate(lq[:, :3], scale_factor=32, mode="bilinear") + 4 * lq[:, 0].mean()


def smooth_tile_net(x, t, y, lq, sigma):
    """A velocity 'network' whose x0 prediction is `smooth_tile_x0` of its LQ crop."""
    return (x - smooth_tile_x0(lq)) / (t[:, None, None, None] / 1000)


def test_blending_leaves_no_seam_where_pasting_tiles_does(decoder, latent, y):
    """A network whose tiles disagree by an offset: blended, no seam; pasted, a clear step."""
    plan = plan_tiles(decoder.net.config, (256, 384), 192, 64)
    ys, xs = plan.boundaries()
    tiled = TiledVelocity(smooth_tile_net, plan, decoder.net.config, positions="local")
    sigma = torch.zeros(1)
    blended = sample(tiled, y, latent, sigma, (1, 3, 256, 384), generator=torch.Generator().manual_seed(0)).unclamped  # fmt: skip

    # The naive alternative: decode each tile on its own and paste at the overlap midpoints.
    mid_y = [(a[1] + b[0]) // 2 for a, b in zip(plan.rows, plan.rows[1:], strict=False)]
    mid_x = [(a[1] + b[0]) // 2 for a, b in zip(plan.cols, plan.cols[1:], strict=False)]
    pasted = torch.zeros_like(blended)
    for i, (y0, y1) in enumerate(plan.rows):
        for j, (x0, x1) in enumerate(plan.cols):
            x0_tile = smooth_tile_x0(latent[..., y0 // 32 : y1 // 32, x0 // 32 : x1 // 32])
            top, bottom = ([0] + mid_y)[i], (mid_y + [256])[i]
            left, right = ([0] + mid_x)[j], (mid_x + [384])[j]
            pasted[..., top:bottom, left:right] = x0_tile[..., top - y0 : bottom - y0, left - x0 : right - x0]  # fmt: skip

    seam_blended = max(
        boundary_energy_ratio(blended, ys, xs), boundary_energy_ratio(blended, mid_y, mid_x)
    )
    seam_pasted = boundary_energy_ratio(pasted, mid_y, mid_x)
    print(f"seam energy ratio: blended {seam_blended:.2f}, pasted {seam_pasted:.1f}")
    assert seam_blended < 1.5  # measured 1.0
    assert seam_pasted > 5  # the metric does see a seam


def test_tiny_model_shows_no_more_gradient_energy_at_tile_boundaries(decoder, latent, y, whole):
    plan = plan_tiles(decoder.net.config, (256, 384), 192, 64)
    out = decoder.decode(latent, y=y, seed=1, tile_size=192, tile_overlap=64)
    ys, xs = plan.boundaries()
    tiled, untiled = boundary_energy_ratio(out, ys, xs), boundary_energy_ratio(whole, ys, xs)
    print(f"tiny model boundary/all gradient energy: tiled {tiled:.3f}, untiled {untiled:.3f}")
    assert tiled < 1.25 and tiled < untiled * 1.15


# ---- plans and options ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "out_hw, tile, overlap",
    [((2048, 2048), 1024, 256), ((1536, 2688), 1024, 256), ((4096, 4096), 2048, 256),
     ((8192, 6144), 2048, 256), ((3904, 3904), 2048, 512), ((256, 384), 96, 32)],
)  # fmt: skip
def test_plans_cover_the_image_with_aligned_overlapping_tiles_and_weights_sum_to_one(
    out_hw, tile, overlap
):
    plan = plan_tiles(FLUX_2K, out_hw, tile, overlap)
    unit = tile_unit(FLUX_2K)
    assert unit == 32
    for spans, length in ((plan.rows, out_hw[0]), (plan.cols, out_hw[1])):
        assert spans[0][0] == 0 and spans[-1][1] == length
        assert all(b - a == min(tile, length) and a % unit == 0 for a, b in spans)
        assert all(nxt[0] <= prev[1] - overlap for prev, nxt in zip(spans, spans[1:], strict=False))
    row_w, col_w = plan.weights()
    for spans, weights, length in ((plan.rows, row_w, out_hw[0]), (plan.cols, col_w, out_hw[1])):
        total = torch.zeros(length, dtype=torch.float64)
        for (a, b), w in zip(spans, weights, strict=True):
            assert (w > 0).all() and w.max() <= 1
            total[a:b] += w.double()
        assert torch.allclose(total, torch.ones(length, dtype=torch.float64), atol=1e-6)


def test_siglip_and_flux2_tiles_follow_their_coarser_latent_cells():
    assert tile_unit(dict(resolve("flux2", "2k").net_kwargs)) == 64  # 16 x 4 px per cell
    assert tile_unit(dict(resolve("siglip", "2k").net_kwargs)) == 128  # 16 x 8
    with pytest.raises(ValueError, match="multiple of 128 px"):
        plan_tiles(dict(resolve("siglip", "2k").net_kwargs), (2048, 2048), 1088, 256)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"tile_size": 100}, ValueError, r"tile_size=100 must be a multiple of 32 px .*nearest valid: 96 or 128"),
        ({"tile_size": (128, 0)}, ValueError, r"tile_size=0 must be positive and a multiple of 32 px"),
        ({"tile_size": 128, "tile_overlap": 48}, ValueError, r"tile_overlap=48 must be >= 0 and a multiple of 32"),
        ({"tile_size": 128, "tile_overlap": -32}, ValueError, r"tile_overlap=-32 must be >= 0"),
        ({"tile_size": 128, "tile_overlap": 128}, ValueError, r"tile_overlap=128 must be smaller than the tile height 128"),
        ({"tile_size": 128, "tile_overlap": 64, "tile_positions": "absolute"}, ValueError, r"tile positions 'absolute': one of \('global', 'local'\)"),
        ({"tile_size": True}, TypeError, r"tile_size must be an int or an \(H, W\) pair"),
        ({"tile_size": 128.0}, TypeError, r"tile_size must be an int or an \(H, W\) pair"),
        ({"tile_size": 128, "tile_overlap": 32.0}, TypeError, r"tile_overlap must be an int"),
    ],
)  # fmt: skip
def test_invalid_tile_options_are_refused_with_the_reason(
    decoder, latent, y, kwargs, error, message
):
    with pytest.raises(error, match=message):
        decoder.decode(latent, y=y, **kwargs)


# ---- memory model --------------------------------------------------------------------------


def test_a_budget_that_cannot_fit_is_refused_naming_a_tile_size_that_does():
    budget = 24 * GiB
    with pytest.raises(MemoryBudgetError, match=r"8192x8192 decode \(untiled.*tile_size=\d+") as info:  # fmt: skip
        check_memory_budget(FLUX_2K, (8192, 8192), budget)
    size = int(re.search(r"tile_size=(\d+) \(tile_overlap=256\) would fit", str(info.value))[1])
    assert size % 256 == 0 and 256 < size < 8192
    assert estimate_peak_bytes(FLUX_2K, (8192, 8192), size) * 1.1 <= budget
    assert estimate_peak_bytes(FLUX_2K, (8192, 8192), size + 256) * 1.1 > budget
    assert check_memory_budget(FLUX_2K, (8192, 8192), budget, size) > 0  # the suggestion fits
    with pytest.raises(MemoryBudgetError, match="no tile size fits: the weights"):
        check_memory_budget(FLUX_2K, (2048, 2048), 4 * GiB, 1024)


def test_released_flux_estimates_tiling_is_what_fits_4k_into_24_gb():
    whole_4k = estimate_peak_bytes(FLUX_2K, (4096, 4096), None, torch.bfloat16)
    tiled_4k = estimate_peak_bytes(FLUX_2K, (4096, 4096), 2048, torch.bfloat16)
    tiled_8k = estimate_peak_bytes(FLUX_2K, (8192, 8192), 2048, torch.bfloat16)
    assert tiled_4k < 0.6 * whole_4k and tiled_8k < 16 * GiB
    assert estimate_peak_bytes(FLUX_2K, (2048, 2048), None, torch.float32) > estimate_peak_bytes(
        FLUX_2K, (2048, 2048), None, torch.bfloat16
    )


def test_decoder_refuses_before_allocating(decoder, latent, y):
    with LiveTensorBytes() as meter, pytest.raises(MemoryBudgetError, match=r"tile_size=\d+"):
        decoder.decode(latent, y=y, memory_budget=24 * 2**20, tile_overlap=64)  # needs ~37 MiB
    assert meter.peak < 2**20  # nothing image-sized was made
    out = decoder.decode(latent, y=y, memory_budget=24 * 2**20, tile_size=128, tile_overlap=64)
    assert out.shape == (1, 3, 256, 384)


@pytest.mark.parametrize("tile", [None, 192, 256])
def test_memory_model_matches_measured_live_bytes_on_the_tiny_model(decoder, y, tile):
    latent = torch.randn(1, 16, 16, 16)  # 512 x 512
    decoder.net._table_cache.clear()  # count the position tables, as a first decode would
    with LiveTensorBytes() as meter:
        decoder.decode(latent, y=y, tile_size=tile, tile_overlap=64)
    estimate = estimate_memory(decoder.net.config, (512, 512), tile, torch.float32)
    model = estimate.total - estimate.weights  # the weights existed before the meter started
    print(f"tile {tile}: measured {meter.peak / 2**20:.1f} MiB, model {model / 2**20:.1f} MiB")
    assert abs(model / meter.peak - 1) < 0.10


def test_global_positions_keep_one_compiled_graph_for_equal_tiles(decoder, latent, y):
    """The table overrides are graph inputs, not per-tile constants (no recompile per tile)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(decoder.net, backend="eager")
    plan = plan_tiles(decoder.net.config, (256, 384), 192, 64)
    tiled = TiledVelocity(compiled, plan, decoder.net.config)
    with torch.no_grad():
        eager_out = TiledVelocity(decoder.net, plan)(torch.ones(1, 3, 256, 384), torch.tensor([500.0]), y, latent, torch.zeros(1))  # fmt: skip
        compiled_out = tiled(torch.ones(1, 3, 256, 384), torch.tensor([500.0]), y, latent, torch.zeros(1))  # fmt: skip
    assert len(plan) == 6 and counters["stats"]["unique_graphs"] == 1
    assert torch.allclose(compiled_out, eager_out, atol=1e-5)
    torch._dynamo.reset()
