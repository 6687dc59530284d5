"""A cell's images on disk: ``RUN_DIR/images/<cell_id>/`` holds the reference and one PNG per
decoder (those the suite's `save_images:` keeps), written by `CellImages` on background
threads; a write the disk refuses is a `StorageError` that turns the cell's ok rows into
``storage_error`` rows (recomputed by the next run)."""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from concurrent.futures import Future, wait
from pathlib import Path

import numpy as np
import torch

from pid_bench.settings import CellSettings
from pid_bench.store import StorageError, writing

#: zlib level of every PNG the cells write (PIL's default is 6). Chosen by measurement
#: (`python benchmarks/sweep_throughput.py --png-levels`, 2048² Kodak upscale on this 2-core CPU):
#: level 1 writes in about a quarter of level 6's time for files about a fifth larger; levels
#: 0 (no compression, 3× the bytes) and 9 (slower than 6 for no gain) are the bad ends.
PNG_COMPRESS_LEVEL = 1
#: Which images a suite keeps (`save_images:`): true = all, false = none.
SAVE_IMAGES = ("none", "reference_and_pid", "all")
#: Decoders whose outputs `save_images: reference_and_pid` keeps.
PID_DECODERS = frozenset({"pid", "pid-teacher"})


def saves(policy: str, decoder: str | None) -> bool:
    """Whether `policy` keeps `decoder`'s image (None: the cell's reference)."""
    if policy == "all":
        return True
    return policy == "reference_and_pid" and (decoder is None or decoder in PID_DECODERS)


class CellImages:
    """A cell's PNGs, written on background threads while the cell goes on.

    `submit` takes the image off the device (uint8 on the CPU) at once and queues its write;
    PIL and zlib release the GIL, so the write overlaps the cell's metrics. At most `pending`
    images wait or are being written (`submit` blocks beyond that), so memory stays bounded.
    `quiesce` waits for every write: the cell calls it before a timed span unless the suite lets
    writes overlap decodes (`overlap:`). `finish` waits too, then sets each row's paths to the
    files actually written; a write the disk refused raises its `StorageError` there (the cell
    turns its ok rows into `storage_error`).
    """

    def __init__(self, cell_id: str, settings: CellSettings, pending: int = 3) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.cell_id, self.policy = cell_id, settings.save_images
        self.folder = Path(settings.run_dir) / "images" / cell_id
        self.level = settings.png_compress_level
        self._slots = threading.BoundedSemaphore(pending)
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"png-{cell_id}")
        self._futures: dict[str | None, Future] = {}
        self._lock = threading.Lock()
        self.work_ms = 0.0  # time the writer threads spent writing
        self.wait_ms = 0.0  # time the cell spent waiting for them
        self._fault = bool(settings.faults and cell_id in settings.faults.get("storage", ()))

    def submit(self, decoder: str | None, image: torch.Tensor) -> None:
        """Queue `image` ([1, 3, H, W] or [3, H, W] in [-1, 1]) as `decoder`'s PNG (None: the
        reference), if the suite keeps it."""
        if not saves(self.policy, decoder):
            return
        pixels = to_pixels(image[0] if image.dim() == 4 else image)
        path = self.folder / ("reference.png" if decoder is None else image_name(decoder))
        self._slots.acquire()
        self._futures[decoder] = self._pool.submit(self._write, pixels, path)

    def _write(self, pixels: np.ndarray, path: Path) -> None:
        started = time.perf_counter()
        try:
            with writing(self.folder):
                self.folder.mkdir(parents=True, exist_ok=True)
                if self._fault:  # tests only
                    raise OSError(errno.ENOSPC, "No space left (simulated by fault injection)")
            write_pixels(pixels, path, self.level)
        finally:
            with self._lock:
                self.work_ms += (time.perf_counter() - started) * 1000
            self._slots.release()

    def quiesce(self) -> None:
        """Wait until no write is running (errors are kept for `finish`)."""
        started = time.perf_counter()
        wait(list(self._futures.values()))
        self.wait_ms += (time.perf_counter() - started) * 1000

    def finish(self, rows: list[dict]) -> None:
        """Wait for every write, then set the rows' ``image_path`` / ``reference_path`` to the
        files written; the first refused write raises its StorageError."""
        self.quiesce()
        self._pool.shutdown(wait=True)
        for future in self._futures.values():
            future.result()  # re-raises a refused write
        relative = f"images/{self.cell_id}"
        for row in rows:
            if row["decoder"] in self._futures and row["status"] == "ok":
                row["image_path"] = f"{relative}/{image_name(row['decoder'])}"
            if None in self._futures:
                row["reference_path"] = f"{relative}/reference.png"


def image_name(decoder: str) -> str:
    """The file of a decoder's output in its cell's folder (``native+bicubic`` ->
    ``native_bicubic.png``; a ``module:Class`` decoder -> ``module_Class.png``)."""
    return decoder.replace("+", "_").replace(":", "_") + ".png"


def unsaved(row: dict, exc: StorageError, run_dir: str) -> dict:
    """An ok row whose images could not all be written becomes `storage_error` (the next run
    recomputes it); a decoder's own failure keeps its status."""
    if row["status"] != "ok":
        return row
    relative = os.path.relpath(exc.filename or run_dir, run_dir)
    error = StorageError(exc.errno, exc.strerror, relative).what()
    return {**row, "status": "storage_error", "error": f"StorageError: {error}",
            "image_path": None, "reference_path": None}  # fmt: skip


def quantize(image: torch.Tensor) -> torch.Tensor:
    """[..., 3, H, W] in [-1, 1] -> uint8 on the image's device: the values its PNG holds."""
    return ((image.float().clamp(-1, 1) + 1) * 127.5).round().byte()


def to_pixels(image: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [-1, 1] -> [H, W, 3] uint8 on the CPU (what a PNG holds)."""
    return quantize(image).permute(1, 2, 0).cpu().numpy()


def write_png(image: torch.Tensor, path: Path, level: int = PNG_COMPRESS_LEVEL) -> None:
    """[3, H, W] in [-1, 1] -> 8-bit RGB PNG (atomic; a refused write is a StorageError naming
    `path`, and leaves no temp file)."""
    write_pixels(to_pixels(image), path, level)


def write_pixels(pixels: np.ndarray, path: Path, level: int = PNG_COMPRESS_LEVEL) -> None:
    """[H, W, 3] uint8 -> PNG at zlib `level`, atomically (see `write_png`)."""
    from PIL import Image

    tmp = path.with_suffix(".tmp.png")
    with writing(path):
        try:
            Image.fromarray(pixels).save(tmp, compress_level=level)
            tmp.replace(path)
        except BaseException:
            with contextlib.suppress(OSError):  # a read-only disk keeps it: the error matters
                tmp.unlink(missing_ok=True)
            raise
