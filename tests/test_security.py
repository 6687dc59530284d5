"""Security rules that hold across the code base: no pickle loading, safe YAML, loopback Ray."""

from __future__ import annotations

import ast
from pathlib import Path

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

    from pid_bench import runner

    seen = {}
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    runner._init_ray(None, 2)
    assert seen["_node_ip_address"] == "127.0.0.1" and seen["dashboard_host"] == "127.0.0.1"
    assert seen["include_dashboard"] is False
