"""Benchmarks of a CRI endpoint (Calyx by default) beside a reference runtime and the runc floor.

Run with ``python -m bench --help``. Nothing here is imported by the daemon.
"""
