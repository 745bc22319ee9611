"""``predictord`` entry point: config, environment for XLA, then the service.

Usage::

    predictord [--config PATH] [--device cpu|gpu|auto] [--check-config]

The config file is ``--config``, else ``$PREDICTOR_CONFIG``, else none: the
embedded defaults (``PredictorConfig()`` with ``PREDICTOR_<FIELD>``
overrides, ``DaemonSettings()``). The file is read with ``tomllib``; its
``[predictor]`` and ``[daemon]`` tables are validated before anything
starts.

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
import json
import os
import sys
from collections.abc import MutableMapping, Sequence

from predictor.daemon.loading import load_config
from predictor.daemon.settings import DaemonSettings
from predictor.errors import ConfigError
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
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the daemon; see the module docstring for the exit status."""
    args = _parser().parse_args(argv)
    path = args.config or os.environ.get(CONFIG_ENV) or None
    try:
        loaded = load_config(path)
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
    env = apply_environment(loaded.daemon, args.device)

    from predictor.daemon.service import run_service  # imports JAX: after the environment

    return run_service(loaded, environment=env)


if __name__ == "__main__":
    sys.exit(main())
