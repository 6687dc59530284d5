"""The one metric registry: frozen at import, named metrics through one door, "did you mean"."""

from __future__ import annotations

import sys

import pytest

from pid_bench.metrics import (
    METRICS,
    Metric,
    RegistryFrozenError,
    get_metric,
    register_named_metric,
)


def _stand_in(name: str) -> Metric:
    return Metric(name, "no_reference", True, lambda image, context: image.mean((1, 2, 3)), "x")


def test_the_registry_is_frozen_after_import():
    assert METRICS.frozen
    with pytest.raises(RegistryFrozenError, match="frozen"):
        METRICS.register(_stand_in("late"))
    with pytest.raises(RegistryFrozenError, match="register_named_metric"):
        METRICS["late"] = _stand_in("late")
    with pytest.raises(RegistryFrozenError):
        del METRICS["psnr"]
    assert "late" not in METRICS


def test_with_metrics_is_a_copy_and_leaves_the_registry_as_it_is():
    copy = METRICS.with_metrics(_stand_in("extra"))
    assert copy.frozen and list(copy) == [*METRICS, "extra"]
    assert "extra" not in METRICS and copy["psnr"] is METRICS["psnr"]


def test_an_unknown_name_gets_the_closest_known_one():
    with pytest.raises(KeyError, match="unknown metric 'lpip'; did you mean 'lpips'\\?"):
        get_metric("lpip")
    with pytest.raises(KeyError, match="did you mean 'pyiqa:brisque'\\?"):
        get_metric("pyiqa:brisqe")


def test_named_metrics_are_resolved_once_and_kept(tmp_path, monkeypatch):
    (tmp_path / "reg_scorer.py").write_text("def score(image, context):\n    return 0.5\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        first = register_named_metric("reg_scorer:score")
        assert get_metric("reg_scorer:score") is first and first.backend == "custom"
        assert get_metric("pyiqa:brisque") is get_metric("pyiqa:brisque")
        assert "reg_scorer:score" in METRICS.named() and "reg_scorer:score" not in METRICS
    finally:
        sys.modules.pop("reg_scorer", None)
    with pytest.raises(KeyError, match="neither"):
        register_named_metric("psnr")
