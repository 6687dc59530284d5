"""A cell's input, prepared before any decoder runs: the reference images, the latent each
decoder reads, its σ and the caption embeddings (`Prepared`).

from_clean: reference -> low-res input -> codec latent -> noise at the cell's σ.
from_ldm: the prompt's LDM capture (cached on disk, `default_latent_cache`), its x_t at the
cell's step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pid_bench.manifests import reference_crop
from pid_bench.memory import modules_of, place
from pid_bench.metrics import bicubic_resize as resize
from pid_bench.metrics import to_unit_range
from pid_bench.models import ModelSet
from pid_bench.settings import CellSettings
from pid_bench.suite import LdmOptions
from pid_bench.timing import time_once
from pid_models.codecs import add_noise


@dataclass
class Prepared:
    """What the decoders of one cell read (the images as ``[1, 3, H, W]`` in [-1, 1])."""

    latent: torch.Tensor  # what every decoder decodes (noised at σ, or the LDM's x_t)
    sigma: float
    y: torch.Tensor  # caption embeddings
    row: dict[str, Any]  # the columns preparation adds to every row of the cell
    reference: torch.Tensor | None = None  # at the output size (from_clean)
    reference_native: torch.Tensor | None = None  # at the native size: the encoder's input
    crop: tuple[int, int] | None = None  # the source's centre crop the references come from
    clean_latent: torch.Tensor | None = None  # the latent before noise (from_ldm: x0 only)
    _native_unit: torch.Tensor | None = field(default=None, repr=False)

    def native_unit(self, models: ModelSet) -> torch.Tensor:
        """The native decode in [0, 1], made once per cell, untimed (the twin metrics' input)."""
        if self._native_unit is None:
            with torch.no_grad():
                self._native_unit = to_unit_range(models.codec.decode(self.latent))
        return self._native_unit


def prepare(cell: Any, models: ModelSet, settings: CellSettings, dev: torch.device) -> Prepared:
    """The cell's input, by its mode."""
    if cell.mode == "from_ldm":
        return from_ldm(cell, models, settings, dev)
    return from_clean(cell, models, dev)


def reference_at(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Centre-crop [3, h, w] to the aspect of `size`, then resize once -> [1, 3, H, W]."""
    _, h, w = image.shape
    crop_h, crop_w = reference_crop(h, w, size)
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    return resize(image[None, :, top : top + crop_h, left : left + crop_w], size)


def encode_caption(models: ModelSet, caption: str, dev: torch.device) -> tuple[float, torch.Tensor]:
    """Caption embeddings, timed; the caption encoder is brought to the device only when the
    caption is in no cache (it leaves again when a decoder is measured)."""
    encoder = models.pid.caption_encoder
    if getattr(encoder, "_lookup", lambda c: None)(caption) is None:
        place(modules_of(encoder), [], dev)
    return time_once(lambda: models.pid.encode_captions(caption, 1), dev)


def from_clean(cell: Any, models: ModelSet, dev: torch.device) -> Prepared:
    """Reference -> low-res input -> codec latent -> noise at the cell's σ."""
    from pid_bench.manifests import load_image

    out_h, out_w = cell.resolution
    per_latent = models.pid.net.pixels_per_latent
    if out_h % per_latent or out_w % per_latent:
        raise ValueError(
            f"resolution {out_h}x{out_w} is not a multiple of {per_latent} "
            f"(codec {models.codec.spatial_factor}x * PiD {models.pid.scale}x) for {cell.backbone}"
        )
    source = load_image(cell.item)
    native_size = (out_h // models.pid.scale, out_w // models.pid.scale)
    reference = reference_at(source, (out_h, out_w)).to(dev)
    # The encoder input comes from the source in one resize, never via the (perhaps upsampled)
    # output-size reference; it is also the native decode's reference at its own size.
    lq = reference_at(source, native_size).to(dev)
    place(modules_of(models.codec), [], dev)
    encode_ms, latent = time_once(lambda: models.codec.encode(lq), dev)
    generator = torch.Generator(models.pid.generator_device).manual_seed(cell.seed)
    noisy = add_noise(latent, float(cell.sigma), models.codec.noise_form, generator)
    caption_ms, y = encode_caption(models, cell.item.caption, dev)
    row = {
        "in_height": lq.shape[-2],
        "in_width": lq.shape[-1],
        "source_height": source.shape[-2],
        "source_width": source.shape[-1],
        "latent_shape": "x".join(str(s) for s in latent.shape[1:]),
        "encode_ms": encode_ms,
        "caption_ms": caption_ms,
    }
    crop = reference_crop(source.shape[-2], source.shape[-1], (out_h, out_w))
    return Prepared(
        latent=noisy, sigma=float(cell.sigma), y=y, row=row, reference=reference,
        reference_native=lq, crop=crop, clean_latent=latent,
    )  # fmt: skip


def from_ldm(cell: Any, models: ModelSet, settings: CellSettings, dev: torch.device) -> Prepared:
    """The prompt's capture (cached on disk), its x_t at the cell's step (None: x0) with the
    scheduler's σ; no reference image. The LDM runs at the output size / PiD's scale."""
    from pid_models.ldm import capture_label

    out_h, out_w = cell.resolution
    scale = models.pid.scale
    if out_h % scale or out_w % scale:
        raise ValueError(f"resolution {out_h}x{out_w} is not a multiple of PiD's scale {scale}")
    ldm_size = (out_h // scale, out_w // scale)
    capture, origin, key = ldm_capture(cell, models, settings, ldm_size)
    step = cell.save_xt_step
    if step not in capture.latents:
        raise KeyError(f"capture {key} has no {capture_label(step)} latent")
    latent = capture.latents[step].to(dev)
    caption_ms, y = encode_caption(models, cell.item.caption, dev)
    row = {
        "in_height": ldm_size[0],
        "in_width": ldm_size[1],
        "latent_shape": "x".join(str(s) for s in latent.shape[1:]),
        "sigma": capture.sigmas[step],
        "caption_ms": caption_ms,
        "ldm_pipeline": pipeline_identity(models),
        "ldm_steps": capture.steps,
        "ldm_ms_to_step": capture.ldm_ms_to_step[step],
        "ldm_total_ms": capture.ldm_total_ms,
        "ldm_cache": origin,
        "ldm_capture_key": key,
    }
    clean = latent if step is None else None  # only x0 is a clean latent
    return Prepared(latent=latent, sigma=capture.sigmas[step], y=y, row=row, clean_latent=clean)


def pipeline_identity(models: ModelSet) -> str:
    from pid_models.ldm import pipeline_identity

    return pipeline_identity(models.pipeline)


def ldm_capture(cell: Any, models: ModelSet, settings: CellSettings, size: tuple[int, int]):
    """(capture, origin, key): from this worker's memo or the disk cache, else the LDM runs.

    origin is ``computed`` (this run ran the LDM; its timings are this device's) or ``disk``
    (read from the latent cache, timed when it was computed).
    """
    from pid_models.ldm import LatentCache, capture, capture_key, spec_for

    if models.pipeline is None:
        raise RuntimeError("from_ldm cell without an LDM pipeline (load_models was given no ldm)")
    ldm = settings.ldm or LdmOptions()
    spec = spec_for(cell.backbone, models.pipeline)
    steps = ldm.steps or spec.steps
    overrides = {} if ldm.guidance_scale is None else {"guidance_scale": ldm.guidance_scale}
    key = capture_key(
        cell.backbone, pipeline_identity(models), cell.item.caption, *size, steps, cell.seed,
        settings.save_xt_steps, {**spec.call_kwargs(), **overrides},
    )  # fmt: skip
    if key in models.captures:
        return (*models.captures[key], key)
    cache = LatentCache(ldm.cache_dir or default_latent_cache())
    found, origin = cache.get(key), "disk"
    if found is None:
        if not models.pipeline_warm and settings.timing.warmup > 0:
            warm_pipeline(models.pipeline, cell, size, overrides)
        models.pipeline_warm = True
        found, origin = capture(
            models.pipeline, cell.backbone, cell.item.caption, *size, steps=steps,
            save_xt_steps=settings.save_xt_steps, seed=cell.seed, **overrides,
        ), "computed"  # fmt: skip
        cache.put(key, found)
    models.captures[key] = (found, origin)
    return found, origin, key


def warm_pipeline(pipe: Any, cell: Any, size: tuple[int, int], overrides: dict) -> None:
    """One short untimed LDM call (2 steps), so the first capture's timings exclude start-up."""
    from pid_models.ldm import capture

    capture(pipe, cell.backbone, "warm-up", *size, steps=2, save_xt_steps=(), seed=0, **overrides)


def default_latent_cache() -> Path:
    """$PID_BENCH_CACHE/latents, else ~/.cache/pid_bench/latents (shared by every run)."""
    from pid_models.caption import default_cache_dir

    return default_cache_dir() / "latents"
