"""Benchmarks (not tests): `python -m bench.backends` compares the exported runtimes."""
