"""Learned SR baselines after the native decode: spandrel models built here with random weights."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file
from spandrel.architectures.ESRGAN import ESRGAN
from spandrel.architectures.SwinIR import SwinIR
from typer.testing import CliRunner

from pid_bench.cli import app
from pid_bench.suite import SuiteError, load_suite
from pid_models.baselines import BaselineError, chain_length, load_spandrel, tiled
from tests.test_run import write_suite

pytestmark = pytest.mark.usefixtures("shared_local_ray")  # one Ray for the module's runs


class Payload:
    """An arbitrary pickled object: what weights_only loading must refuse."""


def _rrdb(scale: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    return ESRGAN(num_filters=8, num_blocks=1, scale=scale).eval()


def _swinir(scale: int = 4) -> torch.nn.Module:
    torch.manual_seed(1)
    return SwinIR(img_size=16, embed_dim=12, depths=[1], num_heads=[1], window_size=4,
                  upscale=scale, upsampler="pixelshuffle", mlp_ratio=2.0).eval()  # fmt: skip


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sr")
    torch.save(_rrdb().state_dict(), folder / "rrdb_x4.pth")
    save_file(_swinir().state_dict(), folder / "swinir_x4.safetensors")
    torch.save(_rrdb(2).state_dict(), folder / "rrdb_x2.pth")
    save_file(_swinir(3).state_dict(), folder / "swinir_x3.safetensors")
    return folder


def test_spandrel_detects_each_architecture_and_upscales_in_minus_one_one(weights):
    image = torch.rand(1, 3, 16, 24) * 2 - 1
    for name, arch in (("rrdb_x4.pth", "ESRGAN"), ("swinir_x4.safetensors", "SwinIR")):
        sr = load_spandrel("sr", weights / name, 4)
        out = sr(image)
        assert sr.descriptor.architecture.name == arch and sr.chain == 1
        assert out.shape == (1, 3, 64, 96) and out.min() >= -1 and out.max() <= 1
        assert sr.describe() == f"sr ({arch} x4)"


def test_a_smaller_scale_is_chained_and_said_so_a_foreign_one_refused(weights):
    sr = load_spandrel("sr", weights / "rrdb_x2.pth", 8)
    assert sr.chain == 3 and sr.scale == 8 and "chained x3" in sr.describe()
    assert sr(torch.zeros(1, 3, 8, 8)).shape == (1, 3, 64, 64)
    with pytest.raises(BaselineError, match=r"a x3 model cannot reach PiD's x4.*use a x4 model"):
        load_spandrel("sr", weights / "swinir_x3.safetensors", 4)
    assert (chain_length(4, 4), chain_length(2, 8), chain_length(3, 4), chain_length(1, 4)) == (
        1, 3, None, None,
    )  # fmt: skip


def test_tiles_with_an_overlap_wider_than_the_receptive_field_equal_the_whole_image(weights):
    sr = load_spandrel("sr", weights / "rrdb_x4.pth", 4)
    image = torch.rand(1, 3, 48, 64) * 2 - 1
    whole = sr(image)
    sr.tile, sr.tile_overlap = 56, 20  # RRDB with one block sees about 18 px around a pixel
    assert torch.allclose(sr(image), whole, atol=1e-5)
    with pytest.raises(BaselineError, match="must exceed twice the overlap"):
        tiled(lambda t: t, image, 1, 30, 16)


def test_missing_or_pickled_weights_are_refused_with_the_fix(tmp_path):
    with pytest.raises(BaselineError, match=r"no such file.*baselines.<name>.path"):
        load_spandrel("sr", tmp_path / "nope.pth", 4)
    torch.save({"model": Payload()}, tmp_path / "pickled.pth")
    with pytest.raises(BaselineError, match="not a weights-only torch file"):
        load_spandrel("sr", tmp_path / "pickled.pth", 4)


def test_an_undeclared_baseline_decoder_names_the_missing_entry(tmp_path):
    path = write_suite(tmp_path, decoders=["pid", "native+realesrgan"])
    with pytest.raises(SuiteError, match=r"native\+realesrgan need an entry each under baselines"):
        load_suite(path)


def _tiny_upscale_pipeline(folder):
    """A seeded random StableDiffusionUpscalePipeline: x4 VAE, 7-channel UNet, tiny CLIP."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableDiffusionUpscalePipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=7,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, num_class_embeds=100, norm_num_groups=8,
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=(16, 16, 32), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        norm_num_groups=8, layers_per_block=1,
    )  # fmt: skip
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=600, hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
        pad_token_id=1,
    ))  # fmt: skip
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in map(chr, range(33, 127)):
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)
    pipe = StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
        low_res_scheduler=DDPMScheduler(), scheduler=DDIMScheduler(), max_noise_level=350,
    )  # fmt: skip
    pipe.save_pretrained(folder)
    return folder


def test_learned_and_diffusion_sr_baselines_run_end_to_end_into_the_report(
    tmp_path, weights, monkeypatch
):
    from pid_bench import plots, rundb

    folder = _tiny_upscale_pipeline(tmp_path / "sd-x4")
    path = write_suite(
        tmp_path, decoders=["pid", "native", "native+bicubic", "native+realesrgan",
                            "native+swinir", "native+sd-x4-upscaler"],
        sigmas=[0.0], resolutions=[64], limit=1, metrics=["psnr", "twin"],
        baselines={"sd-x4-upscaler": {"kind": "sd_x4_upscaler", "source": str(folder),
                                      "steps": 2, "noise_level": 20},
                   "realesrgan": {"path": str(weights / "rrdb_x4.pth"), "tile": 8,
                                  "tile_overlap": 2},
                   "swinir": {"path": str(weights / "swinir_x4.safetensors")}},
    )  # fmt: skip
    plotted: list[str] = []  # the decoders the Pareto plot is drawn from
    original = plots.plot_pareto

    def spy(con, folder):
        frame, _ = rundb.ok_rows(con)
        plotted.extend(sorted(set(frame.decoder)))
        return original(con, folder)

    monkeypatch.setattr(plots, "plot_pareto", spy)
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(path), "--output", str(run_dir)])
    assert result.exit_code == 0, result.output
    rows = {r["decoder"]: r for r in pq.read_table(run_dir / "parts").to_pylist()}
    sd = rows["native+sd-x4-upscaler"]
    assert sd["status"] == "ok", sd["error"]
    assert sd["resize_kernel"].startswith(
        "sd-x4-upscaler (StableDiffusionUpscalePipeline x4, 2 steps"
    )
    assert (sd["decoded_height"], sd["decoded_width"]) == (64, 64) and sd["latency_ms_p50"] > 0
    html = (run_dir / "report.html").read_text()
    for baseline in ("native+bicubic", "native+realesrgan", "native+swinir",
                     "native+sd-x4-upscaler"):  # fmt: skip
        assert f"PiD vs {baseline}, paired" in html and baseline in plotted
    assert all(r["status"] == "ok" for r in rows.values()), [r["error"] for r in rows.values()]
    assert (run_dir / "plots" / "pareto_tiny_psnr.png").is_file()
    sr = rows["native+realesrgan"]
    assert sr["resize_kernel"] == "realesrgan (ESRGAN x4)" and sr["weights_bytes"] > 0
    assert (sr["decoded_height"], sr["decoded_width"]) == (64, 64)
    assert sr["metric_twin_psnr"] is not None
    assert rows["native+swinir"]["resize_kernel"] == "swinir (SwinIR x4)"
    assert "native+swinir" in (run_dir / "leaderboard.md").read_text()
    resolved = json.loads((run_dir / "run.json").read_text())["suite"]["baselines"]
    assert resolved["realesrgan"]["tile"] == 8


def test_a_missing_upscaler_pipeline_names_the_download(tmp_path):
    from pid_models.baselines import load_diffusion_upscaler

    with pytest.raises(
        BaselineError, match=r"hf download stabilityai/stable-diffusion-x4-upscaler"
    ):
        load_diffusion_upscaler("sd", str(tmp_path / "none"), 4)
