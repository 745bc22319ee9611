"""Exceptions and warnings of the predictor.

Errors are raised for conditions a caller must handle; warnings are
conditions the predictor survives (it degrades and logs them).
"""

from __future__ import annotations


class PredictorError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(PredictorError, ValueError):
    """A configuration value is missing, of the wrong type or out of range.

    The message always names the field, the value and the allowed range.

    >>> str(ConfigError("cusum_h", -1.0, "float in (0.0, 10000.0]"))
    "config field 'cusum_h': got -1.0; allowed: float in (0.0, 10000.0]"
    """

    def __init__(self, field: str, value: object, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"config field {field!r}: got {value!r}; allowed: {allowed}")


class DomainError(PredictorError, ValueError):
    """An observation outside the admissible domain (non-finite, > 20 sigma)."""


class IntegrityError(PredictorError, ValueError):
    """A persisted artefact failed its SHA-256 check: it must not be loaded.

    It is a ``ValueError``, so the specification's ``except ValueError``
    around ``load_snapshot`` catches it; a checksum failure says
    "Checksum mismatch".

    >>> issubclass(IntegrityError, ValueError)
    True
    """


class ConfigMutationError(PredictorError):
    """A configuration mutation was refused (locked key, invalid value, race)."""


class StalenessWarning(UserWarning):
    """A tick arrived later than ``staleness_ttl_ns``: weights are frozen."""


class FrequencyWarning(UserWarning):
    """Ticks arrive sparser than ``besov_nyquist_interval_ns``: WTMM may alias."""
