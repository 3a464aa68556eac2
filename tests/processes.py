"""Kept for ``benchmarks/bench_cooperative.py`` until it imports :mod:`shared.procs` itself; use that."""

from shared.procs import BIN, running, script

__all__ = ["BIN", "running", "script"]
