"""TuningSettings: the ``[tuning]`` table of config.toml.

``locked``: predictor fields that tuning must never search nor export, on
top of ``predictor.tuning.space.LOCKED_FIELDS``. ``mutations_log``: the
audit trail of config mutations (JSON lines); empty means
``mutations.log`` beside the config file, a relative path is taken from the
config file's directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from predictor.config import FIELD_SPECS
from predictor.errors import ConfigError

DEFAULT_MUTATIONS_LOG = "mutations.log"


class TuningSettings(BaseModel):
    """Validated ``[tuning]`` table (strict types, unknown keys refused)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    locked: tuple[str, ...] = Field((), description="predictor fields tuning may not change")
    mutations_log: str = Field("", description="audit log; '' = mutations.log beside the file")

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> TuningSettings:
        """From a parsed config document (``ConfigError`` naming the bad key)."""
        table = doc.get("tuning", {})
        if not isinstance(table, Mapping):
            raise ConfigError("tuning", table, "a TOML table")
        data = dict(table)
        if isinstance(data.get("locked"), list):
            data["locked"] = tuple(data["locked"])
        try:
            settings = cls.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            key = "tuning." + ".".join(str(p) for p in err["loc"])
            raise ConfigError(key, err.get("input"), err["msg"]) from None
        unknown = [name for name in settings.locked if name not in FIELD_SPECS]
        if unknown:
            raise ConfigError("tuning.locked", unknown[0], "names of predictor fields")
        return settings

    def audit_log_path(self, config_path: Path) -> Path:
        """Where mutations of ``config_path`` are logged."""
        name = self.mutations_log or DEFAULT_MUTATIONS_LOG
        path = Path(name)
        return path if path.is_absolute() else config_path.parent / path


__all__ = ["DEFAULT_MUTATIONS_LOG", "TuningSettings"]
