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


# ---- upstream's settings as options (docs/protocol.md, "PiD's inference path") -------------


def test_tf32_is_a_cuda_setting_read_as_none_on_cpu(decoder):
    assert decoder.tf32 is None
    assert PiDDecoder.tiny(seed=0, tf32=False).tf32 is None  # CPU matmuls have no TF32 mode


def test_tf32_allowed_sets_both_switches_inside_and_restores_them():
    from pid_models.decoder import tf32_allowed

    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with tf32_allowed(not before[0]):
        assert torch.backends.cuda.matmul.allow_tf32 is (not before[0])
        assert torch.backends.cudnn.allow_tf32 is (not before[0])
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    with tf32_allowed(None):  # None leaves torch's setting alone
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_noise_drawn_on_the_generator_device_is_the_default_on_cpu(decoder, latent):
    explicit = PiDDecoder(decoder.net, decoder.caption_encoder, "cpu", generator_device="cpu")
    assert torch.equal(explicit.decode(latent, seed=5), decoder.decode(latent, seed=5))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_a_cuda_generator_without_cuda_is_refused_with_the_fix(decoder):
    with pytest.raises(ValueError, match="CUDA is not available.*leave it unset"):
        PiDDecoder(decoder.net, decoder.caption_encoder, "cpu", generator_device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_generator_replays_upstreams_stream_in_a_cpu_decode(decoder, latent):
    """Upstream draws noise, then each eps, from torch.Generator('cuda') seeded with the seed."""
    cpu_net = PiDDecoder(decoder.net, decoder.caption_encoder, "cpu", generator_device="cuda")
    got = cpu_net.sample(latent, y=decoder.encode_captions("", 2), seed=4, steps=2)
    generator = torch.Generator("cuda").manual_seed(4)
    noise = torch.randn(2, 3, 128, 192, generator=generator, device="cuda").cpu()
    eps = [torch.randn(2, 3, 128, 192, generator=generator, device="cuda").cpu()]
    with torch.no_grad():
        want = sample(decoder.net, decoder.encode_captions("", 2), latent.to(torch.bfloat16).float(),
                      torch.zeros(2), (2, 3, 128, 192), steps=2, noise=noise, eps=eps)  # fmt: skip
    assert torch.equal(got.unclamped, want.unclamped)


def test_compile_wraps_the_net_once_per_output_size_and_decodes_the_same(decoder, latent):
    compiled = PiDDecoder(
        decoder.net, decoder.caption_encoder, "cpu", compile=True, compile_backend="eager"
    )
    eager = decoder.decode(latent, seed=1, steps=2)
    assert torch.equal(compiled.decode(latent, seed=1, steps=2), eager)
    compiled.decode(latent, seed=2, steps=2)
    compiled.decode(latent[:, :, :2, :2], seed=2, steps=1)
    assert sorted(compiled._compiled) == [(64, 64), (128, 192)]
    assert all(hasattr(m, "_orig_mod") for m in compiled._compiled.values())
    assert decoder._compiled == {}  # eager by default, as upstream without --compile


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_decode_allows_tf32_by_default_and_only_during_the_call(latent):
    seen = []
    decoder = PiDDecoder.tiny(seed=0, device="cuda")
    net = decoder.net

    def spy(*args):
        seen.append(torch.backends.cuda.matmul.allow_tf32)
        return net(*args)

    decoder._network = lambda key: spy
    before = torch.backends.cuda.matmul.allow_tf32
    decoder.decode(latent.cuda(), steps=1)
    assert decoder.tf32 is True and seen == [True]
    assert torch.backends.cuda.matmul.allow_tf32 == before


@pytest.mark.parametrize(
    "precision, resolved, weight_dtype",
    [("auto", "fp32", torch.float32), ("fp32", "fp32", torch.float32),
     ("bf16", "bf16", torch.bfloat16), ("bf16-autocast", "bf16-autocast", torch.float32)],
)  # fmt: skip
def test_precision_sets_weights_and_autocast_and_decodes(latent, precision, resolved, weight_dtype):
    decoder = PiDDecoder.tiny(seed=0, precision=precision)
    assert decoder.precision == resolved
    assert decoder.net.s_embedder.proj.weight.dtype == weight_dtype
    assert (decoder.autocast_dtype is not None) == (resolved == "bf16-autocast")
    image = decoder.decode(latent, caption="a cat", steps=2)
    assert image.dtype == torch.float32 and torch.isfinite(image).all()


def test_an_unknown_precision_is_refused_with_the_choices(decoder):
    with pytest.raises(ValueError, match="precision 'fp16': one of"):
        PiDDecoder(decoder.net, decoder.caption_encoder, "cpu", precision="fp16")
