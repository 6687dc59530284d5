"""The run directory: Parquet parts written atomically by the driver, and run.json.

RUN_DIR/
  run.json              resolved suite, environment, start/end times
  parts/part-*.parquet  rows (pid_bench.schema.ROW_SCHEMA); a part is complete or absent
  images/<cell_id>/     PNGs written by the workers
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pyarrow.parquet as pq

from pid_bench.schema import to_table


class RunDirError(ValueError):
    """A run directory that cannot take this run (another suite's results, say)."""


def write_part(run_dir: Path, rows: list[dict]) -> Path:
    """Write rows as one new part: temp file, fsync, rename, so a kill leaves no half part."""
    parts = run_dir / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    name = f"part-{uuid.uuid4().hex[:16]}.parquet"
    tmp = parts / f".{name}.tmp"
    pq.write_table(to_table(rows), tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, parts / name)
    return parts / name


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


def claim_run_dir(run_dir: Path, suite_fingerprint: str, force: bool) -> dict | None:
    """Check run.json of an existing run directory; returns it (or None when new)."""
    path = run_dir / "run.json"
    if not path.is_file():
        return None
    previous = json.loads(path.read_text())
    if previous.get("suite_fingerprint") != suite_fingerprint and not force:
        raise RunDirError(
            f"{run_dir} holds results of a different suite ({previous.get('suite', {}).get('name')!r}, "
            f"fingerprint {previous.get('suite_fingerprint')}); use another --output, or --force to mix"
        )
    return previous
