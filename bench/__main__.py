"""Run every benchmark and write BENCHMARKS.md.

    .venv/bin/python -m bench [--quick] [--only accuracy,speed] [--output BENCHMARKS.md]

(``make bench`` / ``make bench-quick``.) Each benchmark module of ``bench/``
(``MODULES``, those present) runs in its own process as
``python -m bench.<name> [--quick]`` and prints markdown on stdout (progress
goes to stderr); this driver streams that output, then writes it to
``BENCHMARKS.md`` under a header with the machine (CPU model, cores,
memory, load average), the date, the commit (``git rev-parse --short HEAD``,
``+dirty`` when the working tree has changes) and the command.

Separate processes keep each module's memory figures its own and let one
module fail without losing the others (the run then exits with status 1).
Compiled XLA graphs are kept in the JAX persistent compilation cache
(``build/jax-cache``, or ``JAX_COMPILATION_CACHE_DIR`` if set), so that a
graph compiled by one module is loaded, not recompiled, by the next and by
later runs; ``--no-compile-cache`` turns it off. The full run measures
compile times cold: the speed module runs without the cache there.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Benchmark modules in run order; absent ones are skipped.
MODULES = (
    "accuracy",
    "changepoints",
    "labelled_changes",
    "flags",
    "speed",
    "holder",
    "snapshots",
    "daemon",
    "tuning",
)
#: Modules whose compile-time figures must be cold in a full run.
COLD_IN_FULL = frozenset({"speed"})
CACHE_DIR = ROOT / "build" / "jax-cache"


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> str:
    """Total memory from /proc/meminfo, in GiB."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return "unknown"


def _git(*args: str) -> str | None:
    # GIT_OPTIONAL_LOCKS=0: `git status` must not refresh (write) the index.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, env=env, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout


def git_commit() -> str:
    """Short HEAD commit, with ``+dirty`` when tracked or untracked files differ from it."""
    head = _git("rev-parse", "--short", "HEAD")
    if head is None:
        return "unknown (not a git checkout)"
    dirty = _git("status", "--porcelain")
    return head.strip() + ("+dirty" if dirty else "")


def versions() -> str:
    """Versions of the packages the figures depend on."""
    out = [f"Python {platform.python_version()}"]
    for pkg in ("jax", "jaxlib", "numpy", "river", "ruptures", "statsmodels"):
        try:
            out.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(out)


def load_average() -> str:
    """1/5/15-minute load averages."""
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def accepts_quick(name: str) -> bool:
    """Whether ``bench/<name>.py`` has a ``--quick`` option (read from its source)."""
    return "--quick" in (ROOT / "bench" / f"{name}.py").read_text(encoding="utf-8")


def run_module(name: str, quick: bool, env: dict[str, str]) -> tuple[str, int, float, str]:
    """Run ``python -m bench.<name>``, echoing its stdout; (output, status, seconds, load)."""
    cmd = [sys.executable, "-m", f"bench.{name}"]
    if quick and accepts_quick(name):
        cmd.append("--quick")
    print(f"\n===== {' '.join(cmd[1:])} =====", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    lines: list[str] = []
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line)
        status = proc.wait()
    return "".join(lines).rstrip(), status, time.perf_counter() - t0, load_average()


def module_env(name: str, quick: bool, cache: bool) -> dict[str, str]:
    """Environment of one module's process (CPU JAX, the compilation cache unless cold)."""
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if cache and (quick or name not in COLD_IN_FULL):
        env.setdefault("JAX_COMPILATION_CACHE_DIR", str(CACHE_DIR))
        env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
    else:
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
    return env


def as_markdown(name: str, out: str) -> str:
    """A module's output as a report section: headed, and fenced unless it has tables."""
    if not out:
        return f"## bench.{name}\n\n(no output)"
    if not any(line.startswith("|") for line in out.splitlines()):
        out = f"```text\n{out}\n```"
    return out if out.startswith("#") else f"## bench.{name}\n\n{out}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks, print their tables and write the report."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the short version of every module")
    parser.add_argument("--only", default="", help="comma-separated subset of " + ",".join(MODULES))
    parser.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"), help="report path")
    parser.add_argument(
        "--no-compile-cache", action="store_true", help="compile every graph in every module"
    )
    args = parser.parse_args(argv)
    wanted = [m.strip() for m in args.only.split(",") if m.strip()] or list(MODULES)
    unknown = sorted(set(wanted) - set(MODULES))
    if unknown:
        parser.error(f"unknown module(s): {', '.join(unknown)}")
    names = [m for m in MODULES if m in wanted and (ROOT / "bench" / f"{m}.py").exists()]

    command = " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])])
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    load_start = load_average()
    t0 = time.perf_counter()
    results = []
    for name in names:
        env = module_env(name, args.quick, not args.no_compile_cache)
        out, status, seconds, load_end = run_module(name, args.quick, env)
        cached = "JAX_COMPILATION_CACHE_DIR" in env
        results.append((name, out, status, seconds, load_end, cached))
    total = time.perf_counter() - t0

    summary = [
        "| module | status | wall time (s) | load average after | compilation cache |",
        "|---|---|---|---|---|",
    ]
    summary += [
        f"| bench.{name} | {'ok' if status == 0 else f'FAILED (exit {status})'} | "
        f"{seconds:.0f} | {load} | {'on' if cached else 'off (cold compiles)'} |"
        for name, _, status, seconds, load, cached in results
    ]
    header = [
        "# Benchmarks",
        "",
        f"* Command: `{command}`{' (quick version)' if args.quick else ''}",
        f"* Date: {started}",
        f"* Commit: {git_commit()}",
        f"* Machine: {cpu_model()}, {os.cpu_count()} cores, {memory_gib()} memory; "
        f"{platform.system()} {platform.release()}",
        f"* Software: {versions()}",
        f"* Load average (1/5/15 min) at start: {load_start}. Figures are wall-clock: "
        "on a shared host, other processes' load inflates times.",
        f"* Total wall time: {total:.0f} s",
        "",
        *summary,
        "",
    ]
    body = []
    for name, out, status, _, _, _ in results:
        body.append(as_markdown(name, out))
        if status != 0:
            body.append(f"\n**bench.{name} failed with exit status {status}** (see its stderr).")
        body.append("")
    Path(args.output).write_text("\n".join(header + body).rstrip() + "\n", encoding="utf-8")
    print(f"\nwrote {args.output} ({total:.0f} s)", file=sys.stderr)
    return 0 if all(r[2] == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
