"""Tensors in, tensors out: the PiD network, its sampler, checkpoint loading and captions."""

import logging

# bitsandbytes (a dependency of pyiqa, imported by diffusers/transformers) tries to fetch a 4-bit
# GEMM kernel from the hub on CPUs with AVX512-BF16 and warns when it cannot. Nothing here uses
# 4-bit weights, and offline the warning only says the fetch failed.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from pid_models.decoder import PiDDecoder  # noqa: E402
from pid_models.pid_net import PidNet  # noqa: E402
from pid_models.registry import (  # noqa: E402
    CKPT_TYPES,
    EXPERIMENTS,
    Experiment,
    released_pairs,
    resolve,
)

__all__ = [
    "CKPT_TYPES",
    "EXPERIMENTS",
    "Experiment",
    "PiDDecoder",
    "PidNet",
    "released_pairs",
    "resolve",
]
