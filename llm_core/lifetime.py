"""Tie a child process's life to its parent's (Linux PR_SET_PDEATHSIG)."""

from __future__ import annotations

import ctypes

_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies, even by SIGKILL.
    Safe in a preexec_fn. A no-op where libc has no prctl."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass
