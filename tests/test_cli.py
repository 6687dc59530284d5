"""`pid-bench parity DIR`: one line per case, a summary, exit status 1 on any failure."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from pid_bench.cli import app
from tests.test_run import REPO

runner = CliRunner()


def test_parity_passes_on_the_reference_oracle(reference_dir):
    result = runner.invoke(app, ["parity", str(reference_dir)])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    index = json.loads((reference_dir / "golden/INDEX.json").read_text())["files"]
    manifests = list((reference_dir / "keys").glob("*.json"))
    cases = [
        line
        for line in lines[:-1]
        if not line.rstrip().endswith(("SKIP",)) and " SKIP " not in line
    ]
    assert lines[-1] == f"{len(cases)}/{len(cases)} cases pass"
    assert len(cases) >= len(index) + len(manifests)
    for entry in index:
        assert any(line.startswith(entry["case"]) and "PASS" in line for line in lines)
    assert sum("keys/" in line and "PASS" in line for line in lines) == len(manifests)


def _copy_case(reference_dir, target, case):
    (target / "golden").mkdir(parents=True)
    index = json.loads((reference_dir / "golden/INDEX.json").read_text())
    entry = next(e for e in index["files"] if e["case"] == case)
    (target / "golden/INDEX.json").write_text(json.dumps({**index, "files": [entry]}))
    shutil.copy(reference_dir / "golden" / entry["sidecar"], target / "golden")
    return entry


def _parity_of_shifted_golden(reference_dir, tmp_path, shift: float):
    """`pid-bench parity` on case a with its golden output moved by `shift` everywhere."""
    entry = _copy_case(reference_dir, tmp_path, "a_2k_flux_B2_64x96")
    tensors = load_file(reference_dir / "golden" / entry["safetensors"])
    tensors["output"] = tensors["output"] + shift
    save_file(tensors, tmp_path / "golden" / entry["safetensors"])
    return runner.invoke(app, ["parity", str(tmp_path)])


def test_a_vector_off_by_more_than_the_tolerance_fails_with_exit_1(reference_dir, tmp_path):
    result = _parity_of_shifted_golden(reference_dir, tmp_path, 3e-4)
    assert result.exit_code == 1
    assert "FAIL" in result.output and result.output.strip().endswith("0/1 cases pass")
    # The line says which bound failed: here both the elementwise one and the mean.
    assert "allclose(atol=0.0001, rtol=0.0001) exceeded" in result.output
    assert "mean 3.00e-04 > 5e-06" in result.output


def test_a_fail_line_from_the_mean_alone_names_the_mean_bound(reference_dir, tmp_path):
    """A max well under 1e-4 next to FAIL would read as a contradiction: the line names the
    mean bound that failed."""
    result = _parity_of_shifted_golden(reference_dir, tmp_path, 9e-6)
    assert result.exit_code == 1
    line = next(line for line in result.output.splitlines() if "FAIL" in line)
    assert re.search(r"FAIL \(mean [89]\.\d\de-06 > 5e-06\)$", line) and "allclose" not in line


def test_a_manifest_that_disagrees_fails(reference_dir, tmp_path):
    (tmp_path / "keys").mkdir()
    path = next(iter(sorted((reference_dir / "keys").glob("*.json"))))
    manifest = json.loads(path.read_text())
    manifest["state_dict"]["final_layer.linear.weight"] = [3, 17]
    (tmp_path / "keys" / path.name).write_text(json.dumps(manifest))
    result = runner.invoke(app, ["parity", str(tmp_path)])
    assert result.exit_code == 1
    assert "shapes differ: ['final_layer.linear.weight']" in result.output


def test_parity_reads_the_oracle_from_pid_reference_dir(reference_dir, tmp_path, monkeypatch):
    entry = _copy_case(reference_dir, tmp_path, "a_2k_flux_B2_64x96")
    shutil.copy(reference_dir / "golden" / entry["safetensors"], tmp_path / "golden")
    monkeypatch.setenv("PID_REFERENCE_DIR", str(tmp_path))
    result = runner.invoke(app, ["parity"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("1/1 cases pass")


def test_parity_without_an_oracle_names_pid_reference_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("PID_REFERENCE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["parity"])
    assert result.exit_code == 2
    assert "../shared/pid_reference: not a folder" in result.output
    assert "set PID_REFERENCE_DIR" in " ".join(result.output.split())


def test_an_empty_folder_is_bad_input(tmp_path):
    result = runner.invoke(app, ["parity", str(tmp_path)])
    assert result.exit_code == 2


def test_decode_with_the_tiny_default_writes_a_png_of_the_output_size(tmp_path):
    from PIL import Image

    out = tmp_path / "tiny.png"
    result = runner.invoke(app, ["decode", "--out", str(out), "--latent-size", "4", "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (128, 128)
    assert "small embedded network" in result.output


def test_decode_of_an_unreleased_pair_is_bad_input_listing_valid_pairs(tmp_path):
    result = runner.invoke(
        app, ["decode", "--out", str(tmp_path / "x.png"), "--backbone", "sdxl", "--ckpt-type", "2k"]
    )
    assert result.exit_code == 2
    assert "sdxl/2kto4k" in result.output


def test_plan_fits_80_columns_with_fixed_axes_above_the_table(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    result = CliRunner().invoke(app, ["plan", str(REPO / "suites" / "smoke.yaml")])
    assert result.exit_code == 0, result.output
    assert "every cell: backbone tiny · ckpt_type 2k · precision auto" in result.output
    table = result.output.split("cell_id", 1)[1].splitlines()
    assert len(table) >= 10 and max(len(line) for line in table) <= 80
    assert "resolution" in result.output and "sigma" in result.output  # the axes that vary


def _big_suite(tmp_path, sigmas: int = 60) -> Path:
    """A tiny-backbone suite of sigmas x 2 sizes x 2 images cells."""
    source = (REPO / "suites" / "smoke.yaml").read_text()
    sigma_list = ", ".join(f"{i / (sigmas * 2):g}" for i in range(sigmas))
    text = source.replace("sigmas: [0.0, 0.3]", f"sigmas: [{sigma_list}]").replace(
        "source: ../manifests/", f"source: {REPO}/manifests/"
    )
    path = tmp_path / "big.yaml"
    path.write_text(text)
    return path


def test_plan_shows_the_axes_and_the_first_40_cells_and_says_how_to_see_the_rest(tmp_path):
    result = runner.invoke(app, ["plan", str(_big_suite(tmp_path))])
    assert result.exit_code == 0, result.output
    assert (
        "sigma: 60 values (0, 0.00833333, " in result.output and ", …, 0.491667)" in result.output
    )
    cells = [line for line in result.output.splitlines() if re.match(r"[0-9a-f]{16}  ", line)]
    assert len(cells) == 40
    assert "… 200 more: `--all` to list them, `--format csv|jsonl` to export" in result.output
    assert "240 cells, 720 rows" in result.output
    every = runner.invoke(app, ["plan", str(_big_suite(tmp_path)), "--all"])
    assert every.exit_code == 0 and "more:" not in every.output
    assert len(every.output.splitlines()) > 240


def test_plan_exports_every_cell_as_csv_or_jsonl(tmp_path):
    import csv
    import io

    suite = str(_big_suite(tmp_path, sigmas=3))
    exported = runner.invoke(app, ["plan", suite, "--format", "csv"]).stdout
    as_csv = list(csv.DictReader(io.StringIO(exported)))
    lines = runner.invoke(app, ["plan", suite, "--format", "jsonl"]).stdout.splitlines()
    as_jsonl = [json.loads(line) for line in lines]
    assert len(as_csv) == len(as_jsonl) == 12
    assert as_csv[0] == as_jsonl[0] and set(as_csv[0]) >= {"cell_id", "sigma", "resolution"}
    bad = runner.invoke(app, ["plan", suite, "--format", "xml"])
    assert bad.exit_code == 2 and "table, csv, jsonl" in bad.output


def test_doctor_help_states_its_exit_codes():
    result = CliRunner().invoke(app, ["doctor", "--help"], env={"COLUMNS": "100"})
    assert "Exit code: 0" in result.output and "1 when" in result.output
