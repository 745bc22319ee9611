"""Benchmarks: accuracy, change detection, speed, daemon, snapshots, tuning, reliability.

The package is an entry point, never imported by the library: it caps XLA's
CPU instruction set here, before any benchmark imports JAX, so that batched
and single steps round alike (``predictor.xla``).
"""

from predictor.xla import configure_deterministic_cpu

configure_deterministic_cpu()
