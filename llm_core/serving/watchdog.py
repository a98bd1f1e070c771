"""Make a Triton Python stub exit when tritonserver is gone.

The stub of tritonserver 2.51 polls its parent and exits when it dies, but it can hang on the
way out: we saw the llm stub (decoupled, with sender threads and engine workers) outlive a
`kill -9` of tritonserver, and an exit-timeout shutdown, without ever logging "Non-graceful
termination detected". This thread watches for re-parenting and ends the process hard;
engine workers follow through their PR_SET_PDEATHSIG.
"""

from __future__ import annotations

import os
import sys
import threading
import time

_started = False


def exit_with_parent(poll_s: float = 0.5) -> None:
    """Start (once per process) a daemon thread that calls os._exit(1) once our parent changes."""
    global _started
    if _started:
        return
    _started = True
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        print(f"[llm_core] tritonserver (pid {parent}) is gone; stub {os.getpid()} exits", file=sys.stderr,
              flush=True)
        os._exit(1)

    threading.Thread(target=watch, name="llm-core-parent-watchdog", daemon=True).start()
