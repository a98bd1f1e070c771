"""Make a Triton Python stub die with tritonserver.

The stub of tritonserver 2.51 polls its parent and exits when it dies, but it can hang on the
way out: pb_utils calls that talk to the server (metric updates, response sends) wait for the
server's reply while holding the GIL, so when the server vanishes mid-call the stub freezes for
good, with its engine workers. We saw exactly that (gdb: the sender thread inside
`Metric::SendSetValueRequest`, every other thread waiting for the GIL, the stub's own
parent-check thread stuck too) after `kill -9` of tritonserver.

A thread in the stub cannot help (it needs the GIL), so `exit_with_parent` starts a tiny
separate process that polls tritonserver and SIGKILLs the stub when the server is gone; engine
workers then follow through their PR_SET_PDEATHSIG. The watchdog exits as soon as the stub is
gone (it gets re-parented), so it never outlives the server either.
"""

from __future__ import annotations

import os
import subprocess
import sys

_WATCH = """
import os, signal, sys, time
server, stub, poll = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
while os.getppid() == stub:
    if not alive(server):
        os.kill(stub, signal.SIGKILL)
        break
    time.sleep(poll)
"""
_watchdog: subprocess.Popen | None = None


def exit_with_parent(poll_s: float = 0.5) -> subprocess.Popen:
    """Start (once per process) the watchdog of this process's parent; returns its Popen."""
    global _watchdog
    if _watchdog is None:
        args = [sys.executable, "-S", "-c", _WATCH, str(os.getppid()), str(os.getpid()), str(poll_s)]
        _watchdog = subprocess.Popen(args, stdin=subprocess.DEVNULL, close_fds=True)
    return _watchdog
