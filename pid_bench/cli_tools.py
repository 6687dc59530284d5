"""Commands that work on one decode rather than a run: `parity` (our PiD against the
reference oracle) and `decode` (one latent to one image)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from pid_bench.console import err

#: Where `parity` looks for the oracle when no folder is given and PID_REFERENCE_DIR is unset.
DEFAULT_REFERENCE_DIR = Path("../shared/pid_reference")


def parity(
    root: Annotated[
        Path | None,
        typer.Argument(
            help="A folder in the pid_reference layout (golden/INDEX.json, keys/*.json); "
            f"default $PID_REFERENCE_DIR, else {DEFAULT_REFERENCE_DIR}.",
            envvar="PID_REFERENCE_DIR",
            show_envvar=True,
        ),
    ] = None,
) -> None:
    """Check our PiD against the reference oracle: golden forward/sampler vectors and key manifests.

    Prints one line per case, then `N/M cases pass`; exits 1 if any case fails, 2 when the
    folder is not an oracle.
    """
    from pid_bench.parity import run_parity

    root = root or DEFAULT_REFERENCE_DIR
    if not root.is_dir():
        err.print(
            f"[red]error:[/red] {escape(str(root))}: not a folder. Give the oracle's folder (the "
            "pid_reference layout: golden/INDEX.json, keys/*.json) as DIR, or set "
            "PID_REFERENCE_DIR to it."
        )
        raise typer.Exit(2)
    results = []
    for result in run_parity(root):
        typer.echo(result.line())
        results.append(result)
    counted = [r for r in results if r.kind != "skipped"]
    if not counted:
        err.print(
            f"[red]error:[/red] {root}: no golden/INDEX.json cases and no keys/*.json manifests"
        )
        raise typer.Exit(2)
    passed = sum(r.passed for r in counted)
    typer.echo(f"{passed}/{len(counted)} cases pass")
    if passed != len(counted):
        raise typer.Exit(1)


def decode(
    out: Annotated[Path, typer.Option(help="Where to write the decoded image (PNG).")],
    backbone: Annotated[
        str,
        typer.Option(
            help="'tiny' (embedded, trained here), 'tiny-random' (random weights) or a released "
            "backbone."
        ),
    ] = "tiny",
    ckpt_type: Annotated[str, typer.Option(help="2k, 2kto4k or 2kto4k_v1pt5.")] = "2k",
    latent: Annotated[
        Path | None,
        typer.Option(
            help="safetensors file with a 'latent' tensor [B, C, h, w] or [C, h, w] (PiD convention)."
        ),
    ] = None,
    latent_size: Annotated[
        int, typer.Option(help="Random latent grid size when no --latent (tiny backbones only).")
    ] = 8,
    sigma: Annotated[float, typer.Option(help="Noise level of the latent (0 = clean).")] = 0.0,
    caption: Annotated[str, typer.Option(help="Caption for PiD's text conditioning.")] = "",
    seed: Annotated[int, typer.Option(help="Sampler seed.")] = 0,
    steps: Annotated[int, typer.Option(help="Sampler steps, 1..4.")] = 4,
    checkpoints: Annotated[
        Path | None, typer.Option(help="PiD download root (else $PID_BENCH_CHECKPOINTS).")
    ] = None,
    text_encoder: Annotated[
        str | None, typer.Option(help="Gemma-2-2b-it folder or HF-cache repo id.")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if present).")
    ] = None,
) -> None:
    """Decode one latent with PiD and write the image; the tiny default needs no download."""
    import time

    import torch
    from safetensors.torch import load_file

    from pid_models.decoder import PiDDecoder
    from pid_models.registry import EMBEDDED_PAIRS, RANDOM_BACKBONES, UnknownCheckpointError

    EMBEDDED_BACKBONES = {b for b, _ in EMBEDDED_PAIRS}  # noqa: N806

    try:
        if backbone in EMBEDDED_BACKBONES:
            trained = backbone not in RANDOM_BACKBONES
            decoder = PiDDecoder.tiny(seed=0, device=device or "cpu", trained=trained)
        else:
            decoder = PiDDecoder.from_pretrained(
                backbone, ckpt_type, checkpoints, text_encoder, device
            )
        if latent is not None:
            z = load_file(latent)["latent"]
        elif backbone in EMBEDDED_BACKBONES:
            gen = torch.Generator().manual_seed(seed)
            z = torch.randn(1, 16, latent_size, latent_size, generator=gen)
        else:
            raise ValueError("--latent is required for a released backbone")
        started = time.perf_counter()
        y = decoder.encode_captions(caption, z.shape[0] if z.dim() == 4 else 1)
        caption_s = time.perf_counter() - started
        started = time.perf_counter()
        image = decoder.decode(z, sigma=sigma, y=y, seed=seed, steps=steps)
        if image.is_cuda:
            torch.cuda.synchronize()
        decode_s = time.perf_counter() - started
    except (UnknownCheckpointError, ValueError, FileNotFoundError, RuntimeError, KeyError) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    from pid_bench.images import write_png

    out.parent.mkdir(parents=True, exist_ok=True)
    write_png(image[0], out)
    typer.echo(
        f"{backbone}/{ckpt_type}: latent {tuple(z.shape)} -> image {tuple(image.shape)} in "
        f"{decode_s * 1000:.0f} ms ({steps} steps; captions {caption_s * 1000:.0f} ms) -> {out}"
    )
    if backbone in EMBEDDED_BACKBONES:
        typer.echo(
            f"note: {backbone} is a small embedded network; it says nothing about PiD's quality"
        )
