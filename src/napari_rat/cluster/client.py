"""Connect to a Ray cluster's Jobs API and drive napari-rat training jobs on it.

:func:`connect` reaches either the recorded local head (``address`` ``None`` or ``"local"``) or
a remote cluster's dashboard URL (http, or https with an optional CA file) with a token from an
argument, a file or an environment variable. The token goes as ``Authorization: Bearer`` on every
call and nowhere else: it is never logged, shown, written into a config or put into a job.
``RAY_ADDRESS`` / ``RAY_API_SERVER_ADDRESS`` in the environment, which Ray's client would let
override the address silently, are ignored. A cluster that does not answer fails within the
connect timeout (10 s by default) with what to check; a refused token is named as such.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from napari_rat.config import ExperimentConfig

log = logging.getLogger(__name__)

LOCAL = "local"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
_warned_plain_http: set[str] = set()


class ClusterError(RuntimeError):
    """A cluster operation failed; the message says what to check or do."""


@dataclass
class JobSummary:
    """One napari-rat job as the Jobs API and its log describe it."""

    submission_id: str
    run_name: str
    status: str
    message: str = ""
    start_time: float | None = None  # seconds since the epoch
    end_time: float | None = None
    latest: dict[str, float] = field(default_factory=dict)  # last loss, step, validation scores


@dataclass
class _LogCache:
    """A job's log as last read, and the training events parsed from it so far."""

    text: str = ""
    parsed: int = 0  # the events of text[:parsed] (whole lines) are in ``events``
    events: list = field(default_factory=list)
    read_at: float = 0.0  # time.monotonic() of the read
    final: bool = False  # read after the job had ended: it cannot grow any more


@contextmanager
def _no_address_override() -> Iterator[None]:
    """Hide the variables with which Ray's client replaces the address it was given."""
    keys = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")
    saved = {k: os.environ.pop(k) for k in keys if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def resolve_token(
    token: str | None = None, token_file: str | os.PathLike | None = None, token_env: str = ""
) -> str | None:
    """The token from the argument, else the file, else the environment variable ``token_env``."""
    if token:
        return token.strip()
    if token_file is not None:
        path = Path(token_file).expanduser()
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise ClusterError(f"cannot read the token file {path}: {exc.strerror}") from None
        if not text:
            raise ClusterError(f"the token file {path} is empty")
        return text
    if token_env and os.environ.get(token_env):
        return os.environ[token_env].strip()
    return None


def _is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return False


def _check_reachable(url: str, timeout: float) -> None:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ClusterError(
            f"{url!r} is not a Ray dashboard URL; give http://HOST:PORT or https://HOST:PORT "
            "(the dashboard port, 8265 by default)"
        )
    host = parsed.hostname
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if parsed.scheme == "http" and not _is_loopback(host) and host not in _warned_plain_http:
        _warned_plain_http.add(host)
        log.warning(
            "the cluster at %s is reached over plain http: the token travels unencrypted; "
            "use https if the network is not trusted",
            host,
        )
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except TimeoutError:
        raise ClusterError(
            f"the Ray dashboard at {url} did not answer within {timeout:.0f} s; check the address, "
            "the port (the dashboard's, 8265 by default), and that the cluster is up"
        ) from None
    except OSError as exc:
        raise ClusterError(
            f"cannot reach the Ray dashboard at {url} ({exc.strerror or exc}); check the "
            "address and port, and that the cluster is up (`napari-rat cluster status` for the "
            "local head)"
        ) from None


def connect(
    address: str | None = None,
    *,
    token: str | None = None,
    token_file: str | os.PathLike | None = None,
    token_env: str = "RAY_AUTH_TOKEN",
    ca_file: str | os.PathLike | None = None,
    timeout: float = 10.0,
) -> ClusterClient:
    """A client for the local head (``address`` ``None`` or ``"local"``) or a dashboard URL.

    Raises
    ------
    ClusterError
        No local head, nothing answering at the address, no token, a refused token.
    ImportError
        Without Ray's job client (``pip install ".[train]"``).
    """
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as exc:
        raise ImportError(
            'Ray\'s job client is not installed: pip install ".[train]" (napari-rat[train])'
        ) from exc
    local = address in (None, "", LOCAL)
    if local:
        from napari_rat.cluster.local_head import recorded_head

        head = recorded_head()
        if head is None or head.dashboard_url is None:
            raise ClusterError(
                "no local Ray head is running; start one with `napari-rat cluster start`, or give "
                "the dashboard URL of a remote cluster (--address)"
            )
        url, secret = head.dashboard_url, head.token
    else:
        url = str(address).rstrip("/")
        secret = resolve_token(token, token_file, token_env)
    if ca_file is not None and not Path(ca_file).is_file():
        raise ClusterError(f"the CA file {ca_file} does not exist")
    _check_reachable(url, timeout)
    if not secret:
        raise ClusterError(
            f"no token for the cluster at {url}: give --token-file FILE, or set the environment "
            f"variable {token_env or 'RAY_AUTH_TOKEN'} (cluster.token_env)"
        )
    with _no_address_override():
        try:
            client = JobSubmissionClient(
                url,
                headers={"Authorization": f"Bearer {secret}"},
                verify=str(ca_file) if ca_file is not None else True,
            )
            client.list_jobs()  # the version check may be open to all; this call is not
        except Exception as exc:  # noqa: BLE001 - Ray raises several unrelated types here
            raise _as_cluster_error(exc, url) from None
    return ClusterClient(client, url, local=local)


def _as_cluster_error(exc: Exception, url: str) -> ClusterError:
    name = type(exc).__name__
    text = str(exc)
    if name == "AuthenticationError" or "401" in text or "403" in text or "nauthori" in text:
        return ClusterError(
            f"the cluster at {url} refused the token (wrong or expired); get the cluster's "
            "current token and pass it with --token-file or the token environment variable"
        )
    if isinstance(exc, ConnectionError) or "onnection" in text:
        return ClusterError(f"lost the connection to the Ray dashboard at {url}; is it still up?")
    first = text.splitlines()[0] if text else name
    return ClusterError(f"the cluster at {url} answered with an error: {first}")


class ClusterClient:
    """napari-rat's operations on one cluster (made by :func:`connect`)."""

    def __init__(self, jobs, url: str, *, local: bool) -> None:
        self._jobs = jobs
        self.url = url
        self.local = local
        # Logs are read whole (the Jobs API has no offset), so a watcher polling every few
        # seconds would re-read and re-parse every job's whole log each time: an ended job's log
        # is kept, and a running one's events are parsed only from where the last read stopped.
        self._logs: dict[str, _LogCache] = {}
        self._logs_lock = threading.Lock()

    def __repr__(self) -> str:  # never the headers: they hold the token
        return f"ClusterClient({self.url!r}, local={self.local})"

    def _call(self, fn: Callable, *args, **kwargs):
        with _no_address_override():
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - see _as_cluster_error
                if "does not exist" in str(exc) or "404" in str(exc):
                    raise ClusterError(
                        f"no job {args[0] if args else ''!s} on the cluster at {self.url}; "
                        "`napari-rat jobs` lists them"
                    ) from None
                raise _as_cluster_error(exc, self.url) from None

    # --- submit ---------------------------------------------------------------------------
    def submit(
        self,
        config: ExperimentConfig,
        *,
        init_from: str | None = None,
        resume: bool = False,
        num_workers: int | None = None,
        num_gpus: float | None = None,
    ) -> str:
        """Submit ``config`` as a training job; returns its submission id.

        Raises
        ------
        napari_rat.cluster.submission.SubmissionError
            Before anything is sent, when the job could not run (see :func:`build_job`).
        """
        from napari_rat.cluster.submission import build_job

        spec = build_job(
            config,
            local_cluster=self.local,
            init_from=init_from,
            resume=resume,
            num_workers=num_workers,
            num_gpus=num_gpus,
        )
        return self._submit_spec(spec)

    def submit_predict(
        self,
        image: str,
        output: str,
        *,
        checkpoint: str = "starter",
        predict_args: list[str] | None = None,
    ) -> str:
        """Submit ``napari-rat predict IMAGE --output OUTPUT --cluster auto`` (plus
        ``predict_args``) as a job; returns its submission id. See
        :func:`~napari_rat.cluster.submission.build_predict_job`."""
        from napari_rat.cluster.submission import build_predict_job

        spec = build_predict_job(
            image,
            output,
            local_cluster=self.local,
            checkpoint=checkpoint,
            predict_args=predict_args,
        )
        return self._submit_spec(spec)

    def _submit_spec(self, spec) -> str:
        try:
            return self._call(
                self._jobs.submit_job,
                entrypoint=spec.entrypoint,
                submission_id=spec.submission_id,
                runtime_env=spec.runtime_env,
                metadata=spec.metadata,
            )
        finally:
            spec.cleanup()

    # --- watch ----------------------------------------------------------------------------
    def jobs(self) -> list[JobSummary]:
        """napari-rat's jobs on this cluster, newest first, with their latest metrics."""
        details = [d for d in self._call(self._jobs.list_jobs) if _is_ours(d)]
        details.sort(key=lambda d: d.start_time or 0, reverse=True)
        return [self._summary(d) for d in details]

    def job(self, submission_id: str) -> JobSummary:
        """One job's status, message and latest metrics."""
        return self._summary(self._call(self._jobs.get_job_info, submission_id))

    def _summary(self, info) -> JobSummary:
        latest: dict[str, float] = {}
        status = getattr(info.status, "value", str(info.status))
        ended = str(status) in TERMINAL  # read before the log: the log read now is complete
        for event in self._read_log(info.submission_id, final=ended).events:
            if event.kind == "progress":
                latest.update(step=float(event.step), loss=event.metrics.get("loss", float("nan")))
            elif event.kind == "validation":
                latest.update({f"val_{k}": v for k, v in event.metrics.items()})
        return JobSummary(
            submission_id=info.submission_id,
            run_name=(info.metadata or {}).get("run_name", ""),
            status=str(status),
            message=info.message or "",
            start_time=info.start_time / 1000 if info.start_time else None,
            end_time=info.end_time / 1000 if info.end_time else None,
            latest=latest,
        )

    def _read_log(
        self, submission_id: str, *, final: bool = False, max_age_s: float = 0.0
    ) -> _LogCache:
        """The job's log, read again unless it is final or was read less than ``max_age_s``
        ago, with its events parsed incrementally; ``final``: the job had ended before this
        call, so what is read now is its whole log."""
        from napari_rat.train.loop import parse_event_line

        with self._logs_lock:
            cached = self._logs.get(submission_id)
            if cached is not None and (
                cached.final or time.monotonic() - cached.read_at < max_age_s
            ):
                return cached
        text = self._call(self._jobs.get_job_logs, submission_id)
        read_at = time.monotonic()
        with self._logs_lock:
            cached = self._logs.get(submission_id) or _LogCache()
            if not text.startswith(cached.text[: cached.parsed]):  # not the same log: start over
                cached = _LogCache()
            end = text.rfind("\n") + 1  # whole lines only; a partial last line waits
            if final:
                end = len(text)
            found = (parse_event_line(line) for line in text[cached.parsed : end].splitlines())
            events = cached.events + [e for e in found if e is not None]
            fresh = _LogCache(text, end, events, read_at, final)
            self._logs[submission_id] = fresh
            return fresh

    def logs(self, submission_id: str, *, max_age_s: float = 0.0) -> str:
        """The job's whole log so far (a copy read less than ``max_age_s`` ago may serve)."""
        return self._read_log(submission_id, max_age_s=max_age_s).text

    def follow(
        self,
        submission_id: str,
        *,
        poll_s: float = 1.0,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> Iterator[str]:
        """Yield the job's new log lines as they come, until it ends (or ``cancelled()``)."""
        seen = 0
        while True:
            status = self.job_status(submission_id)
            text = self.logs(submission_id)
            lines = text.splitlines()
            yield from lines[seen:]
            seen = len(lines)
            if status in TERMINAL or cancelled():
                return
            time.sleep(poll_s)

    def events(self, submission_id: str, *, max_age_s: float = 0.0) -> list:
        """The training events (progress, validation, checkpoint) found in the job's log."""
        return list(self._read_log(submission_id, max_age_s=max_age_s).events)

    def job_status(self, submission_id: str) -> str:
        status = self._call(self._jobs.get_job_status, submission_id)
        return str(getattr(status, "value", status))

    def wait(self, submission_id: str, timeout: float, *, poll_s: float = 1.0) -> str:
        """Wait for the job to end (or ``timeout`` seconds); returns its last status."""
        deadline = time.monotonic() + timeout
        status = self.job_status(submission_id)
        while status not in TERMINAL and time.monotonic() < deadline:
            time.sleep(poll_s)
            status = self.job_status(submission_id)
        return status

    # --- stop and fetch -------------------------------------------------------------------
    def stop(self, submission_id: str) -> bool:
        """Ask the job to stop; its checkpoints so far stay in storage for a resume."""
        return bool(self._call(self._jobs.stop_job, submission_id))

    def fetch(self, submission_id: str, output_dir: str | os.PathLike = ".") -> Path:
        """Copy the run's consolidated best checkpoint from its storage (a folder or an
        ``s3://`` URL, through fsspec) to ``output_dir/<run name>.safetensors`` and check that it
        loads.

        Raises
        ------
        ClusterError
            The job has not produced a checkpoint yet, or storage cannot be read from here.
        """
        import fsspec

        from napari_rat.atomic_files import atomic_path
        from napari_rat.model import CheckpointError, read_checkpoint_info
        from napari_rat.train.ray_backend import STORAGE_BEST_NAME

        info = self._call(self._jobs.get_job_info, submission_id)
        meta = info.metadata or {}
        if "storage" not in meta:
            raise ClusterError(f"job {submission_id} was not submitted by napari-rat")
        source = f"{meta['storage'].rstrip('/')}/{STORAGE_BEST_NAME}"
        name = meta.get("run_name", submission_id)
        target = Path(output_dir).expanduser() / f"{name}.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            fs, path = fsspec.core.url_to_fs(source)
            if not fs.exists(path):
                status = str(getattr(info.status, "value", info.status))
                raise ClusterError(
                    f"job {submission_id} ({status}) has no consolidated checkpoint at {source} "
                    "yet; fetch once it has SUCCEEDED"
                )
            with atomic_path(target) as tmp:
                fs.get_file(path, str(tmp))
                read_checkpoint_info(tmp)
        except CheckpointError as exc:
            raise ClusterError(f"the fetched checkpoint does not load: {exc}") from None
        except OSError as exc:
            raise ClusterError(
                f"cannot read {source} from this machine ({exc}); the run's storage "
                "(cluster.storage_path) must be a folder or URL both the cluster and this "
                "machine reach"
            ) from None
        return target


def _is_ours(details) -> bool:
    return bool((details.metadata or {}).get("napari_rat_version"))
