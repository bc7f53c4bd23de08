"""CPU priority of whole process sessions: what makes a niced local Ray head really yield.

Most Linux distributions enable scheduler *autogroups*
(``/proc/sys/kernel/sched_autogroup_enabled``): the scheduler first shares the CPU fairly
between sessions (each ``setsid``), and only then between the processes of a session by their
``nice`` value. A local Ray head runs in a session of
its own (it is started with ``start_new_session`` so that it can be stopped by its process
group), and Ray's job supervisor starts each job's entrypoint in yet another. So starting the
head under ``nice -n 10`` lowers its processes against each other but not against the napari
viewer in the user's session, which then waits for the CPU as if the head were not niced at all
(the README's ``bench cluster --gui`` figures). Setting the *session's* nice value
(``/proc/PID/autogroup``) makes the priority count.

Without autogroups (the file is absent: another OS, or the kernel feature off) the per-process
nice value already does the job and these functions change nothing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

_logger = logging.getLogger(__name__)


def _autogroup_file(pid: int | str) -> Path:
    return Path("/proc") / str(pid) / "autogroup"


def session_niceness(pid: int | str = "self") -> int | None:
    """The nice value of ``pid``'s session (its autogroup), or ``None`` without autogroups."""
    try:
        text = _autogroup_file(pid).read_text()  # e.g. "/autogroup-274 nice 0"
    except OSError:
        return None
    try:
        return int(text.split()[-1])
    except (IndexError, ValueError):
        return None


def set_session_niceness(pid: int | str, niceness: int) -> bool:
    """Give ``pid``'s whole session (its autogroup) the CPU priority ``niceness``.

    Returns whether it took effect; ``False`` without autogroups or when refused (lowering a
    nice value needs privileges; raising it does not), which is logged and otherwise harmless.
    """
    path = _autogroup_file(pid)
    if not path.exists():
        return False
    try:
        path.write_text(f"{int(niceness)}\n")
    except OSError as exc:
        _logger.info("could not set the CPU priority of process %s's session: %s", pid, exc)
        return False
    return session_niceness(pid) == int(niceness)


def session_follows_process_niceness() -> bool:
    """Give this process's session the process's own nice value, when that is lower priority.

    For a process that runs in a session created for it alone, such as a Ray job's entrypoint
    (Ray's job supervisor starts it with ``start_new_session``): it inherits the niced head's
    priority, and this makes the priority count against other sessions too. Never call it from a
    process that shares its session with a user's shell: the shell would be lowered too.
    """
    niceness = os.nice(0) if hasattr(os, "nice") else 0
    current = session_niceness()
    if niceness <= 0 or current is None or current >= niceness:
        return False
    return set_session_niceness("self", niceness)
