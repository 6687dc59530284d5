"""Failure-mode metrics: isolated bright specks (speck_rate, speck_rate_skin, speck_ratio_bicubic)
and seams at tile boundaries (seam_score). Integrators of PiD report both (issue 27): bright
specks on skin at 2048² that grow with the step count (mflux PR #490), and discontinuities at
tile boundaries of tiled decodes (SceneWorks PR #1237). The definitions are pid-bench's own
(docs/metrics.md); their constants are in `catalog`.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pid_bench.metrics.base import MetricContext, resize
from pid_bench.metrics.catalog import (
    SEAM_DEFAULT_PERIOD,
    SEAM_REFERENCE_LINES,
    SKIN_CB,
    SKIN_CR,
    SKIN_MIN_FRACTION,
    SKIN_NEIGHBOURHOOD_MIN,
    SPECK_MAX_AREA,
    SPECK_SIGMAS,
    SPECK_THRESHOLD,
    SPECK_WINDOW,
)
from pid_bench.metrics.errors import MetricUnavailable
from pid_bench.metrics.pid_specific import luma

#: Window values gathered at once by the median filters (4 Mi: 16 MiB of float32 and 32 MiB of
#: int64 indices): `local_median` filters a 4096-px-wide image ~20 rows at a time, and
#: `speck_candidates` takes ~85k pixels at a time, never 49 x H x W values at once.
MEDIAN_BAND_ELEMENTS = 1 << 22
#: The median absolute deviation of normally distributed values times this is their sigma.
MAD_TO_SIGMA = 1.4826

# ---- specks -----------------------------------------------------------------------------------


def local_median(y: torch.Tensor, size: int = SPECK_WINDOW) -> torch.Tensor:
    """``[B, H, W]`` -> the median of each pixel's ``size x size`` neighbourhood (itself
    included; `size` odd; borders reflect-padded), computed in row bands."""
    if size % 2 == 0:
        raise ValueError(f"median window {size} must be odd")
    pad = size // 2
    b, h, w = y.shape
    if min(h, w) <= pad:
        raise MetricUnavailable(f"image {h}x{w} is smaller than the {size}x{size} median window")
    padded = F.pad(y[:, None].float(), (pad, pad, pad, pad), mode="reflect")[:, 0]
    rows = max(1, MEDIAN_BAND_ELEMENTS // (size * size * w * b))
    out = torch.empty(b, h, w, dtype=torch.float32, device=y.device)
    for top in range(0, h, rows):
        stop = min(h, top + rows)
        band = padded[:, top : stop + 2 * pad].unfold(1, size, 1).unfold(2, size, 1)
        out[:, top:stop] = band.reshape(b, stop - top, w, size * size).median(-1).values
    return out


def speck_candidates(
    image: torch.Tensor,
    threshold: float = SPECK_THRESHOLD,
    size: int = SPECK_WINDOW,
    sigmas: float = SPECK_SIGMAS,
) -> torch.Tensor:
    """``[B, 3, H, W]`` in [0, 1] -> ``[B, H, W]`` bool: pixels whose luma y exceeds the median
    m of its ``size x size`` neighbourhood (as `local_median`) by more than `threshold` and by
    more than `sigmas` robust standard deviations of that neighbourhood,
    ``1.4826 median(|window - m|)``: bright against a locally homogeneous background.

    The medians are taken only where they can matter: a pixel within `threshold` of its
    neighbourhood's minimum (a lower bound of the median) is no candidate; the others' windows
    are gathered in chunks of `MEDIAN_BAND_ELEMENTS` values.
    """
    if size % 2 == 0:
        raise ValueError(f"median window {size} must be odd")
    y = luma(image)
    pad = size // 2
    b, h, w = y.shape
    if min(h, w) <= pad:
        raise MetricUnavailable(f"image {h}x{w} is smaller than the {size}x{size} median window")
    padded = F.pad(y[:, None], (pad, pad, pad, pad), mode="reflect")[:, 0]
    # The window's minimum, separably (exact): over the rows, then over the columns.
    low = padded.unfold(1, size, 1).amin(-1).unfold(2, size, 1).amin(-1)
    out = (y - low) > threshold
    where = out.nonzero()  # [n, 3]: image, row, column
    if len(where) == 0:
        return out
    hp, wp = h + 2 * pad, w + 2 * pad
    steps = torch.arange(size, device=y.device)
    offsets = (steps[:, None] * wp + steps[None, :]).flatten()
    flat = padded.flatten()
    chunk = max(1, MEDIAN_BAND_ELEMENTS // (size * size))
    keep = torch.empty(len(where), dtype=torch.bool, device=y.device)
    for first in range(0, len(where), chunk):
        part = where[first : first + chunk]
        corner = part[:, 0] * (hp * wp) + part[:, 1] * wp + part[:, 2]
        window = flat[corner[:, None] + offsets[None, :]]
        median = window.median(-1).values
        spread = MAD_TO_SIGMA * (window - median[:, None]).abs().median(-1).values
        excess = y[part[:, 0], part[:, 1], part[:, 2]] - median
        keep[first : first + chunk] = (excess > threshold) & (excess > sigmas * spread)
    out[where[:, 0], where[:, 1], where[:, 2]] = keep
    return out


def small_components(mask: torch.Tensor, max_area: int = SPECK_MAX_AREA) -> torch.Tensor:
    """``[H, W]`` bool -> ``[H, W]`` int64: a label (> 0) on the pixels of every 8-connected
    component of `mask` with at most `max_area` pixels, 0 elsewhere (one label per component).

    Each True pixel starts with its own index + 1; max_area - 1 rounds of a 3x3 max over the
    True pixels give every pixel of a component of at most max_area pixels (diameter at most
    max_area - 1) the component's largest index. A group of pixels sharing a label is then a
    whole small component exactly when it has at most max_area pixels and none of them has a
    True neighbour with another label (a fragment of a larger component always has one).
    Computed on the True pixels only (each one's 8 neighbours found by a sorted search), so
    the cost follows the candidates, not the image.
    """
    h, w = mask.shape
    out = torch.zeros(h, w, dtype=torch.int64, device=mask.device)
    flat = mask.flatten().nonzero()[:, 0]  # sorted indices of the True pixels
    n = len(flat)
    if n == 0:
        return out
    row, col = flat // w, flat % w
    neighbours = []
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if dr == 0 and dc == 0:
                continue
            inside = (row + dr >= 0) & (row + dr < h) & (col + dc >= 0) & (col + dc < w)
            target = flat + (dr * w + dc)
            at = torch.searchsorted(flat, target).clamp_(max=n - 1)
            found = inside & (flat[at] == target)
            neighbours.append(torch.where(found, at, -1))
    nb = torch.stack(neighbours, 1)  # [n, 8]: the index of each True neighbour, or -1
    has = nb >= 0
    nb_safe = nb.clamp(min=0)
    labels = flat + 1
    for _ in range(max_area - 1):
        around = torch.where(has, labels[nb_safe], 0).amax(1)
        labels = torch.maximum(labels, around)
    conflict = (has & (labels[nb_safe] != labels[:, None])).any(1)
    groups, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    bad = torch.zeros(len(groups), dtype=torch.bool, device=mask.device)
    bad[inverse[conflict]] = True
    keep = (counts <= max_area) & ~bad
    out.view(-1)[flat] = torch.where(keep[inverse], labels, 0)
    return out


def skin_mask(image: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` in [0, 1] -> ``[B, H, W]`` bool: skin-toned pixels.

    Cb, Cr of 8-bit full-range BT.601 (JPEG) YCbCr: Cb = 128 - 0.168736 R - 0.331264 G + 0.5 B,
    Cr = 128 + 0.5 R - 0.418688 G - 0.081312 B (R, G, B = 255 x the image, unrounded); skin when
    Cb in `SKIN_CB` and Cr in `SKIN_CR` (Chai & Ngan 1999).
    """
    r, g, b = (255 * image.float()).unbind(1)
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return (cb >= SKIN_CB[0]) & (cb <= SKIN_CB[1]) & (cr >= SKIN_CR[0]) & (cr <= SKIN_CR[1])


@dataclass(frozen=True)
class SpeckCount:
    """One image's specks: how many, how many on skin, over how many pixels / skin pixels."""

    specks: int
    skin_specks: int
    pixels: int
    skin_pixels: int


def count_specks(image: torch.Tensor) -> list[SpeckCount]:
    """The specks of each image of ``[B, 3, H, W]`` in [0, 1] (catalog's constants)."""
    image = image.float()
    candidates = speck_candidates(image)
    skin = skin_mask(image)
    window, pad = SPECK_WINDOW, SPECK_WINDOW // 2
    h, w = skin.shape[-2:]
    out = []
    for i in range(image.shape[0]):
        labels = small_components(candidates[i])
        at = (labels > 0).nonzero()  # [n, 2]: the speck pixels
        specks = labels[at[:, 0], at[:, 1]].unique()
        # The skin share of each speck pixel's window (clipped to the image: avg_pool2d with
        # count_include_pad=False), at those pixels only: count / in-image pixels, float32.
        padded = F.pad(skin[i].float(), (pad, pad, pad, pad))
        steps = torch.arange(window, device=image.device)
        rows = at[:, 0, None, None] + steps[None, :, None]
        cols = at[:, 1, None, None] + steps[None, None, :]
        count = padded[rows, cols].sum((1, 2))
        span_r = (at[:, 0] + pad).clamp(max=h - 1) - (at[:, 0] - pad).clamp(min=0) + 1
        span_c = (at[:, 1] + pad).clamp(max=w - 1) - (at[:, 1] - pad).clamp(min=0) + 1
        share = count / (span_r * span_c).float()
        on_skin = labels[at[:, 0], at[:, 1]][share >= SKIN_NEIGHBOURHOOD_MIN].unique()
        out.append(
            SpeckCount(len(specks), len(on_skin), int(labels.numel()), int(skin[i].sum().item()))
        )
    return out


# The three speck metrics of a row read the same decode: its counts are kept for the last image
# seen (the very tensor, unchanged since), so each row filters and labels its decode once.
_memo_lock = threading.Lock()
_memo: tuple[weakref.ref, int, list[SpeckCount]] | None = None


def specks_of(image: torch.Tensor) -> list[SpeckCount]:
    """`count_specks(image)`, remembered for the last image (same object, same version)."""
    global _memo
    with _memo_lock:
        memo = _memo
    if memo is not None and memo[0]() is image and memo[1] == image._version:
        return memo[2]
    counts = count_specks(image)
    with _memo_lock:
        _memo = (weakref.ref(image), image._version, counts)
    return counts


def _tensor(values: list[float], image: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, device=image.device)


def speck_rate(image: torch.Tensor, context: MetricContext) -> torch.Tensor:
    return _tensor([c.specks / (c.pixels / 1e6) for c in specks_of(image)], image)


def speck_rate_skin(image: torch.Tensor, context: MetricContext) -> torch.Tensor:
    counts = specks_of(image)
    for c in counts:
        if c.skin_pixels < SKIN_MIN_FRACTION * c.pixels:
            raise MetricUnavailable(
                f"too little skin: {c.skin_pixels / c.pixels:.2%} of the pixels are skin-toned "
                f"(at least {SKIN_MIN_FRACTION:.0%} needed)"
            )
    return _tensor([c.skin_specks / (c.skin_pixels / 1e6) for c in counts], image)


def speck_ratio_bicubic(image: torch.Tensor, context: MetricContext) -> torch.Tensor:
    native = context.native
    if native is None:
        raise MetricUnavailable("no native decode in the cell's context")
    if native.shape[0] != image.shape[0]:
        raise MetricUnavailable(f"native batch {native.shape[0]} != image batch {image.shape[0]}")
    baseline = resize(native.to(image.device, torch.float32), tuple(image.shape[-2:]))
    pairs = zip(specks_of(image), count_specks(baseline), strict=True)
    return _tensor([(a.specks + 1) / (b.specks + 1) for a, b in pairs], image)


# ---- seams ------------------------------------------------------------------------------------


def seam_positions(spans: Sequence[tuple[int, int]]) -> tuple[int, ...]:
    """Where two consecutive tiles of one axis meet: the centre of their overlap, rounded
    down (their shared edge when they abut). Position c lies between pixel c - 1 and c."""
    out = []
    for (_, stop), (start, _) in zip(spans, spans[1:], strict=False):
        out.append((start + stop) // 2)
    return tuple(out)


def line_differences(image: torch.Tensor, dim: int) -> torch.Tensor:
    """``[B, size - 1]`` float64: entry c - 1 is the mean |x[c] - x[c - 1]| of the adjacent
    pixel pairs across line c along `dim` (2: rows, 3: columns), over the channels and the
    other axis (one channel at a time)."""
    total = 0
    for channel in image.unbind(1):
        step = channel.diff(dim=dim - 1).abs()
        total = total + step.double().mean(dim=4 - dim)
    return total / image.shape[1]


def seam_score(image: torch.Tensor, context: MetricContext) -> torch.Tensor:
    boundaries = context.tile_boundaries
    if boundaries is None:
        raise MetricUnavailable(context.tile_reason or "untiled: the cell decodes whole images")
    if not any(boundaries):
        raise MetricUnavailable("untiled: the tile plan has a single tile")
    period = context.seam_period or SEAM_DEFAULT_PERIOD
    image = image.float()
    numerator = torch.zeros(image.shape[0], dtype=torch.float64, device=image.device)
    denominator = torch.zeros_like(numerator)
    scored = 0
    for dim, positions in ((2, boundaries[0]), (3, boundaries[1])):
        size, length = image.shape[dim], image.shape[5 - dim]
        inside = [c for c in positions if 1 <= c < size]
        if not inside:
            continue
        lines = line_differences(image, dim)  # [B, size - 1], line c at c - 1
        # Each phase of the grid's period: the mean over its lines that are no boundary.
        phase = torch.arange(1, size, device=image.device) % period
        plain = torch.ones(size - 1, dtype=torch.bool, device=image.device)
        plain[torch.tensor(inside, device=image.device) - 1] = False
        sums = torch.zeros(image.shape[0], period, dtype=torch.float64, device=image.device)
        sums.index_add_(1, phase[plain], lines[:, plain])
        counts = torch.bincount(phase[plain], minlength=period)
        level = sums / counts.clamp_min(1)
        if bool((level[:, phase] <= 0).any() or (counts[phase] == 0).any()):
            raise MetricUnavailable(
                "flat lines (or a phase of the grid with no line) beside the tile boundaries"
            )
        relative = lines / level[:, phase]  # each line against its phase's level
        for c in inside:
            near = [c + s for k in range(1, SEAM_REFERENCE_LINES + 1) for s in (-k, k)]
            near = [r for r in near if 1 <= r < size and r not in positions]
            if not near:
                continue
            at = torch.tensor(near, device=image.device) - 1
            numerator += relative[:, c - 1] * length
            denominator += relative[:, at].quantile(0.5, dim=1) * length
            scored += 1
    if scored == 0:
        raise MetricUnavailable(
            f"no tile boundary lies inside the {image.shape[-2]}x{image.shape[-1]} image"
        )
    if bool((denominator == 0).any()):
        raise MetricUnavailable("flat beside the tile boundaries: nothing to compare a step with")
    return numerator / denominator
