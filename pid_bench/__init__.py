"""pid-bench: benchmarking and evaluation harness for NVIDIA's PiD decoder.

The Python API (`pid_bench.api`): `run(suite, output=...) -> Run` and `load_run(dir) -> Run`,
imported on first use so that `import pid_bench.schema` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pid_bench.version import __version__

__all__ = ["Run", "__version__", "load_run", "run"]
#: Names served from pid_bench.api on first use.
API = ("Run", "load_run", "run")

if TYPE_CHECKING:
    from pid_bench.api import Run, load_run, run


def __getattr__(name: str) -> Any:
    if name in API:
        from pid_bench import api

        return getattr(api, name)
    raise AttributeError(f"module 'pid_bench' has no attribute {name!r}")
