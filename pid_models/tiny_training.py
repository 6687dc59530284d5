"""Train the embedded `tiny` backbone on CPU: its codec, then its PiD, on images that ship with
installed packages. The result is the default `tiny` backbone (`pid_models/data/tiny/`); the
random-weight one stays available as `tiny-random`.

    python -m pid_models.tiny_training --out pid_models/data/tiny   # about 27 min on 2 cores

(a) The codec: the tiny diffusers AutoencoderKL layout (`TINY_VAE_CONFIG`: 16 channels, 8x) as a
    plain autoencoder of its posterior mean (the latent PiD reads); its scaling and shift factors
    are then set, as FLUX.1's are, so that PiD latents have zero mean and unit variance — which
    makes σ-noising mean what it means for the released models.
(b) The PiD: the tiny configuration of the released 2k FLUX layout (`TINY_NET_KWARGS`), caption
    path included (the tiny seeded Gemma-2 stays frozen), as a conditional pixel-space flow model:
    target crop x0, LQ latent = codec.encode(crop downsampled 4x), flow-noised at σ ~ 0 (30 %) or
    U(0, 0.8) and handed to the net as `degrade_sigma`; x_t = (1 - t) x0 + t eps at the distilled
    sampler's own t values; loss = MSE of x0 = x_t - t v. Trained at the t list the 4-step
    sampler visits, so its 4-step samples are what it learnt.

Data: crops of scikit-image's, matplotlib's and pyiqa's sample images at random scales, with flips;
`HELD_OUT` (the smoke manifest's astronaut and coffee, and chelsea) never enter training and are
what the wiring tests and `evaluate` score.

Seeded and deterministic on one machine and thread count (another CPU's vector units change the
last bits, so a regenerated file is close to, not equal to, the committed one: its checksum is
in `tiny.json`). Resumable: `--resume` continues from the stage checkpoints in `--work`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pid_models.sampler import DISTILLED_T_LIST, TIMESCALE

#: Training images: (id, distribution, path inside it).
TRAIN_IMAGES: tuple[tuple[str, str, str], ...] = (
    ("rocket", "scikit-image", "skimage/data/rocket.jpg"),
    ("motorcycle_left", "scikit-image", "skimage/data/motorcycle_left.png"),
    ("motorcycle_right", "scikit-image", "skimage/data/motorcycle_right.png"),
    ("hubble", "scikit-image", "skimage/data/hubble_deep_field.jpg"),
    ("retina", "scikit-image", "skimage/data/retina.jpg"),
    ("ihc", "scikit-image", "skimage/data/ihc.png"),
    ("color", "scikit-image", "skimage/data/color.png"),
    ("phantom", "scikit-image", "skimage/data/phantom.png"),
    ("camera", "scikit-image", "skimage/data/camera.png"),
    ("brick", "scikit-image", "skimage/data/brick.png"),
    ("coins", "scikit-image", "skimage/data/coins.png"),
    ("grace_hopper", "matplotlib", "matplotlib/mpl-data/sample_data/grace_hopper.jpg"),
    # pyiqa's wheel ships four photographs (its efficiency test images) and its icon
    ("spaq", "pyiqa", "tests/test_efficiency_img_dir/SPAQ_10241.jpg"),
    ("frame_4w", "pyiqa", "tests/test_efficiency_img_dir/frame_4wrwr48cdk6rbcjl.jpg"),
    ("frame_7g", "pyiqa", "tests/test_efficiency_img_dir/frame_7gzdcz9sif0ekg31.jpg"),
    ("frame_9o", "pyiqa", "tests/test_efficiency_img_dir/frame_9ogwhvvy7gfj6jzh.jpg"),
    ("pyiqa_icon", "pyiqa", "docs/pyiqa_icon_dalle.jpg"),
)
#: Never trained on: the smoke manifest's images and one more, for evaluation.
HELD_OUT: tuple[tuple[str, str, str], ...] = (
    ("astronaut", "scikit-image", "skimage/data/astronaut.png"),
    ("coffee", "scikit-image", "skimage/data/coffee.png"),
    ("chelsea", "scikit-image", "skimage/data/chelsea.png"),
)
#: One caption per training image: the caption path learns something, and "" teaches it to
#: do without (20 % of samples).
CAPTIONS: dict[str, str] = {
    "rocket": "a rocket on a launch pad under a blue sky",
    "motorcycle_left": "a red motorcycle in a garage",
    "motorcycle_right": "a red motorcycle in a garage",
    "hubble": "galaxies in deep space",
    "retina": "a photograph of a human retina",
    "ihc": "a stained tissue sample under a microscope",
    "color": "a colour test pattern",
    "phantom": "a test phantom with bright ellipses",
    "camera": "a black and white photo of a cameraman",
    "brick": "a grey brick wall",
    "coins": "old coins on a dark background",
    "grace_hopper": "a portrait of a woman in a navy uniform",
    "spaq": "a smartphone photograph",
    "frame_4w": "a frame of a video",
    "frame_7g": "a frame of a video",
    "frame_9o": "a frame of a video",
    "pyiqa_icon": "a colourful illustration",
}

FIXTURE_DIR = Path(__file__).parent / "data" / "tiny"
CODEC_FILE, PID_FILE, META_FILE = "codec.safetensors", "pid.safetensors", "tiny.json"
#: The σ range the tiny PiD is trained on (the released models' suites sweep 0..0.8).
MAX_SIGMA = 0.8
CLEAN_FRACTION = 0.3


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained weights (written into tiny.json)."""

    seed: int = 0
    codec_steps: int = 5000
    codec_batch: int = 4  # small batches, more steps: better per CPU-second than 16
    codec_crop: int = 64
    codec_lr: float = 2e-3
    pid_steps: int = 3600
    pid_batch: int = 8
    pid_crop: int = 128  # output pixels; every other step uses 2x the crop at a quarter batch
    pid_lr: float = 1.5e-3
    ema_decay: float = 0.998  # the weights saved are the exponential moving average
    threads: int = 2
    checkpoint_every: int = 50


# ---- data --------------------------------------------------------------------------------------


def image_path(distribution: str, inner: str) -> Path:
    return Path(metadata.distribution(distribution).locate_file(inner))


def load_rgb(distribution: str, inner: str) -> torch.Tensor:
    """[3, H, W] float32 in [-1, 1] (grey and RGBA become RGB)."""
    from PIL import Image

    with Image.open(image_path(distribution, inner)) as opened:
        array = np.asarray(opened.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1


def downsample(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The harness's resize kernel (antialiased bicubic, `pid_bench.metrics.RESIZE_KERNEL`)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image, size=size, mode="bicubic", antialias=True, align_corners=False)


class CropSource:
    """Random `size`² crops of images shrunk by a random factor, flipped at random.

    The short side after shrinking is log-uniform between the crop and 3x the crop (the scale at
    which whole images shrunk to a benchmark's native size are detail-dense), drawn from
    `levels` precomputed sizes per image: shrinking the full image for every crop cost more
    than the codec's training step."""

    def __init__(self, images: Sequence[torch.Tensor], size: int, levels: int = 12) -> None:
        self.size = size
        self.pyramids = [self._pyramid(image, size, levels) for image in images]

    @staticmethod
    def _pyramid(image: torch.Tensor, size: int, levels: int) -> list[torch.Tensor]:
        _, h, w = image.shape
        short = min(h, w)
        low, high = math.log(min(short, size)), math.log(min(short, 3 * size))
        pyramid = []
        for level in range(levels):
            side = math.exp(low + (level + 0.5) / levels * (high - low))
            scale = max(side, size) / short
            shape = (max(size, round(h * scale)), max(size, round(w * scale)))
            pyramid.append(downsample(image[None], shape)[0].clamp(-1, 1))
        return pyramid

    def crop(self, index: int, generator: torch.Generator) -> torch.Tensor:
        """[1, 3, size, size]: one crop of image `index`."""
        pyramid = self.pyramids[index]
        shrunk = pyramid[int(torch.randint(len(pyramid), (1,), generator=generator))]
        _, sh, sw = shrunk.shape
        top = int(torch.randint(sh - self.size + 1, (1,), generator=generator))
        left = int(torch.randint(sw - self.size + 1, (1,), generator=generator))
        crop = shrunk[None, :, top : top + self.size, left : left + self.size]
        return crop.flip(-1) if float(torch.rand(1, generator=generator)) < 0.5 else crop

    def crops(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """[count, 3, size, size] from images picked uniformly at random."""
        picks = torch.randint(len(self.pyramids), (count,), generator=generator)
        return torch.cat([self.crop(int(i), generator) for i in picks])


# ---- the two stages ----------------------------------------------------------------------------


def new_codec_vae(seed: int):
    from diffusers import AutoencoderKL

    from pid_models.tiny import TINY_VAE_CONFIG

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(**TINY_VAE_CONFIG)


def new_pid_net(seed: int):
    from pid_models.pid_net import PidNet
    from pid_models.tiny import TINY_NET_KWARGS

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PidNet(**TINY_NET_KWARGS)


class _Stage:
    """A resumable optimisation loop: model, AdamW with cosine decay, an exponential moving
    average of the weights, data generator, step."""

    def __init__(
        self, name: str, model: torch.nn.Module, lr: float, steps: int, seed: int, work,
        ema_decay: float,
    ):  # fmt: skip
        self.name, self.model, self.steps = name, model.train().requires_grad_(True), steps
        self.ema_decay = ema_decay
        self.ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / steps)),
        )
        self.generator = torch.Generator().manual_seed(seed)
        self.step = 0
        self.path = Path(work) / f"{name}.ckpt.pt"

    def resume(self) -> None:
        if not self.path.is_file():
            return
        state = torch.load(self.path, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.generator.set_state(state["generator"])
        self.ema = state["ema"]
        self.step = int(state["step"])

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(), "generator": self.generator.get_state(),
            "ema": self.ema, "step": self.step,
        }  # fmt: skip
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.path)

    def update(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.schedule.step()
        self.step += 1
        self._update_ema()

    @torch.no_grad()
    def _update_ema(self) -> None:
        # warm-up: early on the average follows the weights closely (decay (1+n)/(10+n))
        decay = min(self.ema_decay, (1 + self.step) / (10 + self.step))
        for key, value in self.model.state_dict().items():
            if value.dtype.is_floating_point:
                self.ema[key].mul_(decay).add_(value.detach(), alpha=1 - decay)
            else:
                self.ema[key].copy_(value)

    def averaged_model(self) -> torch.nn.Module:
        """The model with the averaged weights, frozen."""
        self.model.load_state_dict(self.ema)
        return self.model.eval().requires_grad_(False)


def _loop(stage: _Stage, loss_fn, every: int, log) -> None:
    started, recent = time.perf_counter(), []
    while stage.step < stage.steps:
        loss = loss_fn(stage.step)
        stage.update(loss)
        recent.append(loss.item())
        if stage.step % every == 0 or stage.step == stage.steps:
            stage.save()
            rate = (time.perf_counter() - started) / max(1, len(recent))
            log(f"{stage.name} step {stage.step}/{stage.steps} loss {np.mean(recent[-every:]):.5f} "
                f"({rate:.2f} s/step)")  # fmt: skip


def train_codec(config: TrainConfig, images, work: Path, resume: bool, log=print):
    """Stage (a): the autoencoder of the posterior mean; returns the VAE with its latent
    scaling/shift set from the training crops' statistics."""
    vae = new_codec_vae(config.seed)
    stage = _Stage(
        "codec", vae, config.codec_lr, config.codec_steps, config.seed, work, config.ema_decay
    )
    if resume:
        stage.resume()
    source = CropSource(images, config.codec_crop)

    def loss_fn(step: int) -> torch.Tensor:
        x = source.crops(config.codec_batch, stage.generator)
        mean = vae.encode(x).latent_dist.mean
        return F.mse_loss(vae.decode(mean).sample, x) + 1e-6 * mean.pow(2).mean()

    _loop(stage, loss_fn, config.checkpoint_every, log)
    vae = stage.averaged_model()
    set_latent_normalisation(vae, source, config.seed)
    return vae


@torch.no_grad()
def set_latent_normalisation(vae, source: CropSource, seed: int) -> None:
    """FLUX-style z = scaling * (mean - shift), with shift the latents' mean and scaling their
    inverse standard deviation over 64 crops of the codec's training source."""
    generator = torch.Generator().manual_seed(seed + 1)
    crops = source.crops(64, generator)
    raw = vae.encode(crops).latent_dist.mean
    shift, std = float(raw.mean()), float(raw.std())
    vae.register_to_config(scaling_factor=round(1 / std, 6), shift_factor=round(shift, 6))


def train_pid(config: TrainConfig, codec, images, work: Path, resume: bool, log=print):
    """Stage (b): the tiny PiD on the trained codec's (σ-noised) latents."""
    from pid_models.codecs import add_noise
    from pid_models.tiny import build_tiny_caption_encoder

    net = new_pid_net(config.seed)
    encoder = build_tiny_caption_encoder(0)
    with torch.no_grad():
        names = [name for name, _, _ in TRAIN_IMAGES]
        y_table = encoder.encode([CAPTIONS[n] for n in names] + [""])
    stage = _Stage(
        "pid", net, config.pid_lr, config.pid_steps, config.seed + 7, work, config.ema_decay
    )
    if resume:
        stage.resume()
    sources = {size: CropSource(images, size) for size in (config.pid_crop, 2 * config.pid_crop)}
    t_values = torch.tensor(DISTILLED_T_LIST[:-1])
    scale = net.sr_scale

    def loss_fn(step: int) -> torch.Tensor:
        g = stage.generator
        big = step % 2 == 1
        size = config.pid_crop * (2 if big else 1)
        batch = max(1, config.pid_batch // (4 if big else 1))
        picks = torch.randint(len(images), (batch,), generator=g)
        x0 = torch.cat([sources[size].crop(int(i), g) for i in picks])
        captions = torch.where(torch.rand(batch, generator=g) < 0.2, len(names), picks)
        y = y_table[captions]
        with torch.no_grad():
            lq = downsample(x0, (size // scale, size // scale)).clamp(-1, 1)
            z = codec.encode(lq).to(torch.bfloat16).float()  # as PiDDecoder hands it over
        sigma = torch.rand(batch, generator=g) * MAX_SIGMA
        sigma = torch.where(torch.rand(batch, generator=g) < CLEAN_FRACTION, 0.0, sigma)
        z = torch.stack(
            [add_noise(z[i : i + 1], float(sigma[i]), "flow", g)[0] for i in range(batch)]
        )
        t = t_values[torch.randint(len(t_values), (batch,), generator=g)]
        eps = torch.randn(x0.shape, generator=g)
        tb = t[:, None, None, None]
        x_t = (1 - tb) * x0 + tb * eps
        v = net(x_t, t * TIMESCALE, y, z, sigma)
        return F.mse_loss(x_t - tb * v, x0)

    _loop(stage, loss_fn, config.checkpoint_every, log)
    return stage.averaged_model()


# ---- evaluation --------------------------------------------------------------------------------


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two [-1, 1] images, on [0, 1]."""
    mse = float(((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).pow(2).mean())
    return 10 * math.log10(1 / max(mse, 1e-12))


def centre_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """[1, 3, size, size]: the largest centre square of [3, H, W], resized (the harness's
    `reference_at` for a square output)."""
    _, h, w = image.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return downsample(image[None, :, top : top + side, left : left + side], (size, size))


@torch.no_grad()
def evaluate(codec, decoder, size: int = 256) -> dict[str, dict[str, float]]:
    """Held-out PSNR: the codec at its own size (size / 4) and PiD at `size`, σ = 0."""
    results = {}
    for name, dist, inner in HELD_OUT:
        reference = centre_square(load_rgb(dist, inner), size)
        lq = downsample(reference, (size // 4, size // 4)).clamp(-1, 1)
        latent = codec.encode(lq)
        native = codec.decode(latent)
        pid = decoder.decode(latent, sigma=0.0, caption="", out_size=size, seed=0)
        results[name] = {"codec_psnr": psnr(native, lq), "pid_psnr": psnr(pid, reference)}
    return results


# ---- fixtures ----------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_fixtures(out: Path, vae, net, config: TrainConfig, scores: dict, seconds: float) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, out / CODEC_FILE)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, out / PID_FILE)
    meta = {
        "command": "python -m pid_models.tiny_training --out pid_models/data/tiny",
        "config": asdict(config),
        "codec_scaling_factor": vae.config.scaling_factor,
        "codec_shift_factor": vae.config.shift_factor,
        "sha256": {CODEC_FILE: sha256(out / CODEC_FILE), PID_FILE: sha256(out / PID_FILE)},
        "train_images": [name for name, _, _ in TRAIN_IMAGES],
        "held_out": [name for name, _, _ in HELD_OUT],
        "held_out_psnr_db": scores,
        "train_seconds": round(seconds, 1),
        "torch": torch.__version__,
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def train(config: TrainConfig, out: Path, work: Path, resume: bool = False, log=print) -> dict:
    """Both stages, evaluation and the fixture files; returns tiny.json's content."""
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _train(config, out, work, resume, log)
    finally:
        torch.set_num_threads(threads)


def _train(config: TrainConfig, out: Path, work: Path, resume: bool, log) -> dict:
    started = time.perf_counter()
    images = [load_rgb(dist, inner) for _, dist, inner in TRAIN_IMAGES]
    vae = train_codec(config, images, work, resume, log)
    from pid_models.codecs.kl import ScaledVAECodec

    codec = ScaledVAECodec(vae, identity="tiny-trained-vae")
    net = train_pid(config, codec, images, work, resume, log)
    from pid_models.decoder import PiDDecoder
    from pid_models.tiny import build_tiny_caption_encoder

    decoder = PiDDecoder(net, build_tiny_caption_encoder(0), "cpu")
    scores = evaluate(codec, decoder)
    for name, score in scores.items():
        log(f"held-out {name}: codec {score['codec_psnr']:.2f} dB, PiD {score['pid_psnr']:.2f} dB")
    save_fixtures(out, vae, net, config, scores, time.perf_counter() - started)
    return json.loads((out / META_FILE).read_text())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=FIXTURE_DIR, help="fixture folder")
    parser.add_argument("--work", type=Path, default=Path("runs/tiny_training"),
                        help="stage checkpoints (for --resume)")  # fmt: skip
    parser.add_argument("--resume", action="store_true", help="continue from --work")
    defaults = TrainConfig()
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    config = TrainConfig(**{k: getattr(args, k) for k in asdict(defaults)})
    meta = train(config, args.out, args.work, args.resume)
    print(json.dumps(meta["held_out_psnr_db"], indent=2))


if __name__ == "__main__":
    main()
