"""pid-bench: benchmarking and evaluation harness for NVIDIA's PiD decoder."""

__version__ = "0.1.0"
