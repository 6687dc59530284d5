"""One cell on one device: source -> latent -> [noise] -> every decoder -> timing, memory, metrics.

Runs inside a worker. Rows are small dicts (columns of `pid_bench.schema`); images go to PNG
files under the run directory, written after the timed span.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pid_bench.gpu import gpu_state, gpu_versions
from pid_bench.manifests import is_upsampled, reference_crop
from pid_bench.memory import CPU_REASON, modules_of, peak_fields, place, weights_bytes
from pid_bench.metrics import (
    RESIZE_KERNEL,
    MetricContext,
    expand_metric_names,
    is_set_level,
    measure,
    protocol_fields,
    to_unit_range,
)
from pid_bench.metrics import (
    bicubic_resize as resize,
)
from pid_bench.schema import COLUMNS
from pid_bench.store import StorageError, writing
from pid_bench.suite import BUILTIN_DECODERS, LdmOptions, TeacherOptions
from pid_bench.timing import TimingPolicy, time_once, timed, timing_fields
from pid_models.codecs import LatentCodec, add_noise
from pid_models.decoder import PiDDecoder
from pid_models.flops import decode_flops, peak_tflops
from pid_models.registry import EMBEDDED_PAIRS, RANDOM_BACKBONES, TRAINED_MAX_SIDE, resolve
from pid_models.teacher import NEGATIVE_PROMPT, dynamic_shift
from pid_models.tiling import plan_tiles


@dataclass
class ModelSet:
    """Everything a cell of one (backbone, ckpt_type) needs, loaded once per worker."""

    pid: PiDDecoder
    codec: LatentCodec
    random_weights: bool
    pipeline: Any = None  # from_ldm: the backbone's diffusers LDM pipeline
    captures: dict = field(default_factory=dict)  # capture key -> (Capture, origin): a memo
    baselines: dict = field(default_factory=dict)  # baseline name -> loaded SR upscaler
    teacher: Any = None  # pid-teacher: the undistilled network, loaded on first use
    pipeline_warm: bool = False


def model_identity(backbone: str, ckpt_type: str) -> str:
    """Names the weights a cell runs with, without loading them (part of the cell id)."""
    if (backbone, ckpt_type) in EMBEDDED_PAIRS:
        from pid_models.tiny import TINY_NET_KWARGS, TINY_VAE_CONFIG, trained_identity

        config = json.dumps(
            [dict(TINY_NET_KWARGS), dict(TINY_VAE_CONFIG)], sort_keys=True, default=list
        )
        weights = "seed=0" if backbone in RANDOM_BACKBONES else trained_identity()
        return f"{backbone}/{ckpt_type}:{weights}:{hashlib.sha256(config.encode()).hexdigest()[:12]}"
    experiment = resolve(backbone, ckpt_type)
    config = json.dumps(dict(experiment.net_kwargs), sort_keys=True)
    return f"{backbone}:{experiment.name}:{hashlib.sha256(config.encode()).hexdigest()[:12]}"


def load_models(
    backbone: str,
    ckpt_type: str,
    device: str,
    checkpoints: str | None = None,
    ldm: LdmOptions | None = None,
    pid_options: dict | None = None,
) -> ModelSet:
    """PiD and the native codec of (backbone, ckpt_type), and with `ldm` (from_ldm cells) the
    backbone's LDM pipeline; released weights from local files only. `pid_options` are
    `PiDDecoder` keyword arguments (`CellSettings.pid_options`)."""
    pid_options = pid_options or {}
    pipeline = load_ldm_pipeline(backbone, device, ldm) if ldm is not None else None
    if (backbone, ckpt_type) in EMBEDDED_PAIRS:
        from pid_models.tiny import build_tiny_codec, build_trained_tiny_codec

        random = backbone in RANDOM_BACKBONES
        pid = PiDDecoder.tiny(seed=0, device=device, trained=not random, **pid_options)
        codec = build_tiny_codec(0) if random else build_trained_tiny_codec()
        return ModelSet(pid, codec.to(device), random, pipeline)
    from pid_models.codecs import load_codec

    codec = load_codec(backbone, checkpoints, device)  # small: fails fast before PiD loads
    pid = PiDDecoder.from_pretrained(
        backbone, ckpt_type, checkpoints, device=device, **pid_options
    )
    return ModelSet(pid, codec, False, pipeline)


_LDM_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def load_ldm_pipeline(backbone: str, device: str, ldm: LdmOptions) -> Any:
    """The suite's pipeline for `backbone` (else the registry's repo) from local files only.

    dtype ``auto``: bf16 on CUDA (upstream's default), float32 on CPU.
    """
    from pid_models.ldm import load_pipeline

    if ldm.dtype == "auto":
        dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    else:
        dtype = _LDM_DTYPES[ldm.dtype]
    return load_pipeline(backbone, ldm.source(backbone), device=device, dtype=dtype)


@dataclass(frozen=True)
class CellSettings:
    """What every cell of a run shares (from the suite and the driver)."""

    run_id: str
    suite: str
    decoders: tuple[str, ...]
    metrics: tuple[str, ...]
    timing: TimingPolicy
    save_images: bool
    run_dir: str
    provenance: dict = field(default_factory=dict)  # git sha, versions
    checkpoints: str | None = None  # PiD download root (else $PID_BENCH_CHECKPOINTS)
    ldm: LdmOptions | None = None  # from_ldm suites
    save_xt_steps: tuple[int, ...] = ()  # every x_t step of the suite: one capture serves all
    faults: dict | None = None  # test-only fault injection (pid_bench.runner.FAULTS_ENV)
    tile_size: int | None = None  # PiD decodes in tiles of this many output pixels
    tile_overlap: int = 256
    tf32: bool = True  # suite.pid.tf32: TF32 during CUDA PiD decodes
    generator_device: str = "decode"  # suite.pid.generator_device
    reference: str = "full_size"  # suite.reference: full_size | upsampled
    metric_paths: tuple[str, ...] = ()  # folders custom metric modules import from
    baselines: dict = field(default_factory=dict)  # suite.baselines as plain data
    teacher: dict = field(default_factory=dict)  # suite.teacher as plain data

    def pid_options(self, cell=None) -> dict:
        """Keyword arguments of `PiDDecoder` from the suite's `pid:` options and the cell's
        precision and compile axes."""
        device = None if self.generator_device == "decode" else self.generator_device
        options = {"tf32": self.tf32, "generator_device": device}
        if cell is not None:
            compile_mode = False if cell.compile == "eager" else cell.compile
            options |= {"precision": cell.precision, "compile": compile_mode}
        return options


# ---- image preparation ------------------------------------------------------------------------


def lanczos(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """PIL Lanczos resize, for the native+lanczos baseline."""
    from PIL import Image

    out = []
    for img in image.float().clamp(-1, 1).cpu():
        pixels = ((img + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        resized = Image.fromarray(pixels).resize((size[1], size[0]), Image.Resampling.LANCZOS)
        out.append(torch.from_numpy(np.asarray(resized)).permute(2, 0, 1))
    return (torch.stack(out).float() / 127.5 - 1).to(image.device)


def reference_at(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Centre-crop [3, h, w] to the aspect of `size`, then resize once -> [1, 3, H, W]."""
    _, h, w = image.shape
    crop_h, crop_w = reference_crop(h, w, size)
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    return resize(image[None, :, top : top + crop_h, left : left + crop_w], size)


# ---- the cell ---------------------------------------------------------------------------------


def run_cell(
    cell, cell_id: str, models: ModelSet, settings: CellSettings, device: str
) -> list[dict]:
    """All rows of one cell: one per decoder, each `ok` or carrying its error."""
    dev = torch.device(device)
    started_at, started = utc_now(), time.perf_counter()
    base = _base_row(cell, cell_id, models, settings, dev)
    try:
        prepare = _prepare_from_ldm if cell.mode == "from_ldm" else _prepare
        prepared = prepare(cell, models, settings, dev)
    except Exception as exc:  # the whole cell failed before any decoder ran
        return [{**base, "decoder": d, **failure_fields(exc)} for d in settings.decoders]
    base |= prepared["row"]
    rows, images = [], {}
    for decoder in settings.decoders:
        try:
            inject_fault(settings.faults, cell_id, decoder)
            row, image = _run_decoder(decoder, cell, models, prepared, settings, dev)
            images[decoder] = image
        except Exception as exc:
            row = failure_fields(exc)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        rows.append({**base, "decoder": decoder, **row})
    if settings.save_images:
        try:
            _save_images(rows, images, prepared["reference"], cell_id, settings)
        except StorageError as exc:  # the decodes were fine: a storage failure, not the decoder's
            rows = [_unsaved(row, exc, settings.run_dir) for row in rows]
    wall = (time.perf_counter() - started) * 1000
    return [{**row, "cell_wall_ms": wall, "started_at": started_at} for row in rows]


_DTYPE_NAMES = {"bf16-autocast": "bfloat16-autocast", "bf16": "bfloat16", "fp32": "float32"}


def _base_row(cell, cell_id: str, models: ModelSet, settings: CellSettings, dev) -> dict:
    experiment = (
        cell.backbone
        if (cell.backbone, cell.ckpt_type) in EMBEDDED_PAIRS
        else resolve(cell.backbone, cell.ckpt_type).name
    )
    return {
        **{k: v for k, v in settings.provenance.items() if k in COLUMNS},
        "run_id": settings.run_id,
        "suite": settings.suite,
        "cell_id": cell_id,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_name(),
        **gpu_versions(dev),
        "dtype": _DTYPE_NAMES.get(models.pid.precision, models.pid.precision),
        "precision": models.pid.precision,
        "compile": cell.compile,
        "generator_device": str(models.pid.generator_device),
        "random_weights": models.random_weights,
        "mode": cell.mode,
        "backbone": cell.backbone,
        "ckpt_type": cell.ckpt_type,
        "experiment": experiment,
        "sigma": float(cell.sigma),
        "save_xt_step": cell.save_xt_step,
        "seed": cell.seed,
        "pid_steps": cell.pid_steps,
        "image_id": cell.item.id,
        "caption": cell.item.caption,
        "source": cell.item.image,
        "out_height": cell.resolution[0],
        "out_width": cell.resolution[1],
        "downsample_kernel": RESIZE_KERNEL,
        **protocol_fields(),
        "warmup": settings.timing.warmup,
    }


def _encode_caption(models: ModelSet, caption: str, dev) -> tuple[float, torch.Tensor]:
    """Caption embeddings, timed; the caption encoder is brought to the device only when the
    caption is in no cache (it leaves again when a decoder is measured)."""
    encoder = models.pid.caption_encoder
    if getattr(encoder, "_lookup", lambda c: None)(caption) is None:
        place(modules_of(encoder), [], dev)
    return time_once(lambda: models.pid.encode_captions(caption, 1), dev)


def _prepare(cell, models: ModelSet, settings: CellSettings, dev) -> dict:
    """from_clean: reference -> low-res input -> codec latent -> noise at the cell's σ."""
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
    caption_ms, y = _encode_caption(models, cell.item.caption, dev)
    row = {
        "in_height": lq.shape[-2],
        "in_width": lq.shape[-1],
        "source_height": source.shape[-2],
        "source_width": source.shape[-1],
        "latent_shape": "x".join(str(s) for s in latent.shape[1:]),
        "encode_ms": encode_ms,
        "caption_ms": caption_ms,
    }
    return {
        "reference": reference,
        "reference_native": lq,
        "crop": reference_crop(source.shape[-2], source.shape[-1], (out_h, out_w)),
        "latent": noisy,
        "clean_latent": latent,
        "sigma": float(cell.sigma),
        "y": y,
        "row": row,
    }


def _prepare_from_ldm(cell, models: ModelSet, settings: CellSettings, dev) -> dict:
    """from_ldm: the prompt's capture (cached on disk), its x_t at the cell's step (None: x0)
    with the scheduler's σ; no reference image. The LDM runs at the output size / PiD's scale."""
    from pid_models.ldm import capture_label

    out_h, out_w = cell.resolution
    scale = models.pid.scale
    if out_h % scale or out_w % scale:
        raise ValueError(f"resolution {out_h}x{out_w} is not a multiple of PiD's scale {scale}")
    ldm_size = (out_h // scale, out_w // scale)
    capture, origin, key = _capture(cell, models, settings, ldm_size)
    step = cell.save_xt_step
    if step not in capture.latents:
        raise KeyError(f"capture {key} has no {capture_label(step)} latent")
    latent = capture.latents[step].to(dev)
    caption_ms, y = _encode_caption(models, cell.item.caption, dev)
    row = {
        "in_height": ldm_size[0],
        "in_width": ldm_size[1],
        "latent_shape": "x".join(str(s) for s in latent.shape[1:]),
        "sigma": capture.sigmas[step],
        "caption_ms": caption_ms,
        "ldm_pipeline": _pipeline_identity(models),
        "ldm_steps": capture.steps,
        "ldm_ms_to_step": capture.ldm_ms_to_step[step],
        "ldm_total_ms": capture.ldm_total_ms,
        "ldm_cache": origin,
        "ldm_capture_key": key,
    }
    clean = latent if step is None else None  # only x0 is a clean latent
    return {
        "reference": None,
        "reference_native": None,
        "crop": None,
        "latent": latent,
        "clean_latent": clean,
        "sigma": capture.sigmas[step],
        "y": y,
        "row": row,
    }


def _pipeline_identity(models: ModelSet) -> str:
    from pid_models.ldm import pipeline_identity

    return pipeline_identity(models.pipeline)


def _capture(cell, models: ModelSet, settings: CellSettings, size: tuple[int, int]):
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
        cell.backbone, _pipeline_identity(models), cell.item.caption, *size, steps, cell.seed,
        settings.save_xt_steps, {**spec.call_kwargs(), **overrides},
    )  # fmt: skip
    if key in models.captures:
        return (*models.captures[key], key)
    cache = LatentCache(ldm.cache_dir or default_latent_cache())
    found, origin = cache.get(key), "disk"
    if found is None:
        if not models.pipeline_warm and settings.timing.warmup > 0:
            _warm_pipeline(models.pipeline, cell, size, overrides)
        models.pipeline_warm = True
        found, origin = capture(
            models.pipeline, cell.backbone, cell.item.caption, *size, steps=steps,
            save_xt_steps=settings.save_xt_steps, seed=cell.seed, **overrides,
        ), "computed"  # fmt: skip
        cache.put(key, found)
    models.captures[key] = (found, origin)
    return found, origin, key


def _warm_pipeline(pipe, cell, size: tuple[int, int], overrides: dict) -> None:
    """One short untimed LDM call (2 steps), so the first capture's timings exclude start-up."""
    from pid_models.ldm import capture

    capture(pipe, cell.backbone, "warm-up", *size, steps=2, save_xt_steps=(), seed=0, **overrides)


def default_latent_cache() -> Path:
    """$PID_BENCH_CACHE/latents, else ~/.cache/pid_bench/latents (shared by every run)."""
    from pid_models.caption import default_cache_dir

    return default_cache_dir() / "latents"


#: decoder -> the resize kernel it uses to reach the output size (None: PiD decodes there itself).
RESIZE_KERNELS = {
    "pid": None,
    "pid-teacher": None,
    "native": None,  # the native decode at its own size, scored there
    "native+bicubic": RESIZE_KERNEL,
    "native+lanczos": "lanczos",
}


assert set(RESIZE_KERNELS) == set(BUILTIN_DECODERS), "pid_bench.suite and cell disagree"


def teacher_net(cell, models: ModelSet, settings: CellSettings):
    """The undistilled teacher of the cell's backbone, loaded once per worker; the embedded
    tiny backbones' teacher is their own PiD network (it exercises the sampler only)."""
    if models.teacher is None:
        if (cell.backbone, cell.ckpt_type) in EMBEDDED_PAIRS:
            models.teacher = models.pid.net
        else:
            from pid_models.checkpoints import load_experiment_net
            from pid_models.registry import teacher

            experiment = teacher(cell.backbone, cell.ckpt_type)
            device = models.pid.device
            models.teacher = load_experiment_net(experiment, settings.checkpoints, device)
    return models.teacher


def baseline_for(decoder: str, models: ModelSet, settings: CellSettings, dev):
    """The SR baseline of a `native+<name>` decoder, loaded once per worker."""
    from pid_models.baselines import load_diffusion_upscaler, load_spandrel

    name = decoder.removeprefix("native+")
    if name not in models.baselines:
        options = settings.baselines.get(name)
        if options is None:
            raise ValueError(f"decoder {decoder}: no baselines.{name} entry in the suite")
        if options.get("kind") == "sd_x4_upscaler":
            models.baselines[name] = load_diffusion_upscaler(
                name, options.get("source"), models.pid.scale, dev, options["steps"],
                options["guidance_scale"], options["noise_level"],
            )  # fmt: skip
        else:
            models.baselines[name] = load_spandrel(
                name, options["path"], models.pid.scale, dev, options.get("tile"),
                options.get("tile_overlap", 32),
            )  # fmt: skip
    return models.baselines[name]


def _decoder_fn(
    decoder: str, cell, models: ModelSet, prepared: dict, settings: CellSettings
) -> Callable[[], torch.Tensor]:
    size, latent = tuple(cell.resolution), prepared["latent"]
    if decoder == "pid":
        sigma, y = prepared["sigma"], prepared["y"]
        tiles = {}
        if settings.tile_size:
            tiles = {"tile_size": settings.tile_size, "tile_overlap": settings.tile_overlap}
        return lambda: models.pid.decode(
            latent, sigma=sigma, y=y, seed=cell.seed, steps=cell.pid_steps, **tiles
        )
    if decoder == "pid-teacher":
        options = TeacherOptions(**settings.teacher)
        net = teacher_net(cell, models, settings)
        negative = options.negative_prompt or NEGATIVE_PROMPT
        y_null = None if options.cfg_scale == 1 else models.pid.encode_captions(negative, 1)
        return lambda: models.pid.decode_teacher(
            net, latent, prepared["sigma"], prepared["y"], y_null, seed=cell.seed,
            steps=options.steps, cfg_scale=options.cfg_scale, shift=options.shift,
        )  # fmt: skip
    if decoder == "native":
        return lambda: models.codec.decode(latent)
    if decoder == "native+bicubic":
        return lambda: resize(models.codec.decode(latent), size)
    if decoder == "native+lanczos":
        return lambda: lanczos(models.codec.decode(latent), size)
    if decoder.startswith("native+"):
        from pid_models.baselines import DiffusionUpscaler

        upscaler = baseline_for(decoder, models, settings, latent.device)
        if isinstance(upscaler, DiffusionUpscaler):  # the caption is its prompt
            caption, seed = cell.item.caption, cell.seed
            return lambda: upscaler(models.codec.decode(latent), caption, seed)
        return lambda: upscaler(models.codec.decode(latent))
    raise ValueError(f"unknown decoder {decoder!r}; known: {', '.join(RESIZE_KERNELS)}")


def _run_decoder(decoder: str, cell, models: ModelSet, prepared: dict, settings: CellSettings, dev):
    fn = _decoder_fn(decoder, cell, models, prepared, settings)
    keep, others = _placement(decoder, models)
    place(keep, others, dev)
    compiled = _compile_first(decoder, fn, models, dev)
    resident = None
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        resident = torch.cuda.memory_allocated(dev)
    graphs_before = _graph_count() if compiled else None  # dynamo's counters: compiled runs only
    state_before, state_reason = gpu_state(dev)
    with torch.no_grad():
        image, times, timer = timed(fn, settings.timing, dev)
    state_after, _ = gpu_state(dev)
    if compiled:
        compiled["recompiles"] = _graph_count() - graphs_before
    row = {
        **compiled,
        "status": "ok",
        **timing_fields(times),
        "timer": timer,
        "decoded_height": image.shape[-2],
        "decoded_width": image.shape[-1],
        "resize_kernel": RESIZE_KERNELS[decoder]
        if decoder in RESIZE_KERNELS
        else models.baselines[decoder.removeprefix("native+")].describe(),
    }
    if decoder == "pid" and settings.tile_size:
        row |= {"tile_size": settings.tile_size, "tile_overlap": settings.tile_overlap}
    if decoder == "pid":
        row["outside_envelope"] = max(cell.resolution) > TRAINED_MAX_SIDE[cell.ckpt_type]
        row["sampler"] = f"distilled SDE, {cell.pid_steps} steps"
    if decoder == "pid-teacher":
        options = TeacherOptions(**settings.teacher)
        shift = options.shift or dynamic_shift(*cell.resolution)
        row["sampler"] = (
            f"DPM-Solver++(2M), {options.steps} steps, CFG {options.cfg_scale:g}, "
            f"shift {shift:.3f}"
        )
    row |= peak_fields(dev, resident) | {"weights_bytes": weights_bytes(keep)}
    row |= {"gpu_state_before": state_before, "gpu_state_after": state_after}
    row |= _compute_fields(decoder, cell, models, prepared, settings, row, dev, state_reason)
    if dev.type == "cuda":
        row["tf32"] = models.pid.tf32 if decoder == "pid" else torch.backends.cuda.matmul.allow_tf32
    place(modules_of(models.codec), [], dev)  # the twin metrics decode natively
    # native is scored at its own size (the codec's reconstruction); every other decoder at the
    # output size, the size it delivers.
    scored = image.float() if decoder == "native" else resize(image.float(), tuple(cell.resolution))
    context, reference_row = _metric_context(models, prepared, settings, decoder, scored)
    row |= reference_row | {"scored_height": scored.shape[-2], "scored_width": scored.shape[-1]}
    row |= _metrics(scored, context, settings.metrics)
    return row, scored


def _graph_count() -> int:
    """Graphs torch.compile has produced in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _compile_first(decoder: str, fn, models: ModelSet, dev) -> dict[str, Any]:
    """A compiled PiD's first call at this size, apart from the timed span: `compile_ms` (null
    when this worker compiled the size before) and the graphs it produced."""
    if decoder != "pid" or models.pid.compile_mode is None:
        return {}
    before = _graph_count()
    with torch.no_grad():
        ms, _ = time_once(fn, dev)
    graphs = _graph_count() - before
    return {"compile_ms": ms if graphs else None, "compile_graphs": graphs}


def _placement(decoder: str, models: ModelSet) -> tuple[list, list]:
    """(modules of this decoder, modules to move off the device while it is measured).

    A from_ldm pipeline stays where it is (moving a 12B LDM per cell costs more than the decode);
    it is in the allocator's peak but not in `peak_activation_bytes`. A PiD compiled with CUDA
    graphs stays too: the graphs hold its weights' addresses.
    """
    pid_modules = modules_of(models.pid.net) + modules_of(models.pid.caption_encoder)
    codec = modules_of(models.codec)
    if decoder == "pid":
        return modules_of(models.pid.net), codec + modules_of(models.pid.caption_encoder)
    if decoder == "pid-teacher":
        others = codec + modules_of(models.pid.caption_encoder)
        if models.teacher is not models.pid.net:
            others += modules_of(models.pid.net)
        return modules_of(models.teacher), others
    upscaler = models.baselines.get(decoder.removeprefix("native+"))
    if upscaler is not None:
        codec = codec + upscaler.modules
    if models.pid.compile_mode in CUDA_GRAPH_MODES:
        return codec, modules_of(models.pid.caption_encoder)
    return codec, pid_modules


#: torch.compile modes that record CUDA graphs (fixed weight addresses).
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def _compute_fields(
    decoder, cell, models, prepared, settings, row: dict, dev, state_reason: str | None
) -> dict:
    """FLOPs of the decode (PiD), achieved TFLOP/s and MFU (CUDA), and the reason for each
    measurement column left null (`measure_notes`)."""
    notes: dict[str, str] = {}
    if state_reason:
        notes.update(gpu_state_before=state_reason, gpu_state_after=state_reason)
    out: dict[str, Any] = {}
    if dev.type != "cuda":
        for column in ("peak_mem_allocated_bytes", "peak_mem_reserved_bytes", "peak_activation_bytes"):
            notes[column] = CPU_REASON
    elif decoder != "pid" and models.pid.compile_mode in CUDA_GRAPH_MODES:
        notes["peak_mem_allocated_bytes"] = "includes PiD's weights: compiled with CUDA graphs, not moved"
    if decoder == "pid":
        out["flops"] = _pid_flops(cell, models, prepared, settings)
    elif decoder == "pid-teacher":
        options = TeacherOptions(**settings.teacher)
        calls = options.steps * (1 if options.cfg_scale == 1 else 2)
        out["flops"] = decode_flops(
            models.teacher.config, tuple(cell.resolution), calls, text_len=prepared["y"].shape[1]
        )
    else:
        notes["flops"] = "not modelled: pid_models.flops counts PiD and its teacher only"
    if out.get("flops") is None:
        notes.update(achieved_tflops="no FLOP count", mfu="no FLOP count")
    elif dev.type != "cuda":
        notes.update(achieved_tflops="CPU: a GPU figure", mfu="CPU: a GPU figure")
    else:
        out["achieved_tflops"] = out["flops"] / (row["latency_ms_p50"] / 1000) / 1e12
        peak = peak_tflops(torch.cuda.get_device_name(dev))
        if peak is None:
            notes["mfu"] = f"no dense bf16 peak for {torch.cuda.get_device_name(dev)} in pid_models.flops"
        else:
            out["mfu"] = out["achieved_tflops"] / peak
    return out | {"measure_notes": json.dumps(notes, sort_keys=True) if notes else None}


def _pid_flops(cell, models: ModelSet, prepared: dict, settings: CellSettings) -> int:
    config = models.pid.net.config
    size = tuple(cell.resolution)
    tiles = None
    if settings.tile_size:
        plan = plan_tiles(config, size, settings.tile_size, settings.tile_overlap)
        tiles = [(y1 - y0, x1 - x0) for y0, y1 in plan.rows for x0, x1 in plan.cols]
    return decode_flops(config, size, cell.pid_steps, tiles, text_len=prepared["y"].shape[1])


#: Metrics that compare with the native decode at its own size.
_NEEDS_NATIVE = {
    "lq_color_de2000",
    "hf_energy_ratio",
    "twin_psnr",
    "twin_ssim",
    "twin_lpips",
    "twin_pass",
    "midtone_chroma_shift",
    "shadow_green_bias",
}


def _metric_context(
    models: ModelSet, prepared: dict, settings: CellSettings, decoder: str, scored: torch.Tensor
) -> tuple[MetricContext, dict]:
    """What the metrics may compare with, and the row's reference columns.

    The reference is at the size the decoder is scored at; one that would be upsampled from the
    source is withheld (unless the suite says `reference: upsampled`), so a full-reference
    metric never rewards a decoder for matching an interpolation. The native decode is made
    once per cell, untimed.
    """
    native = None
    if _NEEDS_NATIVE & set(expand_metric_names(settings.metrics)):
        if "native_unit" not in prepared:
            with torch.no_grad():
                prepared["native_unit"] = to_unit_range(models.codec.decode(prepared["latent"]))
        native = prepared["native_unit"]
    size = tuple(scored.shape[-2:])
    reference = prepared["reference_native"] if decoder == "native" else prepared["reference"]
    row: dict = {}
    withheld = None
    if prepared["crop"] is not None:
        crop = prepared["crop"]
        row["reference_upsampled"] = is_upsampled(crop, size)
        if row["reference_upsampled"] and settings.reference != "upsampled":
            reference, withheld = None, f"reference upsampled from {crop[0]}x{crop[1]}"
    context = MetricContext(
        reference=None if reference is None else to_unit_range(reference),
        native=native,
        codec=models.codec,
        clean_latent=prepared.get("clean_latent"),
        scale=models.pid.scale,
        reference_reason=withheld,
    )
    return context, row


#: Why a set-level metric (fid, kid) has no value in a row: it compares sets of images.
SET_LEVEL_NOT_COMPUTED = (
    "set-level: one value per (setting, decoder) group, computed at the end of the run "
    "(RUN_DIR/sets/), not per row"
)


def _metrics(image: torch.Tensor, context: MetricContext, names: tuple[str, ...]) -> dict:
    """metric_<name> columns, extra_metrics for metrics without a column, and the reasons of
    every null in metric_notes (set-level metrics are computed per run, not here)."""
    names = expand_metric_names(names)
    set_level = [n for n in names if is_set_level(n)]
    per_row = [n for n in names if n not in set_level]
    result = measure(per_row, to_unit_range(image), context)
    columns, extra, notes = {}, {}, dict(result.reasons)
    notes |= dict.fromkeys(set_level, SET_LEVEL_NOT_COMPUTED)
    for name, value in result.values.items():
        if f"metric_{name}" in COLUMNS:
            columns[f"metric_{name}"] = value
        elif value is not None:
            extra[name] = value
    return {
        **columns,
        "extra_metrics": json.dumps(extra) if extra else None,
        "metric_notes": json.dumps(notes) if notes else None,
    }


def inject_fault(faults: dict | None, cell_id: str, decoder: str) -> None:
    """Test-only: raise the configured fault in the first decoder of a listed cell."""
    if not faults:
        return
    if cell_id in faults.get("oom", ()) and decoder == "pid":
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated by fault injection)")
    if cell_id in faults.get("error", ()) and decoder == "pid":
        raise RuntimeError("injected fault")


def failure_fields(exc: BaseException) -> dict:
    oom = type(exc).__name__ == "OutOfMemoryError"
    summary = "".join(traceback.format_exception(exc)[-3:]).strip()
    return {
        "status": "oom" if oom else "error",
        "error": f"{type(exc).__name__}: {exc}\n{summary}"[:4000],
    }


def _save_images(
    rows: list[dict], images: dict, reference: torch.Tensor | None, cell_id: str,
    settings: CellSettings,
) -> None:  # fmt: skip
    folder = Path(settings.run_dir) / "images" / cell_id
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
        if settings.faults and cell_id in settings.faults.get("storage", ()):  # tests only
            raise OSError(errno.ENOSPC, "No space left (simulated by fault injection)")
    if reference is not None:
        write_png(reference[0], folder / "reference.png")
    for row in rows:
        if row["decoder"] in images:
            name = row["decoder"].replace("+", "_") + ".png"
            write_png(images[row["decoder"]][0], folder / name)
            row["image_path"] = f"images/{cell_id}/{name}"
        if reference is not None:
            row["reference_path"] = f"images/{cell_id}/reference.png"


def _unsaved(row: dict, exc: StorageError, run_dir: str) -> dict:
    """An ok row whose images could not all be written becomes `storage_error` (the next run
    recomputes it); a decoder's own failure keeps its status."""
    if row["status"] != "ok":
        return row
    relative = os.path.relpath(exc.filename or run_dir, run_dir)
    error = StorageError(exc.errno, exc.strerror, relative).what()
    return {**row, "status": "storage_error", "error": f"StorageError: {error}",
            "image_path": None, "reference_path": None}  # fmt: skip


def write_png(image: torch.Tensor, path: Path) -> None:
    """[3, H, W] in [-1, 1] -> 8-bit RGB PNG (atomic; a refused write is a StorageError naming
    `path`, and leaves no temp file)."""
    from PIL import Image

    pixels = (
        ((image.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    )
    tmp = path.with_suffix(".tmp.png")
    with writing(path):
        try:
            Image.fromarray(pixels).save(tmp)
            tmp.replace(path)
        except BaseException:
            with contextlib.suppress(OSError):  # a read-only disk keeps it: the error matters
                tmp.unlink(missing_ok=True)
            raise


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"


def utc_now() -> datetime:
    return datetime.now(timezone.utc)
