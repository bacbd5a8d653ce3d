"""Background work in the API process yields the CPU to the requests it serves.

Without a broker, a loop cycle (fine-tuning, re-embedding, evaluating) runs as a thread of
the process that answers questions, and torch gives both the cycle and every ask a team of
threads as large as the machine. On Linux a nice value belongs to a thread, and the threads
a thread starts inherit it: torch's OpenMP team for the cycle's thread among them (each
thread that enters a parallel region gets its own team). So raising the nice value of the
background thread before it runs anything lowers the priority of all its work, and the
scheduler gives the cores to the asks first. An unprivileged thread cannot lower its nice
value again, so only threads that do background work for the rest of their life are
lowered: a job's own thread, the schedule's workers, and every thread of a `rag-loop worker`
process, which does nothing else.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger(__name__)


def lower_this_thread(nice: int) -> None:
    """Run the calling thread (and the threads it starts from now on) at nice value `nice`,
    or lower when it already is; nothing off Linux or for 0."""
    if nice > 0 and sys.platform == "linux":
        _lower(threading.get_native_id(), nice)


def lower_this_process(nice: int) -> None:
    """Run every thread of this process (those that a library started already, and so the
    threads any of them starts from now on) at nice value `nice`, or lower when it already
    is: for a process that does background work only (`rag-loop worker`). Nothing off Linux
    or for 0."""
    if nice <= 0 or sys.platform != "linux":
        return
    for task in os.listdir("/proc/self/task"):
        _lower(int(task), nice)


def _lower(thread: int, nice: int) -> None:
    try:
        current = os.getpriority(os.PRIO_PROCESS, thread)
        if nice > current:
            os.setpriority(os.PRIO_PROCESS, thread, nice)
    except ProcessLookupError:  # the thread has ended
        return
    except OSError as exc:  # a sandbox may forbid it; the work still runs, at full priority
        log.warning("could not lower the priority of background thread %s: %s", thread, exc)
