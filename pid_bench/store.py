"""The run directory: Parquet parts written atomically by the driver, and run.json.

RUN_DIR/
  run.json              resolved suite (as last run), environment, one record per invocation
  cells.parquet         cell ids of the suite as last run: what the report covers
  parts/part-*.parquet  rows (pid_bench.schema.ROW_SCHEMA); a part is complete or absent
  images/<cell_id>/     PNGs written by the workers
  run.lock              flock-held by the one driver writing the directory (host, pid)

Cells are content-addressed, so a suite may grow or shrink between runs into one directory:
the run computes the cells it lacks and keeps every row; rows of cells the suite no longer has
stay on disk and outside the report.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pid_bench.schema import STORAGE_SCHEMA, to_table


class RunDirError(ValueError):
    """A run directory that cannot take this run (another suite's results, say)."""


def write_table_atomic(table: pa.Table, path: Path, **options) -> Path:
    """Write a Parquet file as temp file, fsync, rename: a kill leaves it complete or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, **options)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


#: A one-cell part's name carries its cell id and decoders (`part-<cell>~<decoder>~...~<uuid>`),
#: so a resume knows what is finished from the names alone instead of opening 10k footers.
_NAMED = re.compile(r"^part-([0-9a-f]{16})((?:~[a-z0-9+._-]+)+)~([0-9a-f]{8})\.parquet$")


def write_part(run_dir: Path, rows: list[dict]) -> Path:
    """Write rows as one new part (atomically); one cell's rows get a name that lists them."""
    table = to_table(rows)  # refuses a row with a column the schema lacks, before naming
    cells = {row.get("cell_id") for row in rows}
    decoders = [str(row.get("decoder")) for row in rows]
    suffix = uuid.uuid4().hex
    name = f"part-{suffix[:16]}.parquet"
    if len(cells) == 1 and len(set(decoders)) == len(decoders):
        candidate = f"part-{cells.pop()}~{'~'.join(decoders)}~{suffix[:8]}.parquet"
        if _NAMED.match(candidate) and len(candidate) < 240:
            name = candidate
    table = pa.Table.from_arrays(table.columns, schema=STORAGE_SCHEMA)
    # A small part: no dictionaries or statistics (they cost more than they save at 3 rows).
    return write_table_atomic(
        table, run_dir / "parts" / name, use_dictionary=False, write_statistics=False
    )


def part_files(run_dir: Path) -> list[Path]:
    """The complete parts (an interrupted compaction is finished or undone first)."""
    recover_compaction(run_dir)
    return sorted((run_dir / "parts").glob("part-*.parquet"))


# ---- compaction --------------------------------------------------------------------------------

COMPACT_JOURNAL = "compact.json"


#: Parts with at most this many rows count as small (one cell's rows); merged parts are left
#: alone by `compact(small_only=True)`, so the end-of-run merge never rewrites old rows.
SMALL_PART_ROWS = 64


def compact(run_dir: Path, small_only: bool = False) -> Path | None:
    """Merge every part (or only the small ones) into one, losing no row if killed anywhere.

    Steps: (1) the merged table goes to a hidden temp file; (2) a journal naming it and the parts
    it replaces is written atomically; (3) the temp file is renamed to a part; (4) the replaced
    parts are deleted; (5) the journal goes. A kill before (3) leaves the old parts (the temp
    and journal are undone on the next read); after (3), the next read finishes (4) and (5).
    Returns the merged part (None: nothing to merge).
    """
    parts_dir = Path(run_dir) / "parts"
    parts = part_files(run_dir)
    if small_only:
        parts = [p for p in parts if pq.ParquetFile(p).metadata.num_rows <= SMALL_PART_ROWS]
    if len(parts) < 2:
        return None
    table = _merged(parts)
    name = f"part-{uuid.uuid4().hex[:16]}.parquet"
    tmp = parts_dir / f".{name}.compact-tmp"
    pq.write_table(table, tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    write_json(parts_dir / COMPACT_JOURNAL, {"into": name, "tmp": tmp.name,
                                             "replaces": [p.name for p in parts]})  # fmt: skip
    os.replace(tmp, parts_dir / name)
    _finish_compaction(parts_dir)
    return parts_dir / name


def _merged(parts: list[Path]) -> pa.Table:
    schemas = {pq.read_schema(p) for p in parts[:1]} | {pq.read_schema(parts[-1])}
    schema = pa.unify_schemas([*schemas, STORAGE_SCHEMA])
    table = ds.dataset([str(p) for p in parts], format="parquet", schema=schema).to_table()
    for field in STORAGE_SCHEMA:  # parts written before a column existed: the column as nulls
        if field.name not in table.column_names:
            table = table.append_column(field, pa.nulls(len(table), field.type))
    return table


def recover_compaction(run_dir: Path) -> None:
    """Finish or undo a compaction a kill interrupted; a merged table written before its
    journal is a temp file no part refers to, and goes."""
    parts_dir = Path(run_dir) / "parts"
    if (parts_dir / COMPACT_JOURNAL).is_file():
        _finish_compaction(parts_dir)
    for stray in parts_dir.glob(".*.compact-tmp"):
        stray.unlink(missing_ok=True)


def _finish_compaction(parts_dir: Path) -> None:
    journal_path = parts_dir / COMPACT_JOURNAL
    journal = json.loads(journal_path.read_text())
    if (parts_dir / journal["into"]).is_file():  # merged part in place: drop what it replaces
        for name in journal["replaces"]:
            (parts_dir / name).unlink(missing_ok=True)
    else:  # killed before the rename: the old parts stand
        (parts_dir / journal["tmp"]).unlink(missing_ok=True)
    journal_path.unlink()


def finished_rows(run_dir: Path) -> set[tuple[str, str]]:
    """(cell_id, decoder) of every row already written."""
    done: set[tuple[str, str]] = set()
    unnamed = []
    for part in part_files(run_dir):
        match = _NAMED.match(part.name)
        if match:
            done.update((match[1], decoder) for decoder in match[2].split("~")[1:])
        else:
            unnamed.append(str(part))
    if unnamed:  # merged or older parts: one multi-threaded scan of two columns
        table = ds.dataset(unnamed, format="parquet").to_table(columns=["cell_id", "decoder"])
        done.update(zip(table["cell_id"].to_pylist(), table["decoder"].to_pylist(), strict=True))
    return done


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


PLAN_FILE = "cells.parquet"


def write_plan(run_dir: Path, cell_ids: list[str]) -> None:
    """The cell ids of the suite as run now (atomically): the report's scope."""
    write_table_atomic(pa.table({"cell_id": pa.array(cell_ids, pa.string())}), run_dir / PLAN_FILE)


def read_plan(run_dir: Path) -> list[str] | None:
    """The cell ids of the suite as last run; None for a run directory written without one."""
    path = run_dir / PLAN_FILE
    return pq.read_table(path)["cell_id"].to_pylist() if path.is_file() else None


def read_run_json(run_dir: Path) -> dict:
    path = run_dir / "run.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def claim_run_dir(run_dir: Path, suite_name: str, force: bool) -> dict | None:
    """run.json of an existing run directory (None when new).

    A suite that grew or shrank is welcome: its cells are content-addressed. A suite of another
    name is refused, because the report would then present one suite's rows under the other's
    name and settings; `force` mixes them anyway.
    """
    previous = read_run_json(run_dir)
    if not previous:
        return None
    before = (previous.get("suite") or {}).get("name")
    if before != suite_name and not force:
        raise RunDirError(
            f"{run_dir} holds results of a different suite ({before!r}, not {suite_name!r}); "
            "its report would show them under one name. Use another --output, rename the suite "
            "back, or pass --force to mix them"
        )
    return previous


LOCK_NAME = "run.lock"


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """One driver per run directory: an exclusive `flock` on RUN_DIR/run.lock for the run.

    The kernel drops the lock when its holder dies (a crash or SIGKILL included), so a dead
    driver never leaves the directory stuck; the file keeps the holder's host and pid for the
    refusal message. The lock is advisory and local: on a network filesystem without flock
    support two machines are not kept apart.
    """
    import fcntl

    path = Path(run_dir) / LOCK_NAME
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown holder"
        handle.close()
        raise RunDirError(
            f"{run_dir} is being written by another pid-bench run ({holder}); wait for it to "
            "finish or stop it, or use another --output"
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(
            f"host {socket.gethostname()}, pid {os.getpid()}, "
            f"since {datetime.now(timezone.utc).isoformat(timespec='seconds')}"
        )
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock
