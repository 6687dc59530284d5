"""benchmarks/decode.py: the CPU smoke run CI does, the upstream comparison path, its errors."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "decode.py"


def run_bench(*args: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, dict | None]:
    out = tmp_path / "bench.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--json", str(out)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    return proc, (json.loads(out.read_text()) if out.exists() else None)


def test_tiny_cpu_smoke_run_writes_the_expected_json(tmp_path):
    proc, report = run_bench(
        "--tiny", "--sizes", "64x64", "--repeats", "1", "--compile", "eager", tmp_path=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert "PiD decode: tiny" in proc.stdout and "64x64" in proc.stdout
    assert report["schema"] == "pid-bench/decode-benchmark/v1"
    assert report["experiment"] == "tiny" and report["cuda"] is False
    assert report["steps"] == 4 and report["repeats"] == 1 and report["tile"] is None
    assert report["dtype"] == "bf16" and report["dtype_effective"] == "fp32"  # no autocast on CPU
    assert report["net_kwargs"]["hidden_size"] == 32
    (row,) = report["results"]
    assert row["variant"] == "eager" and row["size"] == [64, 64] and row["status"] == "ok"
    assert row["tiles"] == 1 and len(row["latency_all_ms"]) == 1
    assert 0 < row["latency_p50_ms"] <= row["latency_p90_ms"]
    assert row["first_decode_s"] > 0 and row["estimated_peak_bytes"] > 0
    # On CPU the CUDA memory columns are null, never 0.
    assert row["peak_allocated_bytes"] is None and row["peak_reserved_bytes"] is None
    native = report["native"]
    assert native["available"] is True
    (nrow,) = native["rows"]
    assert nrow["size"] == [64, 64] and nrow["out_size"] == [
        16,
        16,
    ]  # the native decode is 4x smaller
    assert nrow["peak_allocated_bytes"] is None


def test_upstream_comparison_runs_against_a_module_from_a_checkout_path(tmp_path):
    """A stand-in 'checkout' with upstream's layout and forward signature (kwargs for the LQ)."""
    package = tmp_path / "checkout" / "pid" / "_src" / "networks"
    package.mkdir(parents=True)
    for folder in (package, package.parent, package.parent.parent):
        (folder / "__init__.py").write_text("")
    (package / "pid_net.py").write_text(
        textwrap.dedent(
            """
            from pid_models.pid_net import PidNet as _Ours

            class PidNet(_Ours):
                def forward(self, x, t, y, s=None, mask=None, lq_video_or_image=None,
                            lq_latent=None, lq_mask=None, degrade_sigma=None):
                    return super().forward(x, t, y, lq_latent, degrade_sigma)
            """
        )
    )
    proc, report = run_bench(
        "--tiny", "--sizes", "64x96", "--repeats", "1", "--no-native", "--tile", "64",
        "--overlap", "32", "--tile-positions", "local", "--upstream", str(tmp_path / "checkout"),
        tmp_path=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (row,) = report["results"]
    assert row["tiles"] == 2 and row["upstream"]["status"] == "ok"
    assert row["upstream"]["max_abs_diff"] == 0.0  # same weights, same noise, same sampler
    assert row["upstream"]["latency_p50_ms"] > 0
    assert "ours/upstream" in proc.stdout
    assert report["native"] == {"available": False, "reason": "--no-native", "rows": []}


@pytest.fixture(scope="module")
def bench_module():
    spec = importlib.util.spec_from_file_location("pid_bench_decode_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "args, message",
    [
        (["--upstream", "{tmp}"], r"no module pid._src.networks.pid_net there .*pid/_src/networks/pid_net.py"),
        (["--upstream", "{tmp}/missing"], "not a directory"),
        (["--upstream", "{tmp}", "--upstream-module", "pid_net"], "is not pkg.module:ClassName"),
        (["--upstream", "{tmp}", "--tile", "64", "--overlap", "32"], "needs --tile-positions local"),
        (["--sizes", "100x64"], "not a multiple of 32 px per latent cell"),
        (["--sizes", "64by64"], "is not HEIGHTxWIDTH"),
        (["--tile", "48"], "--tile/--overlap: tile_size=48 must be a multiple of 32 px"),
        (["--experiment", "PiD_nope"], "unknown experiment 'PiD_nope'; one of: PiD_res2k"),
    ],
)  # fmt: skip
def test_bad_options_fail_before_building_anything(
    bench_module, tmp_path, monkeypatch, args, message
):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    tiny = [] if "--experiment" in args else ["--tiny"]
    monkeypatch.setattr(bench_module, "build_net", lambda *a: pytest.fail("built a network"))
    with pytest.raises(bench_module.BenchError, match=message):
        bench_module.main([*tiny, "--sizes", "64x64", *args, "--json", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


def test_a_bad_option_exits_2_with_one_line_and_no_traceback(tmp_path):
    proc, report = run_bench(
        "--tiny", "--sizes", "64x64", "--upstream", str(tmp_path), tmp_path=tmp_path
    )
    assert proc.returncode == 2 and report is None
    assert (
        proc.stderr.startswith("benchmarks/decode.py: error: --upstream")
        and "Traceback" not in proc.stderr
    )
