"""The synthetic processes of the benchmarks: ``predictor.synthetic``, under its old name."""

from predictor.synthetic import (
    FloatArray,
    IntArray,
    JumpPath,
    Piecewise,
    ar1,
    brownian,
    fbm,
    fgn,
    fgn_autocovariance,
    merton,
    multifractional,
    ou,
    piecewise,
    stable_increments,
)

__all__ = [
    "FloatArray",
    "IntArray",
    "JumpPath",
    "Piecewise",
    "ar1",
    "brownian",
    "fbm",
    "fgn",
    "fgn_autocovariance",
    "merton",
    "multifractional",
    "ou",
    "piecewise",
    "stable_increments",
]
