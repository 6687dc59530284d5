"""Reading a run's rows needs no torch: the schema, the store and the axis table import none of
the heavy libraries (torch alone takes seconds). Each check runs in a fresh interpreter, since
this one has long imported torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import pid_bench

#: The checkout under test: `python -c` puts the working directory first on sys.path.
REPO = Path(pid_bench.__file__).resolve().parents[1]
HEAVY = ("torch", "pyiqa", "torchmetrics", "diffusers", "matplotlib")


@pytest.mark.parametrize(
    "modules",
    ["pid_bench.schema, pid_bench.store", "pid_bench.axes", "pid_bench.metrics.catalog"],
)
def test_import_loads_no_heavy_library(modules):
    code = (
        f"import sys\nimport {modules}\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert 'torch' not in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr


def test_metrics_names_resolve_lazily_and_completely():
    # The package __init__ imports nothing eagerly; every exported name must still resolve.
    code = (
        "import sys\nimport pid_bench.metrics as M\n"
        "assert 'torch' not in sys.modules\n"
        "missing = [n for n in M.__all__ if not hasattr(M, n)]\n"
        "assert not missing, missing\n"
        "assert callable(M.measure) and callable(M._patches)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
