"""Benchmarks behind ``python tools/benchmark.py <name>``; each module has ``add_arguments``
and ``run(args) -> dict``. Figures are ratios against a baseline measured in the same run."""
