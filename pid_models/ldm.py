"""The `from_ldm` path: a prompt through a diffusers LDM, x_t captured at the save_xt steps, and x0.

Tensors in, tensors out: no suites, no Ray. Three parts:

- `PIPELINES`: per backbone tag, the diffusers pipeline class, default HF repo id, default steps,
  guidance, extra call kwargs, optional save_xt steps and the recommended capture (pid_reference
  backbones README section 8). `load_pipeline` loads one from a local folder or the HF cache only.
- `capture`: runs the pipeline with `output_type="latent"` and a `callback_on_step_end` hook.
- `LatentCache`: captures on disk (safetensors + metadata JSON), keyed by `capture_key`.

Conventions (upstream `step_capture.XtCaptureCallback` / `decoder.capture_steps`):

- **K is 1-indexed**: "x_t at step K" is the latent after K scheduler steps (K network passes).
  The hook fires at loop index `K - 1`, after the scheduler stepped the latent to `sigmas[K]`, so
  its σ is `float(pipe.scheduler.sigmas[min(K, len(sigmas) - 1)])`, read from the scheduler after
  `set_timesteps` (any shift / dynamic shift included). `1 <= K <= steps`.
- **Final x0** (key `None`) is the pipeline's `output_type="latent"` result; its σ is
  `float(pipe.scheduler.sigmas[-1])`, 0.0 for the Euler and flow-matching Euler schedulers.
- **PiD latent layout**, always 4-D `(B, C, h, w)`, float32, on CPU:
  - `flux`, `qwenimage(-2512)`: packed `(B, (h/2)(w/2), 4C)`, token `i*(w/2)+j`, feature
    `4c + 2a + b` = `z[c, 2i+a, 2j+b]` -> `(B, 16, H/8, W/8)`.
  - `zimage(-turbo)`, `sd3`: already `(B, 16, H/8, W/8)`, kept as is.
  - `flux2*`: packed tokens `(B, h*w, 128)`, row-major over the `(H/16, W/16)` grid ->
    `(B, 128, H/16, W/16)`. A 4-D raw latent with the VAE's 32 channels (`Flux2KleinPipeline`'s
    final output) is 2x2-patchified and normalised with the VAE's BN running stats,
    `(P - running_mean) / sqrt(running_var + batch_norm_eps)`.
  - `sdxl`: the Euler (VE) frame `x_eu = z + σ_eu ε` is converted to PiD's VP training frame,
    `x_vp = x_eu / sqrt(σ_eu² + 1)` and `σ_vp = σ_eu / sqrt(σ_eu² + 1)`; the recorded σ is σ_vp.
    Every other backbone records the scheduler σ unchanged (flow matching).
- **Timing**: `ldm_ms_to_step[K]` is the wall clock (`time.perf_counter`, after
  `torch.cuda.synchronize()` on CUDA) from just before the pipeline call (prompt encoding included)
  to the end of step K, minus the time the capture hook itself spent copying earlier captures.
  `ldm_total_ms` (also `ldm_ms_to_step[None]`) runs to the pipeline's return.
- The generator is seeded `seed` on the pipeline's execution device (upstream: a CUDA generator
  seeded `seed + prompt_idx`); one image per prompt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from pid_models.codecs.flux2 import patchify
from pid_models.registry import EMBEDDED_PAIRS, canonical_backbone

log = logging.getLogger(__name__)

_LONG_TEXT = MappingProxyType({"max_sequence_length": 512})
_QWEN_KWARGS = MappingProxyType(
    {"max_sequence_length": 512, "true_cfg_scale": 4.0, "negative_prompt": " "}
)


@dataclass(frozen=True)
class LdmSpec:
    """One backbone's LDM defaults (upstream `pipeline_registry.PIPELINE_REGISTRY`)."""

    tag: str
    pipeline_class: str  # a class name in the `diffusers` namespace
    repo_id: str  # default HF model id
    steps: int  # default num_inference_steps
    guidance_scale: float
    extra_kwargs: Mapping[str, Any] = field(default_factory=dict)
    save_xt_steps: tuple[int, ...] = ()  # the README's optional --save_xt_steps
    recommended_xt: int | None = None  # the recommended latent: a step K, or None = x0

    def call_kwargs(self) -> dict[str, Any]:
        """The defaults the pipeline is called with (overridable by `capture(**kw)`)."""
        return {"guidance_scale": self.guidance_scale, **self.extra_kwargs}


def _spec(tag: str, cls: str, repo: str, steps: int, guidance: float, extra, save, rec) -> LdmSpec:
    return LdmSpec(tag, cls, repo, steps, guidance, MappingProxyType(dict(extra)), tuple(save), rec)


#: Every diffusers-backed LDM, keyed by backbone tag (aliases have their own pipelines).
PIPELINES: Mapping[str, LdmSpec] = MappingProxyType(
    {
        s.tag: s
        for s in [
            _spec(
                "flux", "FluxPipeline", "black-forest-labs/FLUX.1-dev", 28, 3.5,
                _LONG_TEXT, (22, 24, 26), 24,
            ),
            _spec(
                "sd3", "StableDiffusion3Pipeline",
                "stabilityai/stable-diffusion-3-medium-diffusers", 28, 4.0, {}, (22, 24, 26), 24,
            ),
            _spec(
                "sdxl", "StableDiffusionXLPipeline", "stabilityai/stable-diffusion-xl-base-1.0",
                30, 7.5, {}, (24, 26, 28), 26,
            ),
            _spec(
                "flux2", "Flux2Pipeline", "black-forest-labs/FLUX.2-dev", 50, 4.0,
                _LONG_TEXT, (44, 46, 48), 46,
            ),
            _spec(
                "flux2-klein-4b", "Flux2KleinPipeline", "black-forest-labs/FLUX.2-klein-4B",
                4, 1.0, _LONG_TEXT, (3,), None,
            ),
            _spec(
                "flux2-klein-9b", "Flux2KleinPipeline", "black-forest-labs/FLUX.2-klein-9B",
                4, 1.0, _LONG_TEXT, (3,), None,
            ),
            _spec(
                "qwenimage", "QwenImagePipeline", "Qwen/Qwen-Image", 50, 4.0,
                _QWEN_KWARGS, (44, 46, 48), 44,
            ),
            _spec(
                "qwenimage-2512", "QwenImagePipeline", "Qwen/Qwen-Image-2512", 50, 4.0,
                _QWEN_KWARGS, (44, 46, 48), 44,
            ),
            _spec(
                "zimage", "ZImagePipeline", "Tongyi-MAI/Z-Image", 50, 5.0,
                _LONG_TEXT, (44, 46, 48), 46,
            ),
            _spec(
                "zimage-turbo", "ZImagePipeline", "Tongyi-MAI/Z-Image-Turbo", 9, 0.0,
                _LONG_TEXT, (7,), None,
            ),
        ]
    }
)  # fmt: skip

#: Backbones PiD decodes but whose LDM is not a diffusers pipeline.
UNAVAILABLE: Mapping[str, str] = MappingProxyType(
    {
        "dinov2": "its LDM is RAE's class-conditional DiT-DH-XL (ImageNet-512) from the RAE repo, "
        "not a diffusers pipeline; capture its latents yourself and decode them from_clean-style",
        "siglip": "its LDM is Scale-RAE (nyu-visionx/Scale-RAE-Qwen1.5B_DiT2.4B) from its repo, "
        "not a diffusers pipeline; capture its latents yourself and decode them from_clean-style",
        "tiny": "the embedded tiny backbone has no default LDM; build a tiny pipeline, save it "
        "with save_pretrained and name its folder in the suite (ldm: {pipelines: {tiny: DIR}})",
        "tiny-random": "the embedded tiny-random backbone has no default LDM; build a tiny "
        "pipeline, save it with save_pretrained and name its folder in the suite "
        "(ldm: {pipelines: {tiny-random: DIR}})",
    }
)


class LdmUnavailable(RuntimeError):
    """A backbone without a diffusers LDM pipeline here."""


def pipeline_spec(backbone: str) -> LdmSpec:
    """The `PIPELINES` entry of `backbone`, or `LdmUnavailable` / `ValueError` with the reason."""
    if backbone in PIPELINES:
        return PIPELINES[backbone]
    if backbone in UNAVAILABLE:
        raise LdmUnavailable(f"no from_ldm pipeline for {backbone!r}: {UNAVAILABLE[backbone]}")
    raise ValueError(f"unknown LDM backbone {backbone!r}; known: {', '.join(sorted(PIPELINES))}")


def spec_for(backbone: str, pipe: Any) -> LdmSpec:
    """The spec of `backbone`, or, for a backbone without one (the embedded `tiny`), the first
    registry entry of the supplied pipeline's class: its latent layout is the class's."""
    if backbone not in {b for b, _ in EMBEDDED_PAIRS}:
        return pipeline_spec(backbone)
    name = type(pipe).__name__
    for spec in PIPELINES.values():
        if spec.pipeline_class == name:
            return spec
    known = sorted({s.pipeline_class for s in PIPELINES.values()})
    raise ValueError(
        f"{name} is not a pipeline class pid-bench can capture from; known: {', '.join(known)}"
    )


# --------------------------------------------------------------------------- loading


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _hf_cache_dir() -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    return str(HF_HUB_CACHE)


def _missing(backbone: str, source: str, detail: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"LDM pipeline for {backbone!r} not found: {detail}. Nothing is downloaded here; fetch "
        f"it first with `hf download {source}` (gated repos need `hf auth login` and accepted "
        "terms), or pass the path of a local pipeline folder"
    )


_REPO_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def _looks_like_path(source: str) -> bool:
    """Anything but an `owner/name` repo id is a local path."""
    return not _REPO_ID_RE.fullmatch(source)


def load_pipeline(
    backbone: str,
    name_or_path: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> Any:
    """The backbone's diffusers pipeline from a local folder or the HF cache, never the network.

    `name_or_path` defaults to the registry's repo id. A missing folder or an uncached repo raises
    `FileNotFoundError` naming it and the `hf download <repo>` command. Default device: CUDA if
    available; default dtype: bf16 (upstream's default).
    """
    import diffusers

    if backbone not in {b for b, _ in EMBEDDED_PAIRS} or name_or_path is None:
        spec = pipeline_spec(backbone)
        cls_names = (spec.pipeline_class,)
        default_repo = spec.repo_id
    else:  # a backbone without a registry pipeline (tiny): any capturable class, from the folder
        cls_names = tuple(sorted({s.pipeline_class for s in PIPELINES.values()}))
        default_repo = str(name_or_path)
    source = str(name_or_path or default_repo)
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise _missing(backbone, default_repo, f"{path} has no model_index.json")
        source = str(path)
    elif _looks_like_path(source):
        raise _missing(backbone, default_repo, f"no folder {path}")
    cls = getattr(diffusers, cls_names[0]) if len(cls_names) == 1 else diffusers.DiffusionPipeline
    try:
        pipe = cls.from_pretrained(source, dtype=dtype, local_files_only=True)
    except OSError as err:
        if path.is_dir():
            raise
        detail = f"{source} is not in the Hugging Face cache ({_hf_cache_dir()})"
        raise _missing(backbone, source, detail) from err
    if type(pipe).__name__ not in cls_names:
        raise ValueError(
            f"{source} holds a {type(pipe).__name__}; {backbone} needs one of {', '.join(cls_names)}"
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device or _default_device())


def pipeline_identity(pipe: Any) -> str:
    """What identifies a loaded pipeline's outputs: class, source (snapshot path), dtype, device."""
    name = getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path", "")
    return f"{type(pipe).__name__}:{name}:{pipe.dtype}:{_device(pipe).type}"


# --------------------------------------------------------------------------- layouts


def unpack_2x2(packed: torch.Tensor, height: int, width: int, vae_scale_factor: int = 8):
    """FLUX.1 / Qwen-Image packing (B, (h/2)(w/2), 4C) -> (B, C, h, w), h = 2*(H // 2f)."""
    b, n, c4 = packed.shape
    h, w = (2 * (int(s) // (vae_scale_factor * 2)) for s in (height, width))
    if n != (h // 2) * (w // 2) or c4 % 4:
        raise ValueError(f"packed latent {tuple(packed.shape)} does not fit {height}x{width}")
    x = packed.reshape(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c4 // 4, h, w)


def unpack_tokens(tokens: torch.Tensor, height: int, width: int, vae_scale_factor: int = 8):
    """FLUX.2 tokens (B, h*w, C), row-major over the (H/2f, W/2f) grid -> (B, C, h, w)."""
    b, n, c = tokens.shape
    h, w = (int(s) // (vae_scale_factor * 2) for s in (height, width))
    if n != h * w:
        raise ValueError(f"FLUX.2 tokens {tuple(tokens.shape)} do not fit {height}x{width}")
    return tokens.transpose(1, 2).reshape(b, c, h, w)


def ve_to_vp(latent: torch.Tensor, sigma_eu: float) -> tuple[torch.Tensor, float]:
    """SDXL Euler frame -> VP training frame: x / sqrt(σ²+1), σ / sqrt(σ²+1)."""
    scale = math.sqrt(sigma_eu**2 + 1.0)
    return latent / scale, sigma_eu / scale


def _flux2_normalise(pipe: Any, raw: torch.Tensor) -> torch.Tensor:
    """Raw FLUX.2 VAE latent (B, 32, H/8, W/8) -> patchified, BN-normalised (B, 128, H/16, W/16)."""
    vae = pipe.vae
    patch = tuple(int(p) for p in vae.config.patch_size)
    bn = vae.bn
    mean = bn.running_mean.detach().float().cpu().view(1, -1, 1, 1)
    std = (bn.running_var.detach().float().cpu() + float(vae.config.batch_norm_eps)).sqrt()
    return (patchify(raw, patch) - mean) / std.view(1, -1, 1, 1)


def to_pid_layout(
    pipe: Any, backbone: str, latents: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """A pipeline latent (mid-loop or `output_type="latent"`) in PiD's 4-D layout, float32, CPU.

    `backbone` is a registry tag (the layout follows its family). The σ-frame conversion of
    SDXL is separate (`ve_to_vp`).
    """
    x = latents.detach().float().cpu()
    family = canonical_backbone(backbone)
    factor = int(getattr(pipe, "vae_scale_factor", 8))
    if x.ndim == 3 and family in ("flux", "qwenimage"):
        return unpack_2x2(x, height, width, factor)
    if x.ndim == 3 and family == "flux2":
        return unpack_tokens(x, height, width, factor)
    if x.ndim == 5 and x.shape[2] == 1:  # (B, C, 1, h, w) video-style VAE latents
        x = x.squeeze(2)
    if x.ndim != 4:
        raise ValueError(f"{backbone}: unexpected latent shape {tuple(latents.shape)}")
    if family == "flux2" and x.shape[1] == int(pipe.vae.config.latent_channels):
        return _flux2_normalise(pipe, x)
    return x


# --------------------------------------------------------------------------- capture


@dataclass
class Capture:
    """x_t at the save_xt steps (keys K) and the final x0 (key None), in PiD's latent layout.

    `latents[k]`: float32 CPU tensors `(B, C, h, w)`; `sigmas[k]`: the σ PiD gets as
    `degrade_sigma` (SDXL: σ_vp); `ldm_ms_to_step[k]`: ms from the pipeline call to step k
    (`None`: to the pipeline's return, = `ldm_total_ms`).
    """

    latents: dict[int | None, torch.Tensor]
    sigmas: dict[int | None, float]
    ldm_ms_to_step: dict[int | None, float]
    ldm_total_ms: float
    prompt: str
    seed: int
    steps: int
    backbone: str
    height: int = 0
    width: int = 0

    @property
    def xt_steps(self) -> list[int]:
        return sorted(k for k in self.latents if k is not None)


def capture_label(step: int | None) -> str:
    """Upstream's labels: `f"{K:02d}xt"` for step K, `"x0"` for the final latent."""
    return "x0" if step is None else f"{step:02d}xt"


def _device(pipe: Any) -> torch.device:
    return torch.device(getattr(pipe, "_execution_device", None) or pipe.device)


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def check_steps(save_xt_steps: Iterable[int], steps: int) -> tuple[int, ...]:
    """Sorted, de-duplicated save steps; each K must be an int in [1, steps]."""
    out = sorted({int(k) for k in save_xt_steps})
    bad = [k for k in out if not 1 <= k <= steps]
    if bad:
        raise ValueError(f"save_xt_steps {bad} outside [1, {steps}] (K counts scheduler steps)")
    return tuple(out)


class _StepRecorder:
    """The `callback_on_step_end` hook: raw latents, σ and elapsed ms after each saved step."""

    def __init__(self, save: tuple[int, ...], device: torch.device) -> None:
        self.save = set(save)
        self.device = device
        self.raw: dict[int, torch.Tensor] = {}
        self.sigmas: dict[int, float] = {}
        self.ms: dict[int, float] = {}
        self.start = 0.0
        self.overhead = 0.0

    def begin(self) -> None:
        self.start = _clock(self.device)

    def elapsed_ms(self) -> float:
        return (_clock(self.device) - self.start - self.overhead) * 1000.0

    def __call__(self, pipe: Any, index: int, timestep: Any, tensors: dict) -> dict:
        k = index + 1
        if k in self.save:
            self.ms[k] = self.elapsed_ms()
            t0 = time.perf_counter()
            self.raw[k] = tensors["latents"].detach().to("cpu", copy=True)
            sigmas = pipe.scheduler.sigmas
            self.sigmas[k] = float(sigmas[min(k, len(sigmas) - 1)])
            self.overhead += time.perf_counter() - t0
        return {}


def _convert(
    pipe: Any, backbone: str, raw: torch.Tensor, sigma: float, height: int, width: int
) -> tuple[torch.Tensor, float]:
    latent = to_pid_layout(pipe, backbone, raw, height, width)
    if canonical_backbone(backbone) == "sdxl":
        return ve_to_vp(latent, sigma)
    return latent, sigma


def capture(
    pipe: Any,
    backbone: str,
    prompt: str,
    height: int,
    width: int,
    steps: int | None = None,
    save_xt_steps: Iterable[int] | None = None,
    seed: int = 0,
    **kw: Any,
) -> Capture:
    """Run the LDM once and capture x_t after each step K in `save_xt_steps`, plus x0.

    `steps` and `save_xt_steps` default to the registry's; `kw` overrides the registry's call
    kwargs (guidance_scale, max_sequence_length, ...). The x_t at step K carries σ =
    `pipe.scheduler.sigmas[min(K, len - 1)]` (the σ the scheduler stepped it to; SDXL: σ_vp of
    it, with the latent divided by sqrt(σ_eu²+1)); x0 carries `sigmas[-1]` (0.0). See the module
    docstring for the layouts and the timing rule.
    """
    spec = spec_for(backbone, pipe)
    steps = int(steps or spec.steps)
    save = check_steps(spec.save_xt_steps if save_xt_steps is None else save_xt_steps, steps)
    if getattr(pipe.scheduler, "order", 1) != 1:
        raise ValueError(
            f"{type(pipe.scheduler).__name__} is not first order: K would not count steps"
        )
    device = _device(pipe)
    recorder = _StepRecorder(save, device)
    call = {**spec.call_kwargs(), **kw}
    generator = torch.Generator(device=device).manual_seed(int(seed))
    recorder.begin()
    final = pipe(
        prompt=prompt, height=height, width=width, num_inference_steps=steps,
        generator=generator, num_images_per_prompt=1, output_type="latent", return_dict=False,
        callback_on_step_end=recorder, callback_on_step_end_tensor_inputs=["latents"], **call,
    )[0]  # fmt: skip
    total_ms = recorder.elapsed_ms()
    cap = _assemble(pipe, spec.tag, recorder, final, total_ms, prompt, seed, steps, height, width)
    cap.backbone = backbone
    return cap


def _assemble(
    pipe: Any,
    backbone: str,
    rec: _StepRecorder,
    final: torch.Tensor,
    total_ms: float,
    prompt: str,
    seed: int,
    steps: int,
    height: int,
    width: int,
) -> Capture:
    latents: dict[int | None, torch.Tensor] = {}
    sigmas: dict[int | None, float] = {}
    missing = sorted(set(rec.save) - set(rec.raw))
    if missing:
        raise RuntimeError(f"{type(pipe).__name__} never reached save_xt steps {missing}")
    for k in sorted(rec.raw):
        latents[k], sigmas[k] = _convert(pipe, backbone, rec.raw[k], rec.sigmas[k], height, width)
    x0_sigma = float(pipe.scheduler.sigmas[-1])
    latents[None], sigmas[None] = _convert(pipe, backbone, final, x0_sigma, height, width)
    timings: dict[int | None, float] = {**rec.ms, None: total_ms}
    return Capture(
        latents, sigmas, timings, total_ms, prompt, int(seed), steps, backbone, height, width
    )


# --------------------------------------------------------------------------- cache

CACHE_FORMAT = 1
_KEY_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def capture_key(
    backbone: str,
    pipeline_identity: str,
    prompt: str,
    height: int,
    width: int,
    steps: int,
    seed: int,
    save_xt_steps: Iterable[int],
    extra: Mapping[str, Any] | None = None,
) -> str:
    """sha256 of the canonical JSON of every input of a capture (`extra`: call kwargs, JSON)."""
    payload = {
        "format": CACHE_FORMAT,
        "backbone": backbone,
        "pipeline": pipeline_identity,
        "prompt": prompt,
        "height": int(height),
        "width": int(width),
        "steps": int(steps),
        "seed": int(seed),
        "save_xt_steps": sorted({int(k) for k in save_xt_steps}),
        "extra": dict(extra or {}),
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _slot(step: int | None) -> str:
    return "x0" if step is None else str(int(step))


def _unslot(name: str) -> int | None:
    return None if name == "x0" else int(name)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class LatentCache:
    """Captures on disk: `<root>/<key[:2]>/<key>.safetensors` + `<key>.json`.

    Each file is written to a temp name and renamed. The JSON goes last and carries the sha256 of
    the tensor file, so a half-written, stale or corrupt entry reads as a miss (`get` -> None).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def paths(self, key: str) -> tuple[Path, Path]:
        if not _KEY_RE.fullmatch(key):
            raise ValueError(f"bad cache key {key!r}")
        folder = self.root / key[:2]
        return folder / f"{key}.safetensors", folder / f"{key}.json"

    def put(self, key: str, capture: Capture) -> None:
        from safetensors.torch import save

        tensor_path, meta_path = self.paths(key)
        tensors = {_slot(k): v.detach().cpu().contiguous() for k, v in capture.latents.items()}
        blob = save(tensors, metadata={"key": key})
        meta = _metadata(key, capture, hashlib.sha256(blob).hexdigest())
        _atomic_write(tensor_path, blob)
        _atomic_write(meta_path, json.dumps(meta, indent=1, allow_nan=False).encode("utf-8"))

    def get(self, key: str) -> Capture | None:
        tensor_path, meta_path = self.paths(key)
        if not meta_path.is_file():
            return None
        try:
            return _read_entry(key, tensor_path, meta_path)
        except Exception as err:  # a corrupt entry is a miss, never trusted
            log.warning("latent cache entry %s is unreadable (%s); recomputing", key, err)
            return None

    def get_or_compute(self, key: str, compute: Callable[[], Capture]) -> Capture:
        """The cached capture, or `compute()` stored under `key`."""
        found = self.get(key)
        if found is None:
            found = compute()
            self.put(key, found)
        return found


def _metadata(key: str, capture: Capture, sha: str) -> dict[str, Any]:
    return {
        "format": CACHE_FORMAT,
        "key": key,
        "tensors_sha256": sha,
        "backbone": capture.backbone,
        "prompt": capture.prompt,
        "seed": capture.seed,
        "steps": capture.steps,
        "height": capture.height,
        "width": capture.width,
        "slots": [_slot(k) for k in capture.latents],
        "sigmas": {_slot(k): float(v) for k, v in capture.sigmas.items()},
        "ldm_ms_to_step": {_slot(k): float(v) for k, v in capture.ldm_ms_to_step.items()},
        "ldm_total_ms": float(capture.ldm_total_ms),
    }


def _read_entry(key: str, tensor_path: Path, meta_path: Path) -> Capture:
    from safetensors.torch import load

    meta = json.loads(meta_path.read_text("utf-8"))
    if meta.get("format") != CACHE_FORMAT or meta.get("key") != key:
        raise ValueError("format or key mismatch")
    blob = tensor_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta["tensors_sha256"]:
        raise ValueError("tensor file does not match its checksum")
    tensors = load(blob)
    slots = list(meta["slots"])
    if set(tensors) != set(slots) or set(meta["sigmas"]) != set(slots):
        raise ValueError("tensor slots do not match the metadata")
    return Capture(
        latents={_unslot(s): tensors[s] for s in slots},
        sigmas={_unslot(s): float(v) for s, v in meta["sigmas"].items()},
        ldm_ms_to_step={_unslot(s): float(v) for s, v in meta["ldm_ms_to_step"].items()},
        ldm_total_ms=float(meta["ldm_total_ms"]),
        prompt=str(meta["prompt"]),
        seed=int(meta["seed"]),
        steps=int(meta["steps"]),
        backbone=str(meta["backbone"]),
        height=int(meta["height"]),
        width=int(meta["width"]),
    )
