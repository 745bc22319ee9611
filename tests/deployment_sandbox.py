"""Run the daemon's kinds of system activity under parts of the systemd sandbox.

Used by ``tests/test_deployment.py`` as a subprocess::

    python tests/deployment_sandbox.py --seccomp ALLOWLIST_FILE [--families 1,2,10] [-- COMMAND ...]
    python tests/deployment_sandbox.py --mdwe [-- COMMAND ...]

``--seccomp`` loads a seccomp filter (libseccomp through ctypes) that allows
exactly the system calls named in the file, one per line, and fails every
other one with EPERM, as the unit's ``SystemCallFilter=`` lines with
``SystemCallErrorNumber=EPERM`` do; ``--families`` also limits ``socket()``
to those address families, as ``RestrictAddressFamilies=`` does (refused
with EPERM here, EAFNOSUPPORT under systemd). ``--mdwe`` sets
``prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)``, the kernel's form of
``MemoryDenyWriteExecute=`` (no mapping may become executable after it
was created writable). Both then ``exec`` a fresh interpreter (filters and
MDWE survive exec, as under systemd, where they are set before the service's
own exec) that runs the workload: JAX compile and execute with float64,
ZeroMQ PULL/PUSH and PUB/SUB over ipc, an AF_UNIX stream socket with
SO_PEERCRED, the shared-memory table, an atomic file write with fsync, a
Prometheus HTTP scrape on 127.0.0.1, psutil RSS, a subprocess, signals. It
prints ``SANDBOX-OK`` and exits 0, or fails with the error. With
``-- COMMAND``, that command is exec'ed under the sandbox instead (for
example ``predictord``).

Exit status 3 means the mechanism itself is unavailable here (no libseccomp,
a kernel without PR_SET_MDWE): the caller skips.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import math
import os
import sys

UNAVAILABLE = 3

_PR_SET_MDWE = 65
_PR_MDWE_REFUSE_EXEC_GAIN = 1
_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_ACT_ERRNO = 0x00050000
_NR_SCMP_ERROR = -1


#: A command to run under the sandbox instead of the workload (after ``--``).
_COMMAND: list[str] = []


def _reexec() -> None:
    if _COMMAND:
        os.execvp(_COMMAND[0], _COMMAND)
    os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), "--workload"])


def _mdwe() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_MDWE, _PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        print(f"PR_SET_MDWE unavailable: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        sys.exit(UNAVAILABLE)
    _reexec()


class _ArgCmp(ctypes.Structure):
    """``struct scmp_arg_cmp``: argument index, comparison, two 64-bit operands."""

    _fields_ = (
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


_SCMP_CMP_EQ = 4


def _seccomp(allow_file: str, families: list[int] | None) -> None:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        print(f"libseccomp unavailable: {exc}", file=sys.stderr)
        sys.exit(UNAVAILABLE)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add.restype = ctypes.c_int
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_rule_add_array.restype = ctypes.c_int
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_load.restype = ctypes.c_int
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    with open(allow_file, encoding="ascii") as fh:
        names = [line.strip() for line in fh if line.strip()]
    ctx = lib.seccomp_init(_SCMP_ACT_ERRNO | errno.EPERM)
    if not ctx:
        sys.exit(UNAVAILABLE)
    for syscall in names:
        nr = lib.seccomp_syscall_resolve_name(syscall.encode())
        if nr == _NR_SCMP_ERROR:
            continue  # unknown to this libseccomp: nothing to allow
        if syscall == "socket" and families is not None:
            # RestrictAddressFamilies=: socket() only for the listed families.
            for family in families:
                cmp = _ArgCmp(0, _SCMP_CMP_EQ, family, 0)
                if lib.seccomp_rule_add_array(ctx, _SCMP_ACT_ALLOW, nr, 1, ctypes.byref(cmp)):
                    sys.exit(UNAVAILABLE)
            continue
        # Negative numbers are other architectures' calls; libseccomp refuses them.
        lib.seccomp_rule_add(ctx, _SCMP_ACT_ALLOW, nr, 0)
    if lib.seccomp_load(ctx) != 0:
        print("seccomp_load failed", file=sys.stderr)
        sys.exit(UNAVAILABLE)
    _reexec()


def _workload() -> None:
    import signal
    import socket
    import struct
    import subprocess
    import tempfile
    import threading
    import urllib.request

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jax.numpy as jnp
    import psutil
    import zmq
    from prometheus_client import CollectorRegistry, Counter, start_http_server

    import predictor.core  # noqa: F401  (float64 before any array)
    from predictor.ipc.shm import LatestReader, LatestWriter

    if os.environ.get("SANDBOX_FAMILIES"):
        # The family restriction is in force: a netlink socket is refused.
        try:
            socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close()
        except PermissionError:
            pass
        else:
            raise AssertionError("AF_NETLINK socket allowed despite the family filter")

    hups: list[int] = []
    signal.signal(signal.SIGHUP, lambda signum, _frame: hups.append(signum))
    os.kill(os.getpid(), signal.SIGHUP)

    f = jax.jit(lambda x: jnp.cumsum(jnp.sin(x)) @ x)
    value = float(f(jnp.arange(64.0)))
    assert math.isfinite(value) and jnp.arange(2.0).dtype == jnp.float64

    with tempfile.TemporaryDirectory(prefix="sbx") as d:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
        pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
        pull.bind(f"ipc://{d}/t.sock")
        push.connect(f"ipc://{d}/t.sock")
        push.send(b"tick")
        assert pull.poll(5000) and pull.recv() == b"tick"
        pub.bind(f"ipc://{d}/p.sock")
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(f"ipc://{d}/p.sock")
        for _ in range(200):
            pub.send(b"prediction")
            if sub.poll(20):
                break
        assert sub.recv() == b"prediction"
        for s in (pull, push, pub, sub):
            s.close(linger=0)
        ctx.term()

        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(f"{d}/admin.sock")
        os.chmod(f"{d}/admin.sock", 0o660)
        srv.listen(1)
        cli = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        cli.connect(f"{d}/admin.sock")
        conn, _ = srv.accept()
        _pid, uid, _gid = struct.unpack(
            "3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        )
        assert uid == os.getuid()
        for s in (conn, cli, srv):
            s.close()

        path = f"{d}/snap.tmp"
        with open(path, "wb") as fh:
            fh.write(b"x" * 4096)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(path, f"{d}/snap.msgpack")
        dfd = os.open(d, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)

        name = f"predictor-sandbox-{os.getpid()}"
        with LatestWriter(name, 2) as writer, LatestReader(name) as reader:
            writer.write(
                0, "A", seq=1, ts=1, predicted_next=0.0, predicted_value=1.0,
                interval_lower=0.0, interval_upper=2.0, holder_exponent=0.5,
                cusum_drift=0.0, kurtosis=3.0, weights=(0.25, 0.25, 0.25, 0.25),
                mode="Standard",
            )  # fmt: skip
            got = reader.get("A")
            assert got is not None and got["seq"] == 1

    registry = CollectorRegistry()
    Counter("sandbox_probe", "probe", registry=registry).inc()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    port = server.server_address[1]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert b"sandbox_probe_total 1.0" in resp.read()
    server.shutdown()
    thread.join(timeout=5)

    assert psutil.Process().memory_info().rss > 0
    assert subprocess.run(["true"], check=False).returncode == 0
    worker = threading.Thread(target=lambda: float(f(jnp.ones(64))))
    worker.start()
    worker.join()
    assert hups == [signal.SIGHUP]
    print("SANDBOX-OK", flush=True)


def main(argv: list[str]) -> None:
    if "--" in argv:
        cut = argv.index("--")
        _COMMAND.extend(argv[cut + 1 :])
        argv = argv[:cut]
    if argv[:1] == ["--mdwe"]:
        _mdwe()
    elif argv[:1] == ["--seccomp"] and len(argv) == 2:
        _seccomp(argv[1], None)
    elif argv[:1] == ["--seccomp"] and len(argv) == 4 and argv[2] == "--families":
        os.environ["SANDBOX_FAMILIES"] = argv[3]
        _seccomp(argv[1], [int(f) for f in argv[3].split(",")])
    elif argv == ["--workload"]:
        _workload()
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
