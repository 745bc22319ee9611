"""ClusterSettings: the ``[cluster]`` table of config.toml (multi-host mode).

Validated with pydantic (strict types, ranges, unknown keys refused); an
error becomes ``ConfigError`` naming ``cluster.<key>``, the value and the
rule. Times are integer milliseconds. Every daemon and router of one
cluster must agree on ``redis_url``, ``prefix`` and ``shards`` (the shard
count is recorded in Redis at first use and checked by every later client).
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from predictor.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
#: Environment variable naming the member when ``member_id`` is '' (systemd ``%i``).
MEMBER_ENV = "PREDICTOR_CLUSTER_MEMBER"
_SCHEMES = ("redis://", "rediss://", "unix://")


class ClusterSettings(BaseModel):
    """Multi-host settings; the defaults suit three daemons on one LAN."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", description="redis://, rediss:// or unix:// URL"
    )
    prefix: str = Field("predictor", description="key prefix shared by the cluster")
    shards: int = Field(64, ge=1, le=16_384, description="fixed shard count of the cluster")
    group: str = Field("predictord", description="consumer group on every tick stream")
    member_id: str = Field("", description="'' = $PREDICTOR_CLUSTER_MEMBER or <hostname>-<pid>")
    checkpoint_interval: int = Field(
        100, ge=1, le=10_000_000, description="ticks of one asset between checkpoints"
    )
    checkpoint_max_age_ms: int = Field(
        5_000, ge=10, le=3_600_000, description="an asset with unsaved ticks is saved this often"
    )
    heartbeat_ttl_ms: int = Field(
        3_000, ge=200, le=600_000, description="a member silent this long is dead"
    )
    heartbeat_interval_ms: int = Field(
        0, ge=0, le=300_000, description="0 = heartbeat_ttl_ms / 3; below ttl / 2"
    )
    refresh_ms: int = Field(
        250, ge=10, le=60_000, description="membership and ownership check period"
    )
    handoff_timeout_ms: int = Field(
        5_000, ge=0, le=600_000, description="wait for final checkpoints of a moving shard"
    )
    stream_maxlen: int = Field(
        1_000_000, ge=1_000, le=1_000_000_000, description="approximate bound per tick stream"
    )
    predictions_maxlen: int = Field(
        100_000, ge=100, le=1_000_000_000, description="approximate bound per predictions stream"
    )
    publish_predictions: bool = Field(True, description="also XADD predictions per shard")
    read_count: int = Field(1024, ge=1, le=100_000, description="entries per shard per read")
    block_ms: int = Field(100, ge=1, le=10_000, description="longest idle wait of the reader")
    io_timeout_ms: int = Field(2_000, ge=50, le=60_000, description="socket timeout per call")
    buffer_limit: int = Field(
        100_000, ge=1, le=100_000_000, description="predictions held while Redis is away"
    )

    @field_validator("redis_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(_SCHEMES):
            raise ValueError(f"must start with one of {', '.join(_SCHEMES)}")
        return v

    @field_validator("prefix", "group")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("must be 1 to 64 letters, digits, '_', '.' or '-'")
        return v

    @field_validator("member_id")
    @classmethod
    def _member(cls, v: str) -> str:
        if v and not _NAME.match(v):
            raise ValueError("must be '' or 1 to 64 letters, digits, '_', '.' or '-'")
        return v

    @model_validator(mode="after")
    def _periods(self) -> ClusterSettings:
        if self.heartbeat_interval_ms and 2 * self.heartbeat_interval_ms >= self.heartbeat_ttl_ms:
            raise ValueError(
                f"heartbeat_interval_ms ({self.heartbeat_interval_ms}) must be below "
                f"heartbeat_ttl_ms / 2 ({self.heartbeat_ttl_ms // 2})"
            )
        if 2 * self.refresh_ms > self.heartbeat_ttl_ms:
            raise ValueError(
                f"refresh_ms ({self.refresh_ms}) must be at most heartbeat_ttl_ms / 2 "
                f"({self.heartbeat_ttl_ms // 2}) so a takeover fits in the TTL + 2 s bound"
            )
        if self.block_ms >= self.io_timeout_ms:
            raise ValueError(
                f"block_ms ({self.block_ms}) must be below io_timeout_ms ({self.io_timeout_ms})"
            )
        return self

    @property
    def heartbeat_period_ms(self) -> int:
        """Milliseconds between two heartbeats (explicit, or a third of the TTL)."""
        return self.heartbeat_interval_ms or max(1, self.heartbeat_ttl_ms // 3)

    def resolved_member_id(self, environ: Mapping[str, str] | None = None) -> str:
        """``member_id``, else ``$PREDICTOR_CLUSTER_MEMBER``, else ``<hostname>-<pid>``.

        Generated ids are sanitised to the allowed characters; an explicit
        environment value must already be valid (``ConfigError`` otherwise).
        """
        if self.member_id:
            return self.member_id
        env = (os.environ if environ is None else environ).get(MEMBER_ENV, "")
        if env:
            if not _NAME.match(env):
                raise ConfigError(MEMBER_ENV, env, "1 to 64 letters, digits, '_', '.' or '-'")
            return env
        host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:48] or "host"
        return f"{host}-{os.getpid()}"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ClusterSettings:
        """Validate a ``[cluster]`` table; errors become ``ConfigError`` naming the key."""
        try:
            return cls(**dict(data))
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            field = f"cluster.{loc}" if loc else "cluster"
            raise ConfigError(field, err.get("input"), err["msg"]) from exc

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> ClusterSettings | None:
        """The ``[cluster]`` table of a config file, or ``None`` when absent (single host)."""
        with Path(path).open("rb") as fh:
            doc = tomllib.load(fh)
        table = doc.get("cluster")
        if table is None:
            return None
        if not isinstance(table, dict):
            raise ConfigError("cluster", table, "a TOML table")
        return cls.from_mapping(table)
