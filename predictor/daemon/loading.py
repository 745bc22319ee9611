"""Config loading of ``predictord``: one file, two validated tables.

``load_config(path)`` reads a config.toml (or, for None, the embedded
defaults: ``PredictorConfig()`` with ``PREDICTOR_<FIELD>`` overrides and
``DaemonSettings()``) and validates its ``[predictor]`` and ``[daemon]``
tables before anything starts. It imports nothing of JAX, so the entry
point can load a config before it sets JAX's environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from predictor.config import PredictorConfig, env_overrides
from predictor.daemon.settings import DaemonSettings
from predictor.errors import ConfigError


@dataclass(frozen=True)
class LoadedConfig:
    """A validated configuration and where it came from.

    ``path`` is None for the embedded defaults; ``sha256`` is the hex digest
    of the file's bytes (of the canonical JSON of both tables when embedded).
    """

    predictor: PredictorConfig
    daemon: DaemonSettings
    path: Path | None
    sha256: str


def load_config(path: str | os.PathLike[str] | None) -> LoadedConfig:
    """Read and validate a config file (or the embedded defaults for None).

    Raises ``ConfigError`` naming the offending key, or ``OSError`` if the
    file cannot be read.
    """
    if path is None:
        cfg = PredictorConfig.from_dict(env_overrides())
        settings = DaemonSettings.from_mapping({})
        canonical = json.dumps(
            {"predictor": cfg.to_dict(), "daemon": settings.model_dump(mode="json")},
            sort_keys=True,
        )
        return LoadedConfig(cfg, settings, None, hashlib.sha256(canonical.encode()).hexdigest())
    p = Path(path)
    raw = p.read_bytes()
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError("<file>", str(p), f"valid UTF-8 TOML ({exc})") from exc
    cfg = PredictorConfig.from_toml(p)
    table = doc.get("daemon", {})
    if not isinstance(table, dict):
        raise ConfigError("daemon", table, "a TOML table")
    settings = DaemonSettings.from_mapping(table)
    return LoadedConfig(cfg, settings, p.absolute(), hashlib.sha256(raw).hexdigest())


class LiveConfig:
    """The configuration in force; a reload replaces parts of it on the loop.

    ``loaded`` is what the file said when last applied (its path and hash);
    ``predictor`` and ``settings`` are what runs, which differ from the file
    where a change needs a re-initialisation or a restart.
    """

    def __init__(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded
        self.predictor = loaded.predictor
        self.settings = loaded.daemon

    @property
    def path(self) -> Path | None:
        """The config file (None: embedded defaults)."""
        return self.loaded.path
