"""A cell's images on disk: ``RUN_DIR/images/<cell_id>/`` holds the reference and one PNG per
decoder; a write the disk refuses is a `StorageError` that turns the cell's ok rows into
``storage_error`` rows (recomputed by the next run)."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

import torch

from pid_bench.settings import CellSettings
from pid_bench.store import StorageError, writing


def save_images(
    rows: list[dict], images: dict[str, torch.Tensor], reference: torch.Tensor | None,
    cell_id: str, settings: CellSettings,
) -> None:  # fmt: skip
    """Write the cell's images and set each row's ``image_path`` / ``reference_path``."""
    folder = Path(settings.run_dir) / "images" / cell_id
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
        if settings.faults and cell_id in settings.faults.get("storage", ()):  # tests only
            raise OSError(errno.ENOSPC, "No space left (simulated by fault injection)")
    if reference is not None:
        write_png(reference[0], folder / "reference.png")
    for row in rows:
        if row["decoder"] in images:
            name = image_name(row["decoder"])
            write_png(images[row["decoder"]][0], folder / name)
            row["image_path"] = f"images/{cell_id}/{name}"
        if reference is not None:
            row["reference_path"] = f"images/{cell_id}/reference.png"


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


def write_png(image: torch.Tensor, path: Path) -> None:
    """[3, H, W] in [-1, 1] -> 8-bit RGB PNG (atomic; a refused write is a StorageError naming
    `path`, and leaves no temp file)."""
    from PIL import Image

    pixels = (
        ((image.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    )
    tmp = path.with_suffix(".tmp.png")
    with writing(path):
        try:
            Image.fromarray(pixels).save(tmp)
            tmp.replace(path)
        except BaseException:
            with contextlib.suppress(OSError):  # a read-only disk keeps it: the error matters
                tmp.unlink(missing_ok=True)
            raise
