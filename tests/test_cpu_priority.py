"""Session (autogroup) CPU priority: what makes a niced local Ray head yield to the viewer."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from napari_rat.cpu_priority import session_niceness, set_session_niceness

pytestmark = pytest.mark.skipif(
    session_niceness() is None, reason="no scheduler autogroups here (/proc/self/autogroup)"
)


def test_a_new_session_gets_the_priority_and_ours_keeps_its_own():
    ours = session_niceness()
    child = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        assert session_niceness(child.pid) == 0
        assert set_session_niceness(child.pid, 7)
        assert session_niceness(child.pid) == 7
        assert session_niceness() == ours  # another session: ours untouched
    finally:
        child.kill()
        child.wait()


def _job_entrypoint(tmp_path: Path, niceness: int, job: bool) -> str:
    """Run the CLI as Ray's job supervisor runs an entrypoint (a new session, the head's nice
    value) and report the session's nice value after the command ran."""
    config = Path(__file__).parents[1] / "configs" / "quick.yaml"
    script = (
        "from napari_rat.cli import main\n"
        "from napari_rat.cpu_priority import session_niceness\n"
        f"code = main(['config', 'check', {str(config)!r}])\n"
        "print('session', session_niceness(), 'code', code)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NAPARI_RAT_JOB_VERSION"}
    if job:
        from napari_rat import __version__

        env["NAPARI_RAT_JOB_VERSION"] = __version__
    out = subprocess.run(
        ["nice", "-n", str(niceness), sys.executable, "-c", script],
        start_new_session=True,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()[-1]


def test_a_job_entrypoint_gives_its_session_the_heads_priority(tmp_path):
    assert _job_entrypoint(tmp_path, 6, job=True) == "session 6 code 0"


def test_outside_a_job_the_session_is_left_alone(tmp_path):
    # `nice napari-rat ...` typed in a shell must not lower the shell's whole session
    assert _job_entrypoint(tmp_path, 6, job=False) == "session 0 code 0"
