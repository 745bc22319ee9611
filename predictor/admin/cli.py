"""``predictorctl``: the operator's command for a running ``predictord``.

Admin commands talk to the daemon's admin socket (``predictor.admin.client``):
``status``, ``snapshot [PATH]``, ``reload [--reinit]``, ``vram``, ``assets``,
``shed [LEVEL|auto]``, ``forget ASSET``, ``drain``. Stream tools talk to its ZeroMQ sockets:
``feed`` pushes ticks, ``watch`` prints predictions live.

Global options, accepted before or after the subcommand: ``--json`` (machine
output: the daemon's reply object; JSON lines for ``watch``), ``--socket
PATH`` (default ``$PREDICTOR_ADMIN_SOCKET``, else
``$RUNTIME_DIRECTORY/admin.sock``, else ``./run/admin.sock``), ``--timeout S``.

Exit status: 0 success; 1 the daemon refused the command (``ok: false``),
``forget`` named an asset the daemon does not hold, or
``watch --timeout`` passed before ``--count`` predictions arrived; 2 usage or
connection errors. Every failure prints one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any, NoReturn

from predictor import __version__
from predictor.admin import render
from predictor.admin.client import (
    DEFAULT_TIMEOUT_S,
    AdminClient,
    AdminConnectionError,
    AdminError,
)
from predictor.admin.feed import SYNTHETIC, FeedError, FeedResult, feed, read_csv, synthetic_series
from predictor.admin.watch import WatchError, watch
from predictor.ipc.endpoints import default_endpoints
from predictor.tuning import cli as tune_cli
from predictor.xla import configure_deterministic_cpu

PROG = "predictorctl"
EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2

#: Seconds ``feed``/``watch`` wait for ``status`` when asking the daemon for
#: its endpoints (no ``--endpoint`` given).
_ENDPOINT_QUERY_TIMEOUT_S = 2.0
#: Default seconds ``drain`` waits for the exit (above the default drain budget, 25 s).
_DRAIN_WAIT_S = 60.0
#: Seconds between two checks of the admin socket while ``drain`` waits.
_DRAIN_POLL_S = 0.1


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (exit 2) instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


class _Io:
    """Where output goes, and in which form."""

    def __init__(self, as_json: bool, out: IO[str], err: IO[str]) -> None:
        self.as_json = as_json
        self.out = out
        self.err = err

    def line(self, text: str) -> None:
        # One write per line: another process may share the terminal (feed | watch).
        self.out.write(text + "\n")
        self.out.flush()

    def json(self, obj: Any, *, indent: int | None = 2) -> None:
        self.line(json.dumps(obj, indent=indent, sort_keys=True))

    def fail(self, reason: str) -> None:
        print(f"{PROG}: {reason}", file=self.err, flush=True)


# --- argument parsing ------------------------------------------------------


def _add_global_options(p: argparse.ArgumentParser, *, suppress: bool) -> None:
    """``--json``, ``--socket``, ``--timeout``.

    On subcommands the defaults are suppressed, so an option given before
    the subcommand is not reset by the subparser's default.
    """

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    g = p.add_argument_group("global options (before or after the subcommand)")
    g.add_argument(
        "--json", action="store_true", default=default(False), help="machine-readable output"
    )
    g.add_argument(
        "--socket",
        metavar="PATH",
        default=default(None),
        help="admin socket (default: $PREDICTOR_ADMIN_SOCKET, else "
        "$RUNTIME_DIRECTORY/admin.sock, else ./run/admin.sock)",
    )
    g.add_argument(
        "--timeout",
        metavar="S",
        type=_positive_float,
        default=default(DEFAULT_TIMEOUT_S),
        help=f"seconds to wait for the daemon (default {DEFAULT_TIMEOUT_S:g})",
    )


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0: {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer: {text!r}")
    return value


def _shed_level(text: str) -> str | int:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'auto' or a level number, got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"level must be a depth >= 1, got {value}")
    return value


def _package_version() -> str:
    """The installed distribution's version, else the package's ``__version__``."""
    import importlib.metadata

    try:
        return importlib.metadata.version("predictor")
    except importlib.metadata.PackageNotFoundError:
        return __version__


def build_parser() -> argparse.ArgumentParser:
    """The full ``predictorctl`` parser (``--help`` works on every subcommand)."""
    parser = _Parser(
        prog=PROG,
        description="Manage a running predictord: admin commands over its admin socket, "
        "feed and watch over its ZeroMQ sockets.",
        epilog="exit status: 0 success, 1 refused by the daemon, 2 usage or connection error",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {_package_version()}")
    _add_global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=description)
        _add_global_options(p, suppress=True)
        return p

    # --- admin commands (admin socket) ----------------------------------
    add("status", "uptime, endpoints, load, shed level, snapshot, config", "Show daemon status.")
    p = add(
        "snapshot",
        "write a snapshot now",
        "Ask the daemon to write a verified snapshot; prints its path, size and checksum.",
    )
    p.add_argument(
        "path",
        nargs="?",
        metavar="PATH",
        help="file to write, as the daemon sees it (a relative path is taken from the "
        "daemon's snapshot directory; default: a new file there)",
    )
    p = add(
        "reload",
        "re-read the config file",
        "Validate and re-read the daemon's config file. Sensitivities apply in place; "
        "keys that change the state layout are reported and applied only with --reinit. "
        "An invalid file is refused and the running config kept.",
    )
    p.add_argument(
        "--reinit",
        action="store_true",
        help="also apply keys that require re-initialising the asset states",
    )
    add(
        "vram",
        "device memory statistics",
        "Device memory (JAX memory_stats, nvidia-smi where present) and process RSS.",
    )
    add("assets", "per-asset state", "Per asset: slot, seq, last tick, mode, weights, H.")
    p = add(
        "shed",
        "show or set the load-shedding level",
        "Without LEVEL, show the current shed level (signature depth and refit interval); "
        "with a signature depth of the configured shed ladder, pin it (at the configured "
        "refit interval); with 'auto', hand both back to the jitter monitor.",
    )
    p.add_argument("level", nargs="?", metavar="LEVEL|auto", type=_shed_level)
    p = add(
        "forget",
        "drop one asset's state",
        "Drop ASSET's state from the running daemon: its slot is freed, its shared-memory "
        "record cleared, and the next snapshot no longer holds it; a later tick for ASSET "
        "starts it again from a cold state (seq 1). Exit 1 if the daemon holds no such asset.",
    )
    p.add_argument("asset", metavar="ASSET", help="asset id")
    p = add(
        "drain",
        "stop the daemon gracefully and wait for it to exit",
        "Graceful stop, as SIGTERM: answer every received tick, write the final snapshot, "
        "exit 0. Waits until the daemon has exited (its admin socket is gone), at most "
        "--wait-timeout seconds (exit 1 if it is still running then).",
    )
    p.add_argument(
        "--no-wait", action="store_true", help="return once the daemon has accepted the drain"
    )
    p.add_argument(
        "--wait-timeout",
        type=_positive_float,
        default=_DRAIN_WAIT_S,
        metavar="S",
        help=f"seconds to wait for the exit (default {_DRAIN_WAIT_S:g})",
    )

    # --- stream tools (ZeroMQ sockets) -----------------------------------
    p = add(
        "feed",
        "push a CSV file or a synthetic process as ticks",
        "Push ticks to the daemon's tick socket, stamped with the current time. "
        "CSV files need a header row; the value column is 'y' (or --column), an "
        "optional 'ref' column is sent as the reference, a 'ts' column (Unix ns) "
        "is used with --use-ts. Synthetic processes: "
        + "; ".join(f"{k}: {d}" for k, (_, d) in SYNTHETIC.items())
        + ".",
    )
    p.add_argument("file", nargs="?", metavar="FILE.csv", help="CSV file to replay")
    p.add_argument(
        "--synthetic", metavar="PROCESS", choices=sorted(SYNTHETIC), help="synthetic process"
    )
    p.add_argument("--asset", required=True, metavar="ID", help="asset id of the ticks")
    p.add_argument(
        "--rate",
        type=_non_negative_float,
        default=100.0,
        metavar="N",
        help="ticks per second (default 100; 0 = as fast as possible)",
    )
    p.add_argument(
        "--count",
        type=_positive_int,
        metavar="N",
        help="ticks to send (default: every row of FILE, 1000 for --synthetic)",
    )
    p.add_argument("--endpoint", metavar="E", help=_ENDPOINT_HELP.format(kind="tick PULL"))
    p.add_argument("--column", default="y", metavar="NAME", help="CSV value column (default y)")
    p.add_argument("--use-ts", action="store_true", help="send the CSV's 'ts' column as is")
    p.add_argument("--seed", type=int, default=0, help="seed of --synthetic (default 0)")
    p = add(
        "watch",
        "print predictions as a live table",
        "Subscribe to the daemon's prediction socket and print each prediction "
        "(one JSON object per line with --json). Flags: R regime change, "
        "D degraded inference, E emergency, C mode-collapse warning, W warming up.",
    )
    p.add_argument("asset", nargs="?", metavar="ASSET", help="only this asset (default: all)")
    p.add_argument("--endpoint", metavar="E", help=_ENDPOINT_HELP.format(kind="prediction PUB"))
    p.add_argument("--count", type=_positive_int, metavar="N", help="stop after N predictions")
    p.add_argument(
        "--idle-timeout",
        type=_positive_float,
        metavar="S",
        help="stop after S seconds without a prediction (exit 1 if --count was not reached)",
    )

    # --- model tuning ------------------------------------------------------
    p = add(
        "tune",
        "tune the model's parameters on a series (walk-forward, Bayesian TPE)",
        "Walk-forward Bayesian tuning (Optuna TPE) of the fast tier (sensitivities) or "
        "the deep tier (structural parameters) on a CSV series, resumable from its "
        "checkpoint; prints a progress line per trial and a table of the best parameters "
        "against the current ones; --export merges them into a config.toml with the "
        "audited mutation protocol. Runs locally: no daemon needed.",
    )
    tune_cli.configure_parser(p, _positive_int)

    return parser


_ENDPOINT_HELP = (
    "{kind} endpoint (default: the one the daemon reports in status, "
    "else the runtime directory's ipc socket)"
)


# --- admin command handlers ------------------------------------------------


def _admin(
    args: argparse.Namespace,
    io: _Io,
    cmd: str,
    show: Callable[[Mapping[str, Any]], str],
    **request: Any,
) -> int:
    with AdminClient(args.socket, timeout=args.timeout) as client:
        reply = client.request(cmd, **request)
    if io.as_json:
        io.json(reply)
    if reply["ok"] is not True:
        io.fail(f"daemon refused {cmd}: {reply.get('error', 'no reason given')}")
        return EXIT_REFUSED
    if not io.as_json:
        io.line(show(reply))
    return EXIT_OK


def _cmd_status(args: argparse.Namespace, io: _Io) -> int:
    return _admin(args, io, "status", render.render_status)


def _cmd_snapshot(args: argparse.Namespace, io: _Io) -> int:
    if args.path is None:
        return _admin(args, io, "snapshot", render.render_snapshot)
    return _admin(args, io, "snapshot", render.render_snapshot, path=args.path)


def _cmd_reload(args: argparse.Namespace, io: _Io) -> int:
    return _admin(args, io, "reload", render.render_reload, reinit=bool(args.reinit))


def _cmd_vram(args: argparse.Namespace, io: _Io) -> int:
    return _admin(args, io, "vram", render.render_vram)


def _cmd_assets(args: argparse.Namespace, io: _Io) -> int:
    return _admin(args, io, "assets", render.render_assets)


def _cmd_shed(args: argparse.Namespace, io: _Io) -> int:
    if args.level is not None:
        return _admin(args, io, "shed", render.render_shed, level=args.level)
    # No level: show the current one, which `status` carries.
    with AdminClient(args.socket, timeout=args.timeout) as client:
        reply = client.request("status")
    if reply["ok"] is not True:
        if io.as_json:
            io.json(reply)
        io.fail(f"daemon refused status: {reply.get('error', 'no reason given')}")
        return EXIT_REFUSED
    shed = reply.get("shed")
    shed_map: dict[str, Any] = dict(shed) if isinstance(shed, Mapping) else {}
    if io.as_json:
        io.json({"ok": True, **shed_map})
    else:
        io.line(render.render_shed(shed_map))
    return EXIT_OK


def _cmd_forget(args: argparse.Namespace, io: _Io) -> int:
    with AdminClient(args.socket, timeout=args.timeout) as client:
        reply = client.request("forget", asset=args.asset)
    if io.as_json:
        io.json(reply)
    if reply["ok"] is not True:
        io.fail(f"daemon refused forget: {reply.get('error', 'no reason given')}")
        return EXIT_REFUSED
    if reply.get("forgotten") is not True:
        io.fail(
            f"forget: predictord holds no asset {args.asset!r} (predictorctl assets lists them)"
        )
        return EXIT_REFUSED
    if not io.as_json:
        io.line(render.render_forget({"asset": args.asset, **reply}))
    return EXIT_OK


def _cmd_drain(args: argparse.Namespace, io: _Io) -> int:
    code = _admin(args, io, "drain", render.render_drain)
    if code != EXIT_OK or args.no_wait:
        return code
    deadline = time.monotonic() + args.wait_timeout
    while time.monotonic() < deadline:
        try:
            with AdminClient(args.socket, timeout=min(args.timeout, 1.0)) as client:
                client.connect()
        except AdminConnectionError:
            # Nothing listens any more: the daemon closes its admin socket last.
            if not io.as_json:
                io.line("predictord has exited")
            return EXIT_OK
        time.sleep(_DRAIN_POLL_S)
    io.fail(f"drain: predictord still running after {args.wait_timeout:g} s")
    return EXIT_REFUSED


# --- stream tools ----------------------------------------------------------


def _daemon_endpoint(args: argparse.Namespace, key: str) -> str:
    """``--endpoint``, else the daemon's own report (``status``), else the default rule."""
    if args.endpoint:
        return str(args.endpoint)
    timeout = min(args.timeout, _ENDPOINT_QUERY_TIMEOUT_S)
    try:
        with AdminClient(args.socket, timeout=timeout) as client:
            reply = client.request("status")
        reported = reply.get("endpoints", {}).get(key) if reply.get("ok") is True else None
        if isinstance(reported, str) and reported:
            return reported
    except (AdminError, AttributeError):
        pass
    defaults = default_endpoints(create=False)
    return defaults.ticks if key == "ticks" else defaults.predictions


def _cmd_feed(args: argparse.Namespace, io: _Io) -> int:
    if (args.file is None) == (args.synthetic is None):
        io.fail("feed: give exactly one of FILE.csv or --synthetic PROCESS (see --help)")
        return EXIT_USAGE
    if args.synthetic is not None:
        if args.use_ts:
            io.fail("feed: --use-ts applies to CSV files only")
            return EXIT_USAGE
        series = synthetic_series(args.synthetic, args.count or 1000, args.seed)
        source = f"{args.synthetic} (seed {args.seed})"
    else:
        series = read_csv(args.file, column=args.column, use_file_ts=args.use_ts, limit=args.count)
        source = str(args.file)
    endpoint = _daemon_endpoint(args, "ticks")
    result: FeedResult = feed(endpoint, args.asset, series, rate=args.rate)
    if io.as_json:
        io.json(
            {
                "ok": True,
                "asset": args.asset,
                "source": source,
                "endpoint": endpoint,
                "sent": result.sent,
                "duration_s": result.duration_s,
                "rate": result.rate,
            }
        )
    else:
        io.line(
            f"sent {result.sent} ticks of {args.asset} from {source} to {endpoint} "
            f"in {result.duration_s:.2f} s ({result.rate:.1f} ticks/s)"
        )
    return EXIT_OK


def _cmd_watch(args: argparse.Namespace, io: _Io) -> int:
    endpoint = _daemon_endpoint(args, "predictions")
    if not io.as_json:
        io.line(render.PREDICTION_HEADER)

    def show(msg: dict[str, Any]) -> None:
        if io.as_json:
            io.json(msg, indent=None)
        else:
            io.line(render.prediction_row(msg))

    result = watch(
        endpoint, show, asset=args.asset, count=args.count, idle_timeout_s=args.idle_timeout
    )
    if result.malformed:
        io.fail(f"watch: skipped {result.malformed} undecodable messages")
    if result.timed_out and args.count is not None and result.received < args.count:
        io.fail(
            f"watch: no prediction for {args.idle_timeout:g} s; "
            f"got {result.received} of {args.count}"
        )
        return EXIT_REFUSED
    return EXIT_OK


# --- model tuning ----------------------------------------------------------


def _cmd_tune(args: argparse.Namespace, io: _Io) -> int:
    series = read_csv(args.series, column=args.column)
    return tune_cli.run_tune(args, series.values, out=io.out, err=io.err, as_json=io.as_json)


_HANDLERS: dict[str, Callable[[argparse.Namespace, _Io], int]] = {
    "status": _cmd_status,
    "snapshot": _cmd_snapshot,
    "reload": _cmd_reload,
    "vram": _cmd_vram,
    "assets": _cmd_assets,
    "shed": _cmd_shed,
    "forget": _cmd_forget,
    "drain": _cmd_drain,
    "feed": _cmd_feed,
    "watch": _cmd_watch,
    "tune": _cmd_tune,
}


# --- entry point -----------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``predictorctl``; returns the exit status (0, 1 or 2; 130 on Ctrl-C)."""
    configure_deterministic_cpu()  # an entry point: before any command starts JAX
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help / --version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    io = _Io(bool(args.json), sys.stdout, sys.stderr)
    try:
        return _HANDLERS[args.command](args, io)
    except (AdminError, FeedError, WatchError) as exc:
        io.fail(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of our stdout went away (`predictorctl watch | head`).
        _silence_stdout()
        return EXIT_OK


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    finally:
        os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
