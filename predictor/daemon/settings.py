"""DaemonSettings: the ``[daemon]`` table of config.toml (service, not model).

Validated with pydantic (strict types, ranges, unknown keys refused). Empty
strings mean "derive the default": endpoints and the admin socket from the
runtime directory (``predictor.ipc.endpoints``), the snapshot directory from
``$STATE_DIRECTORY`` (systemd's ``StateDirectory=``) or ``./state``.
"""

from __future__ import annotations

import itertools
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from predictor.errors import ConfigError

STATE_ENV = "STATE_DIRECTORY"
DEFAULT_STATE_DIR = Path("state")

PositiveInt = Annotated[int, Field(ge=1)]


class DaemonSettings(BaseModel):
    """Service settings of ``predictord``; every field has a safe default."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    ticks_endpoint: str = Field("", description="PULL endpoint; '' = ipc://<rundir>/ticks.sock")
    predictions_endpoint: str = Field(
        "", description="PUB endpoint; '' = ipc://<rundir>/predictions.sock"
    )
    admin_socket: str = Field("", description="admin Unix socket; '' = <rundir>/admin.sock")
    admin_group: str = Field("", description="group allowed on the admin socket besides owner/root")
    metrics_host: str = Field("127.0.0.1", description="Prometheus exposition address")
    metrics_port: int = Field(9108, ge=-1, le=65535, description="-1 disables, 0 picks a free port")
    snapshot_dir: str = Field("", description="'' = $STATE_DIRECTORY or ./state")
    snapshot_interval_s: float = Field(60.0, gt=0, le=86_400, description="periodic snapshots")
    snapshot_keep: int = Field(5, ge=1, le=1000, description="snapshots retained")
    restore: bool = Field(True, description="restore the newest verified snapshot at start")
    drain_budget_s: float = Field(25.0, gt=0, le=3600, description="SIGTERM drain budget")
    max_drain: int = Field(4096, ge=1, le=1_000_000, description="ticks taken per loop iteration")
    batch_buckets: tuple[PositiveInt, ...] = Field(
        (1, 8, 64, 512), description="padded batch sizes, increasing"
    )
    initial_capacity: int = Field(64, ge=1, le=10_000_000, description="asset slots at start")
    max_assets: int = Field(100_000, ge=1, le=10_000_000, description="refuse new assets beyond")
    max_msg_bytes: int = Field(
        1 << 20,
        ge=64,
        le=1 << 30,
        description="largest tick message (bytes); a larger one is dropped and counted as "
        "too_large, its sender keeps its connection (libzmq's ZMQ_MAXMSGSIZE is 16x this: "
        "only a message above that costs the sender its connection)",
    )
    rcvhwm: int = Field(100_000, ge=1, description="PULL receive high-water mark")
    sndhwm: int = Field(100_000, ge=1, description="PUB send high-water mark")
    shm_name: str = Field("predictor-latest", description="/dev/shm segment; '' disables")
    shed: Literal["auto"] | int = Field("auto", description="'auto' or a pinned depth")
    shed_window: int = Field(
        128, ge=1, le=1_000_000, description="steps per load-shedding decision window"
    )
    shed_refit_doublings: int = Field(
        2,
        ge=0,
        le=12,
        description="times load shedding may double refit_interval before cutting the depth "
        "(2: K -> 2K -> 4K; 0: never)",
    )
    emergency_dump_dir: str = Field("", description="'' = <snapshot_dir>/emergency")
    device: Literal["cpu", "gpu", "auto"] = Field("cpu", description="JAX platform")
    xla_mem_fraction: float = Field(0.7, gt=0, le=1, description="XLA_PYTHON_CLIENT_MEM_FRACTION")
    xla_allocator: Literal["platform", "bfc", "default"] = Field(
        "platform", description="XLA_PYTHON_CLIENT_ALLOCATOR"
    )
    gpu_allow_growth: bool = Field(True, description="TF_FORCE_GPU_ALLOW_GROWTH")

    @field_validator("batch_buckets")
    @classmethod
    def _increasing(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(a >= b for a, b in itertools.pairwise(v)):
            raise ValueError("must be a non-empty strictly increasing list")
        return v

    @field_validator("shm_name")
    @classmethod
    def _shm_name(cls, v: str) -> str:
        if v and (
            not v.replace("-", "").replace("_", "").replace(".", "").isalnum() or len(v) > 200
        ):
            raise ValueError("must be letters, digits, '-', '_' or '.'")
        return v

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> DaemonSettings:
        """Validate a ``[daemon]`` table; errors become ``ConfigError`` naming the key."""
        try:
            return cls(**_tomlish(data))
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"]) or "daemon"
            raise ConfigError(f"daemon.{loc}", err.get("input"), err["msg"]) from exc

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> DaemonSettings:
        """The ``[daemon]`` table of a config file (defaults when absent)."""
        with Path(path).open("rb") as fh:
            doc = tomllib.load(fh)
        table = doc.get("daemon", {})
        if not isinstance(table, dict):
            raise ConfigError("daemon", table, "a TOML table")
        return cls.from_mapping(table)

    def state_dir(self, environ: Mapping[str, str] | None = None) -> Path:
        """Snapshot directory (see module doc); not created here."""
        env = os.environ if environ is None else environ
        if self.snapshot_dir:
            return Path(self.snapshot_dir)
        value = env.get(STATE_ENV, "")
        return Path(value.split(":")[0]) if value else DEFAULT_STATE_DIR.absolute()


def _tomlish(data: Mapping[str, Any]) -> dict[str, Any]:
    """TOML arrays arrive as lists; the model stores tuples."""
    out = dict(data)
    if isinstance(out.get("batch_buckets"), list):
        out["batch_buckets"] = tuple(out["batch_buckets"])
    return out
