"""The driver: expand the suite, skip finished cells, hand model groups to Ray actors, persist.

Workers compute, the driver persists (DESIGN.md): actors return row dicts; only this module
writes Parquet parts and run.json. One actor per device keeps its models loaded; cells are
grouped by the models they need so an actor loads each model once.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from pid_bench import __version__
from pid_bench.cell import CellSettings, model_identity, utc_now
from pid_bench.store import claim_run_dir, finished_rows, write_json, write_part
from pid_bench.suite import Cell, Suite, cell_id


@dataclass
class RunSummary:
    run_dir: Path
    cells_total: int
    cells_skipped: int
    rows_written: int
    status_counts: dict[str, int]

    @property
    def ok(self) -> bool:
        return set(self.status_counts) <= {"ok"}


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
) -> RunSummary:
    run_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = suite_fingerprint(suite)
    previous = claim_run_dir(run_dir, fingerprint, force)
    planned = plan(suite)
    done = finished_rows(run_dir)
    todo = [(cid, c) for cid, c in planned if any((cid, d) not in done for d in suite.decoders)]
    env = environment()
    run_info = {
        "run_id": run_dir.name,
        "suite": suite.resolved(),
        "suite_fingerprint": fingerprint,
        "environment": env,
        "started_at": (previous or {}).get("started_at") or utc_now().isoformat(),
        "random_weights": any(c.backbone == "tiny" for _, c in planned),
        "cells": len(planned),
    }
    write_json(run_dir / "run.json", run_info)
    counts: dict[str, int] = defaultdict(int)
    rows_written = 0
    if todo:
        settings = CellSettings(
            run_id=run_dir.name,
            suite=suite.name,
            decoders=tuple(suite.decoders),
            metrics=tuple(suite.metrics),
            warmup=suite.timing.warmup,
            repeats=suite.timing.repeats,
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
        )
        for rows in _execute(todo, settings, ray_address, cpu_workers, progress):
            rows = [
                {**row, "finished_at": utc_now()}
                for row in rows
                if (row["cell_id"], row["decoder"]) not in done
            ]
            if rows:
                write_part(run_dir, rows)
                rows_written += len(rows)
                for row in rows:
                    counts[row["status"]] += 1
    run_info["finished_at"] = utc_now().isoformat()
    write_json(run_dir / "run.json", run_info)
    return RunSummary(run_dir, len(planned), len(planned) - len(todo), rows_written, dict(counts))


def _groups(todo: list[tuple[str, Cell]]) -> list[list[tuple[str, Cell]]]:
    """Cells grouped by the models they need, in first-seen order."""
    groups: dict[tuple[str, str], list[tuple[str, Cell]]] = {}
    for cid, cell in todo:
        groups.setdefault((cell.backbone, cell.ckpt_type), []).append((cid, cell))
    return list(groups.values())


def _execute(todo, settings: CellSettings, ray_address, cpu_workers: int, progress: bool):
    """Yield the rows of each finished cell as actors complete them."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        _init_ray(ray_address, cpu_workers)
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        actor_count = gpus or max(1, cpu_workers)
        worker_cls = (
            ray.remote(num_gpus=1, num_cpus=0)(CellWorker)
            if gpus
            else ray.remote(num_cpus=1)(CellWorker)
        )
        actors = [
            worker_cls.remote("cuda" if gpus else "cpu", settings) for _ in range(actor_count)
        ]
        pending = {}
        for index, group in enumerate(_groups(todo)):
            actor = actors[index % len(actors)]
            for cid, cell in group:
                pending[actor.run.remote(cid, cell)] = (cid, cell)
        with _progress_bar(len(pending), progress) as bar:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                cid, cell = pending.pop(ready[0])
                try:
                    rows = ray.get(ready[0])
                except Exception as exc:  # the actor died or the call failed outside run_cell
                    rows = _lost_rows(cid, cell, settings, exc)
                bar.update(rows)
                yield rows
    finally:
        if started_here:
            ray.shutdown()


def _init_ray(address: str | None, cpu_workers: int) -> None:
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if address:
        ray.init(address=address, log_to_driver=False)
        return
    ray.init(
        num_cpus=max(1, cpu_workers) + 1,
        include_dashboard=False,
        dashboard_host="127.0.0.1",
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )


def _lost_rows(cid: str, cell: Cell, settings: CellSettings, exc: BaseException) -> list[dict]:
    status = "worker_lost" if type(exc).__name__ in ("RayActorError", "ActorDiedError") else "error"
    return [
        {
            "run_id": settings.run_id,
            "suite": settings.suite,
            "cell_id": cid,
            "decoder": d,
            "status": status,
            "error": f"{type(exc).__name__}: {exc}"[:4000],
            "backbone": cell.backbone,
            "ckpt_type": cell.ckpt_type,
            "mode": cell.mode,
            "sigma": float(cell.sigma),
            "seed": cell.seed,
            "pid_steps": cell.pid_steps,
            "image_id": cell.item.id,
            "out_height": cell.resolution[0],
            "out_width": cell.resolution[1],
        }  # fmt: skip
        for d in settings.decoders
    ]


class CellWorker:
    """A Ray actor bound to one device; keeps the models of the current group loaded."""

    def __init__(self, device: str, settings: CellSettings) -> None:
        import torch

        torch.set_num_threads(max(1, int(os.environ.get("PID_BENCH_THREADS", os.cpu_count() or 1))))
        self.device = device
        self.settings = settings
        self.key: tuple[str, str] | None = None
        self.models = None

    def run(self, cid: str, cell: Cell) -> list[dict]:
        from pid_bench.cell import failure_fields, load_models, run_cell

        key = (cell.backbone, cell.ckpt_type)
        if key != self.key:
            self._release()
            try:
                self.models = load_models(
                    *key, self.device, self.settings.checkpoints, self.settings.ldm
                )
                self.key = key
            except Exception as exc:
                return [
                    {**row, **failure_fields(exc)}
                    for row in _lost_rows(cid, cell, self.settings, exc)
                ]
        return run_cell(cell, cid, self.models, self.settings, self.device)

    def _release(self) -> None:
        import gc

        import torch

        self.models, self.key = None, None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class _progress_bar:
    """Cells done / failed / ETA on stderr (rich)."""

    def __init__(self, total: int, enabled: bool) -> None:
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.failed = 0
        self.progress = Progress(
            TextColumn("[bold]cells"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TextColumn("failed {task.fields[failed]}"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), disable=not enabled, transient=False,
        )  # fmt: skip
        self.task = self.progress.add_task("cells", total=total, failed=0)

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def update(self, rows: list[dict]) -> None:
        if any(row["status"] != "ok" for row in rows):
            self.failed += 1
        self.progress.update(self.task, advance=1, failed=self.failed)


def summary_dict(summary: RunSummary) -> dict:
    return {**asdict(summary), "run_dir": str(summary.run_dir)}
