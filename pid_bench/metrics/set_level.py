"""Set-level metrics: FID and KID between two sets of images (pytorch-fid's Inception features,
torchmetrics' distances), computed over a whole run by `compute_set_metrics`."""

from __future__ import annotations

import hashlib
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


def member_generator(seed: int, member: str) -> torch.Generator:
    """The generator of one member's patch positions: seeded from (`seed`, `member`), so a
    decode and its reference (the same member, the same size) get the same positions, and a
    member's positions do not depend on the other members or their order."""
    digest = hashlib.sha256(f"{seed}:{member}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def patch_spec(size: tuple[int, int], patch: bool | Literal["auto"] = "auto") -> dict | None:
    """The patch parameters ({"crop_size", "crops_per_image", "seed"}) for images of `size`
    (``auto``: when its longer side is >= `PATCH_THRESHOLD`), else None (whole images). Read at
    call time, so the cell and the end of the run agree (and a test may shrink them)."""
    use = max(size) >= PATCH_THRESHOLD if patch == "auto" else bool(patch)
    if not use:
        return None
    return {"crop_size": PATCH_SIZE, "crops_per_image": PATCHES_PER_IMAGE, "seed": PATCH_SEED}


def member_samples(image: torch.Tensor, patch: dict[str, int] | None, member: str) -> torch.Tensor:
    """``[1, 3, H, W]`` in [0, 1] -> what the extractor sees of it: the image, or its patches
    at the member's positions (`member_generator`)."""
    image = image.clamp(0, 1)
    if not patch:
        return image
    generator = member_generator(patch["seed"], member)
    return random_patches(image, patch["crop_size"], patch["crops_per_image"], generator)


def extract_features(
    images: Iterable[torch.Tensor],
    extractor: InceptionFeatures,
    device: torch.device,
    patch: dict[str, int] | None,
    batch_size: int = 16,
    members: Sequence[str] | None = None,
) -> tuple[torch.Tensor, int]:
    """Features ``[N, D]`` of every image (``[3, H, W]`` or ``[B, 3, H, W]`` in [0, 1]), in
    order, and the number of images; patches at each member's positions (`members[i]`, or the
    image's index in its set when None)."""
    out, count, pending = [], 0, []

    def flush() -> None:
        if pending:
            with torch.no_grad():
                out.append(extractor(torch.cat(pending).to(device).float()).double().cpu())
            pending.clear()

    for batch in _as_batches(images):
        for image in batch:
            member = members[count] if members is not None else str(count)
            count += 1
            pending.append(member_samples(image[None], patch, member))
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
    crop_size: int | None = None,
    crops_per_image: int | None = None,
    seed: int | None = None,
    batch_size: int = 16,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    extractor: torch.nn.Module | None = None,
    members: Sequence[str] | None = None,
) -> dict[str, SetResult]:
    """FID and / or KID of `images` (generated) against `references` (real).

    Each is an iterable of ``[3, H, W]`` or ``[B, 3, H, W]`` tensors in [0, 1] (a generator is
    fine: images are read one at a time). Features: pytorch-fid's Inception pool3 (2048-d) of
    each whole image resized to 299x299; with `patch` (``auto``: when the first image's longer
    side is >= `PATCH_THRESHOLD`) of `crops_per_image` (`PATCHES_PER_IMAGE`) random `crop_size`
    (`PATCH_SIZE`) crops per image at full resolution, positions drawn per member from a
    generator seeded with (`seed`, member) (`member_generator`; the member is `members[i]`, or
    the image's index in its set), so an image and its reference get the same positions where
    the sizes agree. FID and KID are `set_metrics_from_features`'. `extractor` replaces the
    Inception: a module ``[B, 3, H, W]`` in [0, 1] -> ``[B, D]`` with an int ``num_features``
    (pid_bench.sets.load_feature_extractor).
    """
    check_set_names(names)
    images, references = iter(_as_batches(images)), iter(_as_batches(references))
    first = next(images, None)
    if first is not None:
        images = _chain(first, images)
        patch_info = patch_spec(tuple(first.shape[-2:]), patch)
    else:
        patch_info = patch_spec((0, 0), patch) if patch != "auto" else None
    if patch_info:
        given = {"crop_size": crop_size, "crops_per_image": crops_per_image, "seed": seed}
        patch_info |= {k: v for k, v in given.items() if v is not None}
    device = torch.device(device or (first.device if first is not None else "cpu"))
    try:
        if extractor is None:
            extractor = load_inception(device)
        else:
            extractor = extractor.to(device)
        fake, n_fake = extract_features(images, extractor, device, patch_info, batch_size, members)
        real, n_real = extract_features(
            references, extractor, device, patch_info, batch_size, members
        )
    except MetricUnavailable as exc:
        warn_once("fid/kid", exc.reason)
        return {n: SetResult(n, None, exc.reason, patch=patch_info) for n in names}
    return set_metrics_from_features(
        names, fake, real, n_fake, n_real, patch_info,
        seed=PATCH_SEED if seed is None else seed, kid_subsets=kid_subsets,
        kid_subset_size=kid_subset_size,
    )  # fmt: skip


def check_set_names(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in ("fid", "kid")]
    if unknown:
        raise KeyError(f"not set-level metrics: {unknown} (set-level: fid, kid)")


def set_metrics_from_features(
    names: Sequence[str],
    fake: torch.Tensor,
    real: torch.Tensor,
    n_images: int,
    n_reference: int,
    patch_info: dict[str, int] | None,
    *,
    seed: int = PATCH_SEED,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
) -> dict[str, SetResult]:
    """FID and / or KID from features already extracted (``[N, D]``, one row per image or
    patch, in member order): torchmetrics' `FrechetInceptionDistance` and
    `KernelInceptionDistance` (polynomial kernel, degree 3; `kid_subsets` subsets of
    min(`kid_subset_size`, samples) drawn with torch's RNG seeded with `seed`)."""
    check_set_names(names)
    fake, real = fake.double().cpu(), real.double().cpu()
    counts = {
        "n_images": n_images,
        "n_reference": n_reference,
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
