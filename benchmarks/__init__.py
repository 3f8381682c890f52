"""Benchmarks: `python -m benchmarks` (transports) and `python -m benchmarks.core_step` (core)."""
