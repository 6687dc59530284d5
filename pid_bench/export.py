"""`pid-bench export`: a run's results as a folder the Hugging Face Hub reads as a dataset.

DIR/
  README.md           the dataset card (pid_bench.dataset_card): front matter with the configs
  data/rows.parquet   config `rows`: the report's rows, the latest attempt per (cell, decoder)
  data/sets.parquet   config `sets`: set-level values (fid, kid) per (setting, decoder), if any
  run.json            the run's record, as written
  leaderboard.md      the run's report, when one was written
  images/<cell_id>/   with --images: the PNGs the rows name

`hf upload USER/NAME DIR --repo-type dataset` publishes it as is. Everything is written to a
temp folder beside DIR and renamed into place, so a failed export leaves no half-written DIR.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa

from pid_bench.dataset_card import PATH_COLUMNS, CardInput, dataset_card, status_counts
from pid_bench.metrics.catalog import BUILTIN_SPECS
from pid_bench.rundb import SET_SCHEMA, connect, run_label
from pid_bench.schema import ROW_SCHEMA
from pid_bench.store import (
    StorageError,
    listed_parts,
    read_run_json,
    write_table_atomic,
    writing,
)

ROWS_FILE = "data/rows.parquet"
SETS_FILE = "data/sets.parquet"
IMAGES_DIR = "images"
#: Files of the run directory copied as they are, when present, with what the card says of them.
COPIED = {
    "run.json": "the run's record as written: suite, environment, invocations (host name and "
    "local paths included)",
    "leaderboard.md": "the run's leaderboard (pid-bench report)",
}


class ExportError(ValueError):
    """An export refused before anything was written: not a run, or a target in the way."""


@dataclass(frozen=True)
class ExportSummary:
    """What `export_run` wrote."""

    folder: Path
    files: tuple[str, ...]  # relative to folder, sorted
    rows: int
    set_rows: int
    images: int  # PNGs copied (--images)
    images_missing: int  # PNGs a row names that the run directory lacks (their paths now null)
    status_counts: Mapping[str, int]

    def line(self) -> str:
        """'24 rows (24 ok), 2 set-level values, 3 PNGs -> DIR'."""
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.status_counts.items()))
        text = f"{self.rows} rows ({counts}), {self.set_rows} set-level values"
        if self.images or self.images_missing:
            text += f", {self.images} PNGs"
        if self.images_missing:
            text += f" ({self.images_missing} named by rows but not in the run: paths left null)"
        return f"{text} -> {self.folder}"


def export_run(
    run_dir: Path,
    to: Path,
    *,
    images: bool = False,
    overwrite: bool = False,
    license: str = "other",
) -> ExportSummary:
    """Write the run's rows, set-level values, card, run.json and leaderboard.md to `to`.

    ExportError: `run_dir` is not a run with rows, or `to` is in the way (a file, a folder
    that is not empty without `overwrite`, the run itself). StorageError: a refused write
    (nothing is left behind). Like the report, it sets aside damaged parts of the run.
    """
    run_dir, to = Path(run_dir), Path(to)
    meta = _run_meta(run_dir)
    _check_target(to, run_dir, overwrite)
    target = to.resolve()  # `.` or `x/..` have no name to put a sibling temp folder beside
    tmp = target.parent / f".{target.name}.export-{uuid.uuid4().hex[:8]}"
    with writing(to):
        target.parent.mkdir(parents=True, exist_ok=True)
    try:
        summary = _write(run_dir, tmp, meta, images, license)
        _move_into_place(tmp, target)
    except StorageError as exc:  # name the file meant, not its temp folder (gone by now)
        raise _in_target(exc, tmp, to) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportSummary(to, **summary)


def _in_target(exc: StorageError, tmp: Path, to: Path) -> StorageError:
    path = Path(exc.filename or to)
    if path.is_relative_to(tmp):
        path = to / path.relative_to(tmp)
    return StorageError(exc.errno, exc.strerror, str(path))


def _run_meta(run_dir: Path) -> dict[str, Any]:
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: no such folder; pass a run directory of `pid-bench run`")
    if not (run_dir / "run.json").is_file():
        raise ExportError(f"{run_dir}: no run.json (not a pid-bench run directory)")
    meta = read_run_json(run_dir)  # a damaged one: RunJsonError with its fix
    if not listed_parts(run_dir):
        raise ExportError(f"{run_dir}: no parts/part-*.parquet, so no rows to export yet")
    return meta


def _check_target(to: Path, run_dir: Path, overwrite: bool) -> None:
    target, run = to.resolve(), run_dir.resolve()
    if target == run or target in run.parents:
        raise ExportError(f"--to {to} holds the run {run_dir} itself; export to another folder")
    if to.exists() and not to.is_dir():
        raise ExportError(f"--to {to} is a file; give a folder")
    if not to.is_dir() or not any(to.iterdir()):
        return
    if not overwrite:
        raise ExportError(f"--to {to} is not empty; pass --overwrite to replace it")
    if (to / ".git").exists():  # a clone of the dataset's repository: replacing it loses .git
        raise ExportError(
            f"--to {to} is a git repository; export to a new folder and upload that "
            "(hf upload), or copy its files in"
        )


def _write(
    run_dir: Path, out: Path, meta: dict[str, Any], images: bool, license: str
) -> dict[str, Any]:
    """Write the export into the new folder `out`; ExportSummary's fields but the folder."""
    label = run_label(run_dir, meta)
    with connect(run_dir) as con:
        rows = _rows_table(con)
        sets = _sets_table(con)
    copied, missing = 0, 0
    if images:
        rows, copied, missing = _copy_images(run_dir, out, rows)
    write_table_atomic(rows, out / ROWS_FILE)
    if sets is not None:
        write_table_atomic(sets, out / SETS_FILE)
    files = _copy_run_files(run_dir, out)
    if copied:
        files[f"{IMAGES_DIR}/"] = f"{copied} PNGs the rows name (image_path, reference_path)"
    card = CardInput(meta, label, rows, sets, ROWS_FILE, SETS_FILE, files, images, license)
    with writing(out / "README.md"):
        (out / "README.md").write_text(dataset_card(card), encoding="utf-8")
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    return {
        "files": tuple(written),
        "rows": rows.num_rows,
        "set_rows": sets.num_rows if sets is not None else 0,
        "images": copied,
        "images_missing": missing,
        "status_counts": status_counts(rows),
    }


def _copy_run_files(run_dir: Path, out: Path) -> dict[str, str]:
    """Copy COPIED's files the run has; each one's name and what the card says of it."""
    files = {}
    for name, what in COPIED.items():
        if (run_dir / name).is_file():
            with writing(out / name):
                shutil.copyfile(run_dir / name, out / name)
            files[name] = what
    return files


def _rows_table(con: Any) -> pa.Table:
    """`rows` of the run (pid_bench.rundb.connect) in the row schema's types, each column's doc
    in the Parquet field metadata; without the set-level metric columns, which are null in
    every row (their values are the `sets` config)."""
    table = con.sql("SELECT * FROM rows ORDER BY cell_id, decoder").to_arrow_table()
    fields = []
    for name in table.column_names:
        metric = BUILTIN_SPECS.get(name.removeprefix("metric_"))
        if name.startswith("metric_") and metric is not None and metric.kind == "set_level":
            continue
        # DuckDB hands timestamps back as Etc/UTC: the schema's own types, as every part has
        fields.append(ROW_SCHEMA.field(name) if name in ROW_SCHEMA.names else table.field(name))
    return table.select([f.name for f in fields]).cast(pa.schema(fields))


def _sets_table(con: Any) -> pa.Table | None:
    """The run's set-level values in its report's scope (newest per group); None without any."""
    table = con.sql("SELECT * FROM set_values ORDER BY ALL").to_arrow_table()
    if table.num_rows == 0:
        return None
    return table.select(SET_SCHEMA.names).cast(SET_SCHEMA)


def _copy_images(run_dir: Path, out: Path, rows: pa.Table) -> tuple[pa.Table, int, int]:
    """Copy the PNGs the rows name into out/images/, the path columns rewritten to them
    (relative to the dataset's root); a PNG the run lacks leaves its path null."""
    moved: dict[str, str | None] = {}
    for column in PATH_COLUMNS:
        for path in rows.column(column).to_pylist():
            if path and path not in moved:
                moved[path] = _copy_image(run_dir, out, path)
    for column in PATH_COLUMNS:
        values = [moved.get(p) if p else None for p in rows.column(column).to_pylist()]
        index = rows.schema.get_field_index(column)
        rows = rows.set_column(index, rows.schema.field(index), pa.array(values, pa.string()))
    copied = sum(1 for p in moved.values() if p is not None)
    return rows, copied, len(moved) - copied


def _copy_image(run_dir: Path, out: Path, path: str) -> str | None:
    """Copy one PNG; its path in the dataset (None: the run has no such file)."""
    relative = PurePosixPath(path)
    if relative.is_absolute() or ".." in relative.parts:
        raise ExportError(f"{run_dir}: a row names the image {path!r}, outside the run directory")
    if relative.parts[0] != IMAGES_DIR:
        relative = PurePosixPath(IMAGES_DIR, relative)
    source = run_dir / path
    if not source.is_file():
        return None
    if not source.resolve().is_relative_to(run_dir.resolve()):  # a link out of the run
        raise ExportError(f"{run_dir}: the image {path!r} links outside the run directory")
    target = out / relative
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return str(relative)


def _move_into_place(tmp: Path, to: Path) -> None:
    """Rename the finished export to `to`; an old `to` (empty, or --overwrite) goes only once
    the new one is in place, and comes back if the rename fails."""
    with writing(to):
        if not to.exists():
            os.replace(tmp, to)
            return
        old = to.parent / f".{to.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(to, old)
        try:
            os.replace(tmp, to)
        except BaseException:
            os.replace(old, to)
            raise
        shutil.rmtree(old, ignore_errors=True)
