"""The worker: a Ray actor bound to one device that keeps the models of its current group
loaded and computes cells (`pid_bench.cell.run_cell`); the rows of a cell it could not compute
(`lost_rows`)."""

from __future__ import annotations

import os
from pathlib import Path

from pid_bench.settings import CellSettings
from pid_bench.suite import Cell


def lost_rows(cid: str, cell: Cell, settings: CellSettings, exc: BaseException) -> list[dict]:
    from ray.exceptions import RayActorError

    status = "worker_lost" if isinstance(exc, RayActorError) else "error"
    return [
        {
            "run_id": settings.run_id,
            "suite": settings.suite,
            "cell_id": cid,
            "decoder": d,
            "status": status,
            "error": f"{type(exc).__name__}: {exc}"[:4000],
            **cell.row(),
        }
        for d in settings.decoders
    ]


class CellWorker:
    """A Ray actor bound to one device; keeps the models of the current group loaded."""

    def __init__(self, device: str, settings: CellSettings) -> None:
        import torch

        from pid_bench.metrics.custom import add_search_path

        torch.set_num_threads(max(1, int(os.environ.get("PID_BENCH_THREADS", os.cpu_count() or 1))))
        for folder in settings.metric_paths:
            add_search_path(folder)
        self.device = device
        self.settings = settings
        self.identity = worker_identity()
        self.key: tuple[str, str] | None = None
        self.models = None

    def run(self, cid: str, cell: Cell) -> list[dict]:
        from pid_bench.cell import failure_fields, run_cell
        from pid_bench.models import load_models

        maybe_die(self.settings.faults, cid)
        key = (cell.backbone, cell.ckpt_type, cell.precision, cell.compile)
        if key != self.key:
            self._release()
            try:
                self.models = load_models(
                    cell.backbone, cell.ckpt_type, self.device, self.settings.checkpoints,
                    self.settings.ldm, self.settings.pid_options(cell),
                )  # fmt: skip
                self.key = key
            except Exception as exc:
                return [
                    {**row, **failure_fields(exc)}
                    for row in lost_rows(cid, cell, self.settings, exc)
                ]
        rows = run_cell(cell, cid, self.models, self.settings, self.device)
        return [{**row, **self.identity} for row in rows]

    def _release(self) -> None:
        import gc

        import torch

        self.models, self.key = None, None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def worker_identity() -> dict[str, str]:
    import ray

    if not ray.is_initialized():
        return {"worker": f"local:{os.getpid()}", "gpu_ids": ""}
    node = f"{ray.util.get_node_ip_address()}/{ray.get_runtime_context().get_node_id()[:8]}"
    gpus = ",".join(str(g) for g in ray.get_gpu_ids())
    return {"worker": f"{node}:{os.getpid()}", "gpu_ids": gpus}


def maybe_die(faults: dict | None, cid: str) -> None:
    """Fault injection (tests): end this process before cell `cid`, `kill_times` times."""
    if not faults or cid not in faults.get("kill", ()):
        return
    markers = Path(faults["marker_dir"])
    deaths = len(list(markers.glob(f"kill-{cid}-*")))
    if deaths < int(faults.get("kill_times", 1)):
        (markers / f"kill-{cid}-{deaths}").touch()
        os._exit(1)
