"""The run directory: Parquet parts written atomically by the driver, and run.json.

RUN_DIR/
  run.json              resolved suite (as last run), environment, one record per invocation
  cells.parquet         cell ids of the suite as last run: what the report covers
  parts/part-*.parquet  rows (pid_bench.schema.ROW_SCHEMA); a part is complete or absent
  parts/quarantine/     parts that could not be read (damaged, or another tool's): moved, kept
  images/<cell_id>/     PNGs written by the workers
  features/<extractor>/<cell_id>/  set-level features (fid, kid) of the cells (pid_bench.features)
  run.lock              flock-held by the one driver writing the directory (host, pid)

Cells are content-addressed, so a suite may grow or shrink between runs into one directory:
the run computes the cells it lacks and keeps every row; rows of cells the suite no longer has
stay on disk and outside the report. Files that pid-bench did not write are left alone (and
reported); nothing here deletes a file it did not write.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import uuid
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pid_bench.schema import STORAGE_SCHEMA, to_table


class RunDirError(ValueError):
    """A run directory that cannot take this run (another suite's results, say)."""


class RunJsonError(RunDirError):
    """A run.json that is not a pid-bench run record (truncated, not JSON, another tool's)."""


class StorageWarning(UserWarning):
    """Something in the run directory that was set aside or may not fit (the CLI prints it)."""


# ---- storage errors ----------------------------------------------------------------------------

#: errno values meaning the run directory's storage refused a write, each with what to do.
STORAGE_FIXES: dict[int, str] = {
    errno.ENOSPC: "free space on its disk",
    errno.EDQUOT: "free space within your disk quota",
    errno.EROFS: "remount its filesystem read-write",
    errno.EACCES: "make it writable for this user",
    errno.EPERM: "make it writable for this user",
    errno.EIO: "check its disk (an I/O error: dmesg says more)",
}
_STORAGE_TEXT = re.compile(r"could not write (?P<path>.+): .* \[(?P<code>E[A-Z]+)\]")


class StorageError(OSError):
    """A write under the run directory that its storage refused; `filename` is the file meant."""

    def what(self) -> str:
        """'could not write PATH: No space left on device [ENOSPC]' (parsed back by `from_text`)."""
        return (
            f"could not write {self.filename}: {os.strerror(self.errno)} "
            f"[{errno.errorcode.get(self.errno, self.errno)}]"
        )

    @property
    def fix(self) -> str:
        return STORAGE_FIXES.get(self.errno, "check its disk")

    @classmethod
    def from_text(cls, text: str, run_dir: Path) -> StorageError | None:
        """The error a worker described with `what()` (a row's `error`), its path made absolute."""
        match = _STORAGE_TEXT.search(text or "")
        if match is None or not hasattr(errno, match["code"]):
            return None
        code = getattr(errno, match["code"])
        return cls(code, os.strerror(code), str(Path(run_dir) / match["path"]))


def is_storage_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in STORAGE_FIXES


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn a refused write (full, read-only, no permission, I/O error) into a StorageError that
    names `path`, the file meant (pyarrow's errors name no file; ours might name a temp file)."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        if not is_storage_error(exc):
            raise
        raise StorageError(exc.errno, os.strerror(exc.errno), str(path)) from exc


def _unlink_quietly(path: Path) -> None:
    """Remove a temp file of a failed write (freeing the space); a read-only disk keeps it."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def write_table_atomic(table: pa.Table, path: Path, **options) -> Path:
    """Write a Parquet file as temp file, fsync, rename: a kill leaves it complete or absent, and
    a refused write (StorageError) leaves no temp file behind."""
    tmp = path.with_name(f".{path.name}.tmp")
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            _write_synced(table, tmp, **options)
            os.replace(tmp, path)
        except BaseException:
            _unlink_quietly(tmp)
            raise
    return path


def write_array_atomic(array, path: Path) -> Path:
    """Write a numpy array as ``.npy``: temp file, fsync, rename (complete or absent); a refused
    write is a StorageError naming `path` and leaves no temp file behind."""
    import numpy as np

    tmp = path.with_name(f".{path.name}.tmp")
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(tmp, "wb") as handle:
                np.save(handle, array, allow_pickle=False)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            _unlink_quietly(tmp)
            raise
    return path


def _write_synced(table: pa.Table, path: Path, **options) -> None:
    """Parquet to `path`, fsynced. The file is ours to close: given a path, pyarrow keeps its
    descriptor open after a failed write, and a deleted temp file then holds its space on a
    full disk (and keeps a read-only remount busy) until garbage collection."""
    with open(path, "wb") as handle:
        pq.write_table(table, handle, **options)
        handle.flush()
        os.fsync(handle.fileno())


#: A one-cell part's name carries its cell id and decoders (`part-<cell>~<decoder>~...~<uuid>`),
#: so a resume knows what is finished from the names alone instead of opening 10k footers. Only
#: a part whose rows are all ok is named so: a failed row's status is read from the part.
_NAMED = re.compile(r"^part-([0-9a-f]{16})((?:~[a-z0-9+._-]+)+)~([0-9a-f]{8})\.parquet$")


def write_part(run_dir: Path, rows: list[dict]) -> Path:
    """Write rows as one new part (atomically); one cell's ok rows get a name that lists them."""
    table = to_table(rows)  # refuses a row with a column the schema lacks, before naming
    cells = {row.get("cell_id") for row in rows}
    decoders = [str(row.get("decoder")) for row in rows]
    suffix = uuid.uuid4().hex
    name = f"part-{suffix[:16]}.parquet"
    all_ok = all(row.get("status") == "ok" for row in rows)
    if all_ok and len(cells) == 1 and len(set(decoders)) == len(decoders):
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
    return listed_parts(run_dir)


def listed_parts(run_dir: Path) -> list[Path]:
    """parts/part-*.parquet as they are (read-only: no compaction is recovered)."""
    return sorted((Path(run_dir) / "parts").glob("part-*.parquet"))


# ---- damaged and foreign parts -----------------------------------------------------------------

QUARANTINE_DIR = "quarantine"
#: Columns every pid-bench part has (strings); a Parquet file without them is another tool's.
KEY_COLUMNS = ("cell_id", "decoder")
_FOREIGN = "not a pid-bench part"


def part_problem(path: Path) -> str | None:
    """Why `path` is not a readable pid-bench part (damaged, or another tool's Parquet); None
    when it reads whole (or is gone: a compaction may have merged it meanwhile)."""
    try:
        schema = pq.read_schema(path)
        missing = [
            k for k in KEY_COLUMNS
            if k not in schema.names or not pa.types.is_string(schema.field(k).type)
        ]  # fmt: skip
        if missing:
            return f"{_FOREIGN} (no text column {', '.join(missing)})"
        pq.read_table(path)  # every page decodes
    except FileNotFoundError:
        return None
    except (pa.ArrowException, OSError) as exc:
        return f"unreadable ({str(exc).splitlines()[0]})"
    return None


def _whole(path: Path) -> bool:
    """Parquet's magic at both ends: a cheap check (no footer parsed) that catches a truncated
    or foreign file among parts that resume does not open."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
            handle.seek(-4, os.SEEK_END)
            return head == handle.read(4) == b"PAR1"
    except OSError:
        return False


def _held_cells(path: Path) -> list[str]:
    """The cells a set-aside part held, from its name or, failing that, its cell_id column."""
    match = _NAMED.match(path.name)
    if match:
        return [match[1]]
    try:
        cells = pq.read_table(path, columns=["cell_id"])["cell_id"].to_pylist()
    except (pa.ArrowException, OSError, KeyError):
        return []
    return sorted(set(cells) - {None})


def _held_text(part: Path, why: str) -> str:
    cells = _held_cells(part)
    if cells:
        shown = ", ".join(cells[:5]) + (f" and {len(cells) - 5} more" if len(cells) > 5 else "")
        return f"its cells ({shown}) no longer count as done: `pid-bench run` recomputes them"
    if why.startswith(_FOREIGN):
        return "it holds no pid-bench rows"
    return "no row of it can be read: a cell it held is missing; `pid-bench run` recomputes it"


def quarantine(part: Path, why: str) -> Path | None:
    """Move a part that cannot be read to parts/quarantine/ (kept, never deleted), with a warning
    naming it and the cells it held: no longer counted as done, they are recomputed by the next
    run. Where the move itself fails (a read-only disk), the part stays and is skipped."""
    folder = part.parent / QUARANTINE_DIR
    dest = folder / part.name
    for n in range(1, 1000):
        if not dest.exists():
            break
        dest = folder / f"{part.stem}.{n}{part.suffix}"
    held = _held_text(part, why)
    try:
        folder.mkdir(exist_ok=True)
        os.replace(part, dest)
    except OSError as exc:
        warnings.warn(
            f"{part}: {why}; skipped, and left in place (moving it to {folder} failed: "
            f"{exc.strerror or exc}); {held}",
            StorageWarning,
            stacklevel=2,
        )
        return None
    warnings.warn(f"{part}: {why}; moved to {dest} (kept); {held}", StorageWarning, stacklevel=2)
    return dest


def set_aside(paths: Iterable[Path]) -> set[Path]:
    """Of `paths`, the parts that do not read whole (`part_problem`), each quarantined."""
    bad = set()
    for path in paths:
        why = part_problem(Path(path))
        if why is not None:
            quarantine(Path(path), why)
            bad.add(path)
    return bad


def quarantined(run_dir: Path) -> list[str]:
    """Names of the files in parts/quarantine/."""
    folder = Path(run_dir) / "parts" / QUARANTINE_DIR
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _scan(parts: list[Path], columns: list[str] | None = None) -> tuple[pa.Table, list[Path]]:
    """`parts` as one table (STORAGE_SCHEMA plus any column the first or last part adds; missing
    columns null) with `__filename`, and the parts it holds. A part that is damaged or another
    tool's is quarantined and the others are read: one bad file never blocks the rest."""
    try:
        table = _read(parts, columns)
    except (pa.ArrowException, OSError):
        bad = set_aside(parts)
        if not bad:
            raise
        return _scan([p for p in parts if p not in bad], columns)
    keyless = pc.or_(pc.is_null(table["cell_id"]), pc.is_null(table["decoder"]))
    suspects = {Path(f) for f in pc.unique(table.filter(keyless)["__filename"]).to_pylist()}
    bad = set_aside(p for p in parts if p in suspects)  # a foreign Parquet reads as null keys
    return _scan([p for p in parts if p not in bad], columns) if bad else (table, parts)


def _read(parts: list[Path], columns: list[str] | None) -> pa.Table:
    schemas = [pq.read_schema(parts[0]), pq.read_schema(parts[-1])] if parts else []
    schema = pa.unify_schemas([*schemas, STORAGE_SCHEMA])
    wanted = [*(columns or schema.names), "__filename"]
    return ds.dataset([str(p) for p in parts], format="parquet", schema=schema).to_table(wanted)


@dataclass(frozen=True)
class Written:
    """The latest row of one (cell_id, decoder) on disk."""

    status: str | None  # None: known from a part's name alone (such a part's rows are all ok)
    attempt: int | None  # None: known from a part's name alone


def written_rows(run_dir: Path, trust_names: bool = True) -> dict[tuple[str, str], Written]:
    """(cell_id, decoder) -> its latest row's status and attempt, for every row on disk.

    A one-cell part of ok rows lists them in its name and is not opened (a check of its first
    and last bytes catches a damaged one); other parts are read, four columns. With
    `trust_names=False` every part is read: parts of earlier versions were named whatever their
    statuses, and `--retry-failed` needs those. Latest: the highest attempt, then the newest
    `finished_at`, as the report orders them; a row from a name (ok, so never rerun) wins.
    """
    named: dict[tuple[str, str], Written] = {}
    unnamed = []
    for part in part_files(run_dir):
        match = _NAMED.match(part.name) if trust_names else None
        if match is None:
            unnamed.append(part)
        elif _whole(part):
            named.update(((match[1], d), Written(None, None)) for d in match[2].split("~")[1:])
        else:
            quarantine(part, part_problem(part) or "not a whole Parquet file")
    return {**_latest(unnamed), **named}


def _latest(parts: list[Path]) -> dict[tuple[str, str], Written]:
    if not parts:
        return {}
    table, _ = _scan(parts, ["cell_id", "decoder", "status", "attempt", "finished_at"])
    table = table.set_column(3, "attempt", pc.fill_null(table["attempt"], 1))
    # Oldest first, so the dict below keeps the latest of each (cell, decoder).
    order = [(c, "ascending", "at_start") for c in ("cell_id", "decoder", "attempt", "finished_at")]
    table = table.sort_by(order)
    keys = zip(table["cell_id"].to_pylist(), table["decoder"].to_pylist(), strict=True)
    rows = zip(table["status"].to_pylist(), table["attempt"].to_pylist(), strict=True)
    return {
        key: Written(status, attempt) for key, (status, attempt) in zip(keys, rows, strict=True)
    }


def finished_rows(run_dir: Path) -> set[tuple[str, str]]:
    """(cell_id, decoder) of every row already written."""
    return set(written_rows(run_dir))


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
    A part that cannot be read is quarantined, never merged or deleted; a refused write
    (StorageError) leaves the old parts and no temp file. Returns the merged part (None:
    nothing to merge).
    """
    parts_dir = Path(run_dir) / "parts"
    parts = part_files(run_dir)
    if small_only:
        parts = [p for p in parts if (_row_count(p) or SMALL_PART_ROWS + 1) <= SMALL_PART_ROWS]
    if len(parts) < 2:
        return None
    table, parts = _scan(parts)
    if len(parts) < 2:
        return None
    name = f"part-{uuid.uuid4().hex[:16]}.parquet"
    tmp = parts_dir / f".{name}.compact-tmp"
    try:
        with writing(parts_dir / name):
            _write_synced(table.drop_columns(["__filename"]), tmp)
        write_json(parts_dir / COMPACT_JOURNAL, {"into": name, "tmp": tmp.name,
                                                 "replaces": [p.name for p in parts]})  # fmt: skip
    except BaseException:
        _unlink_quietly(tmp)  # no journal names it: the old parts stand
        raise
    os.replace(tmp, parts_dir / name)
    _finish_compaction(parts_dir)
    return parts_dir / name


def _row_count(part: Path) -> int | None:
    """Rows of a part from its footer; None (and the part quarantined) when it cannot be read."""
    try:
        return pq.ParquetFile(part).metadata.num_rows
    except (pa.ArrowException, OSError) as exc:
        quarantine(part, f"unreadable ({str(exc).splitlines()[0]})")
        return None


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


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (temp file, rename); a refused write is a StorageError naming it."""
    tmp = path.with_suffix(".json.tmp")
    with writing(path):
        try:
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
            os.replace(tmp, path)
        except BaseException:
            _unlink_quietly(tmp)
            raise


PLAN_FILE = "cells.parquet"


def write_plan(run_dir: Path, cell_ids: list[str]) -> None:
    """The cell ids of the suite as run now (atomically): the report's scope."""
    write_table_atomic(pa.table({"cell_id": pa.array(cell_ids, pa.string())}), run_dir / PLAN_FILE)


def read_plan(run_dir: Path) -> list[str] | None:
    """The cell ids of the suite as last run; None for a run directory written without one."""
    path = run_dir / PLAN_FILE
    return pq.read_table(path)["cell_id"].to_pylist() if path.is_file() else None


def read_run_json(run_dir: Path) -> dict:
    """run.json of a run directory ({} when it has none).

    One that is truncated, not JSON or another tool's is a RunJsonError naming the file and the
    fix; nothing else in the directory is touched.
    """
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        problem = f"cannot be read ({exc.strerror or exc})"
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        problem = f"is not JSON ({exc}): truncated or overwritten"
    else:
        if _is_run_record(data):
            return data
        problem = "is JSON but not a pid-bench run record (no suite name): another tool's file"
    raise RunJsonError(
        f"{path} {problem}. The parts in {Path(run_dir) / 'parts'} are untouched. Restore "
        f"run.json from a backup, or move it aside (mv {path} {path}.bad) and rerun the suite "
        f"with --output {run_dir}: that writes a new run.json and computes only the cells the "
        "parts lack"
    )


def _is_run_record(data: object) -> bool:
    """What every run.json pid-bench wrote has: its suite (a record with a name; early
    versions stored the name alone)."""
    if not isinstance(data, dict):
        return False
    suite = data.get("suite")
    named = isinstance(suite, dict) and isinstance(suite.get("name"), str)
    return named or isinstance(suite, str)


#: What pid-bench writes at the top of a run directory (`sets` is pid_bench.sets.SETS_DIR,
#: `trackers.json` pid_bench.trackers.RECORD_FILE) and in parts/; anything else is someone
#: else's: left alone, and listed by the report.
_OWN_TOP = {
    "run.json", "run.json.tmp", "cells.parquet", ".cells.parquet.tmp", "parts", "images", "sets",
    "features",
    "plots", "leaderboard.md", "report.html", "recommendations.json", "run.lock", "compare.md", "compare.html",
    "trackers.json", "trackers.json.tmp",
}  # fmt: skip
_OWN_IN_PARTS = re.compile(
    r"^(part-.+\.parquet|\.part-.+\.parquet\.tmp|\.part-.+\.compact-tmp|compact\.json(\.tmp)?"
    rf"|{QUARANTINE_DIR})$"
)


def foreign_files(run_dir: Path) -> list[str]:
    """Files and folders in the run directory (top level and parts/) that pid-bench did not
    write, relative to it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p.name for p in run_dir.iterdir() if p.name not in _OWN_TOP]
    parts = run_dir / "parts"
    if parts.is_dir():
        found += [f"parts/{p.name}" for p in parts.iterdir() if not _OWN_IN_PARTS.match(p.name)]
    return sorted(found)


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
    with writing(path):
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
        with writing(path):
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
