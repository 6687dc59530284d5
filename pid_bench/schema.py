"""The row schema: one row per (cell, decoder). Every column starts here.

The Parquet writer, the DuckDB views and the tests import `ROW_SCHEMA`; each field carries a
one-line description in its metadata (`doc`).
"""

from __future__ import annotations

import pyarrow as pa

# The declarations only (plain data): the implementations would import torch.
from pid_bench.axes import AXIS_COLUMNS
from pid_bench.metrics.catalog import BUILTIN_SPECS, ROW_METRICS

#: Metrics with a column of their own (every per-image metric of the registry); `metric_<name>`,
#: float64, null when not computed (its reason in metric_notes).
METRIC_COLUMNS = ROW_METRICS
_KIND_DOC = {
    "full_reference": "against the reference at output size",
    "no_reference": "of the decoded image alone (no reference)",
    "latent": "PiD-specific, against the latent / native decode (docs/metrics.md)",
}

_COLUMNS: list[tuple[str, pa.DataType, str]] = [
    # identity and provenance
    ("run_id", pa.string(), "run directory name"),
    ("suite", pa.string(), "suite name"),
    ("cell_id", pa.string(), "hash of the cell's canonical configuration and model identity"),
    (
        "decoder",
        pa.string(),
        "pid | pid-teacher | native | native+bicubic | native+lanczos | native+<baseline> | module:Class",
    ),
    (
        "status",
        pa.string(),
        "ok | error | oom | worker_lost | storage_error (the decode was fine but its images "
        "could not be written to the run directory: recomputed by the next run)",
    ),
    ("error", pa.string(), "message and traceback summary when status != ok"),
    (
        "attempt",
        pa.int64(),
        "1 for the first row of this (cell, decoder) in the run directory; each recomputation "
        "(--retry-failed, a storage_error) adds 1. Reports count the highest; older attempts "
        "stay in parts/ (parts written before this column read as 1)",
    ),
    ("git_sha", pa.string(), "pid-bench commit that produced the row"),
    ("pid_bench_version", pa.string(), "package version"),
    ("torch_version", pa.string(), "torch.__version__"),
    ("diffusers_version", pa.string(), "diffusers.__version__"),
    ("device", pa.string(), "cpu | cuda:N"),
    ("worker", pa.string(), "node IP and process id of the Ray actor that computed the row"),
    ("gpu_ids", pa.string(), "Ray GPU ids assigned to that actor (empty: none)"),
    ("started_at", pa.timestamp("us", tz="UTC"), "when the worker started the cell"),
    ("device_name", pa.string(), "GPU name or CPU model"),
    ("gpu_driver", pa.string(), "NVIDIA driver version (CUDA rows; NVML)"),
    ("cuda_version", pa.string(), "CUDA version torch was built with (CUDA rows)"),
    ("dtype", pa.string(), "compute dtype of PiD (float32, bfloat16, bfloat16-autocast)"),
    (
        "compile_ms",
        pa.float64(),
        "pid, compiled: wall time of the first call at this size (compilation; not in latency); "
        "null when the worker had compiled this size before",
    ),
    ("compile_graphs", pa.int64(), "pid, compiled: graphs torch.compile produced in that call"),
    ("recompiles", pa.int64(), "pid, compiled: graphs produced during the timed repeats (0)"),
    (
        "tf32",
        pa.bool_(),
        "CUDA: TF32 allowed for matmuls and cuDNN during this decoder's calls (pid: suite "
        "pid.tf32, default true as upstream; others: torch's setting); null on CPU",
    ),
    (
        "generator_device",
        pa.string(),
        "where the latent noise and PiD's sampler noise were drawn (cpu | cuda[:N])",
    ),
    (
        "random_weights",
        pa.bool_(),
        "true for the embedded tiny backbone: numbers mean nothing about PiD",
    ),
    ("finished_at", pa.timestamp("us", tz="UTC"), "when the row was computed"),
    # axes: every setting axis's columns (pid_bench.axes), then what the cell derives
    *[(c.name, pa.type_for_alias(c.dtype), c.doc) for c in AXIS_COLUMNS],
    ("experiment", pa.string(), "PiD experiment (checkpoint) name"),
    (
        "sampler",
        pa.string(),
        "pid, pid-teacher: the sampler as run (pid-teacher: steps, CFG and shift of suite.teacher)",
    ),
    # sizes
    ("in_height", pa.int64(), "height of the image given to the encoder"),
    ("in_width", pa.int64(), "width of the image given to the encoder"),
    ("source_height", pa.int64(), "from_clean: height of the source image file"),
    ("source_width", pa.int64(), "from_clean: width of the source image file"),
    ("latent_shape", pa.string(), "C x h x w of the PiD latent"),
    ("decoded_height", pa.int64(), "height the decoder itself produced (before any resize)"),
    ("decoded_width", pa.int64(), "width the decoder itself produced (before any resize)"),
    # protocol
    ("downsample_kernel", pa.string(), "how the reference was brought to the encoder size"),
    (
        "resize_kernel",
        pa.string(),
        "how this decoder's output was brought to the output size (null: none)",
    ),
    ("tile_size", pa.int64(), "pid: decoded in tiles of this many output pixels (null: whole)"),
    ("tile_overlap", pa.int64(), "pid: minimum overlap of neighbouring tiles, output pixels"),
    ("color_space", pa.string(), "colour space and range the metrics saw"),
    (
        "protocol_resize_kernel",
        pa.string(),
        "how images reached the size a metric compares at (native decodes: the output size)",
    ),
    ("crop_border", pa.int64(), "pixels cropped from each border before the metrics"),
    ("scored_height", pa.int64(), "height the metrics compared at (native: its own size)"),
    ("scored_width", pa.int64(), "width the metrics compared at (native: its own size)"),
    (
        "reference_upsampled",
        pa.bool_(),
        "from_clean: the reference at the scored size would be upsampled from the source's "
        "centre crop (full-reference metrics null unless the suite says reference: upsampled)",
    ),
    (
        "outside_envelope",
        pa.bool_(),
        "pid: more pixels than the checkpoint's largest trained shape (2k: 2048², 4K: 4096²) or an aspect beyond 16:9",
    ),
    # timing (every repeat kept)
    ("warmup", pa.int64(), "untimed decodes before timing"),
    ("repeats", pa.int64(), "timed decodes (suite timing: at least repeats and min_time_s)"),
    ("latency_ms", pa.list_(pa.float64()), "every timed repeat, milliseconds"),
    ("latency_ms_p50", pa.float64(), "median of latency_ms"),
    ("latency_ms_p90", pa.float64(), "90th percentile of latency_ms"),
    ("latency_ms_p10", pa.float64(), "10th percentile of latency_ms"),
    ("latency_ms_min", pa.float64(), "minimum of latency_ms"),
    ("latency_ms_iqr", pa.float64(), "interquartile range (p75 - p25) of latency_ms"),
    ("timing_spread", pa.float64(), "(p90 - p10) / p50 of latency_ms"),
    (
        "timing_noisy",
        pa.bool_(),
        "timing_spread > pid_bench.timing.NOISY_SPREAD (0.10): the repeats disagree",
    ),
    ("timer", pa.string(), "cuda_events | perf_counter"),
    ("warmup_ms", pa.float64(), "wall time of the warm-up decodes together (device synchronised)"),
    ("caption_ms", pa.float64(), "caption encoding time (apart from the decode; cached = ~0)"),
    ("encode_ms", pa.float64(), "native encoder time for the cell's latent"),
    ("cell_wall_ms", pa.float64(), "wall time of the whole cell on the worker"),
    (
        "score_ms",
        pa.float64(),
        "this decoder's metrics: the context (native decode for twins, resizes) and every metric",
    ),
    (
        "score_ms_by_metric",
        pa.string(),
        "JSON {metric: milliseconds} of this decoder's per-row metrics",
    ),
    (
        "images_ms",
        pa.float64(),
        "the cell's PNG writes on the background writer's threads (all its images together)",
    ),
    (
        "features_ms",
        pa.float64(),
        "the cell's set-level features (fid/kid extractor on every decode and reference; ~0 "
        "when the suite names neither)",
    ),
    (
        "images_wait_ms",
        pa.float64(),
        "time the cell waited for its PNG writes (before timed spans and at its end)",
    ),
    # from_ldm (null for from_clean)
    ("ldm_pipeline", pa.string(), "from_ldm: pipeline class, source, dtype and device"),
    ("ldm_steps", pa.int64(), "from_ldm: LDM scheduler steps (num_inference_steps)"),
    (
        "ldm_ms_to_step",
        pa.float64(),
        "from_ldm: LDM wall time from the pipeline call to this row's x_t step (x0: to return)",
    ),
    ("ldm_total_ms", pa.float64(), "from_ldm: wall time of the whole LDM call"),
    (
        "ldm_cache",
        pa.string(),
        "from_ldm: computed (LDM ran in this run) | disk (capture read from the latent cache)",
    ),
    ("ldm_capture_key", pa.string(), "from_ldm: latent cache key of the capture"),
    # memory
    (
        "weights_bytes",
        pa.int64(),
        "bytes of the decoder's parameters and buffers (pid: the network; native: the codec)",
    ),
    (
        "peak_mem_allocated_bytes",
        pa.int64(),
        "torch.cuda.max_memory_allocated over the decoder's calls, only its modules on the "
        "device (null on CPU)",
    ),
    ("peak_mem_reserved_bytes", pa.int64(), "torch.cuda.max_memory_reserved (null on CPU)"),
    (
        "peak_activation_bytes",
        pa.int64(),
        "peak allocated minus what was allocated before the first call (activations, workspace, "
        "autocast's bf16 weight copies); null on CPU",
    ),
    (
        "gpu_state_before",
        pa.string(),
        "CUDA: JSON of SM / memory clocks (MHz), temperature (C), power (W) and throttle "
        "reasons just before the timed repeats (NVML)",
    ),
    ("gpu_state_after", pa.string(), "the same just after the timed repeats"),
    # compute
    ("flops", pa.int64(), "pid: FLOPs of one decode (pid_models.flops, all steps and tiles)"),
    ("achieved_tflops", pa.float64(), "flops / latency_ms_p50 (CUDA only)"),
    ("mfu", pa.float64(), "achieved_tflops / the GPU's dense bf16 peak (pid_models.flops)"),
    (
        "measure_notes",
        pa.string(),
        "JSON {column: reason} for timing, memory and compute columns left null",
    ),
    # outputs
    ("image_path", pa.string(), "decoded PNG, relative to the run directory (null: not saved)"),
    ("reference_path", pa.string(), "reference PNG at output size, relative to the run directory"),
    ("metric_notes", pa.string(), "JSON {metric: reason} for metrics left null"),
    (
        "extra_metrics",
        pa.string(),
        "JSON {metric: value} of metrics without a column (pyiqa:<name>)",
    ),
]
_COLUMNS += [
    (f"metric_{m}", pa.float64(), f"{m}, {_KIND_DOC[BUILTIN_SPECS[m].kind]}")
    for m in METRIC_COLUMNS
]

ROW_SCHEMA = pa.schema(
    [pa.field(name, dtype, metadata={"doc": doc}) for name, dtype, doc in _COLUMNS]
)
COLUMNS = tuple(ROW_SCHEMA.names)
#: What a part stores: the same columns without the per-field docs, which would otherwise be
#: most of a small part's footer (48 kB for 3 rows) and of the time to scan 10k parts.
STORAGE_SCHEMA = pa.schema([pa.field(f.name, f.type) for f in ROW_SCHEMA])


def empty_row() -> dict:
    return dict.fromkeys(COLUMNS)


def to_table(rows: list[dict]) -> pa.Table:
    """Rows -> a table of exactly ROW_SCHEMA; an unknown key is a programming error."""
    for row in rows:
        extra = set(row) - set(COLUMNS)
        if extra:
            raise KeyError(f"row has columns not in pid_bench.schema: {sorted(extra)}")
    return pa.Table.from_pylist([{**empty_row(), **row} for row in rows], schema=ROW_SCHEMA)
