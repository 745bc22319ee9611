"""Test-wide settings: CPU JAX with float64, as in production on this machine.

Compiled graphs go to a persistent XLA cache (``build/test-jax-cache`` of this
checkout) shared by the xdist workers and by the daemon subprocesses the
tests start, so each graph is compiled once rather than once per process.
"""

import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One cache per checkout (under its build/ directory): entries never travel
# between trees or sessions of other checkouts on the same host.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", str(Path(__file__).parent.parent / "build" / "test-jax-cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# A size limit turns on the cache's file lock: without it an entry is written
# in place, and a worker reading it mid-write can abort inside XLA.
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))

from predictor.xla import configure_deterministic_cpu

# The tests are an entry point: batched and single steps must round alike.
configure_deterministic_cpu()

import predictor.core  # noqa: E402, F401  (enables jax_enable_x64 before any array exists)
from tests.redis_fixture import redis_server  # noqa: E402, F401  (fixture: a real redis-server)
