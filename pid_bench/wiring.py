"""Wiring checks on the trained `tiny` backbone (docs/protocol.md, "The embedded tiny backbone").

The held-out images are made exactly as a from_clean cell makes them (`reference_at`, the codec,
`add_noise`) and decoded with one step of the pipeline replaced by a mistake; a trained network
decodes well only when every step matches what it was trained on, so each mistake moves the
PSNR. `tests/test_tiny_trained.py` asserts the margins; this module measures them:

    python -m pid_bench.wiring    # the table in docs/protocol.md, per image and mean
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from statistics import fmean
from unittest import mock

import torch

from pid_bench.manifests import load_image
from pid_bench.metrics import bicubic_resize
from pid_bench.prepare import reference_at
from pid_models import tiling
from pid_models.codecs import add_noise
from pid_models.decoder import PiDDecoder
from pid_models.tiny import build_trained_tiny_codec
from pid_models.tiny_training import HELD_OUT, image_path, psnr

OUT = (256, 256)
NATIVE = (64, 64)
#: Another backbone's latent normalisation (FLUX.1's scaling and shift): the realistic wrong
#: scale, since the trained codec's own factors are near 1 and 0.
FLUX_FACTORS = (0.3611, 0.1159)
SIGMAS = (0.0, 0.2, 0.4, 0.6, 0.8)
TILES = {"tile_size": 128, "tile_overlap": 64}

Pairs = list[tuple[torch.Tensor, torch.Tensor]]


def load_trained_tiny() -> tuple[PiDDecoder, object]:
    """(the trained tiny PiD decoder, the trained tiny codec) on CPU."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return PiDDecoder.tiny(seed=0, device="cpu", trained=True), build_trained_tiny_codec()


def held_out_pairs() -> Pairs:
    """[(reference at 256², input at 64²)] of the held-out images, as a cell makes them."""
    pairs = []
    for _, dist, inner in HELD_OUT:
        source = load_image(str(image_path(dist, inner)))
        pairs.append((reference_at(source, OUT), reference_at(source, NATIVE)))
    return pairs


def pid_psnrs(
    models, pairs: Pairs, *, sigma: float = 0.0, encode: Callable | None = None,
    noise: str = "flow", told_sigma: float | None = None, **decode_options,
) -> list[float]:  # fmt: skip
    """PiD PSNR at 256² per held-out image, with one step of the pipeline replaced: `encode`
    (the latent), `noise` (its form), `told_sigma` (the σ the net is told)."""
    decoder, codec = models
    scores = []
    for i, (reference, lq) in enumerate(pairs):
        latent = (encode or codec.encode)(lq)
        noisy = add_noise(latent, sigma, noise, torch.Generator().manual_seed(i))
        told = sigma if told_sigma is None else told_sigma
        image = decoder.decode(noisy, sigma=told, out_size=OUT, seed=i, **decode_options)
        scores.append(psnr(image, reference))
    return scores


def codec_psnrs(codec, pairs: Pairs) -> list[float]:
    """The codec's reconstruction PSNR at its own size (64²) per held-out image."""
    return [psnr(codec.decode(codec.encode(lq)), lq) for _, lq in pairs]


def native_bicubic_psnrs(codec, pairs: Pairs) -> list[float]:
    """The native decode resized to 256² by the harness's kernel, per held-out image."""
    return [psnr(bicubic_resize(codec.decode(codec.encode(lq)), OUT), ref) for ref, lq in pairs]


def flux_scaled(codec) -> Callable[[torch.Tensor], torch.Tensor]:
    """The codec's latent normalised with FLUX.1's factors instead of its own."""
    scaling, shift = FLUX_FACTORS
    return lambda lq: scaling * (codec.encode_raw(lq) - shift)


def _window_one_cell_off(tile: tiling.Tile, per_latent: int) -> tuple[slice, slice]:
    ys = slice(tile.y0 // per_latent + 1, tile.y1 // per_latent + 1)
    xs = slice(tile.x0 // per_latent + 1, tile.x1 // per_latent + 1)
    return ys, xs


@contextlib.contextmanager
def tiles_one_cell_off() -> Iterator[None]:
    """Each tile reads the latent one cell down and right of its pixels."""
    with mock.patch.object(tiling.Tile, "latent_window", _window_one_cell_off):
        yield


def noise_form_change_db(models, pairs: Pairs, sigma: float = 0.6) -> float:
    """Mean per-image |PSNR change| when the latent is VP-noised where the codec's form is flow,
    with the same seeds. At equal σ VP keeps more of the signal, so the mistake moves images
    both ways and shows as a change of seeded results, not as a loss of the mean."""
    right = pid_psnrs(models, pairs, sigma=sigma)
    return mean_change_db(right, pid_psnrs(models, pairs, sigma=sigma, noise="vp"))


def mean_change_db(right: list[float], wrong: list[float]) -> float:
    """Mean per-image |PSNR change| between two seeded decodes of the same images."""
    return fmean(abs(w - r) for w, r in zip(wrong, right, strict=True))


def tiled_agreement_psnr(models, pairs: Pairs) -> float:
    """PSNR of a tiled decode against the whole-image decode of the first held-out image."""
    decoder, codec = models
    latent = codec.encode(pairs[0][1])
    whole = decoder.decode(latent, out_size=OUT, seed=0)
    return psnr(decoder.decode(latent, out_size=OUT, seed=0, **TILES), whole)


def measure(models=None, pairs: Pairs | None = None) -> list[tuple[str, str]]:
    """[(check, measured)] rows of docs/protocol.md's table."""
    models = models or load_trained_tiny()
    pairs = pairs or held_out_pairs()

    def show(scores: list[float]) -> str:
        return " / ".join(f"{s:.2f}" for s in scores) + f" dB, mean {fmean(scores):.2f}"

    by_sigma = {s: pid_psnrs(models, pairs, sigma=s) for s in SIGMAS}
    clean, at_06 = by_sigma[0.0], by_sigma[0.6]
    rows = [
        ("codec reconstruction at 64²", show(codec_psnrs(models[1], pairs))),
        ("native+bicubic at 256², σ = 0", show(native_bicubic_psnrs(models[1], pairs))),
        ("PiD at 256², σ = 0", show(clean)),
    ]
    wrong_scale = pid_psnrs(models, pairs, encode=flux_scaled(models[1]))
    rows.append(("latent normalised with FLUX.1's factors", _delta(wrong_scale, clean)))
    told_clean = pid_psnrs(models, pairs, sigma=0.6, told_sigma=0.0)
    rows.append(("σ = 0.6 latent, σ = 0 told to the net", _delta(told_clean, at_06)))
    vp = pid_psnrs(models, pairs, sigma=0.6, noise="vp")
    rows.append(("VP noise where the codec's form is flow, σ = 0.6", _delta(vp, at_06)))
    rows.append(("  the same, mean per-image change", f"{mean_change_db(at_06, vp):.2f} dB"))
    tiled = pid_psnrs(models, pairs, **TILES)
    with tiles_one_cell_off():
        off = pid_psnrs(models, pairs, **TILES)
    rows.append(("tiles read the latent one cell off their pixels", _delta(off, tiled)))
    means = ", ".join(f"{fmean(by_sigma[s]):.2f}" for s in SIGMAS)
    rows.append(("σ = " + ", ".join(map(str, SIGMAS)), means))
    agreement = tiled_agreement_psnr(models, pairs)
    rows.append(("tiled (128², 64 px overlap) vs whole-image decode", f"{agreement:.2f} dB"))
    return rows


def _delta(wrong: list[float], right: list[float]) -> str:
    """Held-out means of a mistake against the right pipeline."""
    wrong_mean, right_mean = fmean(wrong), fmean(right)
    return f"{wrong_mean:.2f} vs {right_mean:.2f} dB ({wrong_mean - right_mean:+.2f})"


def main() -> None:
    print("| check | measured |\n|---|---|")
    for check, measured in measure():
        print(f"| {check} | {measured} |")


if __name__ == "__main__":
    main()
