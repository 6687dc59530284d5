"""Reports over a fake run directory: SQL rollups, leaderboard.md, plots, report.html."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from pid_bench import board, plots, report, rundb
from pid_bench.cli import app
from pid_bench.schema import to_table

HOSTILE_SUITE = "<script>alert(1)</script>"
HOSTILE_CAPTION = '<img src=x onerror="alert(2)">'
DECODERS = ("pid", "native", "native+bicubic")
IMAGES = ("cat", "dog")
SIGMAS = (0.0, 0.2)
SIZES = ((32, 32), (64, 48))


def _psnr(image: int, sigma: float, size: tuple[int, int], decoder: int) -> float:
    """Made-up, distinct per row."""
    return 20.0 + 5 * decoder + image + 2 * sigma + size[0] / 64


def _png(path: Path, size: tuple[int, int], shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    image = Image.new("RGB", (w, h), (shade, 255 - shade, 128))
    image.putpixel((w // 2, h // 2), (255, 0, 0))
    image.save(path)


def _rows(run_dir: Path) -> list[dict]:
    rows = []
    for i, image_id in enumerate(IMAGES):
        for sigma in SIGMAS:
            for size in SIZES:
                cell_id = f"{image_id}-{sigma}-{size[0]}x{size[1]}"
                reference = f"images/{cell_id}/reference.png"
                _png(run_dir / reference, size, 10)
                for d, decoder in enumerate(DECODERS):
                    image_path = f"images/{cell_id}/{decoder.replace('+', '_')}.png"
                    _png(run_dir / image_path, size, 60 * (d + 1))
                    rows.append(
                        {
                            "run_id": "run-1",
                            "suite": HOSTILE_SUITE,
                            "cell_id": cell_id,
                            "decoder": decoder,
                            "status": "ok",
                            "git_sha": "abc1234",
                            "device": "cpu",
                            "device_name": "Test CPU",
                            "random_weights": True,
                            "mode": "from_clean",
                            "backbone": "tiny",
                            "ckpt_type": "2k",
                            "sigma": sigma,
                            "image_id": image_id,
                            "caption": HOSTILE_CAPTION,
                            "out_height": size[0],
                            "out_width": size[1],
                            "latency_ms": [1.0 + d, 2.0 + d],
                            "latency_ms_p50": 1.5 + d + size[0] / 32,
                            "image_path": image_path,
                            "reference_path": reference,
                            "metric_psnr": _psnr(i, sigma, size, d),
                            "metric_ssim": 0.5 + 0.1 * d + 0.01 * i,
                        }
                    )
    return rows


def _error_row() -> dict:
    return {
        "run_id": "run-1",
        "suite": HOSTILE_SUITE,
        "cell_id": "broken-cell",
        "decoder": "pid",
        "status": "error",
        "error": "RuntimeError: boom <b>\nTraceback line two",
        "random_weights": True,
        "mode": "from_clean",
        "backbone": "tiny",
        "ckpt_type": "2k",
        "sigma": 0.0,
        "out_height": 32,
        "out_width": 32,
        "image_id": "cat",
    }


def _write_run(run_dir: Path) -> list[dict]:
    rows = _rows(run_dir)
    (run_dir / "parts").mkdir(parents=True)
    pq.write_table(to_table(rows[:12]), run_dir / "parts" / "part-a.parquet")
    pq.write_table(to_table(rows[12:] + [_error_row()]), run_dir / "parts" / "part-b.parquet")
    meta = {
        "run_id": "run-1",
        "suite": {"name": HOSTILE_SUITE},
        "environment": {"git_sha": "abc1234", "torch": "2.4.0"},
        "started_at": "2026-08-01T00:00:00Z",
        "random_weights": True,
    }
    (run_dir / "run.json").write_text(json.dumps(meta))
    return rows


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, list[dict], report.ReportPaths]:
    run_dir = tmp_path_factory.mktemp("run")
    rows = _write_run(run_dir)
    return run_dir, rows, report.write_report(run_dir)


def test_every_sql_file_runs_and_has_a_header(run):
    run_dir, _, _ = run
    names = rundb.sql_names()
    assert {"leaderboard", "latency", "memory", "quality_vs_sigma", "status", "grid"} <= set(names)
    with rundb.connect(run_dir) as con:
        for name in names:
            text = (rundb.reports_dir() / f"{name}.sql").read_text()
            assert text.startswith("-- grain:"), name
            assert isinstance(rundb.query(con, name), list), name


def test_rollups_aggregate_as_expected(run):
    run_dir, rows, _ = run
    with rundb.connect(run_dir) as con:
        status = {r["status"]: r["n"] for r in rundb.query(con, "status")}
        board = rundb.query(con, "leaderboard")
        grid = rundb.query(con, "grid")
        memory = rundb.query(con, "memory")
    assert status == {"ok": len(rows), "error": 1}
    # (32x32, sigma 0, pid) holds both images' ok rows and the error row
    cell = next(r for r in board if (r["out_height"], r["sigma"], r["decoder"]) == (32, 0.0, "pid"))
    assert (cell["n_rows"], cell["n_ok"]) == (3, 2)
    assert cell["metric_psnr"] == pytest.approx(
        (_psnr(0, 0.0, (32, 32), 0) + _psnr(1, 0.0, (32, 32), 0)) / 2
    )
    # the viewer's settings: every cell with saved images, each decoder's image listed
    assert len(grid) == len(IMAGES) * len(SIGMAS) * len(SIZES)
    assert {g["image_id"] for g in grid} == set(IMAGES)
    assert all(g["reference_path"] for g in grid)
    assert all([i["decoder"] for i in g["images"]] == sorted(DECODERS) for g in grid)
    # previews go first to each setting's first image: both images only after every setting
    ranks = {(g["image_id"], g["sigma"], g["out_height"]): g["embed_rank"] for g in grid}
    assert sorted(ranks.values()) == list(range(len(grid)))
    assert max(r for (image, _, _), r in ranks.items() if image == "cat") < len(grid) // 2
    assert all(m["peak_mem_allocated_bytes"] is None for m in memory)


def test_leaderboard_markdown(run):
    run_dir, _, paths = run
    text = paths.leaderboard.read_text()
    assert text == report.leaderboard_text(run_dir)
    assert report.RANDOM_WEIGHTS_WARNING in text
    assert HOSTILE_SUITE in text.splitlines()[0]
    assert "run `run-1`" in text and "git `abc1234`" in text and "Test CPU" in text
    assert "Status: 24 ok, 1 error (25 rows)" in text
    assert "psnr ↑" in text and "ssim ↑" in text and "latency p50 ms ↓" in text
    # mean psnr of (tiny, 2k, 64x48, sigma 0.2, native+bicubic) over the two images
    mean = (_psnr(0, 0.2, (64, 48), 2) + _psnr(1, 0.2, (64, 48), 2)) / 2
    line = next(ln for ln in text.splitlines() if "| 64x48 | 0.2 | native+bicubic |" in ln)
    assert f"**{mean:.4f}**" in line  # best psnr of its setting
    assert "## Failures (1)" in text
    assert "| pid | broken-cell | error | RuntimeError: boom <b> |" in text
    assert "Traceback line two" not in text


def test_plots_are_pngs(run):
    run_dir, _, paths = run
    names = {p.name for p in paths.plots}
    assert names == {
        "latency_vs_megapixels.png",
        "memory_vs_resolution.png",
        "mfu_vs_megapixels.png",
        "quality_vs_sigma_psnr.png",
        "quality_vs_sigma_ssim.png",
        "pareto_tiny_psnr.png",
    }
    for path in paths.plots:
        assert path.parent == run_dir / "plots"
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 100


def test_html_is_self_contained_and_escaped(run):
    _, _, paths = run
    html = paths.html.read_text()
    assert HOSTILE_SUITE not in html and HOSTILE_CAPTION not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    # scripts: inline only; the viewer's data (captions included) is JSON with <, > and &
    # escaped, which its script puts in the page as text (tests/test_report_browser.py)
    assert not re.search(r"<script[^>]*\ssrc=", html, re.IGNORECASE)
    data = _viewer_json(html)
    assert "\\u003cimg src=x onerror=" in data and "<img" not in data
    # nothing outside the page but the run's own PNGs, relative to the run directory
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", html)
    hrefs = [i["href"] for s in json.loads(data)["settings"] for i in s["images"]]
    assert hrefs and all(h.startswith("images/") and ".." not in h for h in hrefs)
    pngs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(pngs) == 6  # latency, memory, MFU, two quality, one Pareto
    # every setting's reference and three decoders, embedded as JPEG previews
    assert data.count('"data:image/jpeg;base64,') == len(hrefs) == 8 * 4
    assert report.RANDOM_WEIGHTS_WARNING.replace("`", "") in html.replace("`", "")
    assert "broken-cell" in html and "RuntimeError: boom &lt;b&gt;" in html
    assert "Every setting's previews are embedded." in html


def _viewer_json(html: str) -> str:
    block = r'<script type="application/json" id="viewer-data">(.*?)</script>'
    return re.search(block, html, re.S).group(1)


def test_leaderboard_header_groups_link_each_measure_to_its_definition(run):
    _, _, paths = run
    html = paths.html.read_text()
    thead = html.split("<thead>")[1].split("</thead>")[0]
    groups = re.findall(r'<th class="group" colspan="(\d+)">(\w+)</th>', thead)
    assert [g for _, g in groups] == ["setting", "latency", "memory", "quality"]
    assert [int(n) for n, _ in groups][1:] == [1, 1, 2]  # psnr and ssim
    for name in ("latency_ms_p50", "peak_mem_allocated_bytes", "psnr", "ssim"):
        assert f'href="#def-{name}"' in thead and f'<dt id="def-{name}">' in html
    assert "PSNR in dB = 10 log10(1 / MSE)" in html  # the registry's definition
    assert '<div class="scroll"><table>' in html  # wide tables scroll in their box


def test_previews_are_bounded_jpegs_and_stay_inside_the_run(tmp_path):
    import base64
    import io

    from pid_bench import viewer

    _png(tmp_path / "big.png", (300, 600), 50)
    uri, size = viewer.preview(tmp_path / "big.png")
    assert size == (300, 600) and uri.startswith("data:image/jpeg;base64,")
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as image:
        assert image.format == "JPEG" and image.size == (viewer.PREVIEW_WIDTH, 256)
    assert viewer.inside(tmp_path, "big.png") == (tmp_path / "big.png").resolve()
    assert viewer.inside(tmp_path, "missing.png") is None
    assert viewer.inside(tmp_path, "../outside.png") is None
    escaped = viewer.json_for_html({"a": "</script>&"})
    assert escaped == '{"a": "\\u003c/script\\u003e\\u0026"}'
    assert json.loads(escaped) == {"a": "</script>&"}


def test_a_capped_viewer_says_how_many_settings_it_left_out(tmp_path, monkeypatch):
    from pid_bench import viewer

    _write_run(tmp_path)
    monkeypatch.setattr(viewer, "MAX_EMBEDDED", 3)
    html = report.write_report(tmp_path).html.read_text()
    data = json.loads(_viewer_json(html))
    assert (data["total"], data["listed"], data["embedded"]) == (8, 8, 3)
    assert "Previews are embedded for 3 of them (at most 3" in html
    assert "the other 5 are listed with links to their full-size PNGs" in html
    left_out = [s for s in data["settings"] if not s["embedded"]]
    assert len(left_out) == 5
    assert all(i["href"] and not i["preview"] for s in left_out for i in s["images"])
    embedded = [s for s in data["settings"] if s["embedded"]]
    assert {s["size"] for s in embedded} == {"32x32", "64x48"}  # spread over the settings
    assert all((s["left"], s["right"]) == ("native+bicubic", "pid") for s in embedded)


def test_noisy_timing_is_marked_and_flagged(tmp_path):
    rows = _write_run(tmp_path)
    noisy = [{**rows[0], "cell_id": "noisy", "image_id": "noisy", "timing_noisy": True}]
    pq.write_table(to_table(noisy), tmp_path / "parts" / "part-noisy.parquet")
    paths = report.write_report(tmp_path)
    text = paths.leaderboard.read_text()
    line = next(ln for ln in text.splitlines() if "| 32x32 | 0 | pid |" in ln)
    assert board.NOISY_MARK.strip() in line
    assert "| noisy | pid | timing noisy (spread > 0.1) |" in text
    html = paths.html.read_text()
    assert "Flags (1 rows)" in html and "timing noisy (spread &gt; 0.1)" in html


def test_plots_tell_decoders_apart():
    names = ["pid", "native", "native+bicubic", "native+lanczos", "pid-teacher", "native+esrgan"]
    assert len({plots.marker(n) for n in names}) == len(names)
    offsets = plots.dodge({n: ([0.0, 1.0], [1.0, 1.0]) for n in names[:3]})
    assert sorted(offsets.values()) == pytest.approx([-plots.DODGE, 0.0, plots.DODGE])
    assert "dodged" in plots.DODGE_CAPTION


def test_extra_metric_column_in_one_part(tmp_path):
    rows = _write_run(tmp_path)
    later = [{**r, "cell_id": r["cell_id"] + "-later", "image_id": "later"} for r in rows[:3]]
    extra = to_table(later)
    # cells of a later run (no cells.parquet: all in scope) with a metric column of a later
    # pid-bench version: only in this part, direction unknown
    values = pa.array([0.1, 0.2, 0.3], pa.float64())
    pq.write_table(
        extra.append_column("metric_future", values), tmp_path / "parts" / "part-c.parquet"
    )
    paths = report.write_report(tmp_path)
    text = paths.leaderboard.read_text()
    assert "| future |" in text or "| future" in text
    assert "quality_vs_sigma_future.png" in {p.name for p in paths.plots}
    with rundb.connect(tmp_path) as con:
        board = rundb.query(con, "leaderboard")
    with_lpips = [r for r in board if r["metric_future"] is not None]
    assert {r["decoder"] for r in with_lpips} == set(DECODERS)


def test_empty_run_dir_still_reports(tmp_path):
    paths = report.write_report(tmp_path)
    assert "No rows in this run yet." in paths.leaderboard.read_text()
    assert "Failures (0)" in paths.html.read_text()
    assert {p.name for p in paths.plots} >= {
        "latency_vs_megapixels.png",
        "memory_vs_resolution.png",
    }


def test_paired_comparison_has_cis_deltas_and_win_rates(run):
    run_dir, _, paths = run
    text = paths.leaderboard.read_text()
    section = text.split("## PiD vs native+bicubic, paired")[1].split("## ")[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("| ") and "psnr ↑" in ln]
    assert len(lines) == len(SIGMAS) * len(SIZES)  # one per setting
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        # made-up psnr: pid is exactly 10 dB under native+bicubic on every image
        assert cells[4] == "-10.0000 [-10.0000, -10.0000]"
        assert cells[5] == "0 %" and cells[6] == str(len(IMAGES))
        mean, low, high = map(
            float, cells[2].replace("[", "").replace("]", "").replace(",", "").split()
        )
        assert low <= mean <= high
    assert "2000 resamples, seed 0" in section
    assert "PiD vs native+bicubic, paired" in paths.html.read_text()


def test_rows_outside_the_envelope_or_past_a_colour_threshold_are_flagged(tmp_path):
    rows = _write_run(tmp_path)
    flagged = [
        {**rows[0], "cell_id": "big", "image_id": "big", "outside_envelope": True},
        {**rows[1], "cell_id": "tinted", "image_id": "tinted", "metric_midtone_chroma_shift": 9.5},
    ]
    pq.write_table(to_table(flagged), tmp_path / "parts" / "part-flags.parquet")
    text = report.write_report(tmp_path).leaderboard.read_text()
    section = text.split("## Flags (2 rows)")[1].split("##")[0]
    assert "| big | pid | outside the trained size or aspect |" in section
    assert "| tinted | native | midtone chroma shift > 6 |" in section


def _second_run(run_dir: Path, run_id: str = "run-2") -> None:
    """Another machine's run of the same cells: a GPU name, newer torch, half the latency."""
    rows = _rows(run_dir)
    for row in rows:
        row |= {"run_id": run_id, "device": "cuda", "device_name": "NVIDIA H200",
                "torch_version": "2.15.0", "git_sha": "def5678"}  # fmt: skip
        row["latency_ms_p50"] /= 2
    (run_dir / "parts").mkdir(parents=True)
    pq.write_table(to_table(rows), run_dir / "parts" / "part-a.parquet")
    meta = {"run_id": run_id, "suite": {"name": HOSTILE_SUITE, "metrics": ["psnr", "lpips"]},
            "environment": {"git_sha": "def5678"}, "started_at": "2026-08-02T00:00:00Z"}  # fmt: skip
    (run_dir / "run.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    first, second = tmp_path_factory.mktemp("first"), tmp_path_factory.mktemp("second")
    _write_run(first)
    _second_run(second)
    out = tmp_path_factory.mktemp("board")
    result = CliRunner().invoke(app, ["report", str(first), str(second), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return first, second, out


def test_a_cross_run_leaderboard_lines_up_each_setting_of_every_run(two_runs):
    first, second, out = two_runs
    text = (out / "leaderboard.md").read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| from_clean |")]
    assert len(rows) == 2 * len(DECODERS) * len(SIGMAS) * len(SIZES)
    # one setting and decoder: run-1 then run-2, side by side; run-2 is twice as fast
    first_pid = next(i for i, ln in enumerate(rows) if "| 32x32 | 0 | pid | run-1 |" in ln)
    assert "| 32x32 | 0 | pid | run-2 |" in rows[first_pid + 1]
    latency = [float(rows[first_pid + k].split("|")[9].strip(" *†")) for k in (0, 1)]
    assert latency[1] == pytest.approx(latency[0] / 2, abs=0.01)
    assert "| run-1 | 2 / 3 |" in rows[first_pid]  # run-1's error row stays its own
    # provenance: one line per run, device, versions, git sha and date
    runs = text.split("## Runs")[1].split("## Leaderboard")[0]
    assert "| run-1 |" in runs and "| Test CPU |" in runs and "2026-08-01T00:00:00Z" in runs
    assert "| run-2 |" in runs and "| NVIDIA H200 | 2.15.0 |" in runs and "def5678" in runs
    # run-2 asked for lpips and has none: its footnote, numbered in the header
    assert "lpips ↓ [1]" in text and "- [1] run-2: lpips: null in 24/24 rows" in text
    assert "docs/metrics.md" in text
    assert not (first / "leaderboard.html").exists()  # the runs are only read


def test_the_cross_run_page_is_escaped_and_self_contained(two_runs):
    _, _, out = two_runs
    html = (out / "leaderboard.html").read_text()
    assert HOSTILE_SUITE not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html.lower()
    assert not re.search(r"""(src|href)=["'](?!#)""", html)
    assert ">run</th>" in html and "NVIDIA H200" in html and 'id="def-psnr"' in html
    groups = re.findall(r'<th class="group" colspan="\d+">(\w+)</th>', html)
    assert groups == ["setting", "latency", "memory", "quality"]


def test_report_of_one_run_stays_in_the_run_and_several_need_a_free_folder(two_runs, tmp_path):
    first, second, _ = two_runs
    single = CliRunner().invoke(app, ["report", str(second)])
    assert single.exit_code == 0 and (second / "report.html").is_file()
    assert not (second / "leaderboard.html").exists()
    into_a_run = CliRunner().invoke(app, ["report", str(first), str(second), "--out", str(first)])
    assert into_a_run.exit_code == 2 and "is a run directory" in into_a_run.output
    missing = CliRunner().invoke(app, ["report", str(first), str(tmp_path)])
    assert missing.exit_code == 2 and "no run.json" in missing.output
    # two runs of one run_id are named by their folders
    copy = tmp_path / "copy"
    _second_run(copy, run_id="run-1")
    out = tmp_path / "board"
    both = CliRunner().invoke(app, ["report", str(first), str(copy), "--out", str(out)])
    assert both.exit_code == 0, both.output
    text = (out / "leaderboard.md").read_text()
    assert f"| {first} |" in text and f"| {copy} |" in text


def test_colour_per_setting_inside_and_outside_the_trained_size(tmp_path):
    rows = _write_run(tmp_path)
    outside = {**rows[0], "cell_id": "big", "image_id": "big", "out_height": 4096,
               "out_width": 4096, "outside_envelope": True, "metric_shadow_green_bias": 4.5}  # fmt: skip
    inside = {**rows[0], "cell_id": "small", "image_id": "small", "outside_envelope": False,
              "metric_shadow_green_bias": 0.0}  # fmt: skip
    pq.write_table(to_table([outside, inside]), tmp_path / "parts" / "part-env.parquet")
    text = report.write_report(tmp_path).leaderboard.read_text()
    section = text.split("## Colour inside and outside the trained envelope")[1].split("\n## ")[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")][1:]
    assert "4096x4096" in lines[0] and "| outside | 4.5000 (1/1 > 3) |" in lines[0]  # first
    assert all("| inside |" in line for line in lines[1:])
