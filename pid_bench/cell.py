"""One cell: prepare its input, then per decoder load, place, time, measure memory, score and
save; one row per decoder (the row schema: `pid_bench.schema`).

The walk: `pid_bench.prepare` makes the input, `pid_bench.decoders` says what each decoder
runs and keeps on the device, `pid_bench.timing` times it, `pid_bench.metrics` scores it and
`pid_bench.images` writes it.
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from pid_bench.decoders import CUDA_GRAPH_MODES, Decoder, Pid, build_decoder, tile_size
from pid_bench.features import store_cell_features
from pid_bench.gpu import gpu_state, gpu_versions
from pid_bench.images import CellImages, unsaved
from pid_bench.manifests import is_upsampled
from pid_bench.memory import CPU_REASON, modules_of, peak_fields, place, weights_bytes
from pid_bench.metrics import (
    RESIZE_KERNEL,
    MetricContext,
    expand_metric_names,
    is_set_level,
    measure,
    protocol_fields,
    seam_positions,
    to_unit_range,
)
from pid_bench.metrics import bicubic_resize as resize
from pid_bench.models import ModelSet
from pid_bench.prepare import Prepared, prepare
from pid_bench.schema import COLUMNS
from pid_bench.settings import CellSettings
from pid_bench.store import StorageError
from pid_bench.timing import time_once, timed, timing_fields, utc_now
from pid_models.flops import peak_tflops
from pid_models.registry import EMBEDDED_PAIRS, resolve
from pid_models.tiling import plan_tiles


def run_cell(
    cell: Any, cell_id: str, models: ModelSet, settings: CellSettings, device: str
) -> list[dict]:
    """All rows of one cell: one per decoder, each `ok` or carrying its error."""
    dev = torch.device(device)
    started_at, started = utc_now(), time.perf_counter()
    base = base_row(cell, cell_id, models, settings, dev)
    try:
        prepared = prepare(cell, models, settings, dev)
    except Exception as exc:  # the whole cell failed before any decoder ran
        return [{**base, "decoder": d, **failure_fields(exc)} for d in settings.decoders]
    base |= prepared.row
    images = CellImages(cell_id, settings) if settings.save_images != "none" else None
    if images is not None and prepared.reference is not None:
        images.submit(None, prepared.reference)
    rows, outputs = [], {}
    for name in settings.decoders:
        try:
            inject_fault(settings.faults, cell_id, name)
            decoder = build_decoder(name, settings.baselines)
            row, outputs[name] = run_decoder(decoder, cell, models, prepared, settings, dev, images)
        except Exception as exc:
            row = failure_fields(exc)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        rows.append({**base, "decoder": name, **row})
    cell_fields = {"images_ms": None, "images_wait_ms": None}
    if images is not None:
        try:
            images.finish(rows)
        except StorageError as exc:  # the decodes were fine: a storage failure, not the decoder's
            rows = [unsaved(row, exc, settings.run_dir) for row in rows]
        cell_fields = {"images_ms": images.work_ms, "images_wait_ms": images.wait_ms}
    features_started = time.perf_counter()
    store_cell_features(cell, cell_id, rows, outputs, prepared.reference, settings, dev)
    cell_fields["features_ms"] = (time.perf_counter() - features_started) * 1000
    wall = (time.perf_counter() - started) * 1000
    return [{**row, **cell_fields, "cell_wall_ms": wall, "started_at": started_at} for row in rows]


_DTYPE_NAMES = {"bf16-autocast": "bfloat16-autocast", "bf16": "bfloat16", "fp32": "float32"}


def base_row(
    cell: Any, cell_id: str, models: ModelSet, settings: CellSettings, dev: torch.device
) -> dict:
    """The columns every row of the cell shares: provenance, device, the cell's axes."""
    experiment = (
        cell.backbone
        if (cell.backbone, cell.ckpt_type) in EMBEDDED_PAIRS
        else resolve(cell.backbone, cell.ckpt_type).name
    )
    return {
        **{k: v for k, v in settings.provenance.items() if k in COLUMNS},
        "run_id": settings.run_id,
        "suite": settings.suite,
        "cell_id": cell_id,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_name(),
        **gpu_versions(dev),
        **cell.row(),
        # the precision as run: `auto` resolved for the device
        "precision": models.pid.precision,
        "dtype": _DTYPE_NAMES.get(models.pid.precision, models.pid.precision),
        "generator_device": str(models.pid.generator_device),
        "random_weights": models.random_weights,
        "experiment": experiment,
        "downsample_kernel": RESIZE_KERNEL,
        **protocol_fields(),
        "warmup": settings.timing.warmup,
    }


def run_decoder(
    decoder: Decoder, cell: Any, models: ModelSet, prepared: Prepared, settings: CellSettings,
    dev: torch.device, images: CellImages | None = None,
) -> tuple[dict, torch.Tensor]:  # fmt: skip
    """One decoder's row fields and its output at the size it is scored at; the output goes to
    `images` before the metrics, so its PNG is written while they run."""
    decoder.load(cell, models, settings, dev)
    fn = decoder.decode_fn(cell, models, prepared, settings)
    keep, others = decoder.placement(models)
    place(keep, others, dev)
    compiled = compile_first(fn, dev) if decoder.compiled(models) else {}
    resident = None
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        resident = torch.cuda.memory_allocated(dev)
    graphs_before = graph_count() if compiled else None  # dynamo's counters: compiled runs only
    state_before, state_reason = gpu_state(dev)
    if images is not None and not (settings.overlap and dev.type == "cuda"):
        images.quiesce()  # no PNG write competes with the timed span
    with torch.no_grad():
        image, times, timer, warmup_ms = timed(fn, settings.timing, dev)
    state_after, _ = gpu_state(dev)
    if compiled:
        compiled["recompiles"] = graph_count() - graphs_before
    row = {
        **compiled,
        "status": "ok",
        **timing_fields(times),
        "timer": timer,
        "warmup_ms": warmup_ms,
        "decoded_height": image.shape[-2],
        "decoded_width": image.shape[-1],
        **decoder.row_fields(cell, models, settings),
    }
    row |= peak_fields(dev, resident) | {"weights_bytes": weights_bytes(keep)}
    row |= {"gpu_state_before": state_before, "gpu_state_after": state_after}
    row |= compute_fields(decoder, cell, models, prepared, settings, row, dev, state_reason)
    if dev.type == "cuda":
        row["tf32"] = decoder.tf32(models)
    place(modules_of(models.codec), [], dev)  # the twin metrics decode natively
    # native is scored at its own size (the codec's reconstruction); every other decoder at the
    # output size, the size it delivers.
    scored = image.float()
    if decoder.scored_at_output:
        scored = resize(scored, tuple(cell.resolution))
    if images is not None:
        images.submit(decoder.name, scored)
    started = time.perf_counter()
    context, reference_row = metric_context(
        models, prepared, settings, decoder, scored, tile_size(cell, settings)
    )
    row |= reference_row | {"scored_height": scored.shape[-2], "scored_width": scored.shape[-1]}
    row |= score(scored, context, settings.metrics)
    row["score_ms"] = (time.perf_counter() - started) * 1000
    return row, scored


def graph_count() -> int:
    """Graphs torch.compile has produced in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def compile_first(fn: Any, dev: torch.device) -> dict[str, Any]:
    """A compiled decoder's first call at this size, apart from the timed span: `compile_ms`
    (null when this worker compiled the size before) and the graphs it produced."""
    before = graph_count()
    with torch.no_grad():
        ms, _ = time_once(fn, dev)
    graphs = graph_count() - before
    return {"compile_ms": ms if graphs else None, "compile_graphs": graphs}


def compute_fields(
    decoder: Decoder, cell: Any, models: ModelSet, prepared: Prepared, settings: CellSettings,
    row: dict, dev: torch.device, state_reason: str | None,
) -> dict:  # fmt: skip
    """FLOPs of the decode (where the decoder models them), achieved TFLOP/s and MFU (CUDA),
    and the reason for each measurement column left null (`measure_notes`)."""
    notes: dict[str, str] = {}
    if state_reason:
        notes.update(gpu_state_before=state_reason, gpu_state_after=state_reason)
    out: dict[str, Any] = {}
    if dev.type != "cuda":
        for column in (
            "peak_mem_allocated_bytes",
            "peak_mem_reserved_bytes",
            "peak_activation_bytes",
        ):
            notes[column] = CPU_REASON
    elif not isinstance(decoder, Pid) and models.pid.compile_mode in CUDA_GRAPH_MODES:
        notes["peak_mem_allocated_bytes"] = (
            "includes PiD's weights: compiled with CUDA graphs, not moved"
        )
    out["flops"] = decoder.flops(cell, models, prepared, settings)
    if out["flops"] is None:
        del out["flops"]
        notes["flops"] = decoder.flops_reason
    if out.get("flops") is None:
        notes.update(achieved_tflops="no FLOP count", mfu="no FLOP count")
    elif dev.type != "cuda":
        notes.update(achieved_tflops="CPU: a GPU figure", mfu="CPU: a GPU figure")
    else:
        out["achieved_tflops"] = out["flops"] / (row["latency_ms_p50"] / 1000) / 1e12
        peak = peak_tflops(torch.cuda.get_device_name(dev))
        if peak is None:
            notes["mfu"] = (
                f"no dense bf16 peak for {torch.cuda.get_device_name(dev)} in pid_models.flops"
            )
        else:
            out["mfu"] = out["achieved_tflops"] / peak
    return out | {"measure_notes": json.dumps(notes, sort_keys=True) if notes else None}


#: Metrics that compare with the native decode at its own size.
NEEDS_NATIVE = {
    "lq_color_de2000",
    "hf_energy_ratio",
    "twin_psnr",
    "twin_ssim",
    "twin_lpips",
    "twin_pass",
    "midtone_chroma_shift",
    "shadow_green_bias",
    "speck_ratio_bicubic",
}


def metric_context(
    models: ModelSet, prepared: Prepared, settings: CellSettings, decoder: Decoder,
    scored: torch.Tensor, tile: int | None = None,
) -> tuple[MetricContext, dict]:  # fmt: skip
    """What the metrics may compare with, and the row's reference columns.

    The reference is at the size the decoder is scored at; one that would be upsampled from the
    source is withheld (unless the suite says `reference: upsampled`), so a full-reference
    metric never rewards a decoder for matching an interpolation. The native decode is made
    once per cell, untimed.
    """
    native = None
    if NEEDS_NATIVE & set(expand_metric_names(settings.metrics)):
        native = prepared.native_unit(models)
    size = tuple(scored.shape[-2:])
    reference = prepared.reference if decoder.scored_at_output else prepared.reference_native
    row: dict = {}
    withheld = None
    if prepared.crop is not None:
        crop = prepared.crop
        row["reference_upsampled"] = is_upsampled(crop, size)
        if row["reference_upsampled"] and settings.reference != "upsampled":
            reference, withheld = None, f"reference upsampled from {crop[0]}x{crop[1]}"
    context = MetricContext(
        reference=None if reference is None else to_unit_range(reference),
        native=native,
        codec=models.codec,
        clean_latent=prepared.clean_latent,
        scale=models.pid.scale,
        reference_reason=withheld,
        **tile_fields(models, prepared, settings, size, tile),
    )
    return context, row


def tile_fields(
    models: ModelSet,
    prepared: Prepared,
    settings: CellSettings,
    size: tuple[int, int],
    tile: int | None,
) -> dict[str, Any]:
    """The context's tile plan at the scored `size` (`MetricContext.tile_boundaries`,
    `seam_period`, `tile_reason`): PiD's plan for its output when the suite tiles, the same
    positions for every decoder of the cell (scaled to a decoder scored at another size), so
    that native and native+bicubic give seam_score's no-seam baseline. `tile`: PiD's tile side
    in this cell (`decoders.tile_size`), None when it decodes whole."""
    if not tile:
        return {}
    net = models.pid.net
    out = tuple(d * net.pixels_per_latent for d in prepared.latent.shape[-2:])
    try:
        plan = plan_tiles(net.config, out, tile, settings.tile_overlap)
    except (TypeError, ValueError) as exc:
        return {"tile_reason": f"no tile plan: {exc}"}
    rows, cols = seam_positions(plan.rows), seam_positions(plan.cols)
    return {
        "tile_boundaries": (
            tuple(round(c * size[0] / out[0]) for c in rows),
            tuple(round(c * size[1] / out[1]) for c in cols),
        ),
        "seam_period": max(1, round(plan.unit * size[0] / out[0])),
    }


#: Why a set-level metric (fid, kid) has no value in a row: it compares sets of images.
SET_LEVEL_NOT_COMPUTED = (
    "set-level: one value per (setting, decoder) group, computed at the end of the run "
    "(RUN_DIR/sets/), not per row"
)


def score(image: torch.Tensor, context: MetricContext, names: tuple[str, ...]) -> dict:
    """metric_<name> columns, extra_metrics for metrics without a column, and the reasons of
    every null in metric_notes (set-level metrics are computed per run, not here)."""
    names = expand_metric_names(names)
    set_level = [n for n in names if is_set_level(n)]
    per_row = [n for n in names if n not in set_level]
    result = measure(per_row, to_unit_range(image), context)
    columns, extra, notes = {}, {}, dict(result.reasons)
    notes |= dict.fromkeys(set_level, SET_LEVEL_NOT_COMPUTED)
    for name, value in result.values.items():
        if f"metric_{name}" in COLUMNS:
            columns[f"metric_{name}"] = value
        elif value is not None:
            extra[name] = value
    return {
        **columns,
        "extra_metrics": json.dumps(extra) if extra else None,
        "metric_notes": json.dumps(notes) if notes else None,
        "score_ms_by_metric": json.dumps({k: round(v, 3) for k, v in result.milliseconds.items()}),
    }


def inject_fault(faults: dict | None, cell_id: str, decoder: str) -> None:
    """Test-only: raise the configured fault in the first decoder of a listed cell."""
    if not faults:
        return
    if cell_id in faults.get("oom", ()) and decoder == "pid":
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated by fault injection)")
    if cell_id in faults.get("error", ()) and decoder == "pid":
        raise RuntimeError("injected fault")


def failure_fields(exc: BaseException) -> dict:
    oom = type(exc).__name__ == "OutOfMemoryError"
    summary = "".join(traceback.format_exception(exc)[-3:]).strip()
    return {
        "status": "oom" if oom else "error",
        "error": f"{type(exc).__name__}: {exc}\n{summary}"[:4000],
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"
