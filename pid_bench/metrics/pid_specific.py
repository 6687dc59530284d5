"""PiD-specific metrics (kind ``latent``): latent consistency, colour drift (CIELAB,
CIEDE2000) against the native decode, and high-frequency energy."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from pid_bench.metrics.base import MetricContext, conversions, resize
from pid_bench.metrics.catalog import LUMA_WEIGHTS
from pid_bench.metrics.errors import MetricUnavailable

# ---- PiD-specific (kind "latent") -------------------------------------------------------------


def _codec_dtype(codec: Any) -> torch.dtype | None:
    for attr in ("vae", "model", "net"):
        module = getattr(codec, attr, None)
        if isinstance(module, torch.nn.Module):
            return next(module.parameters()).dtype
    return None


def latent_consistency(image: torch.Tensor, context: MetricContext) -> dict[str, torch.Tensor]:
    codec, clean, scale = context.codec, context.clean_latent, context.scale
    absent = [
        n for n, v in (("codec", codec), ("clean latent", clean), ("scale", scale)) if v is None
    ]
    if absent:
        raise MetricUnavailable(f"no {' / '.join(absent)} in the cell's context")
    h, w = image.shape[-2:]
    factor = getattr(codec, "spatial_factor", None)
    native = (clean.shape[-2] * factor, clean.shape[-1] * factor) if factor else None
    if native is not None and (h, w) == native:
        low = image  # the native decode, scored at its own size
    elif h % scale or w % scale:
        raise MetricUnavailable(f"decode {h}x{w} is not a multiple of PiD's scale {scale}")
    else:
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
    return mean_ciede2000_lab(srgb_to_lab(image), srgb_to_lab(other), rows)


def mean_ciede2000_lab(
    lab: torch.Tensor, other: torch.Tensor, rows: int | None = None
) -> torch.Tensor:
    """Per-image mean `ciede2000` of two CIELAB ``[B, 3, H, W]`` (float64, in row chunks)."""
    if lab.shape != other.shape:
        raise ValueError(f"shapes differ: {tuple(lab.shape)} vs {tuple(other.shape)}")
    h, w = lab.shape[-2:]
    rows = rows or max(1, (1 << 20) // max(w, 1))
    total = torch.zeros(lab.shape[0], dtype=torch.float64, device=lab.device)
    for top in range(0, h, rows):
        part = slice(top, min(h, top + rows))
        total += ciede2000(lab[..., part, :], other[..., part, :]).sum((-2, -1))
    return total / (h * w)


def lq_color_de2000(image: torch.Tensor, context: MetricContext) -> torch.Tensor:
    shared = conversions(image, context)
    native = shared.native(clamped=True)
    if native.shape[0] != image.shape[0]:
        raise MetricUnavailable(f"native batch {native.shape[0]} != image batch {image.shape[0]}")
    lab = shared.lab("down", srgb_to_lab)  # `resize(image, native size)` in CIELAB
    return mean_ciede2000_lab(lab, shared.lab("native_clamped", srgb_to_lab))


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


def hf_energy_ratio(image: torch.Tensor, context: MetricContext) -> torch.Tensor:
    if context.scale is None:
        raise MetricUnavailable("no scale (PiD's upscale factor) in the context")
    if context.reference is not None:
        baseline = conversions(image, context).reference()
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
