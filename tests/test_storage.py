"""Storage faults, damaged files and reruns of failed cells, through the real CLI and driver.

The cells run in this process (`inline`: the worker's own `run_cell`, in order, no Ray), so
each run takes about a second and monkeypatched writes reach every writer. A real small
filesystem (tmpfs) is used where the machine allows mounting one; the test says so otherwise.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import subprocess
from collections import namedtuple
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pid_bench import runner, store
from pid_bench.cell import run_cell
from pid_bench.cli import app
from pid_bench.models import load_models
from pid_bench.report import leaderboard_text
from pid_bench.rundb import connect
from pid_bench.schema import ROW_SCHEMA, STORAGE_SCHEMA
from pid_bench.suite import load_suite
from tests.test_run import write_suite

cli = CliRunner()
DECODERS = ["pid", "native"]


@pytest.fixture(scope="module")
def tiny():
    return load_models("tiny", "2k", "cpu")


class _Inline:
    """runner.execute computing the cells here, in order, with the worker's `run_cell`."""

    def __init__(self, models) -> None:
        self.models = models
        self.computed: list[str] = []  # every cell computed, in order
        self.lost: set[str] = set()  # cells whose worker "died": worker_lost rows

    def __call__(self, todo, settings, ray_address, cpu_workers, progress, max_retries=2,
                 stop=None):  # fmt: skip
        for cid, cell in todo:
            self.computed.append(cid)
            rows = run_cell(cell, cid, self.models, settings, "cpu")
            if cid in self.lost:
                rows = [{**r, "status": "worker_lost", "error": "simulated"} for r in rows]
            yield [{**row, "worker": "inline", "gpu_ids": ""} for row in rows]


def _computing(inline: _Inline, result_of):
    """The cells `result_of()` (a run) computed, and its result."""
    before = len(inline.computed)
    result = result_of()
    return inline.computed[before:], result


@pytest.fixture
def inline(monkeypatch, tiny) -> _Inline:
    execute = _Inline(tiny)
    monkeypatch.setattr(runner, "execute", execute)
    monkeypatch.delenv(runner.FAULTS_ENV, raising=False)
    return execute


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> tuple[Path, list[str]]:
    """4 cells x 2 decoders at 64 px, one sampler step, one timed repeat: the cells are not
    under test (about 0.5 s each)."""
    path = write_suite(
        tmp_path_factory.mktemp("suite"), resolutions=[64], limit=2, decoders=DECODERS,
        metrics=["psnr"], timing={"warmup": 0, "repeats": 1, "min_time_s": 0}, pid_steps=[1],
    )  # fmt: skip
    cids = [cid for cid, _ in runner.plan(load_suite(path))]
    assert len(cids) == 4
    return path, cids


@pytest.fixture(scope="module")
def finished(suite, tiny, tmp_path_factory) -> Path:
    """One complete run directory of the suite; tests work on copies (`done`)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "execute", _Inline(tiny))
        patch.delenv(runner.FAULTS_ENV, raising=False)
        assert _run(suite[0], out).exit_code == 0
    return out


@pytest.fixture
def done(finished, tmp_path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "run"))


def _run(suite_path: Path, out: Path, *extra: str):
    return cli.invoke(app, ["run", str(suite_path), "--output", str(out), "--no-report", *extra])


def _keys(out: Path) -> list[tuple[str, str, int]]:
    """(cell, decoder, attempt) of every row in every readable part."""
    table = pa.concat_tables(
        pq.read_table(p, columns=["cell_id", "decoder", "attempt"]) for p in store.part_files(out)
    )
    return list(zip(*(table[c].to_pylist() for c in table.column_names), strict=True))


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*")}


# ---- damaged and foreign parts -----------------------------------------------------------------


def test_a_garbage_part_is_quarantined_and_resume_and_report_go_on(done, suite, inline):
    parts = done / "parts"
    (parts / "part-deadbeefdeadbeef.parquet").write_bytes(bytes(range(100)))
    pq.write_table(pa.table({"x": [1]}), parts / "part-othertool.parquet")  # another tool's
    (parts / "README").write_text("mine")
    (done / "notes.txt").write_text("mine too")

    result = _run(suite[0], done)
    assert result.exit_code == 0, result.output
    assert inline.computed == []  # they held no cell of ours: nothing to recompute
    for name, why in [("part-deadbeefdeadbeef.parquet", "unreadable (Parquet magic bytes"),
                      ("part-othertool.parquet", "not a pid-bench part")]:  # fmt: skip
        assert f"{parts / name}: {why}" in result.output
        assert (parts / "quarantine" / name).is_file() and not (parts / name).exists()
    assert (parts / "README").read_text() == "mine" and (done / "notes.txt").is_file()

    (parts / "part-deadbeefdeadbeef.parquet").write_bytes(b"garbage again")  # report meets one
    result = cli.invoke(app, ["report", str(done)])
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "part-deadbeefdeadbeef.parquet" in result.output
    assert "Status: 8 ok (8 rows)" in result.output
    assert "3 part(s) could not be read" in result.output  # quarantine/ keeps all three
    assert "left alone: notes.txt, parts/README" in result.output


def test_a_damaged_part_of_one_cell_is_set_aside_and_its_cell_recomputed(done, suite, inline):
    table = pq.read_table(store.part_files(done)[0], schema=ROW_SCHEMA)
    for part in store.part_files(done):  # the parts of an interrupted run: one per cell
        part.unlink()
    rows = table.to_pylist()
    parts = {cid: store.write_part(done, [r for r in rows if r["cell_id"] == cid])
             for cid in suite[1]}  # fmt: skip
    damaged = parts[suite[1][2]]
    damaged.write_bytes(damaged.read_bytes()[:300])  # truncated

    result = _run(suite[0], done)
    assert result.exit_code == 0, result.output
    assert f"its cells ({suite[1][2]}) no longer count as done" in result.output
    assert inline.computed == [suite[1][2]]  # that cell alone is recomputed
    assert sorted(_keys(done)) == sorted((c, d, 1) for c in suite[1] for d in DECODERS)


def test_compaction_sets_aside_a_damaged_or_foreign_part_instead_of_dying(tmp_path):
    rows = [{"cell_id": f"c{i}", "decoder": "pid", "status": "ok"} for i in range(6)]
    for i in range(0, 6, 2):
        store.write_part(tmp_path, rows[i : i + 2])
    (tmp_path / "parts" / "part-deadbeefdeadbeef.parquet").write_bytes(b"\0" * 100)
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "parts" / "part-othertool.parquet")
    result = cli.invoke(app, ["compact", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "5 parts -> 1" in result.output and result.output.count("warning:") == 2
    assert store.quarantined(tmp_path) == [
        "part-deadbeefdeadbeef.parquet",
        "part-othertool.parquet",
    ]
    assert store.finished_rows(tmp_path) == {(r["cell_id"], "pid") for r in rows}


# ---- run.json ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spoil", "problem"),
    [
        (lambda text: text[: len(text) // 2], "is not JSON"),  # truncated
        (lambda text: "\x00\x01 not json", "is not JSON"),
        (lambda text: json.dumps({"name": "x", "version": 3}), "is JSON but not a pid-bench run"),
    ],
    ids=["truncated", "not-json", "another-tools"],
)
def test_a_damaged_run_json_is_a_clear_error_and_touches_nothing(done, suite, inline, spoil,
                                                                  problem):  # fmt: skip
    run_json = done / "run.json"
    run_json.write_text(spoil(run_json.read_text()))
    before = _digests(done / "parts")
    for args in (["run", str(suite[0]), "--output", str(done)], ["report", str(done)],
                 ["compare", str(done), str(done)]):  # fmt: skip
        result = cli.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert f"{run_json} {problem}" in result.output and f"mv {run_json}" in result.output
    assert _digests(done / "parts") == before and inline.computed == []


# ---- storage errors ----------------------------------------------------------------------------


def _refuse_writes(monkeypatch, code: int, where: str, after: int = 0) -> None:
    """pyarrow's Parquet writes under `where` fail with `code` after `after` of them, as pyarrow
    reports it (an OSError with errno and no file name)."""
    write, calls = pq.write_table, []

    def refused(table, path, *args, **kwargs):
        if where in str(path):
            calls.append(path)
            if len(calls) > after:
                raise OSError(code, f"Error writing bytes to file. Detail: [errno {code}]")
        return write(table, path, *args, **kwargs)

    monkeypatch.setattr(pq, "write_table", refused)


def test_a_full_disk_stops_the_run_cleanly_and_the_rerun_finishes(suite, inline, tmp_path,
                                                                   monkeypatch):  # fmt: skip
    out = tmp_path / "run"
    # 4 cells x (pid + native + the reference) PNGs at 64 x 64, 3 bytes per pixel
    assert runner.image_bytes(load_suite(suite[0]), runner.plan(load_suite(suite[0]))) == (
        4 * 3 * 64 * 64 * 3
    )
    usage = namedtuple("usage", "total used free")
    with monkeypatch.context() as patch:
        patch.setattr(runner.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
        _refuse_writes(patch, errno.ENOSPC, "/parts/", after=2)
        result = _run(suite[0], out)
    assert result.exit_code == 74, result.output
    message = " ".join(result.output.split())
    assert "warning: the images of the 4 cells to run may need 0.1 MiB" in message
    assert "has 0.0 MiB free" in message and "save_images: false" in message
    assert f"could not write {out}/parts/part-{suite[1][2]}~pid~native~" in message
    assert "No space left on device [ENOSPC]. 2 of 4 cells are safe in" in message
    assert "free space on its disk and rerun the same command to finish the other 2" in message
    assert "Traceback" not in result.output
    assert not list((out / "parts").glob(".*")), "a temp file was left on the full disk"
    assert sorted({c for c, _, _ in _keys(out)}) == sorted(suite[1][:2])  # not counted done
    record = json.loads((out / "run.json").read_text())["invocations"][-1]
    assert record["interrupted_by"] == "storage_error" and record["cells_computed"] == 2

    computed, result = _computing(inline, lambda: _run(suite[0], out))
    assert result.exit_code == 0, result.output
    assert computed == suite[1][2:] and "may need" not in result.output
    assert sorted(_keys(out)) == sorted((c, d, 1) for c in suite[1] for d in DECODERS)


def test_a_read_only_run_directory_stops_before_computing(suite, inline, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _refuse_writes(monkeypatch, errno.EROFS, str(out))
    result = _run(suite[0], out)
    assert result.exit_code == 74, result.output
    message = " ".join(result.output.split())
    assert f"could not write {out}/cells.parquet: Read-only file system [EROFS]" in message
    assert "0 of 4 cells are safe" in message and "remount its filesystem read-write" in message
    assert inline.computed == []


def test_images_that_cannot_be_written_are_storage_error_rows_retried_next_run(
    suite, inline, tmp_path, monkeypatch
):
    from PIL import Image

    out, cids = tmp_path / "run", suite[1]
    save = Image.Image.save

    def refused(image, path, *args, **kwargs):
        if cids[1] in str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return save(image, path, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(Image.Image, "save", refused)
        result = _run(suite[0], out)
    assert result.exit_code == 74, result.output
    message = " ".join(result.output.split())
    assert f"could not write {out}/images/{cids[1]}/" in message and "[EACCES]" in message
    assert "1 of 4 cells are safe" in message and "make it writable for this user" in message
    with connect(out) as con:
        rows = con.execute(
            "SELECT status, error, image_path FROM rows WHERE cell_id = ?", [cids[1]]
        ).fetchall()
    assert [r[0] for r in rows] == ["storage_error"] * 2  # recorded, not a decoder error
    assert all("Permission denied [EACCES]" in r[1] and r[2] is None for r in rows)

    computed, result = _computing(inline, lambda: _run(suite[0], out))
    assert result.exit_code == 0, result.output
    assert computed == cids[1:]  # the storage_error cell is computed again
    with connect(out) as con:
        assert con.execute(
            "SELECT DISTINCT status, attempt FROM rows WHERE cell_id = ?", [cids[1]]
        ).fetchall() == [("ok", 2)]
        (superseded,) = con.execute("SELECT count(*) FROM all_attempts WHERE superseded").fetchone()
    assert superseded == 2


def test_run_help_states_every_exit_code():
    result = cli.invoke(app, ["run", "--help"], env={"COLUMNS": "200"})
    text = " ".join(result.output.split())
    for code in ("0 all ok", "1 some row failed", "2 bad input", "74 the run directory's",
                 "130 interrupted", "143 interrupted", "--retry-failed"):  # fmt: skip
        assert code in text, code


# ---- rerunning failed cells --------------------------------------------------------------------


def test_retry_failed_recomputes_those_statuses_and_reports_count_the_latest(
    suite, inline, tmp_path, monkeypatch
):
    path, (c_oom, c_error, c_lost, c_ok) = suite
    out = tmp_path / "run"
    monkeypatch.setenv(runner.FAULTS_ENV, json.dumps({"oom": [c_oom], "error": [c_error]}))
    inline.lost = {c_lost}
    assert _run(path, out).exit_code == 1
    monkeypatch.delenv(runner.FAULTS_ENV)
    inline.lost = set()

    computed, result = _computing(inline, lambda: _run(path, out))
    assert result.exit_code == 0 and computed == []  # failures stand
    computed, result = _computing(
        inline, lambda: _run(path, out, "--retry-failed", "oom,worker_lost")
    )
    assert result.exit_code == 0, result.output
    assert computed == [c_oom, c_lost]
    with connect(out) as con:
        latest = dict(
            con.execute("SELECT cell_id || '/' || decoder, status || attempt FROM rows").fetchall()
        )
        (superseded,) = con.execute("SELECT count(*) FROM all_attempts WHERE superseded").fetchone()
    assert latest == {
        f"{c_oom}/pid": "ok2", f"{c_oom}/native": "ok1", f"{c_error}/pid": "error1",
        f"{c_error}/native": "ok1", f"{c_lost}/pid": "ok2", f"{c_lost}/native": "ok2",
        f"{c_ok}/pid": "ok1", f"{c_ok}/native": "ok1",
    }  # fmt: skip
    assert superseded == 3  # the oom row and both worker_lost rows stay on disk
    board = leaderboard_text(out)
    assert "Status: 7 ok, 1 error (8 rows)" in board and "3 rows are earlier attempts" in board

    alone = ["run", "--retry-failed", str(path), "--output", str(out), "--no-report"]
    computed, result = _computing(inline, lambda: cli.invoke(app, alone))  # before SUITE: all
    assert result.exit_code == 0, result.output
    assert computed == [c_error]
    from pid_bench.compare import compare

    assert compare(out, out).matched == 8  # the latest attempt of each, once


def test_retry_failed_names_only_failed_statuses(suite, inline, tmp_path):
    result = _run(suite[0], tmp_path / "run", "--retry-failed", "oom,okay")
    assert result.exit_code == 2 and "okay is not a failed status" in result.output
    assert "error, oom, worker_lost, storage_error" in result.output


def test_parts_written_before_attempts_read_as_attempt_1(tmp_path):
    table = pa.Table.from_pylist(
        [{"cell_id": "c", "decoder": "pid", "status": "oom"}], schema=STORAGE_SCHEMA
    ).drop_columns(["attempt"])
    (tmp_path / "parts").mkdir()
    pq.write_table(table, tmp_path / "parts" / "part-0123456789abcdef.parquet")
    assert store.written_rows(tmp_path) == {("c", "pid"): store.Written("oom", 1)}
    store.write_part(tmp_path, [{"cell_id": "c", "decoder": "pid", "status": "ok", "attempt": 2}])
    with connect(tmp_path) as con:
        assert con.execute("SELECT status, attempt FROM rows").fetchall() == [("ok", 2)]
        assert con.execute("SELECT attempt FROM all_attempts ORDER BY 1").fetchall() == [(1,), (2,)]


# ---- a real small filesystem -------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path):
    """A 160 KiB tmpfs, where this machine lets the test mount one (root in a container may)."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mount)],
                          capture_output=True, text=True)  # fmt: skip
    if made.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.strip()}); the monkeypatched "
                    "storage tests above cover the same paths")  # fmt: skip
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _remount(mount: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(mount)], check=True)


def test_a_real_full_then_read_only_filesystem(small_fs, suite, inline):
    out = small_fs / "run"
    result = _run(suite[0], out)
    assert result.exit_code == 74, result.output
    message = " ".join(result.output.split())
    assert "No space left on device [ENOSPC]" in message and "cells are safe in" in message
    safe = int(message.split(" of 4 cells are safe")[0].rsplit(" ", 1)[1])
    keys = _keys(out)  # every part on the full disk reads whole
    assert len(keys) == len(set(keys)) and len({c for c, _, _ in keys}) >= safe

    _remount(small_fs, "size=16m")  # space freed
    result = _run(suite[0], out)
    assert result.exit_code == 0, result.output
    latest = {(c, d): a for c, d, a in sorted(_keys(out), key=lambda k: k[2])}
    assert sorted(latest) == sorted((c, d) for c in suite[1] for d in DECODERS)

    _remount(small_fs, "ro")
    result = _run(suite[0], out)
    assert result.exit_code == 74, result.output
    message = " ".join(result.output.split())
    assert "Read-only file system [EROFS]. 4 of 4 cells are safe" in message
    _remount(small_fs, "rw")
