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
import torch

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
        "--tiny", "--sizes", "64x96", "--repeats", "2", "--no-native", "--tile", "64",
        "--overlap", "32", "--tile-positions", "local", "--upstream", str(tmp_path / "checkout"),
        tmp_path=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (row,) = report["results"]
    assert row["tiles"] == 2 and row["upstream"]["status"] == "ok"
    assert row["upstream"]["max_abs_diff"] == 0.0  # same weights, same noise, same sampler
    assert row["upstream"]["latency_p50_ms"] > 0
    ratio = row["upstream"]["paired_ratio"]
    assert ratio["n"] == 2 and ratio["min"] <= ratio["median"] <= ratio["max"]
    assert "ours/upstream paired" in proc.stdout and report["peak_rss_bytes"] > 0
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


def _checkout(root: Path, body: str) -> Path:
    package = root / "pid" / "_src" / "networks"
    package.mkdir(parents=True)
    for folder in (package, package.parent, package.parent.parent):
        (folder / "__init__.py").write_text("")
    (package / "pid_net.py").write_text(textwrap.dedent(body))
    return root


def test_a_missing_upstream_dependency_is_named_before_our_network_is_built(
    bench_module, tmp_path, monkeypatch
):
    checkout = _checkout(tmp_path / "co", "import upstream_only_logger\nclass PidNet: pass\n")
    monkeypatch.setattr(bench_module, "UPSTREAM_PACKAGES", {"upstream_only_logger": "uo-logger"})
    monkeypatch.setattr(bench_module, "build_net", lambda *a: pytest.fail("built a network"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(bench_module.BenchError, match=r"needs 'upstream_only_logger'.*pip "
                       r"install uo-logger \(or pip install -e '\.\[upstream\]'\)"):  # fmt: skip
        bench_module.main(["--tiny", "--sizes", "64x64", "--upstream", str(checkout)])


def test_upstream_is_built_on_meta_and_shares_our_tensors(bench_module):
    from pid_models.pid_net import PidNet
    from pid_models.tiny import build_tiny_net

    ours = build_tiny_net(0)
    adapter = bench_module.load_upstream(PidNet, ours, torch.device("cpu"))
    theirs = dict(adapter.module.named_parameters())
    for name, param in ours.named_parameters():
        assert theirs[name].data_ptr() == param.data_ptr(), name  # one copy, not two


def test_interleaved_repeats_alternate_and_pair_up(bench_module):
    calls = []

    def run(name):
        return lambda: calls.append(name) or torch.zeros(1)

    results = bench_module.measure_interleaved(
        {"a": run("a"), "b": run("b")}, torch.device("cpu"), repeats=3, warmup=1
    )
    # first + warm-up of each alone, then a b | b a | a b
    assert calls == ["a", "a", "b", "b", "a", "b", "b", "a", "a", "b"]
    assert [len(r["latency_all_ms"]) for r in results.values()] == [3, 3]
    ratio = bench_module.paired_ratio([2.0, 4.0, 3.0], [1.0, 2.0, 3.0])
    assert ratio["median"] == 2.0 and (ratio["min"], ratio["max"]) == (1.0, 2.0)
