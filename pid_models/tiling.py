"""Tiled PiD decoding: overlapping windows of the patch grid, blended at every sampler step.

A PiD decode holds activations for every patch token of the output at once (~155 KiB per
16 x 16 patch under bf16 autocast for the released networks, mostly the per-pixel blocks), so by
the memory model below a 4096^2 output needs ~10.6 GiB of activations on top of 5.1 GiB of
float32 weights (1.36 B parameters), and 6144^2 / 8192^2 (~24 / ~42 GiB of activations) do not
fit a 24 GB card at all. Tiling bounds the activations by the tile instead of the image: with
2048^2 tiles the model gives 8.7 / 9.9 / 12.7 GiB for 4096^2 / 6144^2 / 8192^2.

Design (what `TiledVelocity` does):

* The output is covered by overlapping tiles of `tile_size` pixels (the same size everywhere;
  starts spread evenly, so every actual overlap is at least `tile_overlap`). Tile sizes, overlaps
  and starts are whole multiples of `tile_unit(config)` = lcm(patch size, pixels per latent
  cell), so each tile is a whole window of 16-px patches *and* of LQ latent cells.
* At each of the sampler's steps the network runs once per tile on the noisy image cropped to
  the tile, the LQ latent cropped to the tile's latent window, the same caption embedding, t
  and degrade sigma. The per-tile velocities are blended with a separable raised-cosine window:
  along each axis a tile's weight ramps as sin^2 across the overlap with each neighbour, and
  the weights are normalised to sum to 1 at every pixel (exactly the partition of unity
  sin^2 + cos^2 = 1 where two tiles overlap). The sampler then takes its step (velocity -> x0 in
  float64, re-noising with fresh eps) on the whole image, with the noise drawn for the whole
  image. Blending velocity is blending x0: x0 = x - t v is affine in v with x shared, and the
  weights sum to 1.
* Because the noise is drawn for the whole image in the untiled order, a plan with a single tile
  reproduces the untiled decode bit for bit, and tiles agree on the shared noise in their
  overlap, which is what keeps the seams smooth (a per-tile sampler would draw different noise
  in each tile and blend four independent samples).
* Positions: `positions="global"` (default) hands each tile the crop of the *whole image's*
  position tables (the pixel sin-cos table and the 2-D RoPE angles, NTK base and linspace
  normalisation computed for the whole grid), so a tile sees exactly the positions it has in the
  untiled decode and tiled output converges to the untiled one as tiles grow. `"local"` treats
  each tile as an image of its own (what MultiDiffusion-style tilers do); it keeps each tile at
  the resolution the network was trained at, which may suit outputs far beyond it, and it works
  with any network callable (e.g. upstream's), since it needs no access to the tables.

Not exact: attention is limited to the tile (the untiled decode attends across the whole
image), and the LQ branch's 3x3 convolutions see zero/replicate padding at tile edges; the
raised-cosine ramp gives tile borders ~0 weight, which is why overlaps of ~256 px are advised.

Memory: `estimate_peak_bytes` is a simple model of the decode's peak allocated memory (see its
docstring) and `check_memory_budget` refuses, before anything is allocated, a configuration the
model says cannot fit, naming the largest tile size that would. `LiveTensorBytes` measures the
peak of live tensor bytes of any computation by intercepting every aten call; it runs on CPU
tensors and on the meta device (shape-only, so full-size networks cost nothing), and is how the
model's constants were calibrated (`benchmarks/calibrate_memory.py`).
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from pid_models.pid_net import PidNet, pixel_sincos_table
from pid_models.registry import pixel_grid, pixels_per_latent

POSITIONS = ("global", "local")
DEFAULT_OVERLAP = 256
GiB = 2**30


# --------------------------------------------------------------------------------------------
# Tile plans
# --------------------------------------------------------------------------------------------


def tile_unit(config: Mapping[str, Any]) -> int:
    """The grain of tile sizes, overlaps and starts: the pixel grid of the output."""
    return pixel_grid(config)


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or an (H, W) pair, got {value!r}")
    if isinstance(value, int):
        return value, value
    if not isinstance(value, Sequence):
        raise TypeError(f"{name} must be an int or an (H, W) pair of ints, got {value!r}")
    pair = tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"{name} must be an int or an (H, W) pair of ints, got {value!r}")
    return pair  # type: ignore[return-value]


def _axis_spans(length: int, tile: int, overlap: int, unit: int) -> list[tuple[int, int]]:
    """Tile spans [start, stop) along one axis: as few as give overlaps >= `overlap`.

    Starts are multiples of `unit`, spread as evenly as the unit allows, so the largest gap
    between starts is at most tile - overlap.
    """
    if tile >= length:
        return [(0, length)]
    count = 1 + math.ceil((length - tile) / (tile - overlap))
    shift_units = (length - tile) // unit
    base, extra = divmod(shift_units, count - 1)
    starts, position = [0], 0
    for i in range(count - 1):
        position += (base + (1 if i < extra else 0)) * unit
        starts.append(position)
    return [(s, s + tile) for s in starts]


@dataclass(frozen=True)
class Tile:
    """One tile: pixel window [y0, y1) x [x0, x1) of the output."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    def latent_window(self, per_latent: int) -> tuple[slice, slice]:
        return (
            slice(self.y0 // per_latent, self.y1 // per_latent),
            slice(self.x0 // per_latent, self.x1 // per_latent),
        )


@dataclass(frozen=True)
class TilePlan:
    """The tiles of one output size: rows x cols spans, and the blend weights of each axis."""

    out_hw: tuple[int, int]
    tile_hw: tuple[int, int]
    overlap: int
    unit: int
    rows: tuple[tuple[int, int], ...]
    cols: tuple[tuple[int, int], ...]

    @property
    def tiles(self) -> list[Tile]:
        return [Tile(y0, y1, x0, x1) for y0, y1 in self.rows for x0, x1 in self.cols]

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    def boundaries(self) -> tuple[list[int], list[int]]:
        """Pixel rows / columns where a tile edge lies inside the image (where seams would be)."""
        ys = sorted({e for span in self.rows for e in span} - {0, self.out_hw[0]})
        xs = sorted({e for span in self.cols for e in span} - {0, self.out_hw[1]})
        return ys, xs

    def weights(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-row-span and per-column-span 1-D weights (float32), each axis summing to 1."""
        return blend_weights_1d(self.rows, self.out_hw[0]), blend_weights_1d(
            self.cols, self.out_hw[1]
        )


def plan_tiles(
    config: Mapping[str, Any],
    out_hw: tuple[int, int],
    tile_size: int | Sequence[int],
    tile_overlap: int = DEFAULT_OVERLAP,
) -> TilePlan:
    """Validate tile options against a network config and lay the tiles out over `out_hw`.

    `tile_size` (an int, or (H, W)) and `tile_overlap` are in pixels of the output image and
    must be multiples of `tile_unit(config)`; a tile larger than the image is clipped to it.
    `tile_overlap=0` is allowed (tiles then abut with a hard cut where no two overlap).
    """
    unit = tile_unit(config)
    th, tw = _pair(tile_size, "tile_size")
    if isinstance(tile_overlap, bool) or not isinstance(tile_overlap, int):
        raise TypeError(f"tile_overlap must be an int, got {tile_overlap!r}")
    per_latent = pixels_per_latent(config)
    why = (
        f"a multiple of {unit} px (lcm of the {config.get('patch_size', 16)}-px patch and the "
        f"{per_latent} output px per latent cell of this PiD)"
    )
    for name, value in (("tile_size", th), ("tile_size", tw)):
        if value <= 0:
            raise ValueError(f"{name}={value} must be positive and {why}")
        if value % unit:
            lower, upper = max(unit, value // unit * unit), (value // unit + 1) * unit
            raise ValueError(
                f"{name}={value} must be {why}; nearest valid: "
                + (f"{lower} or {upper}" if lower != upper and value > unit else f"{upper}")
            )
    if tile_overlap < 0 or tile_overlap % unit:
        raise ValueError(f"tile_overlap={tile_overlap} must be >= 0 and {why}")
    height, width = out_hw
    th, tw = min(th, height), min(tw, width)
    for name, tile, length in (("height", th, height), ("width", tw, width)):
        if tile < length and tile_overlap >= tile:
            raise ValueError(
                f"tile_overlap={tile_overlap} must be smaller than the tile {name} {tile} "
                f"(tiles would not advance); use a larger tile_size or a smaller overlap"
            )
    return TilePlan(
        out_hw=(height, width),
        tile_hw=(th, tw),
        overlap=tile_overlap,
        unit=unit,
        rows=tuple(_axis_spans(height, th, tile_overlap, unit)),
        cols=tuple(_axis_spans(width, tw, tile_overlap, unit)),
    )


def blend_weights_1d(spans: Sequence[tuple[int, int]], length: int) -> list[torch.Tensor]:
    """Raised-cosine partition of unity over `length` for overlapping spans (float32 each).

    Span i ramps up as sin^2(pi/2 (k + 1/2) / n) over the n pixels it shares with span i-1 and
    down symmetrically over those it shares with span i+1; the weights are then divided by
    their sum (float64), so they sum to 1 wherever three spans meet too. A lone span is all ones.
    """
    raw = []
    for i, (start, stop) in enumerate(spans):
        w = torch.ones(stop - start, dtype=torch.float64)
        if i > 0 and spans[i - 1][1] > start:
            n = spans[i - 1][1] - start
            w[:n] *= torch.sin(math.pi / 2 * (torch.arange(n, dtype=torch.float64) + 0.5) / n) ** 2
        if i + 1 < len(spans) and spans[i + 1][0] < stop:
            n = stop - spans[i + 1][0]
            ramp = torch.sin(math.pi / 2 * (torch.arange(n, dtype=torch.float64) + 0.5) / n) ** 2
            w[stop - start - n :] *= ramp.flip(0)
        raw.append(w)
    total = torch.zeros(length, dtype=torch.float64)
    for (start, stop), w in zip(spans, raw, strict=True):
        total[start:stop] += w
    return [(w / total[start:stop]).float() for (start, stop), w in zip(spans, raw, strict=True)]


# --------------------------------------------------------------------------------------------
# The tiled velocity function
# --------------------------------------------------------------------------------------------

VelocityNet = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor
]


def _base_pidnet(net: Any) -> PidNet | None:
    """The PidNet behind `net` (itself, or the module a torch.compile wrapper holds)."""
    base = getattr(net, "_orig_mod", net)
    return base if isinstance(base, PidNet) else None


def window_pixel_table(tile: Tile, dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """`pixel_sincos_table(H, W, dim)[y0:y1, x0:x1]` in float32, without building the full table.

    The table is separable (columns in the first dim/2 channels, rows in the last), so the
    window is the column part of a 1-row table and the row part of a 1-column one, computed by
    the very same function in float64 and cast to float32 elementwise (bit-identical to the crop
    of the full table cast to float32); only the expansion to [th, tw, dim] runs on `device`.
    """
    th, tw = tile.shape
    half = dim // 2
    cols = pixel_sincos_table(1, tile.x1, dim)[0, tile.x0 :, :half].float().to(device)
    rows = pixel_sincos_table(tile.y1, 1, dim)[tile.y0 :, 0, half:].float().to(device)
    return torch.cat([cols[None].expand(th, tw, half), rows[:, None].expand(th, tw, half)], -1)


class TiledVelocity:
    """A sampler `VelocityFn` that evaluates `net` tile by tile and blends the velocities.

    Args:
        net: a PidNet (or a torch.compile wrapper of one); with positions="local", any
            callable (x, t_scaled, y, lq_latent, degrade_sigma) -> v of a PiD config.
        plan: the tiles (`plan_tiles`).
        config: the network config (default: `net.config`).
        positions: "global" (crops of the whole image's position tables) or "local".

    Calls return the blended velocity in float32 with x's shape. With global positions the
    PidNet's `_rope_2d` / `_pixel_pos` are shadowed, for the duration of a call, by two
    functions that return the current tile's tables; they are the same objects for every tile,
    so a torch.compile'd net sees the tables as graph inputs and equal-size tiles share a graph.
    """

    def __init__(
        self,
        net: VelocityNet,
        plan: TilePlan,
        config: Mapping[str, Any] | None = None,
        positions: str = "global",
    ) -> None:
        if positions not in POSITIONS:
            raise ValueError(f"tile positions {positions!r}: one of {POSITIONS}")
        self.net = net
        self.base = _base_pidnet(net)
        if positions == "global" and self.base is None:
            raise ValueError(
                "tile positions 'global' need a pid_models PidNet (they hand each tile crops of "
                "its position tables); use positions='local' for other networks"
            )
        self.config = dict(config if config is not None else self.base.config)
        self.plan = plan
        self.positions = positions
        self.per_latent = pixels_per_latent(self.config)
        self._weights = plan.weights()
        self._tables: dict[Any, torch.Tensor | tuple[torch.Tensor, torch.Tensor]] = {}
        self._tile: Tile | None = None

        def rope_2d(grid_h: int, grid_w: int, head_dim: int, device) -> tuple:
            key = ("rope", head_dim)
            if key not in self._tables:  # a head size the prefetch did not know
                self._tables[key] = self._rope_window(self._tile, head_dim, device)
            return self._tables[key]

        def pixel_pos(height: int, width: int, device, dtype) -> torch.Tensor:
            return self._tables["pixpos"].to(dtype)

        self._overrides = {"_rope_2d": rope_2d, "_pixel_pos": pixel_pos}

    def __call__(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        lq_latent: torch.Tensor,
        degrade_sigma: torch.Tensor,
    ) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.plan.out_hw:
            raise ValueError(
                f"x is {tuple(x.shape[-2:])}; this tile plan is for {self.plan.out_hw}"
            )
        out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        row_w = [w.to(x.device) for w in self._weights[0]]
        col_w = [w.to(x.device) for w in self._weights[1]]
        with self._shadow_positions():
            for (y0, y1), wy in zip(self.plan.rows, row_w, strict=True):
                for (x0, x1), wx in zip(self.plan.cols, col_w, strict=True):
                    tile = Tile(y0, y1, x0, x1)
                    ys, xs = tile.latent_window(self.per_latent)
                    self._prefetch(tile, x.device)
                    v = self.net(x[..., y0:y1, x0:x1], t, y, lq_latent[..., ys, xs], degrade_sigma)
                    weight = (wy[:, None] * wx[None, :]).expand_as(v)
                    out[..., y0:y1, x0:x1].addcmul_(v.float(), weight)
        self._tables.clear()
        return out

    # ---- global positions ------------------------------------------------------------------

    def _rope_window(self, tile: Tile, head_dim: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The tile's rows of the whole grid's RoPE (cos, sin), [Ls_tile, head_dim / 2]."""
        p = self.base.patch_size
        full_h, full_w = self.plan.out_hw[0] // p, self.plan.out_hw[1] // p
        cos, sin = PidNet._rope_2d(self.base, full_h, full_w, head_dim, device)

        def crop(table: torch.Tensor) -> torch.Tensor:
            table = table.reshape(full_h, full_w, -1)
            table = table[tile.y0 // p : tile.y1 // p, tile.x0 // p : tile.x1 // p]
            return table.reshape(-1, table.shape[-1]).contiguous()

        return crop(cos), crop(sin)

    def _prefetch(self, tile: Tile, device: torch.device) -> None:
        """Compute the tile's position tables before the call (outside any compiled graph)."""
        if self.positions == "local":
            return
        self._tile = tile
        self._tables.clear()
        cfg = self.config
        for head_dim in {
            cfg["hidden_size"] // cfg["num_groups"],
            cfg["pixel_attn_hidden_size"] // cfg["pixel_num_groups"],
        }:
            self._tables[("rope", head_dim)] = self._rope_window(tile, head_dim, device)
        self._tables["pixpos"] = window_pixel_table(tile, self.base.pixel_dim, device)

    @contextlib.contextmanager
    def _shadow_positions(self) -> Iterator[None]:
        """Shadow the PidNet's table methods with instance attributes (deleted afterwards)."""
        if self.positions == "local":
            yield
            return
        for name, fn in self._overrides.items():
            object.__setattr__(self.base, name, fn)
        try:
            yield
        finally:
            for name in self._overrides:
                object.__delattr__(self.base, name)


# --------------------------------------------------------------------------------------------
# Memory model
# --------------------------------------------------------------------------------------------

#: Activation elements per patch token of one forward, as coefficients of the config widths:
#: per-pixel width P2 * d_pix, hidden size D, LQ trunk width Dq and LQ input channels (at the
#: patch grid). Fitted by `benchmarks/calibrate_memory.py` to `LiveTensorBytes` peaks of 108
#: configurations (tiny widths x 3, pixel widths x 3, LQ widths x 2, attention widths x 2, fp32
#: and bf16-autocast, 2 token counts), worst relative error 1.1%; the pixel blocks dominate
#: (the peak sits in the pixel MLP, with the 6 per-pixel adaLN chunks live).
ACT_PER_PIXEL_WIDTH = 18.0
ACT_PER_HIDDEN = 2.9
ACT_PER_LQ_HIDDEN = 1.1
ACT_PER_LQ_CHANNEL = 0.13
#: Bytes per pixel-width element held in float32 whatever the compute dtype: the pixel sin-cos
#: table (float32, [H, W, d_pix]); cached by the net for untiled / local tiles.
TABLE_BYTES = 4
#: Bytes per output element (B x 3 x H x W) the sampler holds while the network runs (float32
#: x, the previous step's v, x0 and eps, the blend accumulator: 5 x 4) and at its float64
#: x0 = x - t v step (x, v, previous x0 and eps: 4 x 4, plus x, v and t v in float64: 3 x 8).
IMAGE_BYTES_DURING_NET = 20
IMAGE_BYTES_PEAK = 40

_PARAM_CACHE: dict[tuple, tuple[int, int]] = {}


def full_config(net_config: Mapping[str, Any]) -> dict[str, Any]:
    """A PidNet config with every default filled in (builds it on the meta device)."""
    return dict(_meta_net(net_config).config)


def _meta_net(net_config: Mapping[str, Any]) -> PidNet:
    with torch.device("meta"):
        return PidNet(**{k: v for k, v in net_config.items() if k != "inert_kwargs"})


def _param_counts(net_config: Mapping[str, Any]) -> tuple[int, int]:
    """(total parameters, largest parameter tensor), cached per config."""
    key = tuple(sorted((k, repr(v)) for k, v in net_config.items()))
    if key not in _PARAM_CACHE:
        params = [p.numel() for p in _meta_net(net_config).parameters()]
        _PARAM_CACHE[key] = (sum(params), max(params))
    return _PARAM_CACHE[key]


def _dtype_bytes(dtype: torch.dtype | str | None) -> int:
    if dtype is None:
        return 4
    if isinstance(dtype, str):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}.get(
            dtype, getattr(torch, dtype, None)
        )
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}")
    return torch.empty((), dtype=dtype).element_size()


@dataclass(frozen=True)
class MemoryEstimate:
    """The pieces of `estimate_peak_bytes` (bytes)."""

    weights: int
    activations: int  # one forward of one tile (or of the whole image)
    image_during_net: int
    image_peak: int

    @property
    def total(self) -> int:
        return self.weights + max(self.activations + self.image_during_net, self.image_peak)


def estimate_memory(
    net_config: Mapping[str, Any],
    out_hw: tuple[int, int],
    tile: int | Sequence[int] | None = None,
    dtype: torch.dtype | str | None = torch.bfloat16,
    batch: int = 1,
) -> MemoryEstimate:
    """`estimate_peak_bytes`, itemised."""
    cfg = full_config(net_config) if "pixel_hidden_size" not in net_config else dict(net_config)
    height, width = out_hw
    th, tw = (height, width) if tile is None else _pair(tile, "tile")
    th, tw = min(th, height), min(tw, width)
    p = int(cfg["patch_size"])
    tokens = batch * (th // p) * (tw // p)
    pixel_width = p * p * int(cfg["pixel_hidden_size"])
    f = int(cfg["lq_latent_unpatchify_factor"])
    lq_channels = int(cfg["lq_latent_channels"]) // (f * f)
    e = _dtype_bytes(dtype)
    per_token = (
        e
        * (
            ACT_PER_PIXEL_WIDTH * pixel_width
            + ACT_PER_HIDDEN * int(cfg["hidden_size"])
            + ACT_PER_LQ_HIDDEN * int(cfg["lq_hidden_dim"])
            + ACT_PER_LQ_CHANNEL * lq_channels
        )
        + TABLE_BYTES * pixel_width
    )
    n_params, largest = _param_counts(cfg)
    text = e * 8 * batch * int(cfg["txt_max_length"]) * int(cfg["hidden_size"])
    weights = 4 * n_params + (e * largest if e < 4 else 0)  # float32 net + one autocast copy
    image = batch * 3 * height * width
    return MemoryEstimate(
        weights=int(weights),
        activations=int(tokens * per_token + text),
        image_during_net=int(IMAGE_BYTES_DURING_NET * image),
        image_peak=int(IMAGE_BYTES_PEAK * image),
    )


def estimate_peak_bytes(
    net_config: Mapping[str, Any],
    out_hw: tuple[int, int],
    tile: int | Sequence[int] | None = None,
    dtype: torch.dtype | str | None = torch.bfloat16,
    batch: int = 1,
) -> int:
    """Estimated peak allocated bytes of one PiD decode (`PiDDecoder.decode`), tiled or not.

    Model (all terms in bytes; e = bytes of the compute dtype, 2 under bf16 autocast):

        weights      = 4 * n_params  (+ e * largest parameter: autocast's transient copy)
        activations  = tokens_per_tile * [e * (18 P2 d_pix + 2.9 D + 1.1 Dq + 0.13 C_lq) + 4 P2 d_pix]
                       + 8 e * Lt * D  (text stream)
        image_net    = 20 * B * 3 * H * W   (sampler state while the network runs)
        image_peak   = 40 * B * 3 * H * W   (the float64 x0 = x - t v step)
        peak         = weights + max(activations + image_net, image_peak)

    with tokens_per_tile = B * (tile_h / p) * (tile_w / p) (the whole image when untiled), P2 = p^2
    pixels per patch, d_pix the pixel width, D the hidden size, Dq the LQ trunk width, C_lq the LQ
    channels after unpatchify and Lt the text length. Activations scale with the tokens per tile;
    the image terms with the output. Attention is assumed memory-efficient (flash /
    mem-efficient SDPA, no L^2 score matrix), as PyTorch picks on CUDA for these head sizes and
    on CPU.

    The constants were calibrated with `LiveTensorBytes` (live tensor bytes at every aten call)
    on CPU for small configurations and on the meta device for the released ones; see
    `benchmarks/calibrate_memory.py`. They describe what tensors are alive, i.e. CUDA's
    `max_memory_allocated`, not the caching allocator's reserved pool, the CUDA context, cuBLAS
    workspaces or torch.compile's buffers: CUDA figures need calibration on a device
    (`benchmarks/decode.py` prints this estimate beside the measured peaks), and
    `check_memory_budget` keeps headroom for them.
    """
    return estimate_memory(net_config, out_hw, tile, dtype, batch).total


class MemoryBudgetError(ValueError):
    """A decode configuration that the memory model says cannot fit the budget."""


def check_memory_budget(
    net_config: Mapping[str, Any],
    out_hw: tuple[int, int],
    budget_bytes: int,
    tile: int | Sequence[int] | None = None,
    tile_overlap: int = DEFAULT_OVERLAP,
    dtype: torch.dtype | str | None = torch.bfloat16,
    batch: int = 1,
    headroom: float = 0.10,
) -> int:
    """Refuse, before allocating, a decode whose estimated peak (+ headroom) exceeds the budget.

    Returns the estimate (bytes) when it fits. Otherwise raises `MemoryBudgetError` naming the
    largest square `tile_size` that would fit (the largest multiple of 256 px if one fits, else
    of the tile unit; larger than `tile_overlap`), or saying that none does (the weights and the
    whole-image sampler buffers alone are too big).
    """
    cfg = full_config(net_config) if "pixel_hidden_size" not in net_config else dict(net_config)
    need = estimate_peak_bytes(cfg, out_hw, tile, dtype, batch)
    allowed = budget_bytes / (1 + headroom)
    if need <= allowed:
        return need
    unit = tile_unit(cfg)
    what = "untiled" if tile is None else f"tile_size={tile}"
    message = (
        f"a {out_hw[0]}x{out_hw[1]} decode ({what}, batch {batch}, {_dtype_name(dtype)}) needs "
        f"~{_size(need)} by the memory model (+{headroom:.0%} headroom) but the budget is "
        f"{_size(budget_bytes)}"
    )
    # Round suggestions first (multiples of 256 px), then any multiple of the unit.
    for step in (math.lcm(unit, 256), unit):
        for size in range(max(out_hw) // step * step, step - 1, -step):
            if size <= tile_overlap and size < max(out_hw):
                break
            fit = estimate_peak_bytes(cfg, out_hw, size, dtype, batch)
            if fit <= allowed:
                raise MemoryBudgetError(
                    f"{message}; tile_size={size} (tile_overlap={tile_overlap}) would fit "
                    f"(~{_size(fit)})"
                )
    floor = estimate_memory(cfg, out_hw, unit, dtype, batch)
    if floor.total <= allowed:
        raise MemoryBudgetError(
            f"{message}; only tiles no larger than tile_overlap={tile_overlap} would fit: "
            f"lower tile_overlap (e.g. {unit}) and use tile_size={unit * 2} or more"
        )
    raise MemoryBudgetError(
        f"{message}; no tile size fits: the weights ({_size(floor.weights)}) and the "
        f"whole-image sampler buffers ({_size(floor.image_peak)}) alone exceed it"
    )


def _size(nbytes: float) -> str:
    return f"{nbytes / GiB:.2f} GiB" if nbytes >= GiB / 4 else f"{nbytes / 2**20:.1f} MiB"


def _dtype_name(dtype: torch.dtype | str | None) -> str:
    return {2: "bf16", 4: "fp32"}.get(_dtype_bytes(dtype), str(dtype))


# --------------------------------------------------------------------------------------------
# Measuring live tensor bytes (calibration; CPU and meta)
# --------------------------------------------------------------------------------------------


class _FunctionalPatches(TorchFunctionMode):
    """Meta-device stand-ins for what CUDA would run: fused SDPA and (optionally) autocast.

    On meta tensors `F.scaled_dot_product_attention` would take the math path (an L^2 score
    matrix); the fused CPU kernel has a meta implementation with the memory of flash attention.
    `autocast_dtype` emulates autocast on any device: linear/conv/SDPA inputs cast to it,
    group/layer norm to float32 (matches torch.autocast("cpu") bytes on CPU).
    """

    def __init__(self, autocast_dtype: torch.dtype | None) -> None:
        super().__init__()
        self.low = autocast_dtype

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.low is not None:
            if func in (F.linear, F.conv2d, F.scaled_dot_product_attention):
                args = tuple(_cast(a, self.low) for a in args)
            elif func in (F.group_norm, F.layer_norm):
                args = tuple(_cast(a, torch.float32) for a in args)
        if func is F.scaled_dot_product_attention and args[0].device.type == "meta":
            q, k, v = args[:3]
            return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)[0]
        return func(*args, **kwargs)


def _cast(a: Any, dtype: torch.dtype) -> Any:
    if isinstance(a, torch.Tensor) and a.is_floating_point() and a.dtype != dtype:
        return a.to(dtype)
    return a


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of tensor storage alive at once, for everything run inside the context.

    Counts each new storage an aten op returns (views of inputs are not new) until its last
    tensor is freed; storages made before entering are not counted. Works on CPU and meta.
    `autocast_dtype` emulates autocast (see `_FunctionalPatches`). `tracemalloc` cannot do this:
    torch's CPU allocator does not go through Python's allocator.

    Example: `with LiveTensorBytes() as m: net(...)`, then `m.peak`.
    """

    def __init__(self, autocast_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self._patches = _FunctionalPatches(autocast_dtype)
        self._bytes: dict[int, int] = {}
        self._refs: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def __enter__(self) -> LiveTensorBytes:
        self._patches.__enter__()
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        self._patches.__exit__(*exc)

    def _release(self, key: int) -> None:
        self._refs[key] -= 1
        if self._refs[key] == 0:
            self.current -= self._bytes.pop(key)
            del self._refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            a.untyped_storage()._cdata
            for a in tree_flatten((args, kwargs))[0]
            if isinstance(a, torch.Tensor)
        }
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage._cdata
            if key in inputs and key not in self._bytes:
                continue  # a view of something made before we started
            if key not in self._bytes:
                self._bytes[key], self._refs[key] = storage.nbytes(), 0
                self.current += storage.nbytes()
                self.peak = max(self.peak, self.current)
            self._refs[key] += 1
            weakref.finalize(tensor, self._release, key)
        return out
