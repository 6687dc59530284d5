"""The interface: kinds, the measurement protocol, errors and context, weight files, `Metric`
and the protocol's resizes. Imports nothing else of the package."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F

from pid_bench.paths import hf_cache_dir, torch_hub_dir

Kind = Literal["full_reference", "no_reference", "set_level", "latent"]
KINDS: tuple[str, ...] = get_args(Kind)

# ---- protocol: what every row records about how its metrics were taken ------------------------

#: How metrics resize: torch `F.interpolate(mode="bicubic", antialias=True, align_corners=False)`.
RESIZE_KERNEL = "bicubic-antialias"
#: What every metric sees: sRGB-encoded RGB, float, [0, 1], clamped (decoder output (x + 1) / 2).
COLOR_SPACE = "sRGB [0,1], clamped"
#: Pixels cropped from each border before any metric: none.
CROP_BORDER = 0
#: Luma used by hf_energy_ratio (BT.709 weights on the sRGB-encoded values).
LUMA_WEIGHTS = (0.2126, 0.7152, 0.0722)


def protocol_fields() -> dict[str, Any]:
    """The measurement protocol as row fields (the same for every row of a run)."""
    return {
        "protocol_resize_kernel": RESIZE_KERNEL,
        "color_space": COLOR_SPACE,
        "crop_border": CROP_BORDER,
    }


# ---- errors and context -----------------------------------------------------------------------


class MetricUnavailable(Exception):
    """A metric cannot be computed here (weights missing, input absent): a null with a reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MetricUnavailableWarning(UserWarning):
    """Once per metric per process: a metric left null for missing weights or a failure."""


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
    """

    reference: torch.Tensor | None = None
    native: torch.Tensor | None = None
    codec: Any = None
    clean_latent: torch.Tensor | None = None
    scale: int | None = None
    reference_reason: str | None = None


# ---- weight files -----------------------------------------------------------------------------

_IQA_REPO = "chaofengc/IQA-PyTorch-Weights"
_IQA_URL = f"https://huggingface.co/{_IQA_REPO}/resolve/main/"


@dataclass(frozen=True)
class WeightFile:
    """One file a metric reads: its exact name, the torch-hub sub-folders it may be in (search
    order; the first is the path a missing-weights reason names) and where it is published.

    ``loader``: who opens it: ``pyiqa`` (pyiqa's `load_file_from_url`, also found in an HF cache
    snapshot of chaofengc/IQA-PyTorch-Weights), ``torchvision`` (torch.hub checkpoints) or
    ``clip`` (OpenAI CLIP, handed to pyiqa as a file path).
    """

    filename: str
    folders: tuple[str, ...]
    url: str
    loader: Literal["pyiqa", "torchvision", "clip"] = "pyiqa"

    def candidates(self) -> list[Path]:
        hub = torch_hub_dir()
        out = [hub / folder / self.filename for folder in self.folders]
        if self.loader == "pyiqa":
            out += _hf_snapshot_files(_IQA_REPO, self.filename)
        return out

    def expected(self) -> Path:
        """Where a download would put it (the path a missing-weights reason names)."""
        return torch_hub_dir() / self.folders[0] / self.filename

    def find(self) -> Path | None:
        return next((p for p in self.candidates() if p.is_file()), None)


def _pyiqa_file(filename: str, folders: tuple[str, ...] = ("pyiqa",)) -> WeightFile:
    return WeightFile(filename, folders, _IQA_URL + filename, "pyiqa")


def _torchvision_file(filename: str) -> WeightFile:
    return WeightFile(
        filename, ("checkpoints",), f"https://download.pytorch.org/models/{filename}", "torchvision"
    )


_CLIP_RN50 = WeightFile(
    "RN50.pt",
    ("clip",),
    "https://openaipublic.azureedge.net/clip/models/"
    "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
    "clip",
)
#: pytorch-fid's FID Inception (TF 2015-12-05 graph), as pytorch-fid (hub/checkpoints) and pyiqa
#: (hub/pyiqa) store it.
INCEPTION_WEIGHTS = _pyiqa_file("pt_inception-2015-12-05-6726825d.pth", ("checkpoints", "pyiqa"))


def _hf_snapshot_files(repo_id: str, filename: str) -> list[Path]:
    """`filename` in every snapshot of `repo_id` in the HF cache, refs/main's first."""
    repo = hf_cache_dir() / f"models--{repo_id.replace('/', '--')}"
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return []
    revisions = sorted(p.name for p in snapshots.iterdir())
    main = repo / "refs" / "main"
    if main.is_file():
        head = main.read_text().strip()
        revisions.sort(key=lambda r: r != head)
    return [snapshots / r / filename for r in revisions]


class WeightStatus(NamedTuple):
    """What `weight_status` returns (unpacks as ``status, files, searched, hint``).

    status: ``no weights needed`` | ``present`` | ``missing`` | ``unknown`` (pyiqa pass-through:
    pyiqa names its files when the metric is created). files: the files found. searched: every
    path looked at. hint: how to get the missing ones.
    """

    status: str
    files: tuple[str, ...]
    searched: tuple[str, ...]
    hint: str | None


def _require_weights(metric: Metric) -> dict[str, Path]:
    """filename -> path of every weight file of `metric`, else MetricUnavailable naming them."""
    found, missing = {}, []
    for weight in metric.weights:
        path = weight.find()
        if path is None:
            missing.append(str(weight.expected()))
        else:
            found[weight.filename] = path
    if missing:
        raise MetricUnavailable(f"weights missing: {', '.join(missing)}")
    return found


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
    backend: str = "pid_bench"  # torchmetrics | pyiqa | pid_bench
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


def _needs_reference(image: torch.Tensor, context: MetricContext) -> torch.Tensor:
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
