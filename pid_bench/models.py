"""The models a cell decodes with: PiD, the native codec and (from_ldm) the LDM pipeline, loaded
once per (backbone, ckpt_type) on a worker (`ModelSet`), and the identity of their weights that
enters the cell id."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from pid_models.codecs import LatentCodec
from pid_models.decoder import PiDDecoder
from pid_models.registry import EMBEDDED_PAIRS, RANDOM_BACKBONES, resolve

if TYPE_CHECKING:
    from pid_bench.suite import LdmOptions


@dataclass
class ModelSet:
    """Everything a cell of one (backbone, ckpt_type) needs, loaded once per worker."""

    pid: PiDDecoder
    codec: LatentCodec
    random_weights: bool
    pipeline: Any = None  # from_ldm: the backbone's diffusers LDM pipeline
    captures: dict = field(default_factory=dict)  # capture key -> (Capture, origin): a memo
    baselines: dict = field(default_factory=dict)  # baseline name -> loaded SR upscaler
    teacher: Any = None  # pid-teacher: the undistilled network, loaded on first use
    pipeline_warm: bool = False


def model_identity(backbone: str, ckpt_type: str) -> str:
    """Names the weights a cell runs with, without loading them (part of the cell id)."""
    if (backbone, ckpt_type) in EMBEDDED_PAIRS:
        from pid_models.tiny import TINY_NET_KWARGS, TINY_VAE_CONFIG, trained_identity

        config = json.dumps(
            [dict(TINY_NET_KWARGS), dict(TINY_VAE_CONFIG)], sort_keys=True, default=list
        )
        weights = "seed=0" if backbone in RANDOM_BACKBONES else trained_identity()
        return (
            f"{backbone}/{ckpt_type}:{weights}:{hashlib.sha256(config.encode()).hexdigest()[:12]}"
        )
    experiment = resolve(backbone, ckpt_type)
    config = json.dumps(dict(experiment.net_kwargs), sort_keys=True)
    return f"{backbone}:{experiment.name}:{hashlib.sha256(config.encode()).hexdigest()[:12]}"


def load_models(
    backbone: str,
    ckpt_type: str,
    device: str,
    checkpoints: str | None = None,
    ldm: LdmOptions | None = None,
    pid_options: dict | None = None,
) -> ModelSet:
    """PiD and the native codec of (backbone, ckpt_type), and with `ldm` (from_ldm cells) the
    backbone's LDM pipeline; released weights from local files only. `pid_options` are
    `PiDDecoder` keyword arguments (`CellSettings.pid_options`)."""
    pid_options = pid_options or {}
    pipeline = load_ldm_pipeline(backbone, device, ldm) if ldm is not None else None
    if (backbone, ckpt_type) in EMBEDDED_PAIRS:
        from pid_models.tiny import build_tiny_codec, build_trained_tiny_codec

        random = backbone in RANDOM_BACKBONES
        pid = PiDDecoder.tiny(seed=0, device=device, trained=not random, **pid_options)
        codec = build_tiny_codec(0) if random else build_trained_tiny_codec()
        return ModelSet(pid, codec.to(device), random, pipeline)
    from pid_models.codecs import load_codec

    codec = load_codec(backbone, checkpoints, device)  # small: fails fast before PiD loads
    pid = PiDDecoder.from_pretrained(backbone, ckpt_type, checkpoints, device=device, **pid_options)
    return ModelSet(pid, codec, False, pipeline)


_LDM_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def load_ldm_pipeline(backbone: str, device: str, ldm: LdmOptions) -> Any:
    """The suite's pipeline for `backbone` (else the registry's repo) from local files only.

    dtype ``auto``: bf16 on CUDA (upstream's default), float32 on CPU.
    """
    from pid_models.ldm import load_pipeline

    if ldm.dtype == "auto":
        dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    else:
        dtype = _LDM_DTYPES[ldm.dtype]
    return load_pipeline(backbone, ldm.source(backbone), device=device, dtype=dtype)
