"""Is a process still the one it was? Pid, zombie state and start time from ``/proc``.

Used by shared-memory readers to tell a crashed writer from a live one
(``predictor.ipc.shm``): a pid alone can be reused, a zombie still answers
``kill(pid, 0)``; the start time (clock ticks after boot, field 22 of
``/proc/<pid>/stat``) identifies the process itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def process_start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks after boot (``/proc``), None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        return int(stat[stat.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def process_alive(pid: int, start_ticks: int = 0) -> bool | None:
    """Whether ``pid`` runs (not a zombie; with ``start_ticks``, the same process).

    None when it cannot be told (no ``/proc`` entry readable while the pid
    exists, e.g. another pid namespace's process).
    """
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        fields = stat[stat.rindex(b")") + 2 :].split()
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return None
    if fields[0] in (b"Z", b"X"):
        return False
    return not (start_ticks and int(fields[19]) != start_ticks)


@dataclass(frozen=True)
class WriterStatus:
    """What a reader knows about the segment's writer.

    ``alive``: the segment is live, the pid check did not find the writer
    gone and the heartbeat (if any) is at most ``max_age_s`` old.
    ``heartbeat_age_s`` is how stale the table may be (None: no heartbeat).
    """

    pid: int
    pid_alive: bool | None
    heartbeat_age_s: float | None
    state: str
    alive: bool
    max_age_s: float

    @property
    def stale(self) -> bool:
        """The records may be old: the writer is not known to be alive."""
        return not self.alive
