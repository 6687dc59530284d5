"""Tiny seeded models of the very same classes: the embedded default and test fixtures.

Their numbers prove the machinery, not PiD's quality: the weights are random.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
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
