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
import socket
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pid_bench.schema import to_table


class RunDirError(ValueError):
    """A run directory that cannot take this run (another suite's results, say)."""


def write_table_atomic(table: pa.Table, path: Path) -> Path:
    """Write a Parquet file as temp file, fsync, rename: a kill leaves it complete or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def write_part(run_dir: Path, rows: list[dict]) -> Path:
    """Write rows as one new part (atomically)."""
    name = f"part-{uuid.uuid4().hex[:16]}.parquet"
    return write_table_atomic(to_table(rows), run_dir / "parts" / name)


def part_files(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "parts").glob("part-*.parquet"))


def finished_rows(run_dir: Path) -> set[tuple[str, str]]:
    """(cell_id, decoder) of every row already written."""
    done: set[tuple[str, str]] = set()
    for part in part_files(run_dir):
        table = pq.read_table(part, columns=["cell_id", "decoder"])
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
