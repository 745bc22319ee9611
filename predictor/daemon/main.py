"""``predictord`` entry point: config, environment for XLA, then the service.

Usage::

    predictord [--config PATH] [--device cpu|gpu|auto] [--check-config] [--version]

The config file is ``--config``, else ``$PREDICTOR_CONFIG``, else none: the
embedded defaults (``PredictorConfig()`` with ``PREDICTOR_<FIELD>``
overrides, ``DaemonSettings()``). The file is read with ``tomllib``; its
``[predictor]`` and ``[daemon]`` tables are validated before anything
starts; ``PREDICTOR_DAEMON_<FIELD>`` variables override ``[daemon]`` fields
(with or without a file), and any other unknown ``PREDICTOR_*`` variable is
refused, naming the nearest valid one.

Before anything heavy, the entry point checks that every address it will
bind is free and bindable (``check_binds``): the tcp endpoints, the metrics
port, the directories of the ipc endpoints and of the admin socket. A
failure is one ``bind_failed`` log line naming the setting, the address and
the reason, and exit status 1 (no traceback).

JAX reads its environment when it is imported, so this module imports
nothing of JAX: it sets

* ``JAX_PLATFORMS`` from ``--device`` (or, without it and without an
  explicit ``$JAX_PLATFORMS``, from ``daemon.device``): cpu -> ``cpu``,
  gpu -> ``cuda``, auto -> left to JAX;
* ``XLA_PYTHON_CLIENT_MEM_FRACTION``, ``XLA_PYTHON_CLIENT_ALLOCATOR``
  (unless ``default``) and ``TF_FORCE_GPU_ALLOW_GROWTH`` from the
  ``[daemon]`` table, unless already set in the environment (an operator's
  explicit environment wins, like ``PREDICTOR_<FIELD>`` does);
* ``JAX_COMPILATION_CACHE_DIR`` to ``<snapshot dir>/xla-cache`` unless set,
  so that a restart loads its compiled graphs from disk, and
  ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` to 0 unless set, so that
  the small graphs (gather, scatter, cold-state construction) are cached
  too (the library itself never sets either: only this entry point does),

and only then imports ``predictor.daemon.service``.

Exit status: 0 after a clean stop (or a valid ``--check-config``), 1 when
the daemon fails or another instance holds the runtime directory, 2 for an
invalid config or usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import importlib.metadata
import json
import os
import socket
import sys
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import NamedTuple

import zmq

import predictor
from predictor.daemon.lifecycle import LOCK_NAME, AlreadyRunningError, acquire_lock
from predictor.daemon.loading import LoadedConfig, load_config
from predictor.daemon.logging import configure, get_logger
from predictor.daemon.settings import DaemonSettings
from predictor.errors import ConfigError
from predictor.ipc.endpoints import UNIX_PATH_MAX, check_endpoint, default_endpoints, ipc_path
from predictor.ipc.endpoints import runtime_dir as default_runtime_dir
from predictor.xla import configure_deterministic_cpu

CONFIG_ENV = "PREDICTOR_CONFIG"
PLATFORMS = {"cpu": "cpu", "gpu": "cuda"}
#: Persistent XLA compilation cache, under the state directory: a restart
#: loads the compiled graphs instead of compiling them again (minutes on a
#: small CPU).
XLA_CACHE_DIR = "xla-cache"


def apply_environment(
    settings: DaemonSettings, device: str | None, environ: MutableMapping[str, str] | None = None
) -> dict[str, str]:
    """Set the JAX/XLA variables (see the module docstring); returns the effective values."""
    env = os.environ if environ is None else environ
    if device is not None:
        if device in PLATFORMS:
            env["JAX_PLATFORMS"] = PLATFORMS[device]
        else:
            env.pop("JAX_PLATFORMS", None)
    elif "JAX_PLATFORMS" not in env and settings.device in PLATFORMS:
        env["JAX_PLATFORMS"] = PLATFORMS[settings.device]
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", repr(settings.xla_mem_fraction))
    if settings.xla_allocator != "default":
        env.setdefault("XLA_PYTHON_CLIENT_ALLOCATOR", settings.xla_allocator)
    env.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true" if settings.gpu_allow_growth else "false")
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(settings.state_dir(env) / XLA_CACHE_DIR))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    configure_deterministic_cpu(env)
    names = (
        "JAX_PLATFORMS",
        "XLA_PYTHON_CLIENT_MEM_FRACTION",
        "XLA_PYTHON_CLIENT_ALLOCATOR",
        "TF_FORCE_GPU_ALLOW_GROWTH",
        "JAX_COMPILATION_CACHE_DIR",
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
        "XLA_FLAGS",
    )
    return {k: env[k] for k in names if k in env}


def package_version() -> str:
    """The installed distribution's version, else the package's ``__version__``."""
    try:
        return importlib.metadata.version("predictor")
    except importlib.metadata.PackageNotFoundError:
        return str(predictor.__version__)


class BindProblem(NamedTuple):
    """An address the daemon could not bind: the setting naming it, the address, why."""

    setting: str
    address: str
    reason: str


def _dir_problem(
    setting: str, address: str, directory: Path, *, create: bool
) -> BindProblem | None:
    """Whether a socket file can be created in ``directory`` (created first if ``create``)."""
    try:
        if create:
            directory.mkdir(parents=True, exist_ok=True)
        if not directory.is_dir():
            return BindProblem(setting, address, f"directory {directory} does not exist")
        if not os.access(directory, os.W_OK | os.X_OK):
            return BindProblem(setting, address, f"directory {directory} is not writable")
    except OSError as exc:
        return BindProblem(setting, address, f"cannot create {directory}: {exc.strerror}")
    return None


def _zmq_problem(setting: str, endpoint: str) -> BindProblem | None:
    try:
        check_endpoint(endpoint)
    except ValueError as exc:
        return BindProblem(setting, endpoint, str(exc))
    path = ipc_path(endpoint)
    if path is not None:
        # Never bound here: libzmq replaces an existing ipc socket file.
        return _dir_problem(setting, endpoint, path.parent, create=False)
    if not endpoint.startswith("tcp://") or endpoint.endswith(":*"):
        return None
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.PULL)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        return BindProblem(setting, endpoint, exc.strerror)
    finally:
        sock.close(linger=0)
    return None


def _tcp_problem(setting: str, host: str, port: int) -> BindProblem | None:
    address = f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, sockaddr = infos[0]
        with socket.socket(family, kind, proto) as sock:
            # As the HTTP server sets it: a port left in TIME_WAIT is bindable.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
    except OSError as exc:
        return BindProblem(setting, address, exc.strerror or str(exc))
    return None


def check_binds(
    settings: DaemonSettings, environ: Mapping[str, str] | None = None
) -> BindProblem | None:
    """The first address of ``settings`` the daemon could not bind, or None.

    tcp endpoints and the metrics port are bound and released at once; ipc
    endpoints and the admin socket need an existing, writable directory
    (the admin socket's is created, as the admin server would).
    """
    defaults = default_endpoints(environ, create=False)
    ticks = settings.ticks_endpoint or defaults.ticks
    preds = settings.predictions_endpoint or defaults.predictions
    if ticks == preds:
        return BindProblem("predictions_endpoint", preds, "the same address as ticks_endpoint")
    for setting, endpoint in (("ticks_endpoint", ticks), ("predictions_endpoint", preds)):
        problem = _zmq_problem(setting, endpoint)
        if problem is not None:
            return problem
    if settings.metrics_port > 0:
        problem = _tcp_problem("metrics_port", settings.metrics_host, settings.metrics_port)
        if problem is not None:
            return problem
    admin = Path(settings.admin_socket) if settings.admin_socket else defaults.admin
    if len(os.fsencode(admin)) > UNIX_PATH_MAX:
        return BindProblem("admin_socket", str(admin), f"longer than {UNIX_PATH_MAX} bytes")
    return _dir_problem("admin_socket", str(admin), admin.parent, create=True)


def _report_bind(problem: BindProblem) -> int:
    get_logger("predictor.daemon").error(
        "bind_failed",
        setting=f"daemon.{problem.setting}",
        address=problem.address,
        reason=problem.reason,
        hint=f"another daemon may hold it; set {problem.setting} in [daemon] "
        f"or PREDICTOR_DAEMON_{problem.setting.upper()}",
    )
    return 1


def _held_by_another(environ: Mapping[str, str]) -> bool:
    """Whether another daemon holds this runtime directory (the service reports it)."""
    rundir = default_runtime_dir(environ)
    try:
        rundir.mkdir(mode=0o750, parents=True, exist_ok=True)
        fd = acquire_lock(rundir / LOCK_NAME)
    except AlreadyRunningError:
        return True
    except OSError:
        return False
    os.close(fd)
    return False


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="predictord",
        description="Tick-by-tick ensemble forecasting daemon (ZeroMQ in, ZeroMQ out).",
    )
    p.add_argument(
        "--config",
        metavar="PATH",
        help=f"config.toml (default: ${CONFIG_ENV}, else the embedded defaults)",
    )
    p.add_argument(
        "--device",
        choices=("cpu", "gpu", "auto"),
        help="JAX platform (default: daemon.device of the config)",
    )
    p.add_argument(
        "--check-config",
        action="store_true",
        help="validate the config, print it as JSON and exit (0 valid, 2 invalid)",
    )
    p.add_argument("--version", action="version", version=f"predictord {package_version()}")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the daemon; see the module docstring for the exit status."""
    args = _parser().parse_args(argv)
    path = args.config or os.environ.get(CONFIG_ENV) or None
    try:
        loaded = load_config(path)
        if loaded.path is None:
            # The embedded defaults, with the PREDICTOR_DAEMON_<FIELD> overrides.
            loaded = _with_env_settings(loaded)
    except (ConfigError, OSError) as exc:
        print(f"predictord: invalid config {path}: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(
            json.dumps(
                {
                    "ok": True,
                    "path": None if loaded.path is None else str(loaded.path),
                    "sha256": loaded.sha256,
                    "predictor": loaded.predictor.to_dict(),
                    "daemon": loaded.daemon.model_dump(mode="json"),
                },
                indent=2,
            )
        )
        return 0
    configure(level=loaded.daemon.log_level)
    if not _held_by_another(os.environ):
        problem = check_binds(loaded.daemon)
        if problem is not None:
            return _report_bind(problem)
    env = apply_environment(loaded.daemon, args.device)

    from predictor.daemon.service import run_service  # imports JAX: after the environment

    try:
        return run_service(loaded, environment=env)
    except (zmq.ZMQError, OSError) as exc:
        # Taken between the check and the service's bind: name it if it still fails.
        if isinstance(exc, OSError) and exc.errno not in _BIND_ERRNOS:
            raise
        problem = check_binds(loaded.daemon)
        if problem is None:
            raise
        return _report_bind(problem)


_BIND_ERRNOS = frozenset(
    {errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES, errno.ENOENT, errno.EPERM}
)


def _with_env_settings(loaded: LoadedConfig) -> LoadedConfig:
    """The embedded defaults' settings with the environment's overrides applied."""
    settings = DaemonSettings.from_mapping({})
    return loaded if settings == loaded.daemon else dataclasses.replace(loaded, daemon=settings)


if __name__ == "__main__":
    sys.exit(main())
