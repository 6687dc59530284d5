"""The trained tiny backbone proves the pipeline around PiD: on held-out images it decodes well,
and each wiring mistake between codec and PiD costs it a documented margin (docs/protocol.md,
"The embedded tiny backbone"). The images are made exactly as a from_clean cell makes them
(`reference_at`, the codec, `add_noise`)."""

from __future__ import annotations

from statistics import fmean

import pytest
import torch

from pid_bench import wiring
from pid_bench.wiring import OUT, SIGMAS, TILES, pid_psnrs
from pid_models.tiny import trained_meta
from pid_models.tiny_training import HELD_OUT, psnr

#: Floors and margins measured on the committed weights by `python -m pid_bench.wiring`
#: (docs/protocol.md, "The embedded tiny backbone", gives the figures): held-out means, PiD at
#: 256², the codec at its own 64². They are below issue 16's targets (20 and 24 dB), which this
#: training budget does not reach.
PID_PSNR_FLOOR = 16.6  # measured 17.06
CODEC_PSNR_FLOOR = 19.0  # measured 19.42
#: A latent normalised with another backbone's factors (FLUX.1's): measured -2.49 dB.
WRONG_SCALE_MARGIN_DB = 2.0
#: σ = 0.6 latent told σ = 0: measured -0.76 dB (deterministic: seeded decodes).
SWAPPED_SIGMA_MARGIN_DB = 0.5
#: VP noise where the codec's form is flow, σ = 0.6, same seeds: at equal σ VP keeps more of the
#: signal, so images move both ways (measured +0.06, +0.81, -1.83 dB; the mean only -0.32). The
#: mistake is caught as a change of seeded results (what `pid-bench compare` gates): mean
#: per-image |change| measured 0.90 dB. (New noise seeds alone move these images 0.4-0.6 dB, so
#: an unseeded comparison would not catch it.)
NOISE_FORM_CHANGE_DB = 0.5
#: Tiles reading the latent one cell off their pixels: measured -3.80 dB.
TILE_OFFSET_MARGIN_DB = 2.5
#: Quality may rise by at most this between neighbouring σ, and falls at least SIGMA_RANGE_DB
#: from σ = 0 to 0.8 (measured 17.06, 16.69, 15.89, 14.63, 12.76).
SIGMA_NOISE_DB = 0.3
SIGMA_RANGE_DB = 3.0
#: Tiled (128² tiles, 64 px overlap) and whole-image decodes agree to at least this PSNR
#: (measured 22.85 dB: the trained tiny net uses context a tile does not see).
TILED_AGREEMENT_DB = 21.0


@pytest.fixture(scope="module")
def models():
    return wiring.load_trained_tiny()


@pytest.fixture(scope="module")
def held_out():
    return wiring.held_out_pairs()


def mean_psnr(models, held_out, **mistake) -> float:
    return fmean(pid_psnrs(models, held_out, **mistake))


def test_trained_fixtures_are_small_and_recorded():
    meta = trained_meta()
    from pid_models.tiny import TRAINED_DIR

    total = sum(p.stat().st_size for p in TRAINED_DIR.iterdir())
    assert total < 10 * 2**20
    assert set(meta["held_out"]) == {name for name, _, _ in HELD_OUT}
    assert not set(meta["held_out"]) & set(meta["train_images"])


def test_the_codec_reconstructs_held_out_images_at_its_own_size(models, held_out):
    scores = wiring.codec_psnrs(models[1], held_out)
    assert fmean(scores) >= CODEC_PSNR_FLOOR, scores


def test_pid_at_sigma_0_decodes_held_out_images(models, held_out):
    assert mean_psnr(models, held_out) >= PID_PSNR_FLOOR


def test_a_wrong_latent_scale_is_caught(models, held_out):
    right = mean_psnr(models, held_out)
    flux_factors = mean_psnr(models, held_out, encode=wiring.flux_scaled(models[1]))
    assert right - flux_factors >= WRONG_SCALE_MARGIN_DB


def test_a_wrong_noise_form_is_caught(models, held_out):
    assert wiring.noise_form_change_db(models, held_out, sigma=0.6) >= NOISE_FORM_CHANGE_DB


def test_a_swapped_sigma_is_caught(models, held_out):
    right = mean_psnr(models, held_out, sigma=0.6)
    told_clean = mean_psnr(models, held_out, sigma=0.6, told_sigma=0.0)
    assert right - told_clean >= SWAPPED_SIGMA_MARGIN_DB


def test_quality_falls_as_sigma_grows(models, held_out):
    scores = [mean_psnr(models, held_out, sigma=s) for s in SIGMAS]
    assert all(b <= a + SIGMA_NOISE_DB for a, b in zip(scores, scores[1:], strict=False)), scores
    assert scores[0] - scores[-1] >= SIGMA_RANGE_DB, scores


def test_tiled_and_whole_decodes_agree(models, held_out):
    assert wiring.tiled_agreement_psnr(models, held_out) >= TILED_AGREEMENT_DB


def test_a_wrong_tile_offset_is_caught(models, held_out):
    right = mean_psnr(models, held_out, **TILES)
    with wiring.tiles_one_cell_off():
        wrong = mean_psnr(models, held_out, **TILES)
    assert right - wrong >= TILE_OFFSET_MARGIN_DB


def test_a_from_clean_cell_of_the_harness_scores_the_trained_tiny_like_the_pipeline_above(
    tmp_path, models, held_out
):
    """The harness's own cell path (prepare, decode, score) gives the PSNR the pipeline above
    gives for the same image, σ and seed: the cell is wired as the tests assume."""
    import json
    from pathlib import Path

    from pid_bench.cell import run_cell
    from pid_bench.models import load_models
    from pid_bench.settings import CellSettings
    from pid_bench.suite import load_suite
    from pid_bench.timing import TimingPolicy

    repo = Path(__file__).resolve().parents[1]
    suite_path = tmp_path / "one.yaml"
    suite_path.write_text(json.dumps({
        "name": "one", "backbones": ["tiny"], "ckpt_types": ["2k"], "sigmas": [0.0],
        "resolutions": [256], "decoders": ["pid", "native"], "metrics": ["psnr"],
        "source": str(repo / "manifests" / "smoke.jsonl"), "limit": 1,
    }))  # fmt: skip
    suite = load_suite(suite_path)
    once = TimingPolicy(warmup=0, repeats=1, min_time_s=0)
    settings = CellSettings("r", "one", ("pid", "native"), ("psnr",), once, False, str(tmp_path))
    cell = suite.cells()[0]
    pid, native = run_cell(cell, "c0", load_models("tiny", "2k", "cpu"), settings, "cpu")
    assert cell.item.id == "astronaut" and pid["status"] == native["status"] == "ok"
    decoder, codec = models
    reference, lq = held_out[0]
    image = decoder.decode(codec.encode(lq), sigma=0.0, caption=cell.item.caption, out_size=OUT,
                           seed=cell.seed)  # fmt: skip
    assert pid["metric_psnr"] == pytest.approx(psnr(image, reference), abs=0.1)
    assert native["metric_psnr"] == pytest.approx(psnr(codec.decode(codec.encode(lq)), lq), abs=0.1)


def test_tiny_random_keeps_the_seeded_random_weights_and_its_own_identity():
    from pid_bench.models import load_models, model_identity
    from pid_models.tiny import build_tiny_net

    random_models = load_models("tiny-random", "2k", "cpu")
    assert random_models.random_weights is True
    assert load_models("tiny", "2k", "cpu").random_weights is False
    oracle_net = build_tiny_net(0)
    for name, param in random_models.pid.net.state_dict().items():
        assert torch.equal(param, oracle_net.state_dict()[name]), name
    assert model_identity("tiny", "2k") != model_identity("tiny-random", "2k")
    assert "trained:" in model_identity("tiny", "2k")
