"""Set-level metrics: FID and KID between two sets of images (pytorch-fid's Inception features,
torchmetrics' distances), computed over a whole run by `compute_set_metrics`."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from pid_bench.metrics.base import MetricContext
from pid_bench.metrics.catalog import (
    PATCH_SEED,
    PATCH_SIZE,
    PATCH_THRESHOLD,
    PATCHES_PER_IMAGE,
)
from pid_bench.metrics.errors import MetricUnavailable
from pid_bench.metrics.shared import MODEL_LOCK, offline_weights, set_hf_offline, warn_once
from pid_bench.metrics.weights import INCEPTION_WEIGHTS

# ---- set-level: FID and KID -------------------------------------------------------------------
# The patch constants (PATCH_*) are in catalog: the fid / kid definitions quote them.


def not_per_image(image: torch.Tensor, context: MetricContext) -> torch.Tensor:
    """The per-image function of fid and kid: there is none (`Metric.evaluate` says so first)."""
    raise MetricUnavailable("set-level metric")


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

    def __init__(self, num_features: int = InceptionFeatures.num_features) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


#: device -> the FID Inception on it; guarded by MODEL_LOCK.
_inception: dict[str, InceptionFeatures] = {}


def clear_cache() -> None:
    """Forget the created Inception networks (a changed TORCH_HOME, tests)."""
    with MODEL_LOCK:
        _inception.clear()


def load_inception(device: str | torch.device = "cpu") -> InceptionFeatures:
    """The FID Inception on `device` (once per process and device), from local files only."""
    device = torch.device(device)
    with MODEL_LOCK:
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


def random_patches(
    image: torch.Tensor, size: int, count: int, generator: torch.Generator
) -> torch.Tensor:
    """`count` crops of `size` px from ``[1, 3, H, W]`` at positions drawn from `generator`,
    stacked ``[count, 3, size, size]``; MetricUnavailable when the image is smaller."""
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
                image = random_patches(
                    image, patch["crop_size"], patch["crops_per_image"], generator
                )
            pending.append(image)
            if sum(p.shape[0] for p in pending) >= batch_size:
                flush()
    flush()
    features = torch.cat(out) if out else torch.zeros(0, extractor.num_features)
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
    extractor: torch.nn.Module | None = None,
) -> dict[str, SetResult]:
    """FID and / or KID of `images` (generated) against `references` (real).

    Each is an iterable of ``[3, H, W]`` or ``[B, 3, H, W]`` tensors in [0, 1] (a generator is
    fine: images are read one at a time). Features: pytorch-fid's Inception pool3 (2048-d) of
    each whole image resized to 299x299; with `patch` (``auto``: when the first image's longer
    side is >= `PATCH_THRESHOLD`) of `crops_per_image` random `crop_size` crops per image at full
    resolution, positions drawn from a generator seeded with `seed` (the same positions for both
    sets where the sizes agree). FID and KID are torchmetrics' (`FrechetInceptionDistance`,
    `KernelInceptionDistance`: polynomial kernel, degree 3; `kid_subsets` subsets of
    min(`kid_subset_size`, samples) drawn with torch's RNG seeded with `seed`). `extractor`
    replaces the Inception: a module ``[B, 3, H, W]`` in [0, 1] -> ``[B, D]`` with an int
    ``num_features`` (pid_bench.sets.load_feature_extractor).
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
        if extractor is None:
            extractor = load_inception(device)
        else:
            extractor = extractor.to(device)
        fake, n_fake = _features(images, extractor, device, patch_info, batch_size)
        real, n_real = _features(references, extractor, device, patch_info, batch_size)
    except MetricUnavailable as exc:
        warn_once("fid/kid", exc.reason)
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
    fid = FrechetInceptionDistance(feature=_Features(fake.shape[1]), normalize=True)
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
            feature=_Features(fake.shape[1]), subsets=subsets, subset_size=size, normalize=True
        )
    kid.update(real, real=True)
    kid.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = kid.compute()
    extra = {"kid_std": float(std), "subsets": subsets, "subset_size": size, "seed": seed}
    return SetResult("kid", float(mean), None, patch=patch_info, extra=extra, **counts)
