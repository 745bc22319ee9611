"""SIA: the identification engine (docs/model.md, "Identification").

Pure, fixed-shape JAX functions with NamedTuple states:

* ``window``: mean/std of the ring buffer and the window z-score;
* ``wtmm``: Hölder exponent of the z-window by wavelet-transform modulus maxima;
* ``residuals``: EMA volatility, standardised residual, kurtosis,
  log-squared residual;
* ``cusum``: adaptive CUSUM (mean channels on u, scale channels on log e^2)
  with grace period and re-referencing after each alarm.
"""

from predictor.core.sia.cusum import (
    CusumOut,
    CusumState,
    adaptive_threshold,
    cusum_init,
    cusum_reset,
    cusum_update,
    siegmund_arl,
)
from predictor.core.sia.residuals import (
    ResidualOut,
    ResidualState,
    kurtosis,
    residual_init,
    residual_update,
)
from predictor.core.sia.window import history, standardize, window_stats
from predictor.core.sia.wtmm import (
    WTMMAnalysis,
    cwt,
    holder_exponent,
    legendre_spectrum,
    link_maxima,
    modulus_maxima,
    partition_function,
    weighted_slopes,
    wtmm_analysis,
    wtmm_layout,
)

__all__ = [
    "CusumOut",
    "CusumState",
    "ResidualOut",
    "ResidualState",
    "WTMMAnalysis",
    "adaptive_threshold",
    "cusum_init",
    "cusum_reset",
    "cusum_update",
    "cwt",
    "history",
    "holder_exponent",
    "kurtosis",
    "legendre_spectrum",
    "link_maxima",
    "modulus_maxima",
    "partition_function",
    "residual_init",
    "residual_update",
    "siegmund_arl",
    "standardize",
    "weighted_slopes",
    "window_stats",
    "wtmm_analysis",
    "wtmm_layout",
]
