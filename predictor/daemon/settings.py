"""DaemonSettings: the ``[daemon]`` table of config.toml (service, not model).

Validated with pydantic (strict types, ranges, unknown keys refused). Empty
strings mean "derive the default": endpoints and the admin socket from the
runtime directory (``predictor.ipc.endpoints``), the snapshot directory from
``$STATE_DIRECTORY`` (systemd's ``StateDirectory=``) or ``./state``.

Sources, later wins: the defaults, the ``[daemon]`` table, then
``PREDICTOR_DAEMON_<FIELD>`` environment variables (``env_overrides``),
typed and validated like the table's values: ``true``/``false`` for
booleans, commas and/or spaces between the numbers of ``batch_buckets``.
A ``PREDICTOR_DAEMON_*`` variable that names no field is refused with the
nearest valid name.
"""

from __future__ import annotations

import itertools
import math
import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo

from predictor.config import nearest_name, register_env_names
from predictor.errors import ConfigError

STATE_ENV = "STATE_DIRECTORY"
DEFAULT_STATE_DIR = Path("state")
#: Prefix of the environment overrides of ``[daemon]`` fields.
DAEMON_ENV_PREFIX = "PREDICTOR_DAEMON_"
LOG_LEVELS = ("debug", "info", "warning", "error")

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
    max_future_skew_s: float = Field(
        300.0,
        ge=0,
        le=86_400,
        description="with the wall clock, a tick's ts more than this ahead of the daemon's "
        "clock is refused as implausible_ts (as is one before 2000-01-01)",
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
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="lowest level of the log lines written"
    )

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
    def from_mapping(
        cls,
        data: Mapping[str, Any],
        *,
        env: bool = True,
        environ: Mapping[str, str] | None = None,
    ) -> DaemonSettings:
        """Validate a ``[daemon]`` table; errors become ``ConfigError`` naming the key.

        ``PREDICTOR_DAEMON_<FIELD>`` variables of ``environ`` (default:
        ``os.environ``) apply on top unless ``env`` is false; a bad one is a
        ``ConfigError`` naming the variable, its value and the allowed range.
        """
        overrides = env_overrides(environ) if env else {}
        table = {k: v for k, v in _tomlish(data).items() if k not in overrides}
        try:
            cls(**table)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"]) or "daemon"
            raise ConfigError(f"daemon.{loc}", err.get("input"), err["msg"]) from exc
        try:
            return cls(**table, **overrides)
        except ValidationError as exc:
            err = exc.errors()[0]
            name = str(err["loc"][0]) if err["loc"] else ""
            var = DAEMON_ENV_PREFIX + name.upper()
            raw = (os.environ if environ is None else environ).get(var, err.get("input"))
            raise ConfigError(var, raw, f"{describe_field(name)} ({err['msg']})") from exc

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


def env_names() -> list[str]:
    """Every ``PREDICTOR_DAEMON_<FIELD>`` variable, one per ``[daemon]`` field."""
    return [DAEMON_ENV_PREFIX + name.upper() for name in DaemonSettings.model_fields]


def describe_field(name: str) -> str:
    """The allowed values of a ``[daemon]`` field, e.g. ``int in [1, 1000]``.

    >>> describe_field("metrics_port")
    'int in [-1, 65535]'
    >>> describe_field("device")
    "one of 'cpu', 'gpu', 'auto'"
    """
    info: FieldInfo = DaemonSettings.model_fields[name]
    ann = info.annotation
    if typing.get_origin(ann) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(ann))
    if name == "shed":
        return "'auto' or an int (a pinned depth)"
    if name == "batch_buckets":
        return "increasing ints >= 1, separated by commas or spaces"
    if ann is bool:
        return "true or false"
    if ann is str:
        return "a string"
    lo, hi, lo_open, hi_open = -math.inf, math.inf, False, False
    for m in info.metadata:
        if isinstance(m, annotated_types.Ge):
            lo = float(m.ge)  # type: ignore[arg-type]
        elif isinstance(m, annotated_types.Gt):
            lo, lo_open = float(m.gt), True  # type: ignore[arg-type]
        elif isinstance(m, annotated_types.Le):
            hi = float(m.le)  # type: ignore[arg-type]
        elif isinstance(m, annotated_types.Lt):
            hi, hi_open = float(m.lt), True  # type: ignore[arg-type]
    kind = "int" if ann is int else "float"

    def show(x: float) -> str:
        return str(int(x)) if kind == "int" and math.isfinite(x) else repr(x)

    if math.isinf(hi):
        return f"{kind} {'>' if lo_open else '>='} {show(lo)}"
    return f"{kind} in {'(' if lo_open else '['}{show(lo)}, {show(hi)}{')' if hi_open else ']'}"


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Parse ``PREDICTOR_DAEMON_<FIELD>`` variables into typed ``[daemon]`` values.

    Unknown names in the family and values that do not parse raise
    ``ConfigError`` (the variable, its value, what is allowed); ranges are
    checked by the model.

    >>> env_overrides({"PREDICTOR_DAEMON_METRICS_PORT": "9200", "HOME": "/"})
    {'metrics_port': 9200}
    >>> try:
    ...     env_overrides({"PREDICTOR_DAEMON_METRICS_PROT": "9200"})
    ... except ConfigError as exc:
    ...     print(exc.allowed)
    a known variable; did you mean 'PREDICTOR_DAEMON_METRICS_PORT'?
    """
    environ = os.environ if environ is None else environ
    known = env_names()
    out: dict[str, Any] = {}
    for var in sorted(environ):
        if not var.startswith(DAEMON_ENV_PREFIX):
            continue
        if var not in known:
            near = nearest_name(var, known)
            allowed = (
                f"a known variable; did you mean {near!r}?"
                if near is not None
                else "a known variable (PREDICTOR_DAEMON_<FIELD> for a [daemon] field)"
            )
            raise ConfigError(var, environ[var], allowed)
        name = var[len(DAEMON_ENV_PREFIX) :].lower()
        out[name] = _parse_env(name, var, environ[var].strip())
    return out


def _parse_env(name: str, var: str, raw: str) -> Any:
    """One variable's text as the TOML value it stands for."""
    ann = DaemonSettings.model_fields[name].annotation
    try:
        if ann is bool:
            if raw.lower() not in ("true", "false"):
                raise ValueError(raw)
            return raw.lower() == "true"
        if ann is int:
            return int(raw)
        if ann is float:
            return float(raw)
        if name == "batch_buckets":
            return tuple(int(x) for x in raw.replace(",", " ").split())
        if name == "shed":
            return raw if raw == "auto" else int(raw)
    except ValueError as exc:
        raise ConfigError(var, raw, describe_field(name)) from exc
    return raw


# A misspelt top-level name (PREDICTOR_DEAMON_...) is refused by the
# predictor's own check; knowing these names lets it suggest the right one.
register_env_names(*env_names())


def _tomlish(data: Mapping[str, Any]) -> dict[str, Any]:
    """TOML arrays arrive as lists; the model stores tuples."""
    out = dict(data)
    if isinstance(out.get("batch_buckets"), list):
        out["batch_buckets"] = tuple(out["batch_buckets"])
    return out
