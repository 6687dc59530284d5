"""`pid-bench export`: a run as a folder the Hugging Face Hub reads as a dataset, read back here
with `datasets` and pyarrow, its card checked against the schemas."""

from __future__ import annotations

import errno
import html
import json
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from pid_bench import export
from pid_bench.cli import app
from pid_bench.dataset_card import row_column_doc, type_name
from pid_bench.export import ExportError, export_run
from pid_bench.render import md_cell
from pid_bench.rundb import SET_COLUMN_DOCS, connect
from pid_bench.store import StorageError, write_part
from tests.test_run import write_suite

FIXTURES = Path(__file__).parent / "fixtures"
runner = CliRunner()


@pytest.fixture
def smoke_run(tmp_path) -> Path:
    """The finished smoke run (no images, no set-level values), copied: fixtures stay as they are."""
    copy = tmp_path / "run_smoke_v0"
    shutil.copytree(FIXTURES / "run_smoke_v0", copy)
    return copy


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, shared_local_ray) -> Path:
    """A one-cell run with its PNGs, a set-level value per group (fid: null without its weights,
    with the reason) and its report."""
    folder = tmp_path_factory.mktemp("image_run")
    suite = write_suite(folder, sigmas=[0.0], resolutions=[64], decoders=["pid", "native"],
                        metrics=["psnr", "fid"], save_images=True)  # fmt: skip
    result = runner.invoke(app, ["run", str(suite), "--output", str(folder / "run")])
    assert result.exit_code == 0, result.output
    return folder / "run"


@pytest.fixture
def offline_hf(tmp_path, monkeypatch) -> Path:
    """`datasets` offline, its caches in tmp_path; the cache folder to pass to load_dataset."""
    cache = tmp_path / "hf"
    for name, value in (("HF_DATASETS_OFFLINE", "1"), ("HF_HUB_OFFLINE", "1"),
                        ("HF_HOME", str(cache)), ("HF_DATASETS_CACHE", str(cache / "datasets"))):  # fmt: skip
        monkeypatch.setenv(name, value)
    return cache


def _load(folder: Path, config: str, cache: Path):
    import datasets

    return datasets.load_dataset(str(folder), config, split="train", cache_dir=str(cache))


def _card(folder: Path) -> tuple[dict, str]:
    """README.md's front matter (parsed) and its body."""
    text = (folder / "README.md").read_text(encoding="utf-8")
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def _meaning(doc: str) -> str:
    """A description as the card's tables hold it (HTML-escaped, md_cell)."""
    return md_cell(html.escape(doc, quote=False))


def _retried_row(run_dir: Path) -> tuple[str, str]:
    """Give one (cell, decoder) a second attempt that failed; its key."""
    part = sorted((run_dir / "parts").glob("part-*.parquet"))[0]
    row = pq.read_table(part).to_pylist()[0]
    write_part(run_dir, [{**row, "attempt": 2, "status": "error", "error": "boom | twice\nagain",
                          "metric_psnr": None}])  # fmt: skip
    return row["cell_id"], row["decoder"]


def test_the_rows_read_back_with_datasets_are_the_runs_latest_attempts(
    smoke_run, tmp_path, offline_hf
):
    key = _retried_row(smoke_run)
    out = tmp_path / "dataset"
    summary = export_run(smoke_run, out)
    with connect(smoke_run) as con:
        [(count,)] = con.execute("SELECT count(*) FROM rows").fetchall()
        query = (
            "SELECT cell_id, decoder, status, metric_psnr, metric_ssim, latency_ms_p50 FROM rows"
        )
        expected = sorted(con.execute(query).fetchall(), key=str)
    rows = _load(out, "rows", offline_hf)
    assert rows.num_rows == count == summary.rows == 24
    columns = ["cell_id", "decoder", "status", "metric_psnr", "metric_ssim", "latency_ms_p50"]
    got = sorted(zip(*(rows[c] for c in columns), strict=True), key=str)
    assert got == expected
    retried = [r for r in got if (r[0], r[1]) == key]
    assert [r[2] for r in retried] == ["error"]  # only the latest attempt, not the first
    assert summary.status_counts == {"ok": 23, "error": 1}
    table = pq.read_table(out / "data" / "rows.parquet")
    assert table.num_rows == 24 and table.column_names == rows.column_names
    assert table.schema.field("metric_psnr").metadata[b"doc"].startswith(b"psnr, ")
    assert rows[0]["image_path"] is None  # a run without PNGs: nothing to point at
    assert sorted(summary.files) == ["README.md", "data/rows.parquet", "run.json"]
    assert json.loads((out / "run.json").read_text()) == json.loads(
        (smoke_run / "run.json").read_text()
    )


def test_the_card_declares_the_configs_and_every_column_with_its_meaning(smoke_run, tmp_path):
    _retried_row(smoke_run)
    out = tmp_path / "dataset"
    export_run(smoke_run, out, license="cc-by-4.0")
    front, body = _card(out)
    assert front["license"] == "cc-by-4.0" and "pid-bench" in front["tags"]
    assert [c["config_name"] for c in front["configs"]] == ["rows"]  # no set-level values
    for config in front["configs"]:
        for data in config["data_files"]:
            assert (out / data["path"]).is_file(), data
    schema = pq.read_schema(out / front["configs"][0]["data_files"][0]["path"])
    columns = body.split("## Columns", 1)[1]
    for field in schema:
        meaning = _meaning(row_column_doc(field.name))
        assert f"| `{field.name}` | `{type_name(field.type)}` | {meaning}" in columns, field.name
    assert "| `metric_psnr` | `double` | psnr, against the reference at output size; higher is " \
        "better. PSNR in dB" in columns  # fmt: skip
    assert "| ok | 23 |" in body and "| error | 1 |" in body
    meta = json.loads((smoke_run / "run.json").read_text())
    assert meta["environment"]["git_sha"] in body and "| torch | 2.14.1+cu130 |" in body
    suite = re.search(r"## Suite \(as run\)\n\n```yaml\n(.*?)\n```\n", body, re.S)
    assert yaml.safe_load(suite.group(1)) == meta["suite"]
    assert "whose PNGs were not exported" in body


def _table_blocks(markdown: str) -> list[list[str]]:
    blocks, current = [], []
    for line in markdown.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            blocks.append(current)
            current = []
    return blocks + ([current] if current else [])


def test_strings_from_the_run_cannot_break_the_cards_tables(smoke_run, tmp_path):
    meta = json.loads((smoke_run / "run.json").read_text())
    meta["suite"]["name"] = "sm|oke\nnext ```"
    meta["environment"]["versions"]["torch"] = "2.14 | <b>x</b>\r\ny\\"
    (smoke_run / "run.json").write_text(json.dumps(meta))
    _retried_row(smoke_run)  # an error with a pipe and a newline
    out = tmp_path / "dataset"
    export_run(smoke_run, out)
    front, body = _card(out)
    assert front["pretty_name"] == "pid-bench results: sm|oke\nnext ```"
    for block in _table_blocks(body):
        widths = {len(re.findall(r"(?<!\\)(?:\\\\)*\|", line)) for line in block}
        assert len(widths) == 1, block  # every line as many cells as its header
    assert "2.14 \\| &lt;b&gt;x&lt;/b&gt; y\\\\" in body
    suite = re.search(r"## Suite \(as run\)\n\n(`{3,})yaml\n(.*?)\n\1\n", body, re.S)
    assert suite.group(1) == "````"  # longer than the name's own ``` run
    assert yaml.safe_load(suite.group(2))["name"] == "sm|oke\nnext ```"


def test_md_cell_keeps_a_pipe_escaped_after_a_backslash():
    assert md_cell("a\\|b\r\nc") == "a\\\\\\|b c"


def test_a_non_empty_target_is_refused_unless_overwrite(smoke_run, tmp_path):
    out = tmp_path / "dataset"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(ExportError, match=r"dataset is not empty; pass --overwrite"):
        export_run(smoke_run, out)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    result = runner.invoke(app, ["export", str(smoke_run), "--to", str(out)])
    assert result.exit_code == 2 and "--overwrite" in result.output
    export_run(smoke_run, out, overwrite=True)
    assert not (out / "mine.txt").exists() and (out / "README.md").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset", "run_smoke_v0"]
    (out / ".git").mkdir()  # a clone of the dataset's repository would lose its history
    with pytest.raises(ExportError, match="is a git repository"):
        export_run(smoke_run, out, overwrite=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    export_run(smoke_run, empty)  # an empty folder is no refusal
    assert (empty / "README.md").is_file()


def test_what_is_not_a_run_or_would_replace_it_is_refused(smoke_run, tmp_path):
    with pytest.raises(ExportError, match="no run.json"):
        export_run(tmp_path, tmp_path / "x")
    with pytest.raises(ExportError, match="holds the run"):
        export_run(smoke_run, smoke_run.parent, overwrite=True)
    for part in (smoke_run / "parts").glob("*.parquet"):
        part.unlink()
    result = runner.invoke(app, ["export", str(smoke_run), "--to", str(tmp_path / "x")])
    assert result.exit_code == 2 and "no rows to export" in result.output
    assert not (tmp_path / "x").exists()


def test_a_failed_export_leaves_nothing_behind(smoke_run, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise StorageError(errno.ENOSPC, "No space left on device", str(args[1]))

    monkeypatch.setattr(export, "write_table_atomic", full)
    result = runner.invoke(app, ["export", str(smoke_run), "--to", str(tmp_path / "x")])
    assert result.exit_code == 74, result.output
    assert f"could not write {tmp_path / 'x' / 'data' / 'rows.parquet'}" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_smoke_v0"]  # no temp folder


def test_images_are_copied_and_the_paths_point_at_them(image_run, tmp_path, offline_hf):
    out = tmp_path / "dataset"
    result = runner.invoke(app, ["export", str(image_run), "--to", str(out), "--images"])
    assert result.exit_code == 0, result.output
    assert f"hf upload USER/NAME {out} --repo-type dataset" in result.output
    assert "2 rows (2 ok), 2 set-level values, 3 PNGs" in result.output
    rows = _load(out, "rows", offline_hf)
    paths = [p for column in ("image_path", "reference_path") for p in rows[column]]
    assert paths and all(p.startswith("images/") for p in paths)
    for path in paths:
        assert (out / path).read_bytes() == (image_run / path).read_bytes()
    assert "metric_fid" not in rows.column_names  # its values are the `sets` config
    sets = _load(out, "sets", offline_hf)
    with connect(image_run) as con:
        expected = sorted(con.execute("SELECT decoder, metric, reason FROM set_values").fetchall())
    assert sorted(zip(sets["decoder"], sets["metric"], sets["reason"], strict=True)) == expected
    assert (out / "leaderboard.md").read_text() == (image_run / "leaderboard.md").read_text()
    front, body = _card(out)
    assert [c["config_name"] for c in front["configs"]] == ["rows", "sets"]
    for field in pq.read_schema(out / "data" / "sets.parquet"):
        meaning = _meaning(SET_COLUMN_DOCS[field.name])
        assert f"| `{field.name}` | `{field.type}` | {meaning}" in body, field.name
    assert "relative to this folder (the copy under images/)" in body


def test_without_images_the_paths_stay_the_runs(image_run, tmp_path):
    summary = export_run(image_run, tmp_path / "dataset")
    table = pq.read_table(tmp_path / "dataset" / "data" / "rows.parquet")
    with connect(image_run) as con:
        expected = sorted(con.execute("SELECT image_path FROM rows").fetchall())
    assert sorted((p,) for p in table.column("image_path").to_pylist()) == expected
    assert summary.images == 0 and not (tmp_path / "dataset" / "images").exists()


def test_an_image_the_run_lacks_leaves_its_path_null(image_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(image_run, run)
    (run / "images").rename(tmp_path / "moved")
    summary = export_run(run, tmp_path / "dataset", images=True)
    assert summary.images == 0 and summary.images_missing == 3
    table = pq.read_table(tmp_path / "dataset" / "data" / "rows.parquet")
    assert table.column("image_path").null_count == table.num_rows
