"""Benchmarks for shardproxy: `run.py` (end to end against nutcracker and a direct redis-server,
driven by redis-benchmark) and `micro.py` (timeit of the pure hot-path functions).

See benchmarks/README.md for how to run them and how to read the figures.
"""
