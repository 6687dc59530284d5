"""The run database (pid_bench.rundb): cheap to import, SQL placeholders from the setting axes,
values bound as parameters."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pid_bench import board, compare, rundb, sets, stats
from pid_bench.axes import SETTING_KEYS
from pid_bench.schema import to_table
from pid_bench.sections import end_to_end

ROOT = Path(__file__).resolve().parents[1]


def test_rundb_and_sets_import_neither_matplotlib_nor_jinja2():
    code = (
        "import pid_bench.rundb, pid_bench.sets, sys; "
        "assert 'matplotlib' not in sys.modules and 'jinja2' not in sys.modules, "
        "sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'jinja2'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr


def test_every_key_list_is_the_setting_axes():
    assert stats.DEFAULT_GROUP_BY == SETTING_KEYS and sets.GROUP_KEYS == SETTING_KEYS
    assert compare.GROUP_KEYS == (*SETTING_KEYS, "decoder")
    # the leaderboard shows the output size as one column
    assert board.DISPLAY_KEYS == tuple(
        dict.fromkeys("out" if k in ("out_height", "out_width") else k for k in SETTING_KEYS)
    )


def test_placeholders_are_filled_from_the_setting_axes():
    filled = rundb.sql_placeholders()
    assert filled["setting_keys"] == ", ".join(f'"{k}"' for k in SETTING_KEYS)
    order = [term.strip() for term in filled["setting_order"].split(",")]
    assert '"save_xt_step" NULLS FIRST' in order  # from_clean's null step sorts first
    assert order[-1] == f'"{SETTING_KEYS[-1]}"' and '"out_height" * "out_width"' in order
    for name in rundb.sql_names():
        assert "{{" not in rundb.sql_text(name), name
    for name in ("leaderboard", "grid", "end_to_end"):
        raw = (rundb.reports_dir() / f"{name}.sql").read_text()
        assert "{{setting_keys}}" in raw and "save_xt_step," not in raw, name


def test_an_unknown_placeholder_names_its_file(tmp_path, monkeypatch):
    folder = tmp_path / "reports"
    shutil.copytree(rundb.reports_dir(), folder)
    (folder / "odd.sql").write_text("-- grain: none\nSELECT {{no_such_thing}} FROM rows\n")
    monkeypatch.setenv("PID_BENCH_REPORTS_DIR", str(folder))
    with pytest.raises(KeyError, match=r"odd\.sql.*no_such_thing"):
        rundb.sql_text("odd")


HOSTILE = 'it\'s "odd"; DROP TABLE rows; --'


def _row(cell_id: str, decoder: str, **extra) -> dict:
    return {
        "run_id": "disk-id", "suite": "s", "cell_id": cell_id, "decoder": decoder,
        "status": "ok", "mode": "from_ldm", "backbone": "tiny", "ckpt_type": "2k",
        "precision": "fp32", "compile": "eager", "sigma": 0.0, "image_id": cell_id,
        "out_height": 32, "out_width": 32, "latency_ms_p50": 2.0, "ldm_ms_to_step": 10.0,
        "ldm_total_ms": 10.0, **extra,
    }  # fmt: skip


def _write(run_dir: Path, rows: list[dict], meta: dict) -> None:
    (run_dir / "parts").mkdir(parents=True)
    pq.write_table(to_table(rows), run_dir / "parts" / "part-a.parquet")
    (run_dir / "run.json").write_text(json.dumps(meta))


def test_labels_decoders_and_metric_names_are_values_not_sql(tmp_path):
    metric = "pyiqa:" + HOSTILE  # a pass-through metric: read from extra_metrics by its key
    rows = [
        _row("a", HOSTILE, extra_metrics=json.dumps({metric: 1.5}), metric_notes=None),
        _row("b", HOSTILE, extra_metrics=None, metric_notes=json.dumps({metric: HOSTILE})),
        _row("c", "left out"),
    ]
    suite = {"name": HOSTILE, "decoders": [HOSTILE], "metrics": [metric]}
    _write(tmp_path, rows, {"run_id": "r", "suite": suite})
    with rundb.connect(tmp_path, label=HOSTILE) as con:
        got = con.execute(
            f"SELECT cell_id, decoder, run_id, {rundb.ident('metric_' + metric)} FROM rows "
            "ORDER BY cell_id"
        ).fetchall()
        assert got == [("a", HOSTILE, HOSTILE, 1.5), ("b", HOSTILE, HOSTILE, None)]
        values = con.execute("SELECT metric, value, note FROM metric_values ORDER BY cell_id")
        assert values.fetchall() == [(metric, 1.5, None), (metric, None, HOSTILE)]
        (nulls,) = rundb.null_metrics(con, [metric])
        assert (nulls.metric, nulls.n_null, nulls.reasons) == (metric, 1, [(HOSTILE, 1)])


def test_end_to_end_keeps_precisions_apart(tmp_path):
    rows = [
        _row(f"{precision}-{image}", "pid", precision=precision, image_id=image,
             latency_ms_p50=latency)
        for precision, latency in (("fp32", 4.0), ("bf16", 2.0))
        for image in ("x", "y")
    ]  # fmt: skip
    _write(tmp_path, rows, {"run_id": "r", "suite": {"name": "s"}})
    with rundb.connect(tmp_path) as con:
        records = rundb.query(con, "end_to_end")
        section = end_to_end(con)
    assert list(records[0])[: len(SETTING_KEYS)] == list(SETTING_KEYS)
    assert sorted((r["precision"], r["decode_ms"], r["n"]) for r in records) == [
        ("bf16", 2.0, 2),
        ("fp32", 4.0, 2),
    ]
    # the page tells the two rows apart: precision is named where it splits a pair
    pairs = [row[0] for row in section.rows]
    assert pairs == ["tiny / 2k · precision bf16", "tiny / 2k · precision fp32"]
