"""Tensors in, tensors out: the PiD network, its sampler, checkpoint loading and captions."""

from pid_models.decoder import PiDDecoder
from pid_models.pid_net import PidNet
from pid_models.registry import CKPT_TYPES, EXPERIMENTS, Experiment, released_pairs, resolve

__all__ = [
    "CKPT_TYPES",
    "EXPERIMENTS",
    "Experiment",
    "PiDDecoder",
    "PidNet",
    "released_pairs",
    "resolve",
]
