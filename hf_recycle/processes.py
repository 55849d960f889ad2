"""Owner records of processes: who holds a partial output folder or runs a search trial.

A record names the host, the process id, the boot and PID namespace it lives in and its
start time, so that a later process can tell for sure that the owner is gone (and reuse
what it left) even when the PID has been given to another process since.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

__all__ = ["may_run", "this_process"]


def this_process() -> dict[str, object]:
    """This process as an owner record: host, pid, boot id, PID namespace and start time."""
    stat = _proc_stat(os.getpid())
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "boot_id": _boot_id(),
        "pid_namespace": _pid_namespace(),
        "start_time": stat[1] if stat else None,
    }


def may_run(owner: dict) -> bool:
    """Whether the process of owner record ``owner`` (:func:`this_process`) may still run.

    False only when it is surely gone: a process of this host (same boot, same PID namespace)
    that no longer exists, is a zombie, or whose PID now belongs to a process started at
    another time. Anything unknown, another host included, counts as running.
    """
    here = this_process()
    if owner.get("host") != here["host"]:
        return True
    if owner.get("boot_id") and here["boot_id"] and owner["boot_id"] != here["boot_id"]:
        return False  # this host rebooted since
    if owner.get("pid_namespace") != here["pid_namespace"]:
        return True  # another container's process ids
    pid = owner.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return True
    stat = _proc_stat(pid)
    if stat is None:
        if _proc_stat(os.getpid()) is not None:
            return False  # /proc works and has no such process
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    state, start = stat
    if state in ("Z", "X"):  # killed, not yet reaped by its parent
        return False
    return owner.get("start_time") in (None, start)  # another start time: the PID was reused


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """``(state, start time in clock ticks after boot)`` of a process, from ``/proc/PID/stat``."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()  # after the command name, which may hold spaces
    try:
        return fields[0], int(fields[19])  # fields 3 and 22 of proc(5)
    except (IndexError, ValueError):
        return None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
