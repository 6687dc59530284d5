"""The driver: expand the suite, skip finished cells, hand model groups to Ray actors, persist.

Workers compute, the driver persists (DESIGN.md): actors return row dicts; only this module
writes Parquet parts and run.json. One actor per device keeps its models loaded; cells are
grouped by the models they need so an actor loads each model once.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pid_bench.images import PNG_COMPRESS_LEVEL, saves
from pid_bench.models import model_identity
from pid_bench.pool import DEFAULT_MAX_RETRIES, StopFlag, execute
from pid_bench.settings import CellSettings
from pid_bench.store import (
    StorageError,
    StorageWarning,
    claim_run_dir,
    compact,
    run_lock,
    write_json,
    write_part,
    write_plan,
    writing,
    written_rows,
)  # fmt: skip
from pid_bench.suite import Cell, Suite, cell_id, custom_metric_paths
from pid_bench.timing import TimingPolicy, utc_now
from pid_bench.version import __version__
from pid_models.registry import EMBEDDED_PAIRS, RANDOM_BACKBONES

#: Test-only fault injection (JSON): {"error"|"oom"|"kill"|"storage": [cell ids], "kill_times": n,
#: "marker_dir": DIR}. "kill" ends the actor's process before the cell, n times per cell;
#: "storage" makes the cell's image writes fail with ENOSPC.
FAULTS_ENV = "PID_BENCH_FAULTS"
#: Statuses `--retry-failed` recomputes when it names none.
FAILED_STATUSES = ("error", "oom", "worker_lost", "storage_error")
#: Recomputed by every run: the decode was fine, only its images could not be written.
ALWAYS_RETRIED = frozenset({"storage_error"})
#: Bytes per output pixel of a saved PNG, for the space estimate before a run: raw 8-bit RGB.
#: PNG's deflate saves 30-50 % on photographs and little on noisy decodes (the tiny backbone's
#: random networks), so this is an upper bound; parts and run.json are small beside it.
PNG_BYTES_PER_PIXEL = 3


@dataclass
class RunSummary:
    run_dir: Path
    cells_total: int
    cells_skipped: int
    rows_written: int
    status_counts: dict[str, int]
    cells_remaining: int = 0  # not computed because the run was interrupted
    interrupted_by: str | None = None  # SIGINT | SIGTERM

    @property
    def ok(self) -> bool:
        return set(self.status_counts) <= {"ok"} and not self.cells_remaining


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=5, check=True,
        )  # fmt: skip
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("diffusers", "transformers", "ray", "pyarrow", "duckdb"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    return {
        "git_sha": git_sha(),
        "pid_bench_version": __version__,
        "versions": versions,
        "host": platform.node(),
        "cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        # the report's "what fits" answers for these sizes too (GiB, of this machine's GPUs)
        "gpu_memory_gb": [
            round(torch.cuda.get_device_properties(i).total_memory / (1 << 30), 1)
            for i in range(torch.cuda.device_count())
        ],
    }


def suite_fingerprint(suite: Suite) -> str:
    return hashlib.sha256(json.dumps(suite.resolved(), sort_keys=True).encode()).hexdigest()[:16]


def plan(suite: Suite) -> list[tuple[str, Cell]]:
    """(cell_id, cell) of every cell, in the suite's order."""
    identities = {}
    planned = []
    for cell in suite.cells():
        key = (cell.backbone, cell.ckpt_type)
        if key not in identities:
            identities[key] = model_identity(*key)
            if suite.mode == "from_ldm":  # a different LDM makes different latents
                identities[key] += f"|ldm:{suite.ldm.identity(cell.backbone)}"
            if suite.decode_identity():  # tiles, TF32 or the noise's device change the decode
                identities[key] += f"|decode:{suite.decode_identity()}"
        planned.append((cell_id(cell, identities[key]), cell))
    return planned


def run_suite(
    suite: Suite,
    run_dir: Path,
    ray_address: str | None = None,
    cpu_workers: int = 1,
    force: bool = False,
    progress: bool = True,
    checkpoints: str | None = None,
    max_retries: int = DEFAULT_MAX_RETRIES,
    retry_failed: frozenset[str] = frozenset(),
) -> RunSummary:
    """Run every unfinished cell; rows are persisted as each cell returns.

    SIGINT/SIGTERM stop the run after the part being written (nothing half-written, nothing
    lost); the summary says how many cells remain, and the same command resumes. run.json keeps
    one record per invocation (start, end, cells computed, rows written, interruption, argv).
    Cells whose latest row has a status in `retry_failed` are computed again (a new attempt),
    as are `storage_error` cells always. A write the run directory's storage refuses stops the
    run: RunStorageError says what could not be written and how many cells are safe.
    """
    try:
        with writing(run_dir):
            run_dir.mkdir(parents=True, exist_ok=True)
        with run_lock(run_dir):
            return _run_locked(
                suite, run_dir, ray_address, cpu_workers, force, progress, checkpoints,
                max_retries, retry_failed,
            )  # fmt: skip
    except StorageError as exc:
        raise RunStorageError(exc, run_dir, *_cells_safe(suite, run_dir)) from exc


def _run_locked(
    suite: Suite,
    run_dir: Path,
    ray_address: str | None,
    cpu_workers: int,
    force: bool,
    progress: bool,
    checkpoints: str | None,
    max_retries: int,
    retry_failed: frozenset[str],
) -> RunSummary:
    previous = claim_run_dir(run_dir, suite.name, force) or {}
    planned = plan(suite)
    # A part's name carries no failed status: --retry-failed reads every part.
    written = written_rows(run_dir, trust_names=not retry_failed)
    tally = _Tally(
        settled={key for key, row in written.items() if not _rerun(row.status, retry_failed)},
        attempts={key: row.attempt or 1 for key, row in written.items()},
    )
    todo = [
        (cid, c) for cid, c in planned if any((cid, d) not in tally.settled for d in suite.decoders)
    ]  # fmt: skip
    preflight(todo, checkpoints or os.environ.get("PID_BENCH_CHECKPOINTS"))
    check_space(suite, todo, run_dir)
    env = environment()
    invocation = {
        "started_at": utc_now().isoformat(),
        "finished_at": None,
        "cells_planned": len(planned),
        "cells_computed": 0,
        "rows_written": 0,
        "interrupted_by": None,
        "retry_failed": sorted(retry_failed) or None,
        "suite_fingerprint": suite_fingerprint(suite),
        "argv": list(sys.argv),
    }
    invocations = [*_invocations(previous), invocation]
    run_info = {
        "run_id": run_dir.name,
        "suite": suite.resolved(),
        "suite_fingerprint": invocation["suite_fingerprint"],
        "environment": env,
        "started_at": invocations[0]["started_at"],
        "random_weights": any(c.backbone in RANDOM_BACKBONES for _, c in planned),
        "embedded_backbones": sorted(
            {c.backbone for _, c in planned if (c.backbone, c.ckpt_type) in EMBEDDED_PAIRS}
        ),
        "cells": len(planned),
        "images": image_policy(suite),
        "invocations": invocations,
    }
    write_plan(run_dir, [cid for cid, _ in planned])
    write_json(run_dir / "run.json", run_info)
    stop = StopFlag()
    failure: BaseException | None = None
    try:
        if todo:
            settings = _settings(suite, run_dir, env, checkpoints)
            stream = execute(todo, settings, ray_address, cpu_workers, progress, max_retries, stop)
            with stop.installed(), contextlib.closing(stream):  # closing: Ray stops on an error
                for rows in stream:
                    tally.persist(run_dir, rows)
        if not stop.signal:
            _set_metrics(suite, run_dir)
        if tally.cells:
            compact(run_dir, small_only=True)  # the run's cells: one part, not thousands
    except BaseException as exc:  # a second Ctrl-C, a full disk, a crash: the record says so
        failure = exc
        invocation["interrupted_by"] = stop.signal or (
            "storage_error" if isinstance(exc, StorageError) else type(exc).__name__
        )
        raise
    else:
        invocation["interrupted_by"] = stop.signal
    finally:
        invocation["cells_computed"] = len(tally.cells)
        invocation["rows_written"] = tally.rows_written
        invocation["finished_at"] = utc_now().isoformat()
        # The run's end is the end of its last computing invocation: a rerun that computes
        # nothing keeps its own times in `invocations` only.
        if tally.cells or not previous.get("finished_at"):
            run_info["finished_at"] = invocation["finished_at"]
        else:
            run_info["finished_at"] = previous["finished_at"]
        try:
            write_json(run_dir / "run.json", run_info)
        except StorageError:
            if failure is None:
                raise  # else the error in flight is the one to report
    return RunSummary(
        run_dir, len(planned), len(planned) - len(todo), tally.rows_written, dict(tally.counts),
        cells_remaining=len(todo) - len(tally.cells) if stop.signal else 0,
        interrupted_by=stop.signal,
    )  # fmt: skip


def _rerun(status: str | None, retry_failed: frozenset[str]) -> bool:
    """Whether a (cell, decoder) whose latest row has `status` is computed again."""
    return status in ALWAYS_RETRIED or status in retry_failed


@dataclass
class _Tally:
    """What this invocation persisted, and what it must not write again."""

    settled: set[tuple[str, str]]  # (cell, decoder) whose latest row stands
    attempts: dict[tuple[str, str], int]  # latest attempt on disk
    rows_written: int = 0
    cells: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def persist(self, run_dir: Path, rows: list[dict]) -> None:
        """Write a cell's new rows as one part, each numbered by attempt. A row whose images
        could not be written stops the run (StorageError) once that part is safe."""
        rows = [
            {**row, "finished_at": utc_now(),
             "attempt": self.attempts.get((row["cell_id"], row["decoder"]), 0) + 1}
            for row in rows
            if (row["cell_id"], row["decoder"]) not in self.settled
        ]  # fmt: skip
        if not rows:
            return
        write_part(run_dir, rows)
        self.rows_written += len(rows)
        self.cells.add(rows[0]["cell_id"])
        for row in rows:
            self.counts[row["status"]] += 1
        unsaved = [row for row in rows if row["status"] == "storage_error"]
        if unsaved:
            error = unsaved[0]["error"]
            raise StorageError.from_text(error, run_dir) or StorageError(
                errno.EIO, error, str(run_dir / "images" / rows[0]["cell_id"])
            )


class RunStorageError(RuntimeError):
    """The run directory's storage refused a write; the run stopped, every part on disk whole."""

    def __init__(self, cause: StorageError, run_dir: Path, safe: int | None, total: int) -> None:
        self.cause, self.safe, self.total = cause, safe, total
        whole = "every part written is whole"
        if safe is None:
            count, rest = f"The cells already in {run_dir} are safe ({whole})", "the others"
        else:
            count = f"{safe} of {total} cells are safe in {run_dir} ({whole})"
            rest = (
                f"the other {total - safe}" if safe < total else "what is left (run.json, report)"
            )
        super().__init__(
            f"{cause.what()}. {count}; {cause.fix} and rerun the same command to finish {rest}"
        )


def _cells_safe(suite: Suite, run_dir: Path) -> tuple[int | None, int]:
    """Cells of the suite whose every row is on disk and stands (not `storage_error`); None
    when the directory cannot even be read."""
    planned = plan(suite)
    try:
        written = written_rows(run_dir)
    except OSError:
        return None, len(planned)
    stands = {key for key, row in written.items() if not _rerun(row.status, frozenset())}
    safe = sum(all((cid, d) in stands for d in suite.decoders) for cid, _ in planned)
    return safe, len(planned)


def image_bytes(suite: Suite, todo: list[tuple[str, Cell]]) -> int:
    """Disk space the PNGs of `todo` may take: one per decoder and cell, plus the reference of a
    clean image, each counted at the output size (the native decode is smaller)."""
    kept = [d for d in suite.decoders if saves(suite.save_images, d)]
    pngs = len(kept) + (suite.mode == "from_clean" and suite.save_images != "none")
    pixels = sum(cell.resolution[0] * cell.resolution[1] for _, cell in todo)
    return int(pixels * pngs * PNG_BYTES_PER_PIXEL)


def image_policy(suite: Suite) -> dict[str, Any]:
    """run.json's record of how the cells write their images."""
    return {
        "save_images": suite.save_images,
        "png_compress_level": PNG_COMPRESS_LEVEL,
        "overlap": suite.overlap,
        "overlap_note": "PNG writes run on background threads; they overlap timed decodes only "
        "on CUDA with overlap: true, never on a CPU device (they would take the decoder's cores)",
    }


def check_space(suite: Suite, todo: list[tuple[str, Cell]], run_dir: Path) -> None:
    """Warn (StorageWarning) before a run whose images may not fit on the run directory's disk."""
    need = image_bytes(suite, todo)
    free = shutil.disk_usage(run_dir).free
    if need > free:
        warnings.warn(
            f"the images of the {len(todo)} cells to run may need {need / 2**20:.1f} MiB "
            f"(estimate: {PNG_BYTES_PER_PIXEL} bytes per output pixel per PNG), but {run_dir} has "
            f"{free / 2**20:.1f} MiB free. Free space or set save_images: false; otherwise the "
            "run stops when the disk fills, keeping every cell written so far",
            StorageWarning,
            stacklevel=2,
        )


def _set_metrics(suite: Suite, run_dir: Path) -> None:
    """fid / kid per (setting, decoder) group into RUN_DIR/sets/ (pid_bench.sets)."""
    from pid_bench.metrics import expand_metric_names, is_set_level
    from pid_bench.sets import compute_run_sets

    names = [n for n in expand_metric_names(suite.metrics) if is_set_level(n)]
    if names:
        base = suite.path.parent if suite.path else None
        compute_run_sets(run_dir, names, suite.set_metrics.feature_extractor, base)


def _invocations(previous: dict) -> list[dict]:
    """The invocation records of an earlier run.json; a run.json written before they existed
    counts as one invocation with its first start and last end."""
    if "invocations" in previous:
        return list(previous["invocations"])
    if previous.get("started_at"):
        keys = ("started_at", "finished_at")
        return [{**{k: previous.get(k) for k in keys}, "argv": None, "interrupted_by": None}]
    return []


class PreflightError(ValueError):
    """Inputs of the cells still to run that are unusable: nothing was started."""


def preflight(todo: list[tuple[str, Cell]], checkpoints: str | None) -> None:
    """Refuse, before any actor starts, what would fail every cell of a group: a source image
    that does not decode, a PiD checkpoint that is missing or is not a plain tensor dict.

    Checkpoints are opened memory-mapped with `weights_only=True` (cheap); every problem is
    reported at once.
    """
    from pid_bench.manifests import ManifestError, load_image
    from pid_models.checkpoints import CheckpointError, checkpoint_path, read_state_dict
    from pid_models.registry import EMBEDDED_PAIRS, resolve

    problems: list[str] = []
    for item in {c.item.image: c.item for _, c in todo if c.item.image}.values():
        try:
            load_image(item)
        except ManifestError as err:
            problems.append(f"{item.location} image: {err}")
    for pair in dict.fromkeys((c.backbone, c.ckpt_type) for _, c in todo):
        if pair in EMBEDDED_PAIRS:
            continue
        try:
            read_state_dict(checkpoint_path(resolve(*pair), checkpoints))
        except CheckpointError as err:
            problems.append(f"{pair[0]}/{pair[1]}: {err}")
    if problems:
        raise PreflightError("\n".join(problems))


def _settings(suite: Suite, run_dir: Path, env: dict, checkpoints: str | None) -> CellSettings:
    return CellSettings(
        run_id=run_dir.name,
        suite=suite.name,
        decoders=tuple(suite.decoders),
        metrics=tuple(suite.metrics),
        timing=TimingPolicy(**suite.timing.model_dump()),
        save_images=suite.save_images,
        run_dir=str(run_dir.resolve()),
        checkpoints=checkpoints or os.environ.get("PID_BENCH_CHECKPOINTS"),
        ldm=suite.ldm if suite.mode == "from_ldm" else None,
        save_xt_steps=tuple(suite.save_xt_steps),
        provenance={
            "git_sha": env["git_sha"],
            "pid_bench_version": __version__,
            "torch_version": env["versions"]["torch"],
            "diffusers_version": env["versions"]["diffusers"],
        },
        faults=json.loads(os.environ[FAULTS_ENV]) if os.environ.get(FAULTS_ENV) else None,
        tile_size=suite.tiling.tile_size,
        tile_overlap=suite.tiling.tile_overlap,
        tf32=suite.pid.tf32,
        generator_device=suite.pid.generator_device,
        reference=suite.reference,
        metric_paths=custom_metric_paths(suite.path),
        feature_extractor=suite.set_metrics.feature_extractor,
        baselines={name: b.model_dump() for name, b in suite.baselines.items()},
        teacher=suite.teacher.model_dump(),
        overlap=suite.overlap,
        png_compress_level=PNG_COMPRESS_LEVEL,
    )


def summary_dict(summary: RunSummary) -> dict:
    return {**asdict(summary), "run_dir": str(summary.run_dir)}
