"""A Ray head of our own: on 127.0.0.1, free ports, token auth, stopped by its own pid.

``ray stop`` kills every Ray process on the machine (other users' too), so it is never used:
:func:`start_head` runs ``ray start --head --block`` as a child in its own session and
:meth:`RayHead.stop` ends that session (SIGTERM, then SIGKILL of its process group). The head
binds to 127.0.0.1 only, on ports picked free, with a private temp folder, a small object store,
and token authentication with a token generated here (Ray >= 2.5x turns token auth on for new
clusters; the token is passed through ``RAY_AUTH_TOKEN``, never written to ``~/.ray``).
``RAY_ADDRESS`` is removed from the child's and the driver's view, since it silently overrides
addresses. Ray replaces 127.0.0.1 by the machine's address when it connects unless multi-node
support is off, so the head and its drivers run with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: a
single-node, loopback-only cluster, which is what a local head is.

Used by ``napari-rat train --backend ray`` (when ``cluster.address`` is empty), the tests, and
later the cluster widget and ``napari-rat submit``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from napari_rat.cpu_priority import set_session_niceness
from napari_rat.train.distributed import free_ports

HOST = "127.0.0.1"
#: Keeps Ray from swapping 127.0.0.1 for the machine's address (single-node cluster).
_LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
#: Object store of a local head; small, as this is a workstation, not a cluster node.
DEFAULT_OBJECT_STORE_BYTES = 300 * 1024**2


class RayHeadError(RuntimeError):
    """The local head did not start; the message includes the end of its log."""


@dataclass
class RayHead:
    """A running local head started by :func:`start_head`."""

    pid: int
    gcs_port: int
    dashboard_port: int | None
    token: str
    temp_dir: str
    log_path: str

    @property
    def address(self) -> str:
        """GCS address for ``ray.init(address=...)``."""
        return f"{HOST}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str | None:
        """Dashboard / Jobs API URL, if the dashboard runs."""
        return None if self.dashboard_port is None else f"http://{HOST}:{self.dashboard_port}"

    def env(self) -> dict[str, str]:
        """Environment a driver needs to talk to this head (token auth, loopback)."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, **_LOOPBACK}

    def alive(self) -> bool:
        """Whether the head process still runs."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        try:
            done, _ = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return True  # not our child (loaded from a file): it exists
        return done == 0

    def stop(self, timeout: float = 8.0, *, keep_temp: bool = False) -> None:
        """Stop this head and only it: SIGTERM its session, then SIGKILL what is left."""
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _group_alive(self.pid):
                _reap(self.pid)
                time.sleep(0.2)
            if not _group_alive(self.pid):
                break
        _reap(self.pid)
        if not keep_temp:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def save(self, path: str | os.PathLike) -> Path:
        """Write this head's description (pid, ports, temp folder; the token too, mode 0600)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(self), fh)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> RayHead:
        """Read what :meth:`save` wrote."""
        return cls(**json.loads(Path(path).read_text()))


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a reused pgid of someone else
        return False
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def _ray_executable() -> list[str]:
    exe = Path(sys.executable).with_name("ray")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "ray.scripts.scripts"]


#: What Ray's own start-up says when its raylet took longer than its fixed 30 s to register
#: (a machine busy with other work); worth one more try.
_SLOW_START = "timed out during startup"


def start_head(**kwargs) -> RayHead:
    """Start a local Ray head (see the module docstring) and wait until it accepts clients.

    Ray gives its raylet a fixed 30 s to register with the GCS; on a loaded machine it can take
    longer, and the head exits. That case is tried once more; every other failure is raised.
    Keyword arguments as :func:`_start_head_once`.
    """
    try:
        return _start_head_once(**kwargs)
    except RayHeadError as exc:
        if _SLOW_START not in str(exc):
            raise
        return _start_head_once(**kwargs)


def _start_head_once(
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    object_store_memory: int = DEFAULT_OBJECT_STORE_BYTES,
    include_dashboard: bool = True,
    timeout: float = 120.0,
    niceness: int = 0,
) -> RayHead:
    """Start a local Ray head once (see :func:`start_head`).

    ``niceness`` > 0 starts the head, and so every Ray process and worker it spawns, at that
    lower CPU priority (POSIX ``nice``, and the same for the head's session:
    :mod:`napari_rat.cpu_priority`): a head sharing the machine with a napari viewer then
    leaves the viewer the CPU it needs to stay responsive, and still uses every idle cycle.

    Raises
    ------
    RayHeadError
        When it exits or does not answer within ``timeout`` seconds.
    ImportError
        Without Ray (``pip install "napari-rat[train]"``).
    """
    try:
        import ray  # noqa: F401
    except ImportError as exc:  # pragma: no cover - the train extra is installed in CI
        raise ImportError('Ray is not installed: pip install "napari-rat[train]"') from exc
    temp_dir = tempfile.mkdtemp(prefix="napari-rat-ray-")
    token = secrets.token_hex(32)
    gcs_port, dashboard_port, *ports = free_ports(9)  # distinct: Ray refuses a port used twice
    if not include_dashboard:
        dashboard_port = None
    cmd = [
        *_ray_executable(),
        "start",
        "--head",
        "--block",
        "--disable-usage-stats",
        f"--node-ip-address={HOST}",
        f"--port={gcs_port}",
        f"--object-store-memory={int(object_store_memory)}",
        f"--temp-dir={temp_dir}",
        f"--include-dashboard={'true' if include_dashboard else 'false'}",
        f"--ray-client-server-port={ports[0]}",
        f"--node-manager-port={ports[1]}",
        f"--object-manager-port={ports[2]}",
        f"--dashboard-agent-listen-port={ports[3]}",
        f"--dashboard-agent-grpc-port={ports[4]}",
        f"--runtime-env-agent-port={ports[5]}",
        f"--metrics-export-port={ports[6]}",
    ]
    if include_dashboard:
        cmd += [f"--dashboard-host={HOST}", f"--dashboard-port={dashboard_port}"]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    if num_gpus is not None:
        cmd.append(f"--num-gpus={num_gpus}")
    if niceness > 0 and shutil.which("nice"):
        cmd = [shutil.which("nice"), "-n", str(int(niceness)), *cmd]  # execs ray: same pid
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0"})
    env.update(_LOOPBACK)
    # Jobs on this head run `python` from its PATH: let that be this environment's interpreter
    # (a submitted job then finds the same napari-rat, as on a cluster set up for it).
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    log_path = str(Path(temp_dir) / "head.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    head = RayHead(proc.pid, gcs_port, dashboard_port, token, temp_dir, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = Path(log_path).read_text(errors="replace")[-2000:]
            head.stop(keep_temp=True)
            raise RayHeadError(
                f"the local Ray head exited with code {proc.returncode} "
                f"(logs in {temp_dir}):\n{text}"
            )
        ready = _port_open(gcs_port) and (dashboard_port is None or _port_open(dashboard_port))
        if ready and "--block" in Path(log_path).read_text(errors="replace"):
            if niceness > 0:
                # The head runs in a session of its own: lower the session too, or the
                # scheduler's autogroups share the CPU 1:1 with the viewer's session whatever
                # the nice value. Only now: on a busy machine a head lowered from the start
                # could miss Ray's own start-up deadlines (its dashboard's 60 s).
                set_session_niceness(proc.pid, niceness)
            return head
        time.sleep(0.5)
    text = Path(log_path).read_text(errors="replace")[-2000:]
    head.stop(keep_temp=True)
    raise RayHeadError(
        f"the local Ray head (logs in {temp_dir}) did not start within {timeout:.0f} s:\n{text}"
    )


def _refresh_ray_config() -> None:
    """Make an already imported Ray re-read ``RAY_AUTH_MODE`` (it caches it at import) and the
    token (its loader caches the first one it read: a second head in the same process, with
    its own token, was refused as "Authentication token is missing or incorrect"). The config
    first, then the token cache, in the order Ray's own test helpers use."""
    if "ray._raylet" not in sys.modules:
        return
    from ray._raylet import Config

    Config.initialize("")
    try:
        from ray._raylet import AuthenticationTokenLoader
    except ImportError:  # a Ray without token authentication caches nothing
        return
    AuthenticationTokenLoader.instance().reset_cache()


@contextmanager
def driver_env(head: RayHead | None) -> Iterator[None]:
    """Within: ``RAY_ADDRESS`` unset and, for our head, its token in the environment."""
    keys = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", *_LOOPBACK)
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.pop("RAY_ADDRESS", None)
    constants = sys.modules.get("ray._private.ray_constants")
    saved_flag = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    if head is not None:
        os.environ.update(head.env())
        if constants is not None:  # already imported: the env var was read before
            constants.ENABLE_RAY_CLUSTER = False
        _refresh_ray_config()
    try:
        yield
    finally:
        if constants is not None and saved_flag is not None:
            constants.ENABLE_RAY_CLUSTER = saved_flag
        _refresh_ray_config()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def local_head(**kwargs) -> Iterator[RayHead]:
    """Start a head for the duration of a ``with`` block, then stop it by its pid."""
    head = start_head(**kwargs)
    try:
        yield head
    finally:
        head.stop()
