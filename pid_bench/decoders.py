"""Decoders: what turns a cell's latent into pixels. One interface, one class per kind, one
registry.

A suite lists decoders by name. The registry resolves each name to a class:

- ``pid``: PiD, the distilled 4-step decoder (`Pid`);
- ``pid-teacher``: PiD's undistilled v1.5 teacher with upstream's sampler (`PidTeacher`);
- ``native``: the backbone's own decoder at its own size (`Native`);
- ``native+bicubic`` / ``native+lanczos``: the native decode resized to the output size
  (`NativeBicubic`, `NativeLanczos`);
- ``native+<name>`` declared under the suite's ``baselines:``: a learned SR network
  (``kind: spandrel``, `NativeLearnedSR`) or a diffusion upscaler (``kind: sd_x4_upscaler``,
  `NativeDiffusionSR`) after the native decode;
- ``module.path:Class``: a `Decoder` subclass of your own, imported like a custom metric (from
  sys.path, the suite's folder or the directory pid-bench runs in).

A cell times `Decoder.decode_fn`'s callable (warm-up and repeats), measures its memory with
only `Decoder.placement`'s modules on the device, scores its output and saves it; the row gets
`Decoder.row_fields`. The report draws each decoder with its `style`.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    field_validator,
    model_validator,
)

from pid_bench.memory import modules_of
from pid_bench.metrics import RESIZE_KERNEL
from pid_bench.metrics import bicubic_resize as resize
from pid_bench.paths import folder_or_repo_id, import_named, under_suite
from pid_models.flops import decode_flops
from pid_models.registry import EMBEDDED_PAIRS, outside_envelope
from pid_models.teacher import NEGATIVE_PROMPT, TEACHER_CFG, TEACHER_STEPS, dynamic_shift
from pid_models.tiling import plan_tiles

if TYPE_CHECKING:
    from pid_bench.models import ModelSet
    from pid_bench.prepare import Prepared
    from pid_bench.settings import CellSettings

#: ``native+<name>``: the name of a baseline declared under ``baselines:``.
BASELINE_NAME = r"^[a-z0-9][a-z0-9_.-]*$"
#: ``module.path:Class``: a decoder class of your own.
CLASS_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
#: torch.compile modes that record CUDA graphs (fixed weight addresses).
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
_FROZEN = ConfigDict(frozen=True, extra="forbid", strict=True)


# --- options of the decoders that take some (suite keys `teacher:` and `baselines:`) ---------


class TeacherOptions(BaseModel):
    """Decoder ``pid-teacher``: PiD's undistilled v1.5 teacher with upstream's documented
    sampler (pid_models.teacher): ``steps`` of DPM-Solver++(2M), text-only CFG at
    ``cfg_scale`` against ``negative_prompt``, ``shift`` (None: 6 * sqrt(sqrt(H*W) / 2048))."""

    model_config = _FROZEN
    steps: PositiveInt = TEACHER_STEPS
    cfg_scale: Annotated[float, Field(ge=1.0)] = TEACHER_CFG
    shift: Annotated[float, Field(gt=0)] | None = None
    negative_prompt: str | None = None  # None: upstream's default negative prompt


class BaselineOptions(BaseModel):
    """An SR baseline run after the native decode (decoder ``native+<name>``).

    ``kind: spandrel`` (the default): a learned SR network; ``path`` its weights (.safetensors
    preferred, or .pth read weights-only), relative to the suite file; spandrel detects the
    architecture. Its scale must reach PiD's (equal, or a power of it, chained). ``tile``:
    upscale in tiles of this many input pixels with ``tile_overlap`` cropped away. ``url``:
    where `pid-bench fetch` gets ``path`` (https://..., or hf://owner/repo/file), checked
    against ``sha256`` when given.

    ``kind: sd_x4_upscaler``: diffusers' StableDiffusionUpscalePipeline from ``source`` (a
    folder next to the suite or a repo id in the HF cache; default
    stabilityai/stable-diffusion-x4-upscaler), the caption as its prompt, with ``steps``,
    ``guidance_scale`` and ``noise_level``.
    """

    model_config = _FROZEN
    kind: Literal["spandrel", "sd_x4_upscaler"] = "spandrel"
    path: Annotated[str, Field(min_length=1)] | None = None
    tile: PositiveInt | None = None
    tile_overlap: NonNegativeInt = 32
    url: Annotated[str, Field(pattern=r"^(https?|hf)://")] | None = None
    sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")] | None = None
    source: Annotated[str, Field(min_length=1)] | None = None
    steps: PositiveInt = 20
    guidance_scale: Annotated[float, Field(ge=0)] = 9.0
    noise_level: NonNegativeInt = 20

    _path = field_validator("path")(under_suite)
    _source = field_validator("source")(folder_or_repo_id)

    @model_validator(mode="after")
    def _kind_has_its_fields(self) -> BaselineOptions:
        if self.kind == "spandrel" and self.path is None:
            raise ValueError("a spandrel baseline needs path: (its weights file)")
        return self


# --- the interface ---------------------------------------------------------------------------


class Decoder:
    """One way to decode a cell's latent. Subclass it for a decoder of your own.

    Override `decode_fn` (required) and, where the defaults do not fit, `load`, `placement`,
    `row_fields` and `flops`. Class attributes: ``scored_at_output`` (False: scored at the size
    the decoder produces, like ``native``), ``color`` / ``marker`` (matplotlib; None: the
    report picks one).
    """

    scored_at_output: ClassVar[bool] = True
    color: ClassVar[str | None] = None
    marker: ClassVar[str | None] = None

    def __init__(self, name: str, options: Any = None) -> None:
        self.name = name
        self.options = options

    def load(
        self, cell: Any, models: ModelSet, settings: CellSettings, device: torch.device
    ) -> None:
        """Load what the decoder needs beyond `models` (once per worker; keep it on `models`)."""

    def decode_fn(
        self, cell: Any, models: ModelSet, prepared: Prepared, settings: CellSettings
    ) -> Callable[[], torch.Tensor]:
        """The decode the cell times: a callable returning ``[1, 3, H, W]`` in [-1, 1]."""
        raise NotImplementedError(f"{type(self).__name__}.decode_fn")

    def placement(self, models: ModelSet) -> tuple[list, list]:
        """(modules on the device while measured, modules moved off it). Default: the native
        codec stays, PiD and its caption encoder leave (unless PiD records CUDA graphs: their
        weights' addresses are fixed)."""
        if models.pid.compile_mode in CUDA_GRAPH_MODES:
            return modules_of(models.codec), modules_of(models.pid.caption_encoder)
        pid = modules_of(models.pid.net) + modules_of(models.pid.caption_encoder)
        return modules_of(models.codec), pid

    def row_fields(self, cell: Any, models: ModelSet, settings: CellSettings) -> dict[str, Any]:
        """Columns this decoder adds to its row (default: how it reached the output size)."""
        return {"resize_kernel": None}

    def flops(
        self, cell: Any, models: ModelSet, prepared: Prepared, settings: CellSettings
    ) -> int | None:
        """FLOPs of one decode; None: not modelled (`flops_reason`)."""
        return None

    flops_reason: ClassVar[str] = "not modelled: pid_models.flops counts PiD and its teacher only"

    def tf32(self, models: ModelSet) -> bool:
        """CUDA: whether TF32 is allowed during its calls."""
        return torch.backends.cuda.matmul.allow_tf32

    def compiled(self, models: ModelSet) -> bool:
        """Whether its first call at a size compiles (timed apart as `compile_ms`)."""
        return False


# --- the built-in decoders ---------------------------------------------------------------------


class Pid(Decoder):
    """PiD: the distilled decoder, whole or in tiles (suite `tiling:`)."""

    color, marker = "C2", "o"

    def decode_fn(self, cell, models, prepared, settings):
        latent, sigma, y = prepared.latent, prepared.sigma, prepared.y
        tiles = {}
        if tile_size(cell, settings):
            tiles = {"tile_size": tile_size(cell, settings), "tile_overlap": settings.tile_overlap}
        return lambda: models.pid.decode(
            latent, sigma=sigma, y=y, seed=cell.seed, steps=cell.pid_steps, **tiles
        )

    def placement(self, models):
        codec = modules_of(models.codec)
        return modules_of(models.pid.net), codec + modules_of(models.pid.caption_encoder)

    def row_fields(self, cell, models, settings):
        fields = {
            "resize_kernel": None,
            "outside_envelope": outside_envelope(cell.ckpt_type, tuple(cell.resolution)),
            "sampler": f"distilled SDE, {cell.pid_steps} steps",
        }
        if tile_size(cell, settings):
            fields |= {
                "tile_size": tile_size(cell, settings),
                "tile_overlap": settings.tile_overlap,
            }
        return fields

    def flops(self, cell, models, prepared, settings):
        config, size = models.pid.net.config, tuple(cell.resolution)
        tiles = None
        if tile_size(cell, settings):
            plan = plan_tiles(config, size, tile_size(cell, settings), settings.tile_overlap)
            tiles = [(y1 - y0, x1 - x0) for y0, y1 in plan.rows for x0, x1 in plan.cols]
        return decode_flops(config, size, cell.pid_steps, tiles, text_len=prepared.y.shape[1])

    def tf32(self, models):
        return models.pid.tf32

    def compiled(self, models):
        return models.pid.compile_mode is not None


def tile_size(cell: Any, settings: CellSettings) -> int | None:
    """PiD's tile side in this cell: the cell's `tiles:` value, else the suite's `tiling:`."""
    return cell.tile or settings.tile_size


class PidTeacher(Decoder):
    """PiD's undistilled teacher with upstream's sampler (suite `teacher:`)."""

    color, marker = None, "D"

    def _options(self, settings: CellSettings) -> TeacherOptions:
        return TeacherOptions(**settings.teacher)

    def load(self, cell, models, settings, device):
        """The teacher of the cell's backbone, once per worker; the embedded tiny backbones'
        teacher is their own PiD network (it exercises the sampler only)."""
        if models.teacher is not None:
            return
        if (cell.backbone, cell.ckpt_type) in EMBEDDED_PAIRS:
            models.teacher = models.pid.net
            return
        from pid_models.checkpoints import load_experiment_net
        from pid_models.registry import teacher

        experiment = teacher(cell.backbone, cell.ckpt_type)
        models.teacher = load_experiment_net(experiment, settings.checkpoints, models.pid.device)

    def decode_fn(self, cell, models, prepared, settings):
        options = self._options(settings)
        net = models.teacher
        negative = options.negative_prompt or NEGATIVE_PROMPT
        y_null = None if options.cfg_scale == 1 else models.pid.encode_captions(negative, 1)
        return lambda: models.pid.decode_teacher(
            net, prepared.latent, prepared.sigma, prepared.y, y_null, seed=cell.seed,
            steps=options.steps, cfg_scale=options.cfg_scale, shift=options.shift,
        )  # fmt: skip

    def placement(self, models):
        others = modules_of(models.codec) + modules_of(models.pid.caption_encoder)
        if models.teacher is not models.pid.net:
            others += modules_of(models.pid.net)
        return modules_of(models.teacher), others

    def row_fields(self, cell, models, settings):
        options = self._options(settings)
        shift = options.shift or dynamic_shift(*cell.resolution)
        sampler = (
            f"DPM-Solver++(2M), {options.steps} steps, CFG {options.cfg_scale:g}, shift {shift:.3f}"
        )
        return {"resize_kernel": None, "sampler": sampler}

    def flops(self, cell, models, prepared, settings):
        options = self._options(settings)
        calls = options.steps * (1 if options.cfg_scale == 1 else 2)
        size = tuple(cell.resolution)
        return decode_flops(models.teacher.config, size, calls, text_len=prepared.y.shape[1])


class Native(Decoder):
    """The backbone's own decoder, at its own size (scored there)."""

    scored_at_output = False
    color, marker = "C0", "s"

    def decode_fn(self, cell, models, prepared, settings):
        latent = prepared.latent
        return lambda: models.codec.decode(latent)


class NativeResized(Decoder):
    """The native decode, then a resize kernel to the output size."""

    kernel: ClassVar[str] = ""

    def resize(self, image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError

    def decode_fn(self, cell, models, prepared, settings):
        latent, size = prepared.latent, tuple(cell.resolution)
        return lambda: self.resize(models.codec.decode(latent), size)

    def row_fields(self, cell, models, settings):
        return {"resize_kernel": self.kernel}


class NativeBicubic(NativeResized):
    """native+bicubic: antialiased bicubic, the protocol's resize."""

    kernel = RESIZE_KERNEL
    color, marker = "C1", "^"

    def resize(self, image, size):
        return resize(image, size)


class NativeLanczos(NativeResized):
    """native+lanczos: PIL's Lanczos on 8-bit pixels."""

    kernel = "lanczos"
    color, marker = "C3", "v"

    def resize(self, image, size):
        return lanczos(image, size)


def lanczos(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """PIL Lanczos resize, for the native+lanczos baseline."""
    from PIL import Image

    out = []
    for img in image.float().clamp(-1, 1).cpu():
        pixels = ((img + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        resized = Image.fromarray(pixels).resize((size[1], size[0]), Image.Resampling.LANCZOS)
        out.append(torch.from_numpy(np.asarray(resized)).permute(2, 0, 1))
    return (torch.stack(out).float() / 127.5 - 1).to(image.device)


class NativeUpscaled(Decoder):
    """The native decode, then an SR model declared under ``baselines:`` (loaded once)."""

    options: BaselineOptions

    @property
    def baseline(self) -> str:
        return self.name.removeprefix("native+")

    def load(self, cell, models, settings, device):
        if self.baseline not in models.baselines:
            models.baselines[self.baseline] = self.build(models, device)

    def build(self, models: ModelSet, device: torch.device) -> Any:
        raise NotImplementedError

    def placement(self, models):
        keep, others = super().placement(models)
        return keep + models.baselines[self.baseline].modules, others

    def row_fields(self, cell, models, settings):
        return {"resize_kernel": models.baselines[self.baseline].describe()}


class NativeLearnedSR(NativeUpscaled):
    """``kind: spandrel``: a learned SR network (Real-ESRGAN, SwinIR, ...)."""

    def build(self, models, device):
        from pid_models.baselines import load_spandrel

        o = self.options
        return load_spandrel(
            self.baseline, o.path, models.pid.scale, device, o.tile, o.tile_overlap
        )

    def decode_fn(self, cell, models, prepared, settings):
        upscaler, latent = models.baselines[self.baseline], prepared.latent
        return lambda: upscaler(models.codec.decode(latent))


class NativeDiffusionSR(NativeUpscaled):
    """``kind: sd_x4_upscaler``: a diffusion upscaler, the caption as its prompt."""

    def build(self, models, device):
        from pid_models.baselines import load_diffusion_upscaler

        o = self.options
        return load_diffusion_upscaler(
            self.baseline, o.source, models.pid.scale, device, o.steps, o.guidance_scale,
            o.noise_level,
        )  # fmt: skip

    def decode_fn(self, cell, models, prepared, settings):
        upscaler, latent = models.baselines[self.baseline], prepared.latent
        caption, seed = cell.item.caption, cell.seed
        return lambda: upscaler(models.codec.decode(latent), caption, seed)


# --- the registry ------------------------------------------------------------------------------

#: Decoders every suite may list by name.
BUILTIN: MappingProxyType[str, type[Decoder]] = MappingProxyType(
    {
        "pid": Pid,
        "pid-teacher": PidTeacher,
        "native": Native,
        "native+bicubic": NativeBicubic,
        "native+lanczos": NativeLanczos,
    }
)
#: ``native+<name>`` decoders by the ``kind`` of their ``baselines:`` entry.
BASELINE_KINDS: MappingProxyType[str, type[NativeUpscaled]] = MappingProxyType(
    {"spandrel": NativeLearnedSR, "sd_x4_upscaler": NativeDiffusionSR}
)
#: Markers of decoders without their own, picked by a hash of the name.
OTHER_MARKERS = ("P", "X", "*", "h", "<", ">", "p", "d")


def is_class_name(name: str) -> bool:
    return bool(CLASS_PATTERN.fullmatch(name))


def needs_baseline(name: str) -> bool:
    """A ``native+<name>`` decoder that is no built-in: it needs a ``baselines:`` entry."""
    return name not in BUILTIN and name.startswith("native+")


def check_name(name: str) -> str:
    """The name as the suite writes it, or ValueError naming what a suite may list."""
    if name in BUILTIN:
        return name
    if needs_baseline(name) and re.match(BASELINE_NAME, name.removeprefix("native+")):
        return name  # the suite checks that the baseline is declared
    if is_class_name(name):
        user_class(name)
        return name
    raise ValueError(
        f"unknown decoder {name!r}: one of {', '.join(BUILTIN)}, native+<name> for a learned SR "
        "baseline declared under baselines:, or module.path:Class for a pid_bench.decoders."
        "Decoder subclass of your own"
    )


def user_class(name: str) -> type[Decoder]:
    """The `Decoder` subclass a ``module.path:Class`` name stands for (ValueError otherwise)."""
    target, why = import_named(name)
    if why is not None:
        raise ValueError(f"decoder {name!r}: {why}; install the module or put it next to the suite")
    if not (isinstance(target, type) and issubclass(target, Decoder)):
        raise ValueError(f"decoder {name!r} is not a subclass of pid_bench.decoders.Decoder")
    return target


def build_decoder(name: str, baselines: dict[str, Any] | None = None) -> Decoder:
    """The decoder a suite name stands for; ``baselines`` is the suite's entry (plain data or
    `BaselineOptions`)."""
    if name in BUILTIN:
        return BUILTIN[name](name)
    if needs_baseline(name):
        options = (baselines or {}).get(name.removeprefix("native+"))
        if options is None:
            raise ValueError(
                f"decoder {name}: no baselines.{name.removeprefix('native+')} entry in the suite"
            )
        if not isinstance(options, BaselineOptions):
            options = BaselineOptions(**options)
        return BASELINE_KINDS[options.kind](name, options)
    if is_class_name(name):
        return user_class(name)(name)
    raise ValueError(check_name(name))


def style(name: str) -> tuple[str, str]:
    """(colour, marker) of a decoder in every plot: its class's, else from its name's hash, so
    two decoders on one line still differ by shape."""
    cls = BUILTIN.get(name)
    if cls is None and is_class_name(name):
        try:
            cls = user_class(name)
        except ValueError:  # a report read where the decoder's module is not importable
            cls = None
    color = cls.color if cls is not None else None
    marker = cls.marker if cls is not None else None
    digest = zlib.crc32(name.encode())
    return (
        color or f"C{4 + digest % 6}",
        marker or OTHER_MARKERS[digest % len(OTHER_MARKERS)],
    )
