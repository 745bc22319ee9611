"""Test-wide settings: CPU JAX with float64, as in production on this machine."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import predictor.core  # noqa: E402,F401  (enables jax_enable_x64 before any array exists)
