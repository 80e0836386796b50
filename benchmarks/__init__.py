"""Benchmarks: ratios measured side by side in one run (see the README for results and commands)."""
