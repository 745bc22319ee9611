"""Admin protocol: newline-delimited JSON over a Unix stream socket.

One request per line, one reply per line, in order::

    {"cmd": "status" | "snapshot" | "reload" | "vram" | "assets" | "shed" | "forget"
            | "drain", ...}
    -> {"ok": true, ...}  or  {"ok": false, "error": "<reason>"}

Arguments per command (anything else is refused with the reason):

* ``snapshot``: ``path`` (optional string; relative paths are resolved
  against the daemon's snapshot directory and may not leave it: a ``..``
  that climbs out is refused here, a symbolic link that leads out by
  ``predictor.snapshots.resolve_snapshot_path``);
* ``reload``: ``reinit`` (optional bool, default false);
* ``shed``: ``level``, ``"auto"`` or an int signature depth of the ladder;
* ``forget``: ``asset``, the id of the asset whose state is dropped (a
  string of 1 to ``wire.ASSET_ID_MAX_BYTES`` UTF-8 bytes);
* ``status``, ``vram``, ``assets``, ``drain``: none.

A request line is at most ``MAX_REQUEST_BYTES`` bytes (newline excluded).
Every request that cannot be parsed is answered with a reason (invalid
UTF-8, invalid JSON, nesting too deep, wrong types). Replies are JSON with
NaN and infinities turned into ``null``.

Peer check (``peer_allowed``): the credentials of the connecting process
(``SO_PEERCRED``: pid, uid, gid) are accepted when the uid is the daemon's
own or root, or when an admin group is configured and the peer's gid or one
of its supplementary groups is that group.
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from predictor.ipc.wire import ASSET_ID_MAX_BYTES

#: Largest request line in bytes (without the newline).
MAX_REQUEST_BYTES = 64 * 1024

COMMANDS: frozenset[str] = frozenset(
    {"status", "snapshot", "reload", "vram", "assets", "shed", "forget", "drain"}
)

_ARGS: dict[str, frozenset[str]] = {
    "status": frozenset(),
    "snapshot": frozenset({"path"}),
    "reload": frozenset({"reinit"}),
    "vram": frozenset(),
    "assets": frozenset(),
    "shed": frozenset({"level"}),
    "forget": frozenset({"asset"}),
    "drain": frozenset(),
}

_UCRED = struct.Struct("3i")


class ProtocolError(ValueError):
    """A request that is not valid; the message is the reply's ``error``."""


@dataclass(frozen=True)
class Request:
    """A validated request: the command and its arguments."""

    cmd: str
    args: Mapping[str, Any]


@dataclass(frozen=True)
class PeerCred:
    """``SO_PEERCRED`` of a Unix socket peer."""

    pid: int
    uid: int
    gid: int


def parse_request(line: bytes) -> Request:
    """Validate one request line (without its newline); ``ProtocolError`` says why not."""
    if len(line) > MAX_REQUEST_BYTES:
        raise ProtocolError(f"request too large ({len(line)} > {MAX_REQUEST_BYTES} bytes)")
    try:
        obj = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"request is not UTF-8: {exc.reason}") from exc
    except ValueError as exc:
        raise ProtocolError(f"request is not JSON: {exc}") from exc
    except RecursionError as exc:  # e.g. 50,000 nested '[': no request nests like that
        raise ProtocolError("request is not JSON: nested too deeply") from exc
    if not isinstance(obj, dict):
        raise ProtocolError("request must be a JSON object")
    cmd = obj.get("cmd")
    if not isinstance(cmd, str):
        raise ProtocolError("request needs a string 'cmd'")
    if cmd not in COMMANDS:
        raise ProtocolError(f"unknown command {cmd[:40]!r}; known: {', '.join(sorted(COMMANDS))}")
    args = {k: v for k, v in obj.items() if k != "cmd"}
    unknown = sorted(set(args) - _ARGS[cmd])
    if unknown:
        raise ProtocolError(f"{cmd}: unknown argument {unknown[0][:40]!r}")
    _check_args(cmd, args)
    return Request(cmd, args)


def _check_args(cmd: str, args: Mapping[str, Any]) -> None:
    if cmd == "snapshot" and "path" in args:
        path = args["path"]
        if not isinstance(path, str) or not path or "\0" in path:
            raise ProtocolError("snapshot: 'path' must be a non-empty string")
        if not os.path.isabs(path):
            lexical = os.path.normpath(path)
            if lexical in (".", "..") or lexical.startswith(".." + os.sep):
                raise ProtocolError(
                    f"snapshot: relative path {path[:80]!r} leaves the snapshot directory"
                )
    if cmd == "reload" and "reinit" in args and not isinstance(args["reinit"], bool):
        raise ProtocolError("reload: 'reinit' must be true or false")
    if cmd == "shed":
        if "level" not in args:
            raise ProtocolError("shed: 'level' is required ('auto' or a depth)")
        level = args["level"]
        if level != "auto" and (isinstance(level, bool) or not isinstance(level, int)):
            raise ProtocolError("shed: 'level' must be 'auto' or an integer depth")
    if cmd == "forget" and not 0 < _utf8_length(args.get("asset")) <= ASSET_ID_MAX_BYTES:
        raise ProtocolError(
            f"forget: 'asset' must be an asset id of 1 to {ASSET_ID_MAX_BYTES} UTF-8 bytes"
        )


def _utf8_length(value: Any) -> int:
    """Bytes of ``value`` in UTF-8; 0 for a non-string or one that has no UTF-8 form."""
    if not isinstance(value, str):
        return 0
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" in the JSON)
        return 0


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats replaced by None (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def encode_reply(reply: Mapping[str, Any]) -> bytes:
    """One reply line (strict JSON, newline-terminated)."""
    return json.dumps(json_safe(reply), allow_nan=False, separators=(",", ":")).encode() + b"\n"


def ok(**fields: Any) -> dict[str, Any]:
    """A success reply."""
    return {"ok": True, **fields}


def error(reason: str) -> dict[str, Any]:
    """A refusal reply."""
    return {"ok": False, "error": reason}


# --- peer credentials --------------------------------------------------------


def peer_cred(sock: socket.socket) -> PeerCred:
    """``SO_PEERCRED`` of a connected Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCred(pid, uid, gid)


def proc_groups(pid: int) -> frozenset[int]:
    """Supplementary groups of process ``pid`` from ``/proc/<pid>/status`` (empty if unknown)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Groups:"):
                    return frozenset(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return frozenset()


def peer_allowed(
    cred: PeerCred,
    *,
    own_uid: int,
    admin_gid: int | None,
    groups_of: Callable[[int], frozenset[int]] = proc_groups,
) -> bool:
    """Whether ``cred`` may use the admin socket (see the module docstring).

    ``groups_of(pid)`` gives the peer's supplementary groups; it is asked
    only when an admin group is configured and the primary gid differs.
    """
    if cred.uid in (own_uid, 0):
        return True
    if admin_gid is None:
        return False
    return cred.gid == admin_gid or admin_gid in groups_of(cred.pid)


def resolve_group(name: str) -> int | None:
    """Gid of a group name (or a numeric gid); None for ''. ``KeyError`` if unknown."""
    if not name:
        return None
    if name.isdigit():
        return int(name)
    import grp

    return grp.getgrnam(name).gr_gid


def own_uid() -> int:
    """The daemon's effective uid."""
    return os.geteuid()
