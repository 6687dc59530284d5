"""The metrics' exceptions and warning. Imports nothing: every other module of the package may
raise them, including the torch-free ones the row schema reads."""

from __future__ import annotations


class MetricUnavailable(Exception):
    """A metric cannot be computed here (weights missing, input absent): a null with a reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MetricUnavailableWarning(UserWarning):
    """Once per metric per process: a metric left null for missing weights or a failure."""


class RegistryFrozenError(RuntimeError):
    """A metric registered after the registry was frozen (see `pid_bench.metrics.registry`)."""
