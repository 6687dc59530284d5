"""Metrics: one small interface and one registry (torchmetrics' style).

Each metric is a `Metric`: its name, `kind`, `higher_is_better`, the weight files it needs, a doc
string with its exact definition, and a compute call on batched RGB tensors ``[B, 3, H, W]``,
float, in ``[0, 1]``, on the cell's device. Kinds:

* ``full_reference``: the decode against the reference at the output size (psnr, ssim, ms_ssim,
  lpips, dists).
* ``no_reference``: the decode alone (niqe, musiq, clipiqa, maniqa, topiq_nr, and any pyiqa
  metric passed through as ``pyiqa:<name>``).
* ``set_level``: a distance between two sets of images (fid, kid); computed over a whole run by
  `compute_set_metrics`, never per row.
* ``latent``: PiD-specific, reading the cell's context (`MetricContext`: codec, clean latent,
  PiD's scale, native decode): latent_consistency_mse / _cos, lq_color_de2000, hf_energy_ratio.

A metric whose inputs or weight files are absent raises `MetricUnavailable(reason)`; `measure`
(the one call the cell and `pid-bench score` make) turns that into a null value with the reason
(missing weights and failures also warn, once per metric per process) and never returns a made-up
number. Weights are read from
local files only (torch hub folders and the HF cache); nothing is downloaded. `weight_status`
says, for the doctor, which files each metric needs and whether they are there.

The exact definitions are in each metric's ``doc`` and in docs/metrics.md.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
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
    """

    reference: torch.Tensor | None = None
    native: torch.Tensor | None = None
    codec: Any = None
    clean_latent: torch.Tensor | None = None
    scale: int | None = None


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


def weight_status(name: str) -> WeightStatus:
    """Which files metric `name` needs and whether each is on this machine (no pyiqa import)."""
    metric = get_metric(name)
    if metric.name.startswith("pyiqa:") and not metric.weights:
        hint = (
            f"pyiqa names the files of {metric.pyiqa_name!r} when it creates the metric; a "
            "missing one is reported as 'weights missing: <path>' at run time. Fetch them once "
            f"with network access: python -c \"import pyiqa; pyiqa.create_metric('"
            f"{metric.pyiqa_name}', device='cpu')\""
        )
        return WeightStatus("unknown", (), (), hint)
    if not metric.weights:
        return WeightStatus("no weights needed", (), (), None)
    found, searched, missing = [], [], []
    for weight in metric.weights:
        candidates = weight.candidates()
        searched += [str(p) for p in candidates]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            missing.append(weight)
        else:
            found.append(str(path))
    if not missing:
        return WeightStatus("present", tuple(found), tuple(searched), None)
    hint = "; ".join(f"download {w.url} to {w.expected()}" for w in missing)
    return WeightStatus("missing", tuple(found), tuple(searched), hint)


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
        raise MetricUnavailable("no reference image")
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


# ---- torchmetrics: psnr, ssim, ms_ssim ---------------------------------------------------------


def _psnr(image: torch.Tensor, context: MetricContext) -> torch.Tensor:
    from torchmetrics.functional.image import peak_signal_noise_ratio

    reference = _needs_reference(image, context)
    return torch.stack(
        [
            peak_signal_noise_ratio(i[None].float(), r[None], data_range=1.0)
            for i, r in zip(image, reference, strict=True)
        ]
    )


def _ssim(image: torch.Tensor, context: MetricContext) -> torch.Tensor:
    from torchmetrics.functional.image import structural_similarity_index_measure

    reference = _needs_reference(image, context)
    pad = (int(3.5 * 1.5 + 0.5) * 2 + 1 - 1) // 2  # torchmetrics' Gaussian radius for sigma 1.5
    if min(image.shape[-2:]) <= 2 * pad:
        raise MetricUnavailable(f"ssim needs both sides > {2 * pad} px")
    # torchmetrics >= 1.x averages the reflect-padded map; the valid part is the classic SSIM.
    _, full = structural_similarity_index_measure(
        image.float(), reference, data_range=1.0, reduction="none", return_full_image=True
    )
    return full[..., pad:-pad, pad:-pad].double().mean((1, 2, 3)).float()


_MS_SSIM_MIN_SIDE = (11 - 1) * 2**4 + 1  # kernel 11, 5 scales: torchmetrics' bound


def _ms_ssim(image: torch.Tensor, context: MetricContext) -> torch.Tensor:
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    reference = _needs_reference(image, context)
    if min(image.shape[-2:]) < _MS_SSIM_MIN_SIDE:
        raise MetricUnavailable(
            f"ms_ssim needs both sides >= {_MS_SSIM_MIN_SIDE} px (got {tuple(image.shape[-2:])})"
        )
    return multiscale_structural_similarity_index_measure(
        image.float(), reference, data_range=1.0, reduction="none"
    ).reshape(-1)


# ---- pyiqa-backed metrics ---------------------------------------------------------------------

#: registry name -> (pyiqa name, extra create_metric options, weight files). The file names are
#: pyiqa 0.1.16's (tests check them against pyiqa's `default_model_urls`).
_PYIQA_SPECS: dict[str, tuple[str, dict[str, Any], tuple[WeightFile, ...]]] = {
    "lpips": (
        "lpips",
        {},
        (
            _pyiqa_file("LPIPS_v0.1_alex-df73285e.pth"),
            _torchvision_file("alexnet-owt-7be5be79.pth"),
        ),
    ),
    "dists": (
        "dists",
        {},
        (_pyiqa_file("DISTS_weights-f5e65c96.pth"), _torchvision_file("vgg16-397923af.pth")),
    ),
    "niqe": ("niqe", {}, (_pyiqa_file("niqe_modelparameters.mat"),)),
    "musiq": ("musiq", {}, (_pyiqa_file("musiq_koniq_ckpt-e95806b9.pth"),)),
    # CLIP RN50 is handed to pyiqa as a file path (no SHA check, no download attempt).
    "clipiqa": ("clipiqa", {}, (_CLIP_RN50,)),
    # The checkpoint is loaded strict over the whole net, ViT included: the ImageNet ViT that
    # pyiqa asks timm (HF hub) for would be overwritten, so it is built without it.
    "maniqa": ("maniqa", {}, (_pyiqa_file("ckpt_koniq10k.pt"),)),
    # Same: CFANet's checkpoint is strict over the ResNet-50 backbone too.
    "topiq_nr": (
        "topiq_nr",
        {"backbone_pretrain": False},
        (_pyiqa_file("cfanet_nr_koniq_res50-9a73138b.pth"),),
    ),
}

_PYIQA_DOCS = {
    "lpips": "LPIPS v0.1, AlexNet trunk with the learned linear heads (Zhang et al. 2018), pyiqa "
    "'lpips'; inputs in [0, 1] (pyiqa maps to [-1, 1]); lower is better.",
    "dists": "DISTS (Ding et al. 2020), VGG16 trunk, pyiqa 'dists'; lower is better.",
    "niqe": "NIQE (Mittal et al. 2012) on the Y channel with the original pristine model "
    "(niqe_modelparameters.mat), pyiqa 'niqe'; lower is better.",
    "musiq": "MUSIQ (Ke et al. 2021) trained on KonIQ-10k, pyiqa 'musiq'; ~0-100, higher is better.",
    "clipiqa": "CLIP-IQA (Wang et al. 2023), OpenAI CLIP RN50 with pyiqa's prompt pairs, pyiqa "
    "'clipiqa'; 0-1, higher is better.",
    "maniqa": "MANIQA (Yang et al. 2022) trained on KonIQ-10k, pyiqa 'maniqa' (20 uniform 224 px "
    "crops); higher is better.",
    "topiq_nr": "TOPIQ no-reference (Chen et al. 2024), ResNet-50, KonIQ-10k, pyiqa 'topiq_nr'; "
    "higher is better.",
}

_pyiqa_models: dict[tuple[str, str], Any] = {}
_pyiqa_lock = threading.RLock()


class _DownloadBlocked(Exception):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


def set_hf_offline() -> None:
    """HF_HUB_OFFLINE=1 for this process (also in an already imported huggingface_hub)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = True
    except Exception:  # huggingface_hub absent: nothing to tell
        pass


@contextlib.contextmanager
def offline_weights(pyiqa_dir: Path | None = None, force_timm_random: bool = False):
    """While pyiqa builds a network: read weights from local files only.

    pyiqa's download folder (frozen at its import) is pointed at `pyiqa_dir` (default: the hub's
    pyiqa folder as the environment says now); pyiqa's, torch.hub's and CLIP's downloaders raise
    instead of fetching; HF is offline. `force_timm_random` builds timm backbones without their
    pretrained weights (for checkpoints that overwrite them).
    """
    import sys
    from unittest import mock

    set_hf_offline()
    target = str(pyiqa_dir or torch_hub_dir() / "pyiqa")

    def blocked(url, dst, *args, **kwargs):
        raise _DownloadBlocked(str(dst))

    def clip_local(url: str, root: str) -> str:
        path = os.path.join(root, os.path.basename(url))
        if not os.path.isfile(path):
            raise _DownloadBlocked(path)
        return path

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch("torch.hub.download_url_to_file", blocked))
        download_util = sys.modules.get("pyiqa.utils.download_util")
        if download_util is not None:
            old = download_util.DEFAULT_CACHE_DIR
            for module in [m for k, m in list(sys.modules.items()) if k.startswith("pyiqa")]:
                if getattr(module, "DEFAULT_CACHE_DIR", None) == old:
                    stack.enter_context(mock.patch.object(module, "DEFAULT_CACHE_DIR", target))
            stack.enter_context(mock.patch.object(download_util, "download_url_to_file", blocked))
        clip_model = sys.modules.get("pyiqa.archs.clip_model")
        if clip_model is not None:
            stack.enter_context(mock.patch.object(clip_model, "_download", clip_local))
        if force_timm_random:
            import timm

            create = timm.create_model

            def create_random(*args, **kwargs):
                kwargs["pretrained"] = False
                return create(*args, **kwargs)

            stack.enter_context(mock.patch.object(timm, "create_model", create_random))
        try:
            yield
        except _DownloadBlocked as exc:
            raise MetricUnavailable(f"weights missing: {exc.path}") from None
        except Exception as exc:
            if type(exc).__name__ in ("LocalEntryNotFoundError", "OfflineModeIsEnabled"):
                raise MetricUnavailable(
                    f"weights missing: not in the HF cache {hf_cache_dir()} ({exc})"
                ) from None
            raise


def load_model(name: str, device: str | torch.device = "cpu"):
    """The pyiqa model behind metric `name` on `device`, created once per (name, device).

    Raises `MetricUnavailable` naming the exact path of a missing weight file.
    """
    metric = get_metric(name)
    if metric.pyiqa_name is None:
        raise KeyError(f"{name!r} is not a pyiqa metric")
    device = torch.device(device)
    key = (metric.name, str(device))
    with _pyiqa_lock:
        if key in _pyiqa_models:
            return _pyiqa_models[key]
        files = _require_weights(metric)
        options = dict(_PYIQA_SPECS.get(metric.name, (None, {}, ()))[1])
        pyiqa_dir = next(
            (files[w.filename].parent for w in metric.weights if w.loader == "pyiqa"), None
        )
        clip = next((files[w.filename] for w in metric.weights if w.loader == "clip"), None)
        if clip is not None:
            options["backbone"] = str(clip)
        set_hf_offline()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pyiqa's and timm's deprecation noise
            import pyiqa

        with offline_weights(pyiqa_dir, force_timm_random=metric.pyiqa_name == "maniqa"):
            model = pyiqa.create_metric(metric.pyiqa_name, device=device, **options)
        model.eval()
        _pyiqa_models[key] = model
        return model


def _pyiqa_fn(name: str, full_reference: bool) -> MetricFn:
    def fn(image: torch.Tensor, context: MetricContext) -> torch.Tensor:
        reference = _needs_reference(image, context) if full_reference else None
        model = load_model(name, image.device)
        with torch.no_grad():
            x = image.float().clamp(0, 1)
            out = model(x, reference.clamp(0, 1)) if full_reference else model(x)
        return out.float().reshape(image.shape[0])

    return fn


# ---- pyiqa pass-through ------------------------------------------------------------------------

_pyiqa_configs: dict[str, dict] | None = None


def pyiqa_models() -> dict[str, dict]:
    """pyiqa's DEFAULT_CONFIGS (the table `pyiqa.list_models()` lists), read without importing
    pyiqa (which takes seconds); {} when pyiqa is not installed."""
    global _pyiqa_configs
    if _pyiqa_configs is None:
        import importlib.util

        spec = importlib.util.find_spec("pyiqa")
        if spec is None or not spec.submodule_search_locations:
            return {}
        path = Path(next(iter(spec.submodule_search_locations))) / "default_model_configs.py"
        # That one module alone, imported from its file: pyiqa/__init__ is not run.
        module_spec = importlib.util.spec_from_file_location("_pyiqa_default_configs", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        _pyiqa_configs = dict(module.DEFAULT_CONFIGS)
    return _pyiqa_configs


_passthrough: dict[str, Metric] = {}


def _pyiqa_passthrough(name: str) -> Metric:
    pyiqa_name = name.split(":", 1)[1]
    if name in _passthrough:
        return _passthrough[name]
    configs = pyiqa_models()
    if pyiqa_name not in configs:
        raise KeyError(
            f"unknown pyiqa metric {pyiqa_name!r} in {name!r}; pyiqa.list_models() has "
            f"{len(configs)}: {', '.join(sorted(configs))}"
        )
    config = configs[pyiqa_name]
    if "fid" in pyiqa_name or pyiqa_name == "inception_score":
        raise KeyError(f"{name!r} is set-level in pyiqa: use fid / kid")
    mode = config.get("metric_mode")
    if mode not in ("FR", "NR"):
        raise KeyError(f"{name!r}: pyiqa metric_mode {mode!r} is neither FR nor NR")
    spec = _PYIQA_SPECS.get(pyiqa_name)
    metric = Metric(
        name,
        "full_reference" if mode == "FR" else "no_reference",
        not config.get("lower_better", False),
        _pyiqa_fn(name, mode == "FR"),
        f"pyiqa {pyiqa_name!r} with its default options (metric_opts {config['metric_opts']}); "
        f"score range {config.get('score_range')}",
        weights=spec[2] if spec and not spec[1] else (),
        backend="pyiqa",
        pyiqa_name=pyiqa_name,
    )
    _passthrough[name] = metric
    return metric


# ---- PiD-specific (kind "latent") -------------------------------------------------------------


def _codec_dtype(codec: Any) -> torch.dtype | None:
    for attr in ("vae", "model", "net"):
        module = getattr(codec, attr, None)
        if isinstance(module, torch.nn.Module):
            return next(module.parameters()).dtype
    return None


def _latent_consistency(image: torch.Tensor, context: MetricContext) -> dict[str, torch.Tensor]:
    codec, clean, scale = context.codec, context.clean_latent, context.scale
    absent = [
        n for n, v in (("codec", codec), ("clean latent", clean), ("scale", scale)) if v is None
    ]
    if absent:
        raise MetricUnavailable(f"no {' / '.join(absent)} in the cell's context")
    h, w = image.shape[-2:]
    if h % scale or w % scale:
        raise MetricUnavailable(f"decode {h}x{w} is not a multiple of PiD's scale {scale}")
    low = resize(image, (h // scale, w // scale))
    dtype = _codec_dtype(codec) or torch.float32
    with torch.no_grad():
        again = codec.encode((low * 2 - 1).to(dtype)).float()
    clean = clean.to(again.device, torch.float32)
    if clean.shape != again.shape:
        raise MetricUnavailable(
            f"re-encoded latent {tuple(again.shape)} and clean latent {tuple(clean.shape)} differ"
        )
    a, b = again.flatten(1).double(), clean.flatten(1).double()
    return {
        "latent_consistency_mse": (a - b).pow(2).mean(1),
        "latent_consistency_cos": F.cosine_similarity(a, b, dim=1),
    }


# CIEDE2000 -------------------------------------------------------------------------------------

#: sRGB (D65) linear RGB -> XYZ, and the D65 2° white: scikit-image's constants.
XYZ_FROM_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
D65_WHITE = (0.95047, 1.0, 1.08883)


def srgb_to_lab(image: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """sRGB in [0, 1] -> CIELAB (D65, 2°), float64, channels along `dim`.

    Linearise (IEC 61966-2-1: c/12.92 below 0.04045, ((c+0.055)/1.055)^2.4 above), XYZ by
    `XYZ_FROM_RGB`, divide by `D65_WHITE`, f(t) = t^(1/3) above 0.008856 else 7.787 t + 16/116,
    L = 116 f(Y) - 16, a = 500 (f(X) - f(Y)), b = 200 (f(Y) - f(Z)). Same as skimage's rgb2lab.
    """
    x = image.to(torch.float64).movedim(dim, -1)
    linear = torch.where(x > 0.04045, ((x + 0.055) / 1.055) ** 2.4, x / 12.92)
    matrix = torch.tensor(XYZ_FROM_RGB, dtype=torch.float64, device=x.device)
    white = torch.tensor(D65_WHITE, dtype=torch.float64, device=x.device)
    t = (linear @ matrix.T) / white
    f = torch.where(t > 0.008856, t.clamp_min(0) ** (1 / 3), 7.787 * t + 16 / 116)
    lab = torch.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1
    )
    return lab.movedim(-1, dim)


def ciede2000(lab1: torch.Tensor, lab2: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """CIEDE2000 colour difference (Sharma, Wu, Dalal 2005; kL = kC = kH = 1), float64.

    `lab1`, `lab2`: CIELAB with L, a, b along `dim`; the result drops that dimension.
    """
    L1, a1, b1 = lab1.to(torch.float64).unbind(dim)
    L2, a2, b2 = lab2.to(torch.float64).unbind(dim)
    two_pi, rad = 2 * math.pi, math.pi / 180
    c_bar = (torch.hypot(a1, b1) + torch.hypot(a2, b2)) / 2
    c7 = c_bar**7
    g = 0.5 * (1 - torch.sqrt(c7 / (c7 + 25.0**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = torch.hypot(a1p, b1), torch.hypot(a2p, b2)
    h1p = torch.remainder(torch.atan2(b1, a1p), two_pi)
    h2p = torch.remainder(torch.atan2(b2, a2p), two_pi)
    chroma_zero = (c1p * c2p) == 0

    d_l = L2 - L1
    d_c = c2p - c1p
    dh = h2p - h1p
    dh = torch.where(dh > math.pi, dh - two_pi, torch.where(dh < -math.pi, dh + two_pi, dh))
    dh = torch.where(chroma_zero, torch.zeros_like(dh), dh)
    d_h = 2 * torch.sqrt(c1p * c2p) * torch.sin(dh / 2)

    l_bar = (L1 + L2) / 2
    cp_bar = (c1p + c2p) / 2
    h_sum, h_diff = h1p + h2p, (h1p - h2p).abs()
    h_bar = torch.where(
        h_diff <= math.pi,
        h_sum / 2,
        torch.where(h_sum < two_pi, (h_sum + two_pi) / 2, (h_sum - two_pi) / 2),
    )
    h_bar = torch.where(chroma_zero, h_sum, h_bar)
    t = (
        1
        - 0.17 * torch.cos(h_bar - 30 * rad)
        + 0.24 * torch.cos(2 * h_bar)
        + 0.32 * torch.cos(3 * h_bar + 6 * rad)
        - 0.20 * torch.cos(4 * h_bar - 63 * rad)
    )
    d_theta = 30 * rad * torch.exp(-(((h_bar / rad - 275) / 25) ** 2))
    cp7 = cp_bar**7
    r_c = 2 * torch.sqrt(cp7 / (cp7 + 25.0**7))
    s_l = 1 + 0.015 * (l_bar - 50) ** 2 / torch.sqrt(20 + (l_bar - 50) ** 2)
    s_c = 1 + 0.045 * cp_bar
    s_h = 1 + 0.015 * cp_bar * t
    r_t = -torch.sin(2 * d_theta) * r_c
    lc, cc, hc = d_l / s_l, d_c / s_c, d_h / s_h
    return torch.sqrt((lc**2 + cc**2 + hc**2 + r_t * cc * hc).clamp_min(0))


def mean_ciede2000(
    image: torch.Tensor, other: torch.Tensor, rows: int | None = None
) -> torch.Tensor:
    """Per-image mean CIEDE2000 of two sRGB ``[B, 3, H, W]`` in [0, 1] (float64, in row chunks)."""
    if image.shape != other.shape:
        raise ValueError(f"shapes differ: {tuple(image.shape)} vs {tuple(other.shape)}")
    h, w = image.shape[-2:]
    rows = rows or max(1, (1 << 20) // max(w, 1))
    total = torch.zeros(image.shape[0], dtype=torch.float64, device=image.device)
    for top in range(0, h, rows):
        part = slice(top, min(h, top + rows))
        de = ciede2000(srgb_to_lab(image[..., part, :]), srgb_to_lab(other[..., part, :]))
        total += de.sum((-2, -1))
    return total / (h * w)


def _lq_color_de2000(image: torch.Tensor, context: MetricContext) -> torch.Tensor:
    native = context.native
    if native is None:
        raise MetricUnavailable("no native decode in the cell's context")
    native = native.to(image.device, torch.float32).clamp(0, 1)
    if native.shape[0] != image.shape[0]:
        raise MetricUnavailable(f"native batch {native.shape[0]} != image batch {image.shape[0]}")
    return mean_ciede2000(resize(image, tuple(native.shape[-2:])), native)


# high-frequency energy ---------------------------------------------------------------------------


def luma(image: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` -> ``[B, H, W]``: `LUMA_WEIGHTS` on the sRGB-encoded values."""
    weights = torch.tensor(LUMA_WEIGHTS, dtype=torch.float32, device=image.device)
    return torch.einsum("c,bchw->bhw", weights, image.float())


def hf_energy(image: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Per-image spectral energy above `cutoff` (cycles per pixel, radial), float64 ``[B]``.

    Luma minus its mean, times a separable (symmetric) Hann window, 2-D FFT; the energy is
    sum |F(fy, fx)|^2 / (H W) over the bins with sqrt(fx^2 + fy^2) > cutoff, fx and fy the
    bin frequencies in cycles per pixel (|f| <= 0.5; 0.5 is Nyquist).
    """
    y = luma(image)
    y = y - y.mean((-2, -1), keepdim=True)
    h, w = y.shape[-2:]
    window = torch.outer(
        torch.hann_window(h, periodic=False, device=y.device),
        torch.hann_window(w, periodic=False, device=y.device),
    )
    power = torch.fft.rfft2(y * window).abs().double() ** 2  # [B, H, W // 2 + 1]
    fy = torch.fft.fftfreq(h, device=y.device, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(w, device=y.device, dtype=torch.float64)[None, :]
    above = (fx**2 + fy**2).sqrt() > cutoff
    columns = torch.full((w // 2 + 1,), 2.0, dtype=torch.float64, device=y.device)
    columns[0] = 1.0  # the half spectrum: every column but 0 (and Nyquist, w even) stands for two
    if w % 2 == 0:
        columns[-1] = 1.0
    return (power * above * columns).sum((-2, -1)) / (h * w)


def hf_cutoff(scale: int) -> float:
    """The native image's Nyquist in output pixels: 1 / (2 scale) cycles per pixel."""
    return 1.0 / (2 * scale)


def _hf_energy_ratio(image: torch.Tensor, context: MetricContext) -> torch.Tensor:
    if context.scale is None:
        raise MetricUnavailable("no scale (PiD's upscale factor) in the context")
    if context.reference is not None:
        baseline = _needs_reference(image, context)
    elif context.native is not None:
        native = context.native.to(image.device, torch.float32)
        baseline = F.interpolate(
            native, size=tuple(image.shape[-2:]), mode="bicubic", align_corners=False
        ).clamp(0, 1)
    else:
        raise MetricUnavailable("neither a reference nor a native decode in the context")
    cutoff = hf_cutoff(context.scale)
    denominator = hf_energy(baseline, cutoff)
    if bool((denominator <= 0).any()):
        raise MetricUnavailable("the baseline has no energy above the cutoff")
    return hf_energy(image, cutoff) / denominator


# ---- set-level: FID and KID -------------------------------------------------------------------


def _set_level(image: torch.Tensor, context: MetricContext) -> torch.Tensor:
    raise MetricUnavailable("set-level metric")  # Metric.evaluate answers first


#: Images at least this large (longer side, px) are compared by random patches, not whole.
PATCH_THRESHOLD = 2048
PATCH_SIZE = 299
PATCHES_PER_IMAGE = 16
PATCH_SEED = 0


@dataclass
class SetResult:
    """One set-level metric over two sets. value None -> reason says why."""

    metric: str
    value: float | None
    reason: str | None = None
    n_images: int = 0
    n_reference: int = 0
    n_samples: int = 0  # feature vectors per set (images, or images x patches)
    n_reference_samples: int = 0
    patch: dict[str, int] | None = None  # {"crop_size", "crops_per_image", "seed"}
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


class InceptionFeatures(torch.nn.Module):
    """pytorch-fid's FID InceptionV3 (pyiqa's port): ``[B, 3, H, W]`` in [0, 1] -> pool3 ``[B,
    2048]``; inputs are resized to 299x299 (bilinear, align_corners=False) and mapped to [-1, 1]."""

    num_features = 2048

    def __init__(self) -> None:
        super().__init__()
        from pyiqa.archs.inception import InceptionV3

        self.net = InceptionV3(output_blocks=[3], resize_input=True, normalize_input=True)
        self.net.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, resize_input=True, normalize_input=True)[0].flatten(1)


class _Features(torch.nn.Module):
    """Hands precomputed features to torchmetrics (one Inception pass serves FID and KID)."""

    num_features = InceptionFeatures.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


_inception: dict[str, InceptionFeatures] = {}


def load_inception(device: str | torch.device = "cpu") -> InceptionFeatures:
    """The FID Inception on `device` (once per process and device), from local files only."""
    device = torch.device(device)
    with _pyiqa_lock:
        if str(device) not in _inception:
            path = INCEPTION_WEIGHTS.find()
            if path is None:
                raise MetricUnavailable(f"weights missing: {INCEPTION_WEIGHTS.expected()}")
            set_hf_offline()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import pyiqa  # noqa: F401  (registers its modules for offline_weights)
            with offline_weights(path.parent):
                _inception[str(device)] = InceptionFeatures().to(device)
        return _inception[str(device)]


def _as_batches(images: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    for image in images:
        yield image[None] if image.dim() == 3 else image


def _patches(
    image: torch.Tensor, size: int, count: int, generator: torch.Generator
) -> torch.Tensor:
    h, w = image.shape[-2:]
    if h < size or w < size:
        raise MetricUnavailable(f"image {h}x{w} is smaller than the {size} px patches")
    out = []
    for _ in range(count):
        top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
        out.append(image[..., top : top + size, left : left + size])
    return torch.cat(out)


def _features(
    images: Iterator[torch.Tensor],
    extractor: InceptionFeatures,
    device: torch.device,
    patch: dict[str, int] | None,
    batch_size: int,
) -> tuple[torch.Tensor, int]:
    generator = torch.Generator().manual_seed(patch["seed"]) if patch else None
    out, count, pending = [], 0, []

    def flush() -> None:
        if pending:
            with torch.no_grad():
                out.append(extractor(torch.cat(pending).to(device).float()).double().cpu())
            pending.clear()

    for batch in images:
        for image in batch:
            count += 1
            image = image[None].clamp(0, 1)
            if patch:
                image = _patches(image, patch["crop_size"], patch["crops_per_image"], generator)
            pending.append(image)
            if sum(p.shape[0] for p in pending) >= batch_size:
                flush()
    flush()
    features = torch.cat(out) if out else torch.zeros(0, InceptionFeatures.num_features)
    return features, count


def compute_set_metrics(
    names: Sequence[str],
    images: Iterable[torch.Tensor],
    references: Iterable[torch.Tensor],
    *,
    device: str | torch.device | None = None,
    patch: bool | Literal["auto"] = "auto",
    crop_size: int = PATCH_SIZE,
    crops_per_image: int = PATCHES_PER_IMAGE,
    seed: int = PATCH_SEED,
    batch_size: int = 16,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
) -> dict[str, SetResult]:
    """FID and / or KID of `images` (generated) against `references` (real).

    Each is an iterable of ``[3, H, W]`` or ``[B, 3, H, W]`` tensors in [0, 1] (a generator is
    fine: images are read one at a time). Features: pytorch-fid's Inception pool3 (2048-d) of
    each whole image resized to 299x299; with `patch` (``auto``: when the first image's longer
    side is >= `PATCH_THRESHOLD`) of `crops_per_image` random `crop_size` crops per image at full
    resolution, positions drawn from a generator seeded with `seed` (the same positions for both
    sets where the sizes agree). FID and KID are torchmetrics' (`FrechetInceptionDistance`,
    `KernelInceptionDistance`: polynomial kernel, degree 3; `kid_subsets` subsets of
    min(`kid_subset_size`, samples) drawn with torch's RNG seeded with `seed`).
    """
    unknown = [n for n in names if n not in ("fid", "kid")]
    if unknown:
        raise KeyError(f"not set-level metrics: {unknown} (set-level: fid, kid)")
    images, references = iter(_as_batches(images)), iter(_as_batches(references))
    first = next(images, None)
    if first is not None:
        images = _chain(first, images)
        use_patch = max(first.shape[-2:]) >= PATCH_THRESHOLD if patch == "auto" else bool(patch)
    else:
        use_patch = bool(patch) if patch != "auto" else False
    patch_info = (
        {"crop_size": crop_size, "crops_per_image": crops_per_image, "seed": seed}
        if use_patch
        else None
    )
    device = torch.device(device or (first.device if first is not None else "cpu"))

    def null(reason: str, **counts: int) -> dict[str, SetResult]:
        return {n: SetResult(n, None, reason, patch=patch_info, **counts) for n in names}

    try:
        extractor = load_inception(device)
        fake, n_fake = _features(images, extractor, device, patch_info, batch_size)
        real, n_real = _features(references, extractor, device, patch_info, batch_size)
    except MetricUnavailable as exc:
        _warn_once("fid/kid", exc.reason)
        return null(exc.reason)
    counts = {
        "n_images": n_fake,
        "n_reference": n_real,
        "n_samples": fake.shape[0],
        "n_reference_samples": real.shape[0],
    }
    results = {}
    if "fid" in names:
        results["fid"] = _fid(fake, real, patch_info, counts)
    if "kid" in names:
        results["kid"] = _kid(fake, real, patch_info, counts, seed, kid_subsets, kid_subset_size)
    return {n: results[n] for n in names}


def _chain(first: torch.Tensor, rest: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
    yield first
    yield from rest


def _fid(fake, real, patch_info, counts) -> SetResult:
    from torchmetrics.image.fid import FrechetInceptionDistance

    if min(fake.shape[0], real.shape[0]) < 2:
        reason = "FID needs at least 2 images (or patches) in each set"
        return SetResult("fid", None, reason, patch=patch_info, **counts)
    fid = FrechetInceptionDistance(feature=_Features(), normalize=True)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    value = float(fid.compute())
    extra = {"features": "pytorch-fid InceptionV3 pool3 (2048)"}
    return SetResult("fid", value, None, patch=patch_info, extra=extra, **counts)


def _kid(fake, real, patch_info, counts, seed, subsets, subset_size) -> SetResult:
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(subset_size, fake.shape[0], real.shape[0])
    if size < 2:
        reason = "KID needs at least 2 images (or patches) in each set"
        return SetResult("kid", None, reason, patch=patch_info, **counts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "will save all extracted features": it is meant to
        kid = KernelInceptionDistance(
            feature=_Features(), subsets=subsets, subset_size=size, normalize=True
        )
    kid.update(real, real=True)
    kid.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = kid.compute()
    extra = {"kid_std": float(std), "subsets": subsets, "subset_size": size, "seed": seed}
    return SetResult("kid", float(mean), None, patch=patch_info, extra=extra, **counts)


# ---- the registry -----------------------------------------------------------------------------


def _registry() -> dict[str, Metric]:
    metrics = [
        Metric(
            "psnr",
            "full_reference",
            True,
            _psnr,
            "PSNR in dB = 10 log10(1 / MSE), MSE over all pixels and the 3 channels, data range "
            "1 (torchmetrics peak_signal_noise_ratio); +inf for identical images.",
            backend="torchmetrics",
        ),
        Metric(
            "ssim",
            "full_reference",
            True,
            _ssim,
            "SSIM (Wang et al. 2004): Gaussian window 11x11, sigma 1.5, K1 0.01, K2 0.03, data "
            "range 1, per channel; the mean over the channels and the valid map (a 5 px border, "
            "where the window leaves the image, excluded). torchmetrics' SSIM map, cropped; "
            "= skimage structural_similarity(gaussian_weights=True, sigma=1.5, "
            "use_sample_covariance=False, data_range=1).",
            backend="torchmetrics",
        ),
        Metric(
            "ms_ssim",
            "full_reference",
            True,
            _ms_ssim,
            "MS-SSIM (Wang et al. 2003): 5 scales, weights (0.0448, 0.2856, 0.3001, 0.2363, "
            "0.1333), Gaussian 11x11 sigma 1.5, data range 1, relu-normalised "
            "(torchmetrics multiscale_structural_similarity_index_measure); needs sides >= 161.",
            backend="torchmetrics",
        ),
    ]
    for name in ("lpips", "dists", "niqe", "musiq", "clipiqa", "maniqa", "topiq_nr"):
        pyiqa_name, _, weights = _PYIQA_SPECS[name]
        full_reference = name in ("lpips", "dists")
        metrics.append(
            Metric(
                name,
                "full_reference" if full_reference else "no_reference",
                name not in ("lpips", "dists", "niqe"),
                _pyiqa_fn(name, full_reference),
                _PYIQA_DOCS[name],
                weights=weights,
                backend="pyiqa",
                pyiqa_name=pyiqa_name,
            )
        )
    set_doc = (
        "{name} between the run's decodes and references (torchmetrics {cls} on pytorch-fid's "
        "Inception pool3 features; whole images resized to 299, or, for images >= 2048 px, "
        f"{PATCHES_PER_IMAGE} random {PATCH_SIZE} px patches per image at seed {PATCH_SEED}); "
        "set-level: pid_bench.metrics.compute_set_metrics."
    )
    metrics += [
        Metric(
            "fid",
            "set_level",
            False,
            _set_level,
            set_doc.format(name="FID", cls="FrechetInceptionDistance"),
            weights=(INCEPTION_WEIGHTS,),
            backend="torchmetrics",
        ),
        Metric(
            "kid",
            "set_level",
            False,
            _set_level,
            set_doc.format(name="KID (mean over subsets)", cls="KernelInceptionDistance"),
            weights=(INCEPTION_WEIGHTS,),
            backend="torchmetrics",
        ),
    ]
    consistency = (
        "Decode downsampled by PiD's scale to the native size (antialiased bicubic), re-encoded "
        "with the backbone codec (codec.encode of the image in [-1, 1]) and compared with the "
        "clean latent (before noise): "
    )
    metrics += [
        Metric(
            "latent_consistency_mse",
            "latent",
            False,
            _latent_consistency,
            consistency + "mean squared difference over all latent elements.",
            group="latent_consistency",
        ),
        Metric(
            "latent_consistency_cos",
            "latent",
            True,
            _latent_consistency,
            consistency + "cosine similarity of the flattened latents.",
            group="latent_consistency",
        ),
        Metric(
            "lq_color_de2000",
            "latent",
            False,
            _lq_color_de2000,
            "Decode resized to the native decode's size (antialiased bicubic, clamped), then the "
            "mean over pixels of CIEDE2000 (kL=kC=kH=1) against the native decode; sRGB -> "
            "linear -> XYZ (D65) -> CIELAB with skimage's constants; colour drift from the "
            "latent's own colours.",
        ),
        Metric(
            "hf_energy_ratio",
            "latent",
            None,  # 1 is ideal against a reference; above it can be invented detail or noise
            _hf_energy_ratio,
            "E(decode) / E(baseline), E = spectral energy of the Hann-windowed, mean-removed "
            "BT.709 luma above the radial cutoff 1 / (2 scale) cycles per pixel (the native "
            "image's Nyquist, i.e. 1/scale of the output's); baseline = the reference, else the "
            "native decode bicubic-upscaled to the decode's size. 1 = as much fine detail as the "
            "reference; with the bicubic baseline values are >> 1.",
        ),
    ]
    return {m.name: m for m in metrics}


METRICS: dict[str, Metric] = _registry()

#: Names that stand for several metrics computed together.
METRIC_ALIASES: dict[str, tuple[str, ...]] = {
    "latent_consistency": ("latent_consistency_mse", "latent_consistency_cos"),
}

#: Every metric with a per-row value (the schema's `metric_<name>` columns); set-level and
#: pyiqa pass-through metrics have none.
ROW_METRICS: tuple[str, ...] = tuple(n for n, m in METRICS.items() if m.kind != "set_level")


def get_metric(name: str) -> Metric:
    """A registered metric, or ``pyiqa:<name>`` for any `pyiqa.list_models()` name."""
    if name in METRICS:
        return METRICS[name]
    if name.startswith("pyiqa:"):
        return _pyiqa_passthrough(name)
    known = ", ".join([*sorted(METRICS), *sorted(METRIC_ALIASES)])
    raise KeyError(f"unknown metric {name!r}; known: {known}, or pyiqa:<name>")


def expand_metric_names(names: Iterable[str]) -> list[str]:
    """Aliases expanded, order kept, duplicates dropped; raises KeyError for an unknown name."""
    out: list[str] = []
    for name in names:
        for each in METRIC_ALIASES.get(name, (name,)):
            get_metric(each)
            if each not in out:
                out.append(each)
    return out


def is_known_metric(name: str) -> bool:
    try:
        expand_metric_names([name])
    except KeyError:
        return False
    return True


# ---- the one call the cell makes --------------------------------------------------------------

_warned: set[str] = set()
_warn_lock = threading.Lock()


def _warn_once(name: str, reason: str) -> None:
    with _warn_lock:
        if name in _warned:
            return
        _warned.add(name)
    warnings.warn(f"metric {name} left null: {reason}", MetricUnavailableWarning, stacklevel=3)


@dataclass
class Measurement:
    """Values (None where not computed) and the reason for each None."""

    values: dict[str, float | None]
    reasons: dict[str, str]

    def columns(self, prefix: str = "metric_") -> dict[str, float | None]:
        return {f"{prefix}{name}": value for name, value in self.values.items()}


def measure(
    names: Iterable[str], image: torch.Tensor, context: MetricContext | None = None
) -> Measurement:
    """Every metric of `names` on one image ``[1, 3, H, W]`` in [0, 1]; never raises for a metric.

    A metric that cannot run (weights missing, input absent, set-level, its own error) is None
    with a reason; missing weights and failures also warn, once per metric per process. Metrics of one group (latent
    consistency) share one computation. NaN becomes None ("not finite").
    """
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"measure takes one image [1, 3, H, W], got {tuple(image.shape)}")
    context = context or MetricContext()
    values: dict[str, float | None] = {}
    reasons: dict[str, str] = {}
    shared: dict[str, dict[str, torch.Tensor] | Exception] = {}
    for name in expand_metric_names(names):
        metric = get_metric(name)
        try:
            if metric.group is not None and metric.kind != "set_level":
                if metric.group not in shared:
                    try:
                        shared[metric.group] = metric.fn(image, context)
                    except Exception as exc:
                        shared[metric.group] = exc
                result = shared[metric.group]
                if isinstance(result, Exception):
                    raise result
                value = float(result[name].reshape(-1)[0])
            else:
                value = float(metric.evaluate(image, context)[0])
        except MetricUnavailable as exc:
            values[name], reasons[name] = None, exc.reason
        except Exception as exc:  # a metric's own failure leaves it null, not the row
            values[name], reasons[name] = None, f"failed: {type(exc).__name__}: {exc}"[:500]
        else:
            if math.isnan(value):
                values[name], reasons[name] = None, "not finite (nan)"
            else:
                values[name] = value
        if name in reasons and reasons[name].startswith(("weights missing", "failed")):
            _warn_once(name, reasons[name])  # absent inputs (no reference...) are no news
    return Measurement(values, reasons)


def clear_caches() -> None:
    """Forget created models and issued warnings (tests; a changed TORCH_HOME)."""
    with _pyiqa_lock:
        _pyiqa_models.clear()
        _inception.clear()
    with _warn_lock:
        _warned.clear()


def describe(names: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """One dict per metric (name, kind, higher_is_better, backend, weight files, doc)."""
    out = []
    for name in names if names is not None else METRICS:
        m = get_metric(name)
        out.append(
            {
                "name": m.name,
                "kind": m.kind,
                "higher_is_better": m.higher_is_better,
                "backend": m.backend,
                "weights": [w.filename for w in m.weights],
                "doc": m.doc,
            }
        )
    return out


def _check_mapping(mapping: Mapping[str, Metric]) -> None:
    for name, metric in mapping.items():
        assert name == metric.name and metric.kind in KINDS, name


_check_mapping(METRICS)
