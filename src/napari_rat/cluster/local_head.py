"""The embedded default cluster: a Ray head on 127.0.0.1 that napari-rat starts, records and stops
by its pid (never ``ray stop``, which ends every Ray process on the machine).

``napari-rat cluster start`` keeps the head running after the command exits and records it (pid,
ports, temp folder and its token) in ``<state dir>/local-head.json``, readable by the user only;
``cluster stop`` stops it. The state folder is ``$NAPARI_RAT_STATE_DIR``, else
``$XDG_STATE_HOME/napari-rat``, else ``~/.local/state/napari-rat``. A record whose head has died
is removed when it is next read.
"""

from __future__ import annotations

import os
from pathlib import Path

from napari_rat.train.ray_head import RayHead, start_head

RECORD_NAME = "local-head.json"
#: The CPU priority the local head runs at (POSIX nice, 0 is normal): its training workers yield
#: the CPU to an open napari viewer on the same machine, and take every idle cycle.
LOCAL_HEAD_NICENESS = 10


def state_dir() -> Path:
    """The folder holding napari-rat's record of its local head."""
    if os.environ.get("NAPARI_RAT_STATE_DIR"):
        return Path(os.environ["NAPARI_RAT_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "napari-rat"


def recorded_head() -> RayHead | None:
    """The recorded local head if it still runs; a stale record is removed."""
    path = state_dir() / RECORD_NAME
    if not path.is_file():
        return None
    try:
        head = RayHead.load(path)
    except (ValueError, TypeError, KeyError):
        path.unlink(missing_ok=True)
        return None
    if not head.alive():
        path.unlink(missing_ok=True)
        return None
    return head


def start_local_head(
    *, num_cpus: int | None = None, timeout: float = 120.0, niceness: int = LOCAL_HEAD_NICENESS
) -> tuple[RayHead, bool]:
    """The recorded local head, or a new one started and recorded; ``(head, started_now)``.

    ``num_cpus`` is what Ray may schedule (default: this machine's cores, at least 3, so that a
    2-worker job and its trainer fit); ``niceness`` the CPU priority of the head and its workers
    (see :data:`LOCAL_HEAD_NICENESS`).
    """
    head = recorded_head()
    if head is not None:
        return head, False
    if num_cpus is None:
        num_cpus = max(os.cpu_count() or 1, 3)
    head = start_head(num_cpus=num_cpus, include_dashboard=True, timeout=timeout, niceness=niceness)
    head.save(state_dir() / RECORD_NAME)
    return head, True


def stop_local_head() -> RayHead | None:
    """Stop the recorded local head by its pid and forget it; the head that was stopped, or
    ``None`` when none was running."""
    head = recorded_head()
    if head is None:
        return None
    head.stop()
    (state_dir() / RECORD_NAME).unlink(missing_ok=True)
    return head


def local_head_status() -> dict[str, object] | None:
    """What a user needs to know of the recorded local head (never its token), or ``None``."""
    head = recorded_head()
    if head is None:
        return None
    return {
        "pid": head.pid,
        "dashboard": head.dashboard_url,
        "address": head.address,
        "logs": head.temp_dir,
    }
