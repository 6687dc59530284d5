"""A decoder defined outside pid_bench, the way a user adds one (suite: ``decoders:
[tests.user_decoder:NativeBilinear]``)."""

from __future__ import annotations

import torch.nn.functional as F

from pid_bench.decoders import Decoder


class NativeBilinear(Decoder):
    """The native decode, then plain bilinear interpolation to the output size."""

    def decode_fn(self, cell, models, prepared, settings):
        latent, size = prepared.latent, tuple(cell.resolution)
        return lambda: F.interpolate(
            models.codec.decode(latent), size=size, mode="bilinear", align_corners=False
        )

    def row_fields(self, cell, models, settings):
        return {"resize_kernel": "bilinear"}


class NotADecoder:
    """Named in a suite by mistake: the suite refuses it."""
