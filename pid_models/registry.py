"""The registry of released PiD checkpoints: (backbone, ckpt_type) -> experiment -> file.

One place for it: the CLI, the loader and the harness all read this module. Network configs
are plain data: the resolved 2k FLUX kwargs plus the few overrides each experiment makes
(pid_reference README section 8); the parity check compares them with the key manifests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

CKPT_TYPES = ("2k", "2kto4k", "2kto4k_v1pt5")
#: Largest output side each checkpoint type was trained at, for a square output. Upstream's
#: README: `2k` was "trained with 2K resolution only" in 2048², 2304x1728, 1728x2304, 2688x1536
#: and 1536x2688; `2kto4k` / `2kto4k_v1pt5` "with varying resolution (range from 2K to 4K)",
#: multiple aspect ratios. The embedded tiny backbone borrows the 2k values.
TRAINED_MAX_SIDE = {"2k": 2048, "2kto4k": 4096, "2kto4k_v1pt5": 4096}
#: The widest trained aspect ratio, long side / short side (16:9 and 9:16).
TRAINED_MAX_ASPECT = 16 / 9


def outside_envelope(ckpt_type: str, size: tuple[int, int]) -> bool:
    """Whether an output (height, width) lies outside what `ckpt_type` was trained at: more pixels
    than its largest trained shape (the square of `TRAINED_MAX_SIDE`; 2688x1536 is inside), or an
    aspect ratio beyond 16:9 either way. Smaller outputs are not flagged."""
    height, width = size
    too_many = height * width > TRAINED_MAX_SIDE[ckpt_type] ** 2
    too_wide = max(height, width) / min(height, width) > TRAINED_MAX_ASPECT * 1.01
    return too_many or too_wide


#: Backbones that share another backbone's latent space and therefore its PiD checkpoints.
BACKBONE_ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "zimage": "flux",
        "zimage-turbo": "flux",
        "flux2-klein-4b": "flux2",
        "flux2-klein-9b": "flux2",
        "qwenimage-2512": "qwenimage",
    }
)

#: Resolved PidNet kwargs of PiD_res2k_sr4x_official_flux_distill_4step (all 2k / 2kto4k v1).
BASE_NET_KWARGS: Mapping[str, Any] = MappingProxyType(
    {
        "in_channels": 3,
        "num_groups": 24,
        "hidden_size": 1536,
        "pixel_hidden_size": 16,
        "pixel_attn_hidden_size": 1152,
        "pixel_num_groups": 16,
        "patch_depth": 14,
        "pixel_depth": 2,
        "num_text_blocks": 4,
        "patch_size": 16,
        "txt_embed_dim": 2304,
        "txt_max_length": 300,
        "use_text_rope": True,
        "text_rope_theta": 10000.0,
        # Not set by the v1 preset, so PidNet's own default (ntk_aware, 1024 px) applies.
        "rope_mode": "ntk_aware",
        "rope_ref_h": 1024,
        "rope_ref_w": 1024,
        "repa_encoder_index": 6,
        "enable_ed": False,
        "ed_compress_ratio": 1,
        "ed_depth_per_stage": 1,
        "ed_window_size": 2,
        "ed_num_heads": None,
        "ed_hidden_size": None,
        "ed_use_token_shuffle": True,
        "lq_inject_mode": "controlnet",
        "lq_in_channels": 0,
        "lq_latent_channels": 16,
        "lq_hidden_dim": 512,
        "lq_num_res_blocks": 4,
        "lq_latent_unpatchify_factor": 1,
        "lq_aux_rgb_head": False,
        "lq_aux_rgb_head_latent_block_idx": -1,
        "lq_conv_padding_mode": "zeros",
        "lq_gate_type": "sigma_aware_per_token_per_dim",
        "lq_interval": 2,
        "zero_init_lq": True,
        "train_lq_proj_only": False,
        "sr_scale": 4,
        "latent_spatial_down_factor": 8,
        "pit_lq_inject": False,
    }
)

#: What the v1.5 (2kto4k_v1pt5) preset changes.
V1PT5_OVERRIDES: Mapping[str, Any] = MappingProxyType(
    {
        "rope_ref_h": 2048,
        "rope_ref_w": 2048,
        "lq_hidden_dim": 1024,
        "lq_aux_rgb_head": True,
        "lq_conv_padding_mode": "replicate",
        "lq_gate_type": "sigma_aware_per_token",
        "pit_lq_inject": True,
    }
)

#: Latent-space overrides per canonical backbone (channels, compression, PiD upscale).
LATENT_OVERRIDES: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "flux": {},
        "sd3": {},
        "qwenimage": {},
        "sdxl": {"lq_latent_channels": 4},
        "flux2": {"lq_latent_channels": 128, "latent_spatial_down_factor": 16},
        "dinov2": {"lq_latent_channels": 768, "latent_spatial_down_factor": 16},
        "siglip": {"lq_latent_channels": 1152, "latent_spatial_down_factor": 16, "sr_scale": 8},
    }
)


@dataclass(frozen=True)
class Experiment:
    """One released PiD checkpoint."""

    name: str
    backbone: str  # canonical latent space: flux, flux2, sd3, sdxl, qwenimage, dinov2, siglip
    ckpt_type: str
    net_kwargs: Mapping[str, Any] = field(repr=False)

    @property
    def pid_scale(self) -> int:
        return int(self.net_kwargs["sr_scale"])

    @property
    def checkpoint_relpath(self) -> str:
        """Path under the download root, as `hf download nvidia/PiD --include "checkpoints/*"`."""
        return f"checkpoints/{self.name}/model_ema_bf16.pth"


def _experiment(backbone: str, ckpt_type: str) -> Experiment:
    kwargs = dict(BASE_NET_KWARGS)
    if ckpt_type == "2kto4k_v1pt5":
        kwargs.update(V1PT5_OVERRIDES)
        if backbone == "flux2":
            # v1.5 Flux2 unpatchifies the 128-ch packed latent back to 32 channels first.
            kwargs["lq_latent_unpatchify_factor"] = 2
    kwargs.update(LATENT_OVERRIDES[backbone])
    scale = kwargs["sr_scale"]
    if ckpt_type == "2kto4k_v1pt5":
        name = f"PiD_v1pt5_res2kto4k_sr{scale}x_official_{backbone}_distill_4step"
    else:
        name = f"PiD_res{ckpt_type}_sr{scale}x_official_{backbone}_distill_4step"
    return Experiment(name, backbone, ckpt_type, MappingProxyType(kwargs))


#: Every released checkpoint, keyed by (canonical backbone, ckpt_type).
EXPERIMENTS: Mapping[tuple[str, str], Experiment] = MappingProxyType(
    {
        (backbone, ckpt_type): _experiment(backbone, ckpt_type)
        for backbone, ckpt_type in [
            ("flux", "2k"),
            ("flux2", "2k"),
            ("sd3", "2k"),
            ("dinov2", "2k"),
            ("siglip", "2k"),
            ("sd3", "2kto4k"),
            ("sdxl", "2kto4k"),
            ("flux", "2kto4k_v1pt5"),
            ("flux2", "2kto4k_v1pt5"),
            ("qwenimage", "2kto4k_v1pt5"),
        ]
    }
)


#: Embedded backbones, no download: (backbone, ckpt_type) pairs. `tiny`: small networks trained
#: here (`pid_models.tiny_training`); `tiny-random`: the same layout with seeded random weights.
EMBEDDED_PAIRS: tuple[tuple[str, str], ...] = (("tiny", "2k"), ("tiny-random", "2k"))
#: Embedded backbones whose networks are random (their quality numbers mean nothing at all).
RANDOM_BACKBONES: frozenset[str] = frozenset({"tiny-random"})


class UnknownCheckpointError(KeyError):
    """A (backbone, ckpt_type) pair that PiD never released."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def canonical_backbone(backbone: str) -> str:
    return BACKBONE_ALIASES.get(backbone, backbone)


def backbones() -> list[str]:
    """Every backbone name the registry accepts, aliases included."""
    return sorted({b for b, _ in EXPERIMENTS} | set(BACKBONE_ALIASES))


def released_pairs() -> list[tuple[str, str]]:
    """Every valid (backbone, ckpt_type) pair, aliases included (19 pairs)."""
    return sorted(
        (backbone, ckpt_type)
        for backbone in backbones()
        for ckpt_type in CKPT_TYPES
        if (canonical_backbone(backbone), ckpt_type) in EXPERIMENTS
    )


#: The released undistilled v1.5 teachers (upstream docs/checkpoints.md, "Undistilled
#: Checkpoints"): the distilled v1.5 network of the same backbone, trained without distillation;
#: the same file layout, checkpoints/<name>/model_ema_bf16.pth. Decoder `pid-teacher`.
TEACHERS: Mapping[str, Experiment] = MappingProxyType(
    {
        backbone: Experiment(
            f"PiD_v1pt5_res2kto4k_sr4x_official_{backbone}_undistilled",
            backbone,
            "2kto4k_v1pt5",
            EXPERIMENTS[(backbone, "2kto4k_v1pt5")].net_kwargs,
        )
        for backbone in ("flux", "flux2", "qwenimage")
    }
)


def teacher(backbone: str, ckpt_type: str) -> Experiment:
    """The undistilled teacher for the latents of (backbone, ckpt_type), or an error naming the
    released ones."""
    found = TEACHERS.get(canonical_backbone(backbone)) if ckpt_type == "2kto4k_v1pt5" else None
    if found is None:
        released = ", ".join(f"{b}/2kto4k_v1pt5" for b in TEACHERS)
        raise ValueError(
            f"no undistilled PiD teacher for {backbone}/{ckpt_type}: released for {released}"
        )
    return found


def resolve(backbone: str, ckpt_type: str) -> Experiment:
    """The experiment that decodes `backbone` latents at `ckpt_type`, or a listing error."""
    experiment = EXPERIMENTS.get((canonical_backbone(backbone), ckpt_type))
    if experiment is None:
        valid = ", ".join(f"{b}/{c}" for b, c in released_pairs())
        if backbone not in backbones():
            reason = f"unknown backbone {backbone!r}"
        elif ckpt_type not in CKPT_TYPES:
            reason = f"unknown ckpt_type {ckpt_type!r} (one of {', '.join(CKPT_TYPES)})"
        else:
            reason = f"PiD released no {ckpt_type!r} checkpoint for {backbone!r}"
        raise UnknownCheckpointError(f"{reason}; valid backbone/ckpt_type pairs: {valid}")
    return experiment


def net_layout(backbone: str, ckpt_type: str) -> Mapping[str, Any]:
    """The network kwargs that fix the pixel grid of (backbone, ckpt_type): a released
    experiment's, or for the embedded backbones the 2k FLUX layout they shrink."""
    if (backbone, ckpt_type) in EMBEDDED_PAIRS:
        return BASE_NET_KWARGS
    return resolve(backbone, ckpt_type).net_kwargs


def pixels_per_latent(net_kwargs: Mapping[str, Any]) -> int:
    """Output pixels per latent cell: the codec's factor times PiD's upscale."""
    return int(net_kwargs["latent_spatial_down_factor"]) * int(net_kwargs["sr_scale"])


def pixel_grid(net_kwargs: Mapping[str, Any]) -> int:
    """The grain of output sizes (and tiles): lcm(patch size, pixels per latent cell)."""
    return math.lcm(int(net_kwargs.get("patch_size", 16)), pixels_per_latent(net_kwargs))


def output_multiple(backbone: str, ckpt_type: str) -> int:
    """What every output side of (backbone, ckpt_type) must be a multiple of."""
    return pixel_grid(net_layout(backbone, ckpt_type))


def experiment_by_name(name: str) -> Experiment | None:
    """A distilled experiment or an undistilled teacher by its checkpoint name."""
    every = [*EXPERIMENTS.values(), *TEACHERS.values()]
    return next((e for e in every if e.name == name), None)


def registry_keys(experiment: Experiment) -> list[tuple[str, str]]:
    """All (backbone, ckpt_type) keys, aliases included, that map to `experiment`."""
    return [pair for pair in released_pairs() if resolve(*pair) is experiment]


def check_pair(backbone: str, ckpt_type: str) -> None:
    """Accept released pairs and the embedded ones; otherwise the listing error of `resolve`."""
    if (backbone, ckpt_type) in EMBEDDED_PAIRS:
        return
    try:
        resolve(backbone, ckpt_type)
    except UnknownCheckpointError as err:
        embedded = ", ".join(f"{b}/{c}" for b, c in EMBEDDED_PAIRS)
        raise UnknownCheckpointError(f"{err} (embedded: {embedded})") from None
