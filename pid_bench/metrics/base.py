"""The interface: the context a metric reads, `Metric` (a declaration plus its computation),
`Conversions` (the per-image conversions the metrics of one `measure` call share) and the
protocol's resizes. Imports only the torch-free leaves of the package (catalog, errors,
weights)."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from pid_bench.metrics.catalog import Kind, MetricSpec
from pid_bench.metrics.errors import MetricUnavailable
from pid_bench.metrics.weights import WeightFile

# ---- context ----------------------------------------------------------------------------------


@dataclass
class MetricContext:
    """What a cell has besides the decode; every image in ``[0, 1]``, ``[B, 3, *, *]``.

    reference: the reference at the decode's size (from_clean), else None.
    native: the native decoder's output at its own (native) size, before any upscale.
    codec: the backbone's `LatentCodec` (``encode`` takes images in ``[-1, 1]``).
    clean_latent: the codec latent of the low-resolution input before noise (from_clean).
    scale: PiD's upscale factor (output size / native size), e.g. 4 or 8.
    reference_reason: why ``reference`` is None although the cell has a source image (it would
    be upsampled): the reason every full-reference metric then gives.
    tile_boundaries: (rows, columns) where PiD's tile plan puts a seam, at the scored size: a
    position c means between pixel c - 1 and c (the centre of each overlap of two tiles; see
    `failure_modes.seam_positions`). None: the cell does not tile; ((), ()): a one-tile plan.
    seam_period: the period of the decode's pixel grid at the scored size (PiD's tile unit,
    lcm(patch, output px per latent cell): 32 at the output size for FLUX 2k, 8 at the native
    size): seam_score compares each line with lines of the same phase.
    tile_reason: why ``tile_boundaries`` is None although the suite tiles (no valid plan).
    """

    reference: torch.Tensor | None = None
    native: torch.Tensor | None = None
    codec: Any = None
    clean_latent: torch.Tensor | None = None
    scale: int | None = None
    reference_reason: str | None = None
    tile_boundaries: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    seam_period: int | None = None
    tile_reason: str | None = None


# ---- the Metric object ------------------------------------------------------------------------

MetricFn = Callable[[torch.Tensor, MetricContext], "torch.Tensor | dict[str, torch.Tensor]"]


@dataclass(frozen=True)
class Metric:
    """One metric. ``compute(image, reference)`` -> ``[B]`` float tensor.

    ``fn(image, context)`` does the work; metrics of one ``group`` share a single call of it
    (it returns ``{metric name: [B]}``), e.g. latent_consistency_mse and _cos.
    """

    name: str
    kind: Kind
    higher_is_better: bool | None  # None: no better direction (a ratio whose ideal is 1)
    fn: MetricFn
    doc: str
    weights: tuple[WeightFile, ...] = ()
    backend: str = "pid_bench"  # torchmetrics | pyiqa | pid_bench | custom
    group: str | None = None
    pyiqa_name: str | None = None

    def evaluate(self, image: torch.Tensor, context: MetricContext | None = None) -> torch.Tensor:
        """``[B]`` values of `image` (``[B, 3, H, W]`` in [0, 1]); raises `MetricUnavailable`."""
        if self.kind == "set_level":
            raise MetricUnavailable(
                f"{self.name} is set-level: computed over a whole set of images "
                "(pid_bench.metrics.compute_set_metrics), not per image"
            )
        out = self.fn(image, context or MetricContext())
        if isinstance(out, dict):
            out = out[self.name]
        return out.reshape(image.shape[0])

    def compute(
        self,
        image: torch.Tensor,
        reference: torch.Tensor | MetricContext | None = None,
    ) -> torch.Tensor:
        """``[B]`` values; `reference` is the reference image or a whole `MetricContext`."""
        context = reference if isinstance(reference, MetricContext) else None
        if context is None:
            context = MetricContext(reference=reference)
        return self.evaluate(image, context)

    @classmethod
    def from_spec(cls, spec: MetricSpec, fn: MetricFn) -> Metric:
        """The metric `spec` declares, computed by `fn`."""
        return cls(
            spec.name,
            spec.kind,
            spec.higher_is_better,
            fn,
            spec.doc,
            spec.weights,
            spec.backend,
            spec.group,
            spec.pyiqa_name,
        )


def needs_reference(image: torch.Tensor, context: MetricContext) -> torch.Tensor:
    """The context's reference in float32 on `image`'s device; MetricUnavailable when it is
    absent (with the cell's reason) or of another size."""
    reference = context.reference
    if reference is None:
        raise MetricUnavailable(context.reference_reason or "no reference image")
    if tuple(reference.shape[-2:]) != tuple(image.shape[-2:]):
        raise MetricUnavailable(
            f"image {tuple(image.shape[-2:])} and reference {tuple(reference.shape[-2:])} "
            "differ in size"
        )
    return reference.to(image.device, torch.float32)


def bicubic_resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The protocol's kernel (`RESIZE_KERNEL`): antialiased bicubic of ``[B, 3, h, w]``, any
    range, unclamped; the identity at the same size. The harness resizes with it too."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image, size=size, mode="bicubic", antialias=True, align_corners=False)


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`bicubic_resize` of a [0, 1] image, in float32 and clamped back to [0, 1]."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return bicubic_resize(image.float(), size).clamp(0, 1)


def to_unit_range(image: torch.Tensor) -> torch.Tensor:
    """[-1, 1] decoder output -> [0, 1], clamped: what every metric sees."""
    return ((image.float() + 1) / 2).clamp(0, 1)


# ---- conversions shared by the metrics of one decode -------------------------------------------


class Conversions:
    """The conversions of one decode that several metrics need, each made once per `measure`.

    `measure` opens one for its image and context (`sharing`); a metric function asks for it
    with `conversions(image, context)` and gets that one while it scores the same image object
    with the same context, else a fresh one of its own (a metric called alone, or on another
    image: nothing is shared, nothing stale is read). What is kept, by key (`get`):

    * ``"reference"``: `needs_reference` (float32 on the image's device);
    * ``"native"`` / ``"native_clamped"``: the native decode in float32 on the image's device,
      as is / clamped to [0, 1] (the same tensor when it already is in [0, 1]);
    * ``"down"``: the decode resized to the native size (`resize`: the twin check's ``x↓``);
    * ``("lab", key)``: `srgb_to_lab` of one of the above (float64);
    * anything else a metric wants to share, e.g. ``("value", "twin_psnr")`` for twin_pass.

    Everything stays on the image's device, in the dtype the definition computes in; a failed
    conversion is not kept (it raises again, with its reason, for the next metric). There is no
    uint8 rounding: every metric's definition reads the unrounded ``[0, 1]`` image.
    """

    def __init__(self, image: torch.Tensor, context: MetricContext) -> None:
        self.image = image
        self.context = context
        self._kept: dict[Any, Any] = {}

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        """The value kept under `key`, made by `make()` the first time."""
        if key not in self._kept:
            self._kept[key] = make()
        return self._kept[key]

    def reference(self) -> torch.Tensor:
        return self.get("reference", lambda: needs_reference(self.image, self.context))

    def native(self, clamped: bool = False) -> torch.Tensor:
        """The context's native decode (MetricUnavailable when there is none)."""
        native = self.context.native
        if native is None:
            raise MetricUnavailable("no native decode in the cell's context")
        plain = self.get("native", lambda: native.to(self.image.device, torch.float32))
        if not clamped:
            return plain

        def clamp() -> torch.Tensor:
            out = plain.clamp(0, 1)
            return plain if torch.equal(out, plain) else out

        return self.get("native_clamped", clamp)

    def down(self) -> torch.Tensor:
        """The decode resized to the native decode's size (`resize`)."""
        size = tuple(self.native().shape[-2:])
        return self.get("down", lambda: resize(self.image, size))

    def lab(self, key: str, convert: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """`convert` (the CIELAB conversion) of the image kept as `key` ("down", "native",
        "native_clamped", "reference"), kept under ("lab", key)."""
        sources = {
            "down": self.down,
            "native": self.native,
            "native_clamped": lambda: self.native(clamped=True),
            "reference": self.reference,
        }
        source = sources[key]()
        for other in sources:  # one LAB per distinct tensor (native is often already clamped)
            if other != key and self._kept.get(other) is source and ("lab", other) in self._kept:
                return self._kept[("lab", other)]
        return self.get(("lab", key), lambda: convert(source))


_SHARING: contextvars.ContextVar[Conversions | None] = contextvars.ContextVar(
    "pid_bench_metric_conversions", default=None
)


@contextlib.contextmanager
def sharing(image: torch.Tensor, context: MetricContext) -> Iterator[Conversions]:
    """While open, `conversions(image, context)` returns this one `Conversions` (`measure`)."""
    shared = Conversions(image, context)
    token = _SHARING.set(shared)
    try:
        yield shared
    finally:
        _SHARING.reset(token)


def conversions(image: torch.Tensor, context: MetricContext) -> Conversions:
    """The `Conversions` the open `sharing` keeps for this very image and context, else a new
    one used by this call only."""
    shared = _SHARING.get()
    if shared is not None and shared.image is image and shared.context is context:
        return shared
    return Conversions(image, context)
