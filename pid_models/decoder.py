"""`PiDDecoder`: latent + caption -> image, the way upstream runs PiD for inference.

CPU runs float32 eagerly. CUDA keeps the float32 network under
`torch.autocast("cuda", dtype=torch.bfloat16)` with TF32 allowed for matmul and cuDNN, as
upstream's loader and demos do; pass `autocast_dtype=None` for float32 and `tf32=False` for
full-precision float32 matmuls. The LQ latent is rounded to bf16 first, always (upstream hands
it over in bf16). `docs/protocol.md` lists each choice against upstream's code.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from pid_models.caption import (
    CachedCaptionEncoder,
    CaptionCache,
    CaptionEncoder,
    GemmaCaptionEncoder,
)
from pid_models.checkpoints import load_pid_net
from pid_models.pid_net import PidNet
from pid_models.registry import resolve
from pid_models.sampler import DISTILLED_T_LIST, SampleOutput, VelocityFn, sample
from pid_models.tiling import (
    DEFAULT_OVERLAP,
    POSITIONS,
    TiledVelocity,
    check_memory_budget,
    plan_tiles,
)

_DEFAULT = object()
PRECISIONS = ("auto", "bf16-autocast", "bf16", "fp32")


class PiDDecoder:
    """A PiD network with its caption encoder and sampler.

    Args:
        net: the network (float32).
        caption_encoder: produces `y`; its hidden size must equal the net's txt_embed_dim.
        device: where to run; the net and encoder are moved there.
        autocast_dtype: autocast dtype on CUDA (default bfloat16, as upstream); ignored on CPU.
        t_list: the distilled t list the sampler sub-samples.
        tf32: allow TF32 matmuls and convolutions during a CUDA decode (default True, as
            upstream's model loader sets it); ignored on CPU, where `tf32` reads None.
        generator_device: where the sampler's noise is drawn (default: the decode device).
            "cuda" replays upstream's stream, which always draws from a CUDA generator.
        compile: False (eager), True or a `torch.compile` mode: the network is compiled with
            `dynamic=False` once per output size (and tile size), as upstream's `--compile`.
        compile_backend: the `torch.compile` backend (default inductor).
        precision: "auto" (`autocast_dtype` decides: bf16 autocast on CUDA, float32 on CPU),
            "bf16-autocast" (float32 weights under bf16 autocast, upstream's way, on any
            device), "bf16" (the weights converted to bf16: half the resident memory, no
            autocast) or "fp32".
    """

    def __init__(
        self,
        net: PidNet,
        caption_encoder: CaptionEncoder,
        device: str | torch.device = "cpu",
        autocast_dtype: torch.dtype | None | object = _DEFAULT,
        t_list: Sequence[float] = DISTILLED_T_LIST,
        tf32: bool = True,
        generator_device: str | torch.device | None = None,
        compile: bool | str = False,
        compile_backend: str = "inductor",
        precision: str = "auto",
    ) -> None:
        if caption_encoder.hidden_size != net.config["txt_embed_dim"]:
            raise ValueError(
                f"caption encoder width {caption_encoder.hidden_size} != PiD txt_embed_dim "
                f"{net.config['txt_embed_dim']}"
            )
        self.device = torch.device(device)
        self.net = net.to(self.device).eval().requires_grad_(False)
        self.caption_encoder = caption_encoder
        on_cuda = self.device.type == "cuda"
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: one of {PRECISIONS}")
        if autocast_dtype is _DEFAULT:
            autocast_dtype = torch.bfloat16 if on_cuda else None
        self.autocast_dtype = autocast_dtype if on_cuda else None
        if precision == "bf16-autocast":
            self.autocast_dtype = torch.bfloat16
        elif precision in ("bf16", "fp32"):
            self.autocast_dtype = None
            self.net.to(torch.bfloat16 if precision == "bf16" else torch.float32)
        self.precision = self.resolved_precision()
        self.t_list = tuple(t_list)
        self.tf32 = bool(tf32) if on_cuda else None
        self.generator_device = torch.device(generator_device or self.device)
        if self.generator_device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"generator_device {generator_device!r}: CUDA is not available on this machine "
                "(leave it unset to draw the noise on the decode device)"
            )
        self.compile_mode = (
            None if compile is False else ("default" if compile is True else compile)
        )
        self.compile_backend = compile_backend
        self._compiled: dict[tuple, torch.nn.Module] = {}

    def resolved_precision(self) -> str:
        """What runs: bf16-autocast, bf16 (weights stored in bf16) or fp32."""
        if self.autocast_dtype is not None:
            return (
                "bf16-autocast"
                if self.autocast_dtype == torch.bfloat16
                else str(self.autocast_dtype)
            )
        return "bf16" if self.net.s_embedder.proj.weight.dtype == torch.bfloat16 else "fp32"

    # ---- constructors ----------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        backbone: str,
        ckpt_type: str,
        checkpoints: str | os.PathLike | None = None,
        text_encoder: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        cache_dir: str | os.PathLike | None = None,
        **options,
    ) -> PiDDecoder:
        """The released decoder for (backbone, ckpt_type), entirely from local files.

        `checkpoints` (or $PID_BENCH_CHECKPOINTS) is the `hf download nvidia/PiD` folder;
        `text_encoder` a local Gemma-2-2b-it folder or repo id in the HF cache; `options` are
        the constructor's keyword arguments (tf32, generator_device, compile, ...).
        """
        resolve(backbone, ckpt_type)  # unknown pairs fail before anything loads
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        net = load_pid_net(backbone, ckpt_type, checkpoints, device)
        gemma = GemmaCaptionEncoder.from_pretrained(
            text_encoder or "Efficient-Large-Model/gemma-2-2b-it", device=device
        )
        return cls(net, CachedCaptionEncoder(gemma, CaptionCache(cache_dir)), device, **options)

    @classmethod
    def tiny(
        cls,
        seed: int = 0,
        device: str | torch.device = "cpu",
        cache_dir: str | os.PathLike | None = None,
        trained: bool = False,
        **options,
    ) -> PiDDecoder:
        """The embedded tiny PiD (2k FLUX layout) + tiny seeded Gemma-2: seeded random weights,
        or with `trained` the network trained here (`pid_models.tiny_training`; the `tiny`
        backbone; `seed` then seeds only the caption encoder, as in training)."""
        from pid_models.tiny import (
            build_tiny_caption_encoder,
            build_tiny_net,
            build_trained_tiny_net,
        )

        encoder = CachedCaptionEncoder(build_tiny_caption_encoder(seed), CaptionCache(cache_dir))
        net = build_trained_tiny_net() if trained else build_tiny_net(seed)
        return cls(net, encoder, device, **options)

    # ---- decoding --------------------------------------------------------------------------

    @property
    def scale(self) -> int:
        """PiD upscale relative to the codec's native decode (4 or 8)."""
        return self.net.sr_scale

    def encode_captions(self, caption: str | Sequence[str], batch: int) -> torch.Tensor:
        captions = [caption] if isinstance(caption, str) else list(caption)
        if len(captions) == 1:
            captions = captions * batch
        if len(captions) != batch:
            raise ValueError(f"{len(captions)} captions for a batch of {batch} latents")
        return self.caption_encoder.encode(captions).to(self.device)

    @torch.no_grad()
    def decode(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Decode (and upsample) PiD latents: [B, 3, H, W] float32 in [-1, 1], on the decoder's
        device. The arguments are `sample`'s."""
        return self.sample(*args, **kwargs).image

    def sample(
        self,
        latent: torch.Tensor,
        sigma: float | Sequence[float] | torch.Tensor = 0.0,
        caption: str | Sequence[str] = "",
        out_size: int | tuple[int, int] | None = None,
        seed: int = 0,
        steps: int = 4,
        y: torch.Tensor | None = None,
        tile_size: int | tuple[int, int] | None = None,
        tile_overlap: int = DEFAULT_OVERLAP,
        tile_positions: str = "global",
        memory_budget: int | None = None,
    ) -> SampleOutput:
        """Decode (and upsample) PiD latents; `decode` returns the image alone.

        Args:
            latent: [B, C, h, w] (or [C, h, w]) in the backbone's PiD latent convention.
            sigma: noise level of `latent` (0 for a clean latent), scalar or per sample.
            caption: one caption for all, or one per latent.
            out_size: (H, W) or an int for square; must equal latent size x down x sr.
            seed: seeds the sampler's noise (a generator on the decoder's device).
            steps: network evaluations, 1..4.
            y: precomputed caption embeddings (skips `caption`).
            tile_size: decode in overlapping tiles of this many output pixels (an int or
                (H, W); a multiple of `pid_models.tiling.tile_unit`, 32 for FLUX 2k) to bound
                memory by the tile; None decodes the whole image at once. The velocities of
                the tiles are blended at every step (see `pid_models.tiling`); a tile that
                covers the image is exactly the untiled decode.
            tile_overlap: minimum overlap of neighbouring tiles, output pixels (same grain).
            tile_positions: "global" (tiles see their crop of the whole image's position
                tables) or "local" (each tile positioned as an image of its own).
            memory_budget: bytes the decode may use on the device (weights included); a
                configuration the memory model (`pid_models.tiling.estimate_peak_bytes`) says
                cannot fit is refused before anything is allocated, naming a tile size that fits.

        Returns:
            `SampleOutput`: ``image`` [B, 3, H, W] float32 in [-1, 1] on the decoder's device,
            and the unclamped result.
        """
        latent, sigma_t, (height, width) = self._inputs(latent, sigma, out_size)
        batch = latent.shape[0]
        velocity = self._velocity((height, width), tile_size, tile_overlap, tile_positions)
        if memory_budget is not None:
            check_memory_budget(
                self.net.config, (height, width), memory_budget, tile_size, tile_overlap,
                self.autocast_dtype or torch.float32, batch,
            )  # fmt: skip
        if y is None:
            y = self.encode_captions(caption, batch)
        generator = torch.Generator(self.generator_device).manual_seed(seed)
        with self._autocast(), tf32_allowed(self.tf32):
            return sample(
                velocity,
                y.to(self.device),
                latent,
                sigma_t,
                (batch, 3, height, width),
                steps=steps,
                generator=generator,
                t_list=self.t_list,
            )

    @torch.no_grad()
    def decode_teacher(
        self,
        teacher: PidNet,
        latent: torch.Tensor,
        sigma: float | torch.Tensor,
        y: torch.Tensor,
        y_null: torch.Tensor | None,
        seed: int = 0,
        steps: int = 25,
        cfg_scale: float = 5.0,
        shift: float | None = None,
    ) -> torch.Tensor:
        """PiD's undistilled teacher (`pid_models.teacher`): the same latent rounding, device,
        precision, TF32 and noise generator as `decode`, the teacher's own sampler and CFG."""
        from pid_models.teacher import sample_teacher

        latent, sigma_t, (height, width) = self._inputs(latent, sigma, None)
        batch = latent.shape[0]
        generator = torch.Generator(self.generator_device).manual_seed(seed)
        y_null = None if y_null is None else y_null.to(self.device).expand(batch, -1, -1)
        with self._autocast(), tf32_allowed(self.tf32):
            return sample_teacher(
                teacher, y.to(self.device), y_null, latent, sigma_t, (batch, 3, height, width),
                steps=steps, cfg_scale=cfg_scale, shift=shift, generator=generator,
            )  # fmt: skip

    def _inputs(
        self,
        latent: torch.Tensor,
        sigma: float | Sequence[float] | torch.Tensor,
        out_size: int | tuple[int, int] | None,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """(latent [B, C, h, w] on the device, sigma [B], output (H, W)), checked. Upstream hands
        the LQ latent over in bfloat16 whatever the run's precision (its VAE runs in bf16): the
        latent is rounded to bf16 and back, always."""
        if latent.dim() == 3:
            latent = latent[None]
        if latent.dim() != 4:
            raise ValueError(f"latent must be [B, C, h, w], got shape {tuple(latent.shape)}")
        batch = latent.shape[0]
        out_hw = self._check_size(latent, out_size)
        sigma_t = torch.as_tensor(sigma, dtype=torch.float32).flatten().to(self.device)
        if sigma_t.numel() == 1:
            sigma_t = sigma_t.expand(batch)
        if sigma_t.numel() != batch:
            raise ValueError(f"{sigma_t.numel()} sigmas for a batch of {batch} latents")
        return latent.to(self.device, torch.bfloat16).float(), sigma_t, out_hw

    def _velocity(
        self,
        out_hw: tuple[int, int],
        tile_size: int | tuple[int, int] | None,
        tile_overlap: int,
        tile_positions: str,
    ) -> VelocityFn:
        """The network, or a `TiledVelocity` over it when tiles are asked for (validated here)."""
        if tile_positions not in POSITIONS:
            raise ValueError(f"tile positions {tile_positions!r}: one of {POSITIONS}")
        if tile_size is None:
            return self._network(out_hw)
        plan = plan_tiles(self.net.config, out_hw, tile_size, tile_overlap)
        if len(plan) == 1:
            return self._network(out_hw)
        net = self._network((*out_hw, tile_size, tile_overlap))
        return TiledVelocity(net, plan, self.net.config, tile_positions)

    def _network(self, shape_key: tuple) -> torch.nn.Module:
        """The eager net, or its compiled wrapper for this output (and tile) size."""
        if self.compile_mode is None:
            return self.net
        if shape_key not in self._compiled:
            # A mode is an inductor setting; other backends take none.
            mode = self.compile_mode if self.compile_backend == "inductor" else None
            self._compiled[shape_key] = torch.compile(
                self.net, mode=mode, dynamic=False, backend=self.compile_backend
            )
        return self._compiled[shape_key]

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _check_size(
        self, latent: torch.Tensor, out_size: int | tuple[int, int] | None
    ) -> tuple[int, int]:
        channels = self.net.config["lq_latent_channels"]
        if latent.shape[1] != channels:
            raise ValueError(f"latent has {latent.shape[1]} channels; this PiD takes {channels}")
        expected = self.net.output_size(tuple(latent.shape[-2:]))
        if out_size is None:
            return expected
        size = (out_size, out_size) if isinstance(out_size, int) else tuple(out_size)
        if size != expected:
            raise ValueError(
                f"out_size {size} does not match latent {tuple(latent.shape[-2:])}: this PiD "
                f"decodes to latent size x {self.net.pixels_per_latent} = {expected}"
            )
        return expected


@contextlib.contextmanager
def tf32_allowed(enabled: bool | None) -> Iterator[None]:
    """TF32 for CUDA matmuls and cuDNN inside the block (None: leave torch's setting), restored
    afterwards so that other decoders run with the process's own setting."""
    if enabled is None:
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
