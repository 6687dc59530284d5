"""PiDDecoder: the embedded tiny default end to end (captions -> sampler -> image)."""

from __future__ import annotations

import pytest
import torch

from pid_models.decoder import PiDDecoder
from pid_models.sampler import sample


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    return PiDDecoder.tiny(seed=0, cache_dir=tmp_path_factory.mktemp("captions"))


@pytest.fixture
def latent():
    return torch.randn(2, 16, 4, 6, generator=torch.Generator().manual_seed(0))


def test_decode_upsamples_by_down_factor_times_sr_into_minus_one_one(decoder, latent):
    image = decoder.decode(latent, sigma=0.0, caption="a cat", out_size=(128, 192), seed=0)
    assert image.shape == (2, 3, 128, 192) and image.dtype == torch.float32
    assert image.min() >= -1 and image.max() <= 1
    assert image.std() > 0.05


def test_decode_is_seeded(decoder, latent):
    a = decoder.decode(latent, caption="a cat", seed=3)
    b = decoder.decode(latent, caption="a cat", seed=3)
    c = decoder.decode(latent, caption="a cat", seed=4)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3


def test_decode_is_the_sampler_on_the_net_with_the_encoded_captions(decoder, latent):
    captions = ["a cat", "a red bus"]
    sigma = torch.tensor([0.0, 0.4])
    got = decoder.decode(latent, sigma=sigma, caption=captions, seed=9, steps=2)
    y = decoder.caption_encoder.encode(captions)
    rounded = latent.to(torch.bfloat16).float()  # upstream hands the latent over in bf16
    with torch.no_grad():
        want = sample(decoder.net, y, rounded, sigma, (2, 3, 128, 192), steps=2,
                      generator=torch.Generator().manual_seed(9)).image  # fmt: skip
    assert torch.equal(got, want)


def test_the_latent_is_rounded_to_bf16_even_in_float32(decoder, latent):
    """As upstream (its VAE hands PiD a bf16 latent): a latent and its bf16 rounding decode to
    the same image, also in a float32 run without autocast."""
    assert decoder.autocast_dtype is None
    nudged = latent + 1e-4 * torch.randn(latent.shape, generator=torch.Generator().manual_seed(3))
    assert not torch.equal(nudged.to(torch.bfloat16), latent.to(torch.bfloat16))
    same = nudged.to(torch.bfloat16).float()
    assert torch.equal(decoder.decode(nudged, seed=2), decoder.decode(same, seed=2))


def test_sigma_and_caption_matter(decoder, latent):
    base = decoder.decode(latent, sigma=0.0, caption="a cat", seed=1)
    assert (decoder.decode(latent, sigma=0.6, caption="a cat", seed=1) - base).abs().max() > 1e-3
    assert (decoder.decode(latent, sigma=0.0, caption="a dog", seed=1) - base).abs().max() > 1e-3


@pytest.mark.parametrize("steps", [1, 2, 3, 4])
def test_every_supported_step_count_decodes(decoder, latent, steps):
    assert decoder.decode(latent[:1], steps=steps).shape == (1, 3, 128, 192)


def test_single_latent_without_batch_axis(decoder, latent):
    assert decoder.decode(latent[0], out_size=None).shape == (1, 3, 128, 192)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"out_size": 256}, r"out_size \(256, 256\) does not match latent \(4, 6\)"),
        ({"caption": ["a", "b", "c"]}, "3 captions for a batch of 2"),
        ({"sigma": [0.1, 0.2, 0.3]}, "3 sigmas for a batch of 2"),
        ({"steps": 8}, "supports 1..4 steps"),
    ],
)
def test_bad_arguments_are_refused_with_the_reason(decoder, latent, kwargs, message):
    with pytest.raises(ValueError, match=message):
        decoder.decode(latent, **kwargs)


def test_wrong_latent_channels_are_refused(decoder):
    with pytest.raises(ValueError, match="latent has 4 channels; this PiD takes 16"):
        decoder.decode(torch.zeros(1, 4, 4, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_decode_runs_under_bf16_autocast(latent):
    decoder = PiDDecoder.tiny(seed=0, device="cuda")
    assert decoder.autocast_dtype == torch.bfloat16
    image = decoder.decode(latent.cuda(), caption="a cat")
    assert image.is_cuda and image.dtype == torch.float32
