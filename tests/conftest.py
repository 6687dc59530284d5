"""Shared fixtures: the reference oracle folder and small seeded models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def find_reference() -> Path | None:
    """The oracle: $PID_REFERENCE_DIR, else ../shared/pid_reference beside the checkout."""
    for candidate in (
        os.environ.get("PID_REFERENCE_DIR"),
        REPO.parent / "shared" / "pid_reference",
    ):
        if candidate and (Path(candidate) / "golden" / "INDEX.json").is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The oracle folder; CI sets PID_BENCH_REQUIRE_REFERENCE=1 so a missing oracle fails."""
    found = find_reference()
    if found is None:
        message = (
            "pid_reference oracle not found: set PID_REFERENCE_DIR to its folder (the one with "
            f"golden/INDEX.json); {REPO.parent / 'shared' / 'pid_reference'} does not have it"
        )
        if os.environ.get("PID_BENCH_REQUIRE_REFERENCE") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Caption embeddings of a test never land in the user's cache."""
    monkeypatch.setenv("PID_BENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def _threads():
    """Two threads (the CI machine's cores), unless OMP_NUM_THREADS says otherwise: the fidelity
    tests are run single-threaded too, and must pass at the oracle's standard either way."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 2))


@pytest.fixture(scope="module")
def shared_local_ray():
    """One local Ray (loopback, as `pid-bench run` starts it) for a module's in-process runs:
    each run then brings up only its actors, not a Ray of its own (seconds per run). Modules
    opt in with `pytestmark = pytest.mark.usefixtures("shared_local_ray")`."""
    import ray

    from pid_bench.pool import init_ray

    if ray.is_initialized():
        yield
        return
    init_ray(None, cpu_workers=2)
    try:
        yield
    finally:
        ray.shutdown()
