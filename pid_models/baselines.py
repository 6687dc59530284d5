"""Super-resolution after the native decode: the baselines PiD is compared with.

Two kinds: learned SR networks through spandrel (`SpandrelUpscaler`) and cascaded diffusion SR
through diffusers' Stable Diffusion x4 upscaler (`DiffusionUpscaler`).

`native+<name>` decoders run the backbone's native decoder, then an SR network that spandrel
recognises from its state dict (Real-ESRGAN / RRDBNet, SwinIR, HAT, DAT, OmniSR, ...). Weights
come from local files only: `.safetensors` (preferred) or `.pth` read with
`torch.load(weights_only=True)`.

The SR network must reach PiD's scale: its own scale equal to PiD's (4x or 8x), or a power of
it applied in a chain (a 2x model run three times for 8x), which the row then says. Large
inputs run in tiles with an overlap that is cropped away (`tile`, `tile_overlap`, input pixels),
so a 1024^2 -> 4096^2 upscale fits small GPUs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch


class BaselineError(ValueError):
    """A baseline cannot be built: names the file and the fix."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from `.safetensors` or `.pth`/`.pt`/`.ckpt` (weights only, never pickles)."""
    path = Path(path)
    if not path.is_file():
        raise BaselineError(
            f"{path}: no such file. Put the SR weights there (e.g. RealESRGAN_x4plus.pth from "
            f"github.com/xinntao/Real-ESRGAN/releases, downloaded where you have a network) or "
            f"fix the suite's baselines.<name>.path"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise BaselineError(
            f"{path}: not a weights-only torch file ({type(err).__name__}: {err}); convert it "
            "to .safetensors"
        ) from None
    if not isinstance(state, dict):
        raise BaselineError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return state


@dataclass
class SpandrelUpscaler:
    """An SR network from spandrel, brought to `target_scale` by a chain of `chain` passes."""

    name: str
    descriptor: object  # spandrel.ImageModelDescriptor
    chain: int
    tile: int | None = None
    tile_overlap: int = 32

    @property
    def model_scale(self) -> int:
        return int(self.descriptor.scale)

    @property
    def scale(self) -> int:
        return self.model_scale**self.chain

    def describe(self) -> str:
        """How the row reached the output size (its `resize_kernel`)."""
        chained = f" chained x{self.chain}" if self.chain > 1 else ""
        return f"{self.name} ({self.descriptor.architecture.name} x{self.model_scale}{chained})"

    def to(self, device: torch.device | str) -> SpandrelUpscaler:
        self.descriptor.to(device)
        return self

    @property
    def module(self) -> torch.nn.Module:
        return self.descriptor.model

    @property
    def modules(self) -> list[torch.nn.Module]:
        return [self.descriptor.model]

    @torch.no_grad()
    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """[B, 3, h, w] in [-1, 1] -> [B, 3, h * scale, w * scale] in [-1, 1]."""
        x = ((image.float() + 1) / 2).clamp(0, 1)
        dtype = next(self.module.parameters()).dtype
        for _ in range(self.chain):
            x = tiled(lambda t: self.descriptor(t.to(dtype)).float(), x, self.model_scale,
                      self.tile, self.tile_overlap)  # fmt: skip
        return x.clamp(0, 1) * 2 - 1


def load_spandrel(
    name: str,
    path: str | Path,
    target_scale: int,
    device: torch.device | str = "cpu",
    tile: int | None = None,
    tile_overlap: int = 32,
) -> SpandrelUpscaler:
    """The SR network in `path`, checked to reach `target_scale` (PiD's scale)."""
    from spandrel import ImageModelDescriptor, ModelLoader

    state = read_state_dict(path)
    try:
        descriptor = ModelLoader().load_from_state_dict(state)
    except Exception as err:
        raise BaselineError(
            f"{path}: spandrel does not recognise this state dict ({type(err).__name__}: {err}); "
            "use an SR model spandrel supports (Real-ESRGAN, SwinIR, HAT, DAT, OmniSR, ...)"
        ) from None
    if not isinstance(descriptor, ImageModelDescriptor) or descriptor.purpose != "SR":
        raise BaselineError(f"{path}: a {descriptor.purpose} model, not super-resolution")
    chain = chain_length(int(descriptor.scale), target_scale)
    if chain is None:
        raise BaselineError(
            f"{path}: a x{descriptor.scale} model cannot reach PiD's x{target_scale} (not a "
            f"power of it); use a x{target_scale} model"
        )
    descriptor.eval()
    return SpandrelUpscaler(name, descriptor.to(device), chain, tile, tile_overlap)


def chain_length(model_scale: int, target_scale: int) -> int | None:
    """k with model_scale**k == target_scale, or None."""
    if model_scale < 2:
        return None
    k = round(math.log(target_scale, model_scale))
    return k if k >= 1 and model_scale**k == target_scale else None


def tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    scale: int,
    tile: int | None,
    overlap: int,
) -> torch.Tensor:
    """`fn` (an x`scale` upscaler) over overlapping tiles of `image`; each tile's overlap is
    cropped away, so a convolutional model whose receptive field fits the overlap sees the same
    context as on the whole image. `tile=None` or a small image: one call."""
    _, _, height, width = image.shape
    if tile is None or (height <= tile and width <= tile):
        return fn(image)
    step = tile - 2 * overlap
    if step <= 0:
        raise BaselineError(f"tile {tile} must exceed twice the overlap {overlap}")
    out = None
    for y in range(0, height, step):
        for x in range(0, width, step):
            y0, y1 = max(y - overlap, 0), min(y + step + overlap, height)
            x0, x1 = max(x - overlap, 0), min(x + step + overlap, width)
            up = fn(image[..., y0:y1, x0:x1])
            if out is None:
                out = up.new_zeros(*up.shape[:2], height * scale, width * scale)
            ye, xe = min(y + step, height), min(x + step, width)
            core = up[
                ..., (y - y0) * scale : (ye - y0) * scale, (x - x0) * scale : (xe - x0) * scale
            ]
            out[..., y * scale : ye * scale, x * scale : xe * scale] = core
    return out


# ---- cascaded diffusion SR: Stable Diffusion x4 upscaler -------------------------------------

SD_X4_UPSCALER = "stabilityai/stable-diffusion-x4-upscaler"


@dataclass
class DiffusionUpscaler:
    """diffusers' `StableDiffusionUpscalePipeline` after the native decode: the caption is the
    prompt; `steps`, `guidance_scale` and `noise_level` are the pipeline's own arguments."""

    name: str
    pipeline: object
    steps: int = 20
    guidance_scale: float = 9.0
    noise_level: int = 20
    source: str = SD_X4_UPSCALER

    @property
    def scale(self) -> int:
        return int(self.pipeline.vae_scale_factor)

    @property
    def modules(self) -> list[torch.nn.Module]:
        return [self.pipeline.unet, self.pipeline.vae, self.pipeline.text_encoder]

    def describe(self) -> str:
        return (
            f"{self.name} (StableDiffusionUpscalePipeline x{self.scale}, {self.steps} steps, "
            f"guidance {self.guidance_scale:g}, noise level {self.noise_level})"
        )

    @torch.no_grad()
    def __call__(self, image: torch.Tensor, caption: str = "", seed: int = 0) -> torch.Tensor:
        """[B, 3, h, w] in [-1, 1] -> [B, 3, 4h, 4w] in [-1, 1]."""
        device = self.pipeline.unet.device
        generator = torch.Generator(device).manual_seed(seed)
        out = self.pipeline(
            prompt=[caption] * image.shape[0], image=((image.float() + 1) / 2).clamp(0, 1),
            num_inference_steps=self.steps, guidance_scale=self.guidance_scale,
            noise_level=self.noise_level, generator=generator, output_type="pt",
        ).images  # fmt: skip
        return out.to(image.device, torch.float32).clamp(0, 1) * 2 - 1


def load_diffusion_upscaler(
    name: str,
    source: str | None,
    target_scale: int,
    device: torch.device | str = "cpu",
    steps: int = 20,
    guidance_scale: float = 9.0,
    noise_level: int = 20,
) -> DiffusionUpscaler:
    """The upscale pipeline from a local folder or the HF cache (never the network)."""
    from diffusers import StableDiffusionUpscalePipeline

    source = source or SD_X4_UPSCALER
    dtype = torch.float16 if torch.device(device).type == "cuda" else torch.float32
    try:
        pipe = StableDiffusionUpscalePipeline.from_pretrained(
            source, torch_dtype=dtype, local_files_only=True
        )
    except Exception as err:
        raise BaselineError(
            f"{source}: no StableDiffusionUpscalePipeline there or in the HF cache "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); where you have a "
            f"network: hf download {SD_X4_UPSCALER}, or point baselines.{name}.source at a folder"
        ) from None
    pipe.set_progress_bar_config(disable=True)
    upscaler = DiffusionUpscaler(name, pipe.to(device), steps, guidance_scale, noise_level, source)
    if upscaler.scale != target_scale:
        raise BaselineError(
            f"{source}: the pipeline upscales x{upscaler.scale}, PiD x{target_scale}; use it with "
            "a x4 PiD checkpoint"
        )
    return upscaler
