"""Benchmark sections for scripts/benchmark.py (one module per section)."""
