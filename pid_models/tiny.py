"""Tiny models of the very same classes: the embedded backbones and test fixtures.

`tiny` (the default) loads small networks trained here on CPU (`pid_models.tiny_training`,
weights in `pid_models/data/tiny/`): their images show the scene, so a wiring mistake between
codec and PiD shows, but their numbers say nothing about NVIDIA's PiD. `tiny-random` and the `build_tiny_*`
builders are the same layouts with seeded random weights (the oracle's golden vectors use them).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from pid_models.caption import GemmaCaptionEncoder
from pid_models.pid_net import PidNet, RMSNorm
from pid_models.registry import BASE_NET_KWARGS

#: The 2k FLUX configuration with only the sizes shrunk (every flag as released).
TINY_NET_KWARGS: Mapping[str, Any] = MappingProxyType(
    {
        **BASE_NET_KWARGS,
        "hidden_size": 32,
        "num_groups": 2,
        "pixel_hidden_size": 4,
        "pixel_attn_hidden_size": 24,
        "pixel_num_groups": 2,
        "patch_depth": 4,
        "txt_embed_dim": 24,
        "txt_max_length": 64,
        "lq_hidden_dim": 16,
    }
)

TINY_GEMMA_CONFIG: Mapping[str, Any] = MappingProxyType(
    {
        "hidden_size": 24,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 12,
    }
)

_SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>")  # Gemma's ids 0, 1, 2, 3


def randomize_(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Re-draw every parameter from a seeded float64 normal, with no zero-initialised branch.

    adaLN weights 0.5 N/sqrt(fan_in), biases 0.1 N; other matrices N/sqrt(fan_in), biases
    0.2 N; norm weights 1 + 0.2 N, norm biases 0.2 N; y_pos_embedding 0.5 N; log_alpha
    log 5 + 0.5 N. (The same rule the reference oracle's golden vectors use.)
    """
    generator = torch.Generator().manual_seed(seed)
    norm_types = (RMSNorm, torch.nn.GroupNorm, torch.nn.LayerNorm)
    norm_params = {
        id(p) for m in net.modules() if isinstance(m, norm_types) for p in m.parameters()
    }
    with torch.no_grad():
        for name, param in net.named_parameters():
            draw = torch.randn(param.shape, generator=generator, dtype=torch.float64)
            is_norm = id(param) in norm_params
            is_bias = name.endswith("bias")
            if name.endswith("log_alpha"):
                value = math.log(5.0) + 0.5 * draw
            elif name == "y_pos_embedding":
                value = 0.5 * draw
            elif is_norm:
                value = 0.2 * draw if is_bias else 1 + 0.2 * draw
            elif "adaLN" in name:
                value = 0.1 * draw if is_bias else 0.5 * draw / math.sqrt(_fan_in(param))
            else:
                value = 0.2 * draw if is_bias else draw / math.sqrt(_fan_in(param))
            param.copy_(value.to(param.dtype))
    return net


def _fan_in(param: torch.Tensor) -> int:
    return max(1, param[0].numel()) if param.dim() > 1 else max(1, param.numel())


def build_tiny_net(seed: int = 0, **overrides: Any) -> PidNet:
    """A seeded random PidNet at the tiny configuration (float32, eval mode)."""
    net = PidNet(**{**TINY_NET_KWARGS, **overrides})
    return randomize_(net, seed).eval().requires_grad_(False)


def build_tiny_tokenizer():
    """A byte-level tokenizer with Gemma's special-token layout, built in code (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate([*_SPECIAL_TOKENS, *byte_symbols])}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="right",
    )


def build_tiny_gemma(seed: int = 0):
    """A seeded random Gemma-2 causal LM of the tiny configuration and its tokenizer."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = Gemma2Config(vocab_size=len(tokenizer), **TINY_GEMMA_CONFIG)
    with torch.random.fork_rng(devices=[]):  # transformers draws its init globally
        torch.manual_seed(seed)
        model = Gemma2ForCausalLM(config)
    return model.eval(), tokenizer


def build_tiny_caption_encoder(seed: int = 0) -> GemmaCaptionEncoder:
    model, tokenizer = build_tiny_gemma(seed)
    return GemmaCaptionEncoder(
        model,
        tokenizer,
        identity=f"tiny-gemma2:seed={seed}",
        max_length=TINY_NET_KWARGS["txt_max_length"],
    )


#: A FLUX.1-like AutoencoderKL layout (16 latent channels, 8x compression, no quant convs),
#: shrunk to a few thousand parameters per block.
TINY_VAE_CONFIG: Mapping[str, Any] = MappingProxyType(
    {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 16,
        "block_out_channels": (16, 32, 32, 32),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
        "scaling_factor": 0.3611,
        "shift_factor": 0.1159,
    }
)


def build_tiny_codec(seed: int = 0):
    """The tiny backbone's native codec: a seeded random diffusers AutoencoderKL (float32)."""
    from diffusers import AutoencoderKL

    from pid_models.codecs.kl import ScaledVAECodec

    with torch.random.fork_rng(devices=[]):  # diffusers draws its init globally
        torch.manual_seed(seed)
        vae = AutoencoderKL(**TINY_VAE_CONFIG)
    return ScaledVAECodec(vae, identity=f"tiny-vae:seed={seed}")


# ---- the trained tiny backbone -----------------------------------------------------------------

TRAINED_DIR = Path(__file__).parent / "data" / "tiny"
_REGENERATE = "python -m pid_models.tiny_training --out pid_models/data/tiny"


class TrainedTinyError(RuntimeError):
    """The trained tiny fixtures are missing or do not match their recorded checksums."""


@cache
def trained_meta() -> dict[str, Any]:
    """tiny.json: the training command, config, latent normalisation, checksums and scores."""
    path = TRAINED_DIR / "tiny.json"
    if not path.is_file():
        raise TrainedTinyError(
            f"{path} is missing: the trained tiny backbone needs it; {_REGENERATE}"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def _trained_state(name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = TRAINED_DIR / name
    expected = trained_meta()["sha256"][name]
    if not path.is_file():
        raise TrainedTinyError(f"{path} is missing; {_REGENERATE}")
    found = hashlib.sha256(path.read_bytes()).hexdigest()
    if found != expected:
        raise TrainedTinyError(
            f"{path}: sha256 {found[:12]} is not tiny.json's {expected[:12]}; restore it with git "
            f"checkout, or regenerate both with {_REGENERATE}"
        )
    return load_file(path)


def trained_identity() -> str:
    """Names the trained weights (their checksums), for cell ids and caption caches."""
    digests = trained_meta()["sha256"]
    return "trained:" + "-".join(digests[k][:12] for k in sorted(digests))


def build_trained_tiny_net() -> PidNet:
    """The tiny PiD trained by `pid_models.tiny_training` (float32, eval mode)."""
    net = PidNet(**TINY_NET_KWARGS)
    net.load_state_dict(_trained_state("pid.safetensors"))
    return net.eval().requires_grad_(False)


def trained_vae_config() -> dict[str, Any]:
    """`TINY_VAE_CONFIG` with the latent normalisation measured after training."""
    meta = trained_meta()
    return {
        **TINY_VAE_CONFIG,
        "scaling_factor": meta["codec_scaling_factor"],
        "shift_factor": meta["codec_shift_factor"],
    }


def build_trained_tiny_codec():
    """The tiny codec trained by `pid_models.tiny_training` (float32)."""
    from diffusers import AutoencoderKL

    from pid_models.codecs.kl import ScaledVAECodec

    vae = AutoencoderKL(**trained_vae_config())
    vae.load_state_dict(_trained_state("codec.safetensors"))
    return ScaledVAECodec(
        vae.eval().requires_grad_(False), identity=f"tiny-vae:{trained_identity()}"
    )
