"""Process lifetimes on Linux: tie a child's life to its parent's (PR_SET_PDEATHSIG), and read /proc."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies, even by SIGKILL.
    Safe in a preexec_fn. A no-op where libc has no prctl."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, pgrp, session, ...); None when the
    process is gone. (The stubs' watchdog, `python -S`, keeps its own copy of the state check.)"""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def live_processes() -> Iterator[tuple[int, list[str]]]:
    """(pid, proc_stat fields) of every process that is not a zombie."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := proc_stat(int(entry.name))) is not None and stat[0] != "Z":
            yield int(entry.name), stat
