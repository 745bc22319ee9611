"""predictor: tick-by-tick ensemble forecasting of many time series."""

__version__ = "0.1.0"
