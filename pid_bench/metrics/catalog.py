"""What each built-in metric is, as plain data: name, kind, direction, definition, weight files,
backend. No torch: `pid_bench.schema` builds the row's ``metric_<name>`` columns from this module
alone, so that reading a run's Parquet never loads torch. The computations are elsewhere
(`pid_bench.metrics.registry` pairs each declaration with its function)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, get_args

from pid_bench.metrics.weights import (
    CLIP_RN50,
    INCEPTION_WEIGHTS,
    WeightFile,
    pyiqa_weight,
    torchvision_weight,
)

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


# ---- constants the definitions quote (the implementations read them from here) ----------------

#: FID / KID: images at least this large (longer side, px) are compared by random patches.
PATCH_THRESHOLD = 2048
PATCH_SIZE = 299
PATCHES_PER_IMAGE = 16
PATCH_SEED = 0

#: vLLM-Omni's PiD acceptance bar: the decode downsampled to the latent image's size vs the
#: VAE decode must reach SSIM >= 0.90 and PSNR >= 28 dB.
TWIN_PSNR_MIN = 28.0
TWIN_SSIM_MIN = 0.90
#: CIELAB L* bands (of the native decode) the colour QA looks at.
MIDTONE_L = (30.0, 70.0)
SHADOW_L_MAX = 25.0

#: Bright specks (speck_rate*): a pixel is a speck candidate when its luma (`LUMA_WEIGHTS`)
#: exceeds the median of its SPECK_WINDOW x SPECK_WINDOW neighbourhood by more than
#: SPECK_THRESHOLD and by more than SPECK_SIGMAS robust standard deviations of that
#: neighbourhood (1.4826 x its median absolute deviation); a speck is an 8-connected group of
#: candidates of at most SPECK_MAX_AREA px.
SPECK_THRESHOLD = 0.15
SPECK_SIGMAS = 5.0
SPECK_WINDOW = 7
SPECK_MAX_AREA = 4
#: Skin tone: Chai & Ngan's (1999) YCbCr box on 8-bit full-range BT.601 (JPEG) Cb, Cr.
SKIN_CB = (77.0, 127.0)
SKIN_CR = (133.0, 173.0)
#: speck_rate_skin is null below this fraction of skin pixels in the image.
SKIN_MIN_FRACTION = 0.01
#: A speck is on skin when at least this fraction of a SPECK_WINDOW neighbourhood of one of its
#: pixels is skin-toned (the speck itself is too bright to be).
SKIN_NEIGHBOURHOOD_MIN = 0.5
#: seam_score: each boundary line is compared with the SEAM_REFERENCE_LINES lines either side
#: of it, every line first divided by the mean of the lines of its phase of the decode's pixel
#: grid (`MetricContext.seam_period`, default SEAM_DEFAULT_PERIOD px): a patch or latent-cell
#: grid, or an interpolated upscale's period, is no seam.
SEAM_REFERENCE_LINES = 4
SEAM_DEFAULT_PERIOD = 32

# ---- pyiqa networks ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PyiqaModel:
    """How a pyiqa-backed metric creates its network: pyiqa's metric name, the extra
    `pyiqa.create_metric` options and the weight files it reads."""

    pyiqa_name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    weights: tuple[WeightFile, ...] = ()


#: registry name -> its pyiqa network. The file names are pyiqa 0.1.16's (tests check them
#: against pyiqa's `default_model_urls`).
PYIQA_MODELS: Mapping[str, PyiqaModel] = MappingProxyType(
    {
        "lpips": PyiqaModel(
            "lpips",
            weights=(
                pyiqa_weight("LPIPS_v0.1_alex-df73285e.pth"),
                torchvision_weight("alexnet-owt-7be5be79.pth"),
            ),
        ),
        "dists": PyiqaModel(
            "dists",
            weights=(
                pyiqa_weight("DISTS_weights-f5e65c96.pth"),
                torchvision_weight("vgg16-397923af.pth"),
            ),
        ),
        "niqe": PyiqaModel("niqe", weights=(pyiqa_weight("niqe_modelparameters.mat"),)),
        "musiq": PyiqaModel("musiq", weights=(pyiqa_weight("musiq_koniq_ckpt-e95806b9.pth"),)),
        # CLIP RN50 is handed to pyiqa as a file path (no SHA check, no download attempt).
        "clipiqa": PyiqaModel("clipiqa", weights=(CLIP_RN50,)),
        # The checkpoint is loaded strict over the whole net, ViT included: the ImageNet ViT that
        # pyiqa asks timm (HF hub) for would be overwritten, so it is built without it.
        "maniqa": PyiqaModel("maniqa", weights=(pyiqa_weight("ckpt_koniq10k.pt"),)),
        # Same: CFANet's checkpoint is strict over the ResNet-50 backbone too.
        "topiq_nr": PyiqaModel(
            "topiq_nr",
            {"backbone_pretrain": False},
            (pyiqa_weight("cfanet_nr_koniq_res50-9a73138b.pth"),),
        ),
    }
)

# ---- the declarations -------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricSpec:
    """A metric's declaration, everything but its computation (see `Metric` for the fields)."""

    name: str
    kind: Kind
    higher_is_better: bool | None  # None: no better direction (a ratio whose ideal is 1)
    doc: str
    weights: tuple[WeightFile, ...] = ()
    backend: str = "pid_bench"  # torchmetrics | pyiqa | pid_bench | custom
    group: str | None = None  # metrics of one group share one computation
    pyiqa_name: str | None = None


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
_FULL_REFERENCE_PYIQA = ("lpips", "dists")


def _pyiqa_spec(name: str) -> MetricSpec:
    model = PYIQA_MODELS[name]
    return MetricSpec(
        name,
        "full_reference" if name in _FULL_REFERENCE_PYIQA else "no_reference",
        name not in ("lpips", "dists", "niqe"),
        _PYIQA_DOCS[name],
        weights=model.weights,
        backend="pyiqa",
        pyiqa_name=model.pyiqa_name,
    )


_SET_DOC = (
    "{name} between the run's decodes and references (torchmetrics {cls} on pytorch-fid's "
    "Inception pool3 features; whole images resized to 299, or, for images >= 2048 px, "
    f"{PATCHES_PER_IMAGE} random {PATCH_SIZE} px patches per image, positions seeded by "
    f"({PATCH_SEED}, member)); "
    "set-level: pid_bench.metrics.compute_set_metrics."
)
_CONSISTENCY_DOC = (
    "Decode downsampled by PiD's scale to the native size (antialiased bicubic), re-encoded "
    "with the backbone codec (codec.encode of the image in [-1, 1]) and compared with the "
    "clean latent (before noise): "
)
_TWIN_DOC = (
    "VAE-twin check: the decode downsampled (antialiased bicubic, clamped) to the native "
    "decode's size and compared with the native decode: "
)

#: Every built-in metric, in the order of the row's ``metric_<name>`` columns.
_SPECS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "psnr",
        "full_reference",
        True,
        "PSNR in dB = 10 log10(1 / MSE), MSE over all pixels and the 3 channels, data range "
        "1 (torchmetrics peak_signal_noise_ratio); +inf for identical images.",
        backend="torchmetrics",
    ),
    MetricSpec(
        "ssim",
        "full_reference",
        True,
        "SSIM (Wang et al. 2004): Gaussian window 11x11, sigma 1.5, K1 0.01, K2 0.03, data "
        "range 1, per channel; the mean over the channels and the valid map (a 5 px border, "
        "where the window leaves the image, excluded). torchmetrics' SSIM map, cropped; "
        "= skimage structural_similarity(gaussian_weights=True, sigma=1.5, "
        "use_sample_covariance=False, data_range=1).",
        backend="torchmetrics",
    ),
    MetricSpec(
        "ms_ssim",
        "full_reference",
        True,
        "MS-SSIM (Wang et al. 2003): 5 scales, weights (0.0448, 0.2856, 0.3001, 0.2363, "
        "0.1333), Gaussian 11x11 sigma 1.5, data range 1, relu-normalised "
        "(torchmetrics multiscale_structural_similarity_index_measure); needs sides >= 161.",
        backend="torchmetrics",
    ),
    *(
        _pyiqa_spec(name)
        for name in ("lpips", "dists", "niqe", "musiq", "clipiqa", "maniqa", "topiq_nr")
    ),
    *(
        MetricSpec(
            name,
            "set_level",
            False,
            _SET_DOC.format(name=label, cls=cls),
            weights=(INCEPTION_WEIGHTS,),
            backend="torchmetrics",
        )
        for name, label, cls in (
            ("fid", "FID", "FrechetInceptionDistance"),
            ("kid", "KID (mean over subsets)", "KernelInceptionDistance"),
        )
    ),
    MetricSpec(
        "latent_consistency_mse",
        "latent",
        False,
        _CONSISTENCY_DOC + "mean squared difference over all latent elements.",
        group="latent_consistency",
    ),
    MetricSpec(
        "latent_consistency_cos",
        "latent",
        True,
        _CONSISTENCY_DOC + "cosine similarity of the flattened latents.",
        group="latent_consistency",
    ),
    MetricSpec(
        "lq_color_de2000",
        "latent",
        False,
        "Decode resized to the native decode's size (antialiased bicubic, clamped), then the "
        "mean over pixels of CIEDE2000 (kL=kC=kH=1) against the native decode; sRGB -> "
        "linear -> XYZ (D65) -> CIELAB with skimage's constants; colour drift from the "
        "latent's own colours.",
    ),
    MetricSpec(
        "hf_energy_ratio",
        "latent",
        None,  # 1 is ideal against a reference; above it can be invented detail or noise
        "E(decode) / E(baseline), E = spectral energy of the Hann-windowed, mean-removed "
        "BT.709 luma above the radial cutoff 1 / (2 scale) cycles per pixel (the native "
        "image's Nyquist, i.e. 1/scale of the output's); baseline = the reference, else the "
        "native decode bicubic-upscaled to the decode's size. 1 = as much fine detail as the "
        "reference; with the bicubic baseline values are >> 1.",
    ),
    MetricSpec("twin_psnr", "latent", True, _TWIN_DOC + "PSNR (as psnr), dB."),
    MetricSpec("twin_ssim", "latent", True, _TWIN_DOC + "SSIM (as ssim)."),
    MetricSpec(
        "twin_pass",
        "latent",
        True,
        _TWIN_DOC + f"1 when SSIM >= {TWIN_SSIM_MIN:g} and PSNR >= {TWIN_PSNR_MIN:g} dB "
        "(vLLM-Omni's PiD acceptance bar), else 0; its mean is the pass rate.",
    ),
    MetricSpec(
        "twin_lpips",
        "latent",
        False,
        _TWIN_DOC + "LPIPS (as lpips).",
        weights=PYIQA_MODELS["lpips"].weights,
        backend="pyiqa",
    ),
    MetricSpec(
        "midtone_chroma_shift",
        "latent",
        False,
        _TWIN_DOC + f"mean sqrt(da*^2 + db*^2) in CIELAB (D65) over the pixels whose native L* "
        f"is in [{MIDTONE_L[0]:g}, {MIDTONE_L[1]:g}]: midtones turning pink or any tint.",
    ),
    MetricSpec(
        "shadow_green_bias",
        "latent",
        None,  # signed: 0 is ideal; the report flags large positive (greener) values
        _TWIN_DOC + f"mean a*(native) - a*(decode) over the pixels whose native L* < "
        f"{SHADOW_L_MAX:g}: positive when the decode's shadows are greener.",
    ),
    MetricSpec(
        "speck_rate",
        "no_reference",
        False,
        f"Isolated bright specks per megapixel of the decode: 8-connected groups of at most "
        f"{SPECK_MAX_AREA} pixels whose BT.709 luma exceeds the median of their "
        f"{SPECK_WINDOW}x{SPECK_WINDOW} neighbourhood (reflect-padded) by more than "
        f"{SPECK_THRESHOLD:g} and by more than {SPECK_SIGMAS:g} robust standard deviations of "
        "it (1.4826 x its median absolute deviation); count / (H W / 1e6).",
    ),
    MetricSpec(
        "speck_rate_skin",
        "no_reference",
        False,
        "speck_rate's specks on skin per megapixel of skin: skin = YCbCr (8-bit BT.601 full "
        f"range) with Cb in [{SKIN_CB[0]:g}, {SKIN_CB[1]:g}] and Cr in [{SKIN_CR[0]:g}, "
        f"{SKIN_CR[1]:g}] (Chai & Ngan 1999); a speck counts when one of its pixels has at least "
        f"{SKIN_NEIGHBOURHOOD_MIN:.0%} skin in its {SPECK_WINDOW}x{SPECK_WINDOW} neighbourhood; "
        f"null when under {SKIN_MIN_FRACTION:.0%} of the image is skin.",
    ),
    MetricSpec(
        "speck_ratio_bicubic",
        "latent",
        False,
        "(specks of the decode + 1) / (specks of the native decode bicubic-resized to the "
        "decode's size + 1), specks as speck_rate (same area: a ratio of rates, add-one "
        "smoothed so that a baseline without specks gives a number); 1 = no more specks than "
        "the bicubic upscale.",
    ),
    MetricSpec(
        "seam_score",
        "latent",
        None,  # 1 is ideal: above, a step at the tile boundaries; below, a smoothed band
        "Tiled decodes: D(c) = mean |difference| of the adjacent pixel pairs across line c "
        "(channels, whole line); D'(c) = D(c) / the mean D of the lines of c's phase of the "
        "tile grid (period: PiD's tile unit; boundary lines left out); seam_score = sum over "
        "the boundaries (the centre of each overlap of PiD's tile plan, both axes, weighted by "
        f"line length) of D'(boundary) / the same sum of the median D' of the "
        f"{SEAM_REFERENCE_LINES} lines either side. 1 = no seam; null when untiled or a "
        "one-tile plan.",
    ),
)

#: name -> declaration of every built-in metric, read-only, in column order.
BUILTIN_SPECS: Mapping[str, MetricSpec] = MappingProxyType({s.name: s for s in _SPECS})

#: Names that stand for several metrics computed together.
METRIC_ALIASES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "latent_consistency": ("latent_consistency_mse", "latent_consistency_cos"),
        "twin": ("twin_psnr", "twin_ssim", "twin_lpips", "twin_pass"),
    }
)

#: Every metric with a per-row value (the schema's `metric_<name>` columns); set-level and
#: pyiqa pass-through metrics have none.
ROW_METRICS: tuple[str, ...] = tuple(n for n, s in BUILTIN_SPECS.items() if s.kind != "set_level")


def _check() -> None:
    # A wrong declaration would otherwise surface as a wrong schema column, far from its cause.
    assert len(BUILTIN_SPECS) == len(_SPECS), "duplicate metric name"
    for spec in _SPECS:
        assert spec.kind in KINDS, spec.name
    for alias, names in METRIC_ALIASES.items():
        assert alias not in BUILTIN_SPECS and set(names) <= set(BUILTIN_SPECS), alias


_check()
