"""Security rules that hold across the code base: no pickle loading, safe YAML, loopback Ray."""

from __future__ import annotations

import ast
import ipaddress
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted(
    p for folder in ("pid_bench", "pid_models", "benchmarks") for p in (REPO / folder).rglob("*.py")
)


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_every_torch_load_is_weights_only():
    found = 0
    for path in SOURCES:
        for call, name in _calls(path):
            if name == "torch.load":
                found += 1
                kwargs = {k.arg: ast.unparse(k.value) for k in call.keywords}
                assert kwargs.get("weights_only") == "True", f"{path}:{call.lineno}"
    assert found >= 1  # the checkpoint reader is among them


@pytest.mark.parametrize(
    "forbidden", ["pickle.load", "pickle.loads", "yaml.load", "yaml.unsafe_load", "eval", "exec"]
)
def test_no_unsafe_deserialisation(forbidden):
    offenders = [
        f"{path.relative_to(REPO)}:{call.lineno}"
        for path in SOURCES
        for call, name in _calls(path)
        if name == forbidden
    ]
    assert not offenders, f"{forbidden} used at {offenders}"


def test_local_ray_binds_loopback_without_dashboard(monkeypatch):
    import ray

    from pid_bench import pool

    seen = {}
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    pool.init_ray(None, 2)
    assert seen["_node_ip_address"] == "127.0.0.1" and seen["dashboard_host"] == "127.0.0.1"
    assert seen["include_dashboard"] is False
    assert seen["address"] == "local"  # never joins a `ray start` cluster found in /tmp/ray


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def _listeners(root: psutil.Process) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening inet socket of root and descendants."""
    found = []
    for process in [root, *root.children(recursive=True)]:
        try:
            name = process.name()
            connections = process.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        found += [
            (name, c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN
        ]
    return found


def _environ_of(root: psutil.Process, marker: str) -> dict[str, str] | None:
    for process in root.children(recursive=True):
        try:
            if any(marker in part for part in process.cmdline()):
                return process.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return None


def test_a_local_run_listens_only_on_loopback_and_probes_nothing(tmp_path):
    """`pid-bench run` with its own local Ray (token auth on, as users run it): every socket
    that the driver, GCS, raylet, agents and workers listen on is loopback."""
    suite = tmp_path / "loopback.yaml"
    suite.write_text(
        json.dumps(
            {
                "name": "loopback",
                "backbones": ["tiny"],
                "ckpt_types": ["2k"],
                "resolutions": [64],
                "decoders": ["pid", "native"],
                "metrics": ["psnr"],
                "source": str(REPO / "manifests" / "smoke.jsonl"),
                "limit": 1,
                "timing": {"warmup": 0, "repeats": 2, "min_time_s": 0},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    command = [sys.executable, "-m", "pid_bench.cli", "run", str(suite)]
    command += ["--output", str(tmp_path / "run"), "--no-report"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    root = psutil.Process(proc.pid)
    seen: set[tuple[str, str, int]] = set()
    dashboard_env = None
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        seen.update(_listeners(root))
        dashboard_env = dashboard_env or _environ_of(root, "dashboard/dashboard.py")
        time.sleep(0.2)
    if proc.poll() is None:
        proc.kill()
    out, err = proc.communicate()
    assert proc.returncode == 0, err.decode()[-3000:]
    names = {name for name, _, _ in seen}
    assert {"gcs_server", "raylet"} <= names, names  # the sampling saw Ray's own servers
    assert any(name.startswith("ray::") for name in names), names  # and a worker or agent
    exposed = sorted(entry for entry in seen if not _loopback(entry[1]))
    assert not exposed, f"listening beyond loopback: {exposed}"
    assert dashboard_env is not None  # the process that would probe the cloud metadata service
    assert dashboard_env.get("RAY_USAGE_STATS_ENABLED") == "0"
    assert dashboard_env.get("http_proxy", "").startswith("http://127.0.0.1:")
    assert "Token authentication is enabled" not in err.decode()


def test_the_bitsandbytes_kernel_fetch_warning_is_silenced_before_it_can_print():
    """On AVX512-BF16 CPUs bitsandbytes warns that it could not fetch a hub kernel (offline);
    `pid-bench parity` printed it. Its logger is quieted when pid_models is imported."""
    import logging

    import pid_models  # noqa: F401

    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    assert logger.getEffectiveLevel() >= logging.ERROR
