"""Training jobs on a real local Ray head (127.0.0.1, token auth, stopped by its pid), driven
through the ``napari-rat`` cluster commands and :mod:`napari_rat.cluster`.

Two heads: the recorded local head (``--address`` omitted), and a second head reached only as a
remote cluster is, through its dashboard URL and a token (the code path of any remote cluster).
Both read and write the same storage folder, as a cluster and its users share a file system.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import time

import pytest

from napari_rat.cli import main
from napari_rat.config import load_config, save_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory):
    pytest.importorskip("ray")
    folder = tmp_path_factory.mktemp("state")
    mp = pytest.MonkeyPatch()
    mp.setenv("NAPARI_RAT_STATE_DIR", str(folder))
    yield folder
    mp.undo()


@pytest.fixture(scope="module")
def head(state_dir):
    from napari_rat.cluster import start_local_head, stop_local_head

    head, started = start_local_head(num_cpus=4)
    assert started
    yield head
    assert stop_local_head() is not None
    assert not head.alive()


@pytest.fixture(scope="module")
def remote_head(state_dir):
    """A second head, never recorded: only its dashboard URL and token are used."""
    from napari_rat.train.ray_head import local_head

    with local_head(num_cpus=3) as head:
        yield head
    assert not head.alive()


def _config(tmp_path, **training):
    from pathlib import Path

    config = load_config(Path(__file__).parents[2] / "configs" / "quick.yaml")
    raw = config.model_dump()
    raw["training"].update(output_dir=str(tmp_path / "runs"), **training)
    raw["cluster"]["storage_path"] = str(tmp_path / "ray")
    return save_config(type(config).model_validate(raw), tmp_path / "job.yaml")


def _job_id(out: str) -> str:
    return [line for line in out.splitlines() if line.startswith("napari-rat-")][-1]


def test_cluster_start_keeps_one_head_on_loopback_only(head, capsys):
    import psutil

    from napari_rat.cluster.local_head import LOCAL_HEAD_NICENESS
    from napari_rat.cpu_priority import session_niceness

    assert main(["cluster", "start"]) == 0  # the recorded head is reused, not doubled
    assert f"already running: pid {head.pid}" in capsys.readouterr().out
    assert main(["cluster", "status"]) == 0
    out = capsys.readouterr().out
    assert head.dashboard_url in out and head.token not in out
    record = (os.environ["NAPARI_RAT_STATE_DIR"]) + "/local-head.json"
    assert oct(os.stat(record).st_mode & 0o777) == "0o600"
    listening, niceness = set(), set()
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) != head.pid:
                continue
            conns = proc.net_connections(kind="inet")
            niceness.add(proc.nice())
        except (psutil.Error, ProcessLookupError):
            continue
        listening |= {c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN}
    # the head and everything it spawned (GCS, raylet, dashboard; later the workers) run at a
    # lower CPU priority than a viewer on the same machine
    assert niceness == {LOCAL_HEAD_NICENESS}, niceness
    # and so does the head's session as a whole (where the scheduler has autogroups): a nice
    # value alone does not count against the viewer's session
    assert session_niceness(head.pid) in (None, LOCAL_HEAD_NICENESS)

    def loopback(ip: str) -> bool:
        addr = ipaddress.ip_address(ip)
        return (getattr(addr, "ipv4_mapped", None) or addr).is_loopback

    assert listening and all(loopback(ip) for ip in listening), listening


def test_remote_path_needs_the_right_token_and_fails_fast(remote_head, tmp_path, monkeypatch):
    from napari_rat.cluster import ClusterError, connect

    head = remote_head
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    token_file = tmp_path / "token"
    token_file.write_text(head.token + "\n")
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:9")  # must not redirect anything
    client = connect(head.dashboard_url, token_file=token_file)
    assert client.jobs() == [] or all(j.run_name for j in client.jobs())
    assert head.token not in repr(client)
    with pytest.raises(ClusterError, match="no token for the cluster"):
        connect(head.dashboard_url)
    token_file.write_text("0" * 64)
    with pytest.raises(ClusterError, match="refused the token"):
        connect(head.dashboard_url, token_file=token_file)
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(ClusterError, match="cannot reach the Ray dashboard"):
        connect(f"http://127.0.0.1:{port}", token="x")
    assert time.monotonic() - start < 10
    with pytest.raises(ClusterError, match="not a Ray dashboard URL"):
        connect("127.0.0.1:8265", token="x")


def test_submit_watch_stop_resume_fetch(head, remote_head, tmp_path, monkeypatch, capsys):
    """The quick config (2 workers, DeepSpeed ZeRO-2 on CPU) as a job on the local head: its
    metrics stream through the log, a stop keeps its checkpoints; the "remote" head resumes the
    run from the shared storage to the end, and the consolidated best checkpoint is fetched from
    there and loads."""
    from napari_rat.cluster import connect
    from napari_rat.model import load_checkpoint

    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, epochs=3, steps_per_epoch=1, warmup_steps=1, log_every=1)
    client = connect()

    assert main(["submit", "--config", str(config), "--num-workers", "2"]) == 0
    first = _job_id(capsys.readouterr().out)
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:  # wait for the first checkpoint, then stop the job
        if any(e.kind == "checkpoint" for e in client.events(first)):
            break
        assert client.job_status(first) not in ("FAILED", "STOPPED"), client.logs(first)[-3000:]
        time.sleep(2)
    else:  # seen only on a machine busy with other trainings: say so, with the job's log
        pytest.fail(
            f"no checkpoint within 400 s (job {client.job_status(first)}); "
            f"log tail: {client.logs(first)[-3000:]}"
        )
    progress = [e for e in client.events(first) if e.kind == "progress"]
    assert progress and progress[0].step == 1 and progress[0].metrics["loss"] > 0
    assert main(["stop", first]) == 0
    assert client.wait(first, timeout=60) in ("STOPPED", "SUCCEEDED")
    # the events parsed a piece at a time while the job ran are those of its whole log
    [summary] = [j for j in client.jobs() if j.submission_id == first]
    assert client._logs[first].final
    assert client.events(first) == connect().events(first)
    assert summary.latest["step"] == max(
        e.step for e in client.events(first) if e.kind == "progress"
    )

    # `napari-rat train` with a dashboard URL as cluster.address runs as a job there too: the
    # resume goes that way, to the other head, with the token from cluster.token_env
    raw = load_config(config).model_dump()
    raw["cluster"].update(address=remote_head.dashboard_url, token_env="TEST_CLUSTER_TOKEN")
    remote = save_config(type(load_config(config)).model_validate(raw), tmp_path / "remote.yaml")
    monkeypatch.setenv("TEST_CLUSTER_TOKEN", remote_head.token)
    assert main(["train", "--config", str(remote), "--backend", "ray", "--resume"]) == 0
    out = capsys.readouterr().out
    resumed = out.split("submitted ", 1)[1].split()[0]
    assert (tmp_path / "runs" / "quick" / "quick.safetensors").is_file()  # fetched back
    remote_client = connect(remote_head.dashboard_url, token_env="TEST_CLUSTER_TOKEN")
    events = remote_client.events(resumed)
    steps = [e.step for e in events if e.kind == "progress"]
    assert steps and steps[0] > 1, steps  # continued from a checkpoint, not from step 1
    assert any(e.kind == "validation" for e in events)
    assert all(j.submission_id != resumed for j in client.jobs())  # it ran on the other head

    on_remote = ["--address", remote_head.dashboard_url, "--token-env", "TEST_CLUSTER_TOKEN"]
    assert main(["jobs", *on_remote]) == 0
    table = capsys.readouterr().out
    assert resumed in table and "SUCCEEDED" in table and "loss" in table
    assert main(["jobs"]) == 0
    assert first in capsys.readouterr().out

    assert main(["fetch", resumed, "--output", str(tmp_path / "fetched"), *on_remote]) == 0
    fetched = capsys.readouterr().out.strip().splitlines()[-1]
    model = load_checkpoint(fetched)
    best = load_checkpoint(tmp_path / "runs" / "quick" / "best.safetensors")
    pairs = zip(model.state_dict().values(), best.state_dict().values(), strict=True)
    assert all((a == b).all() for a, b in pairs)
    info = remote_client._jobs.get_job_info(resumed)
    shipped = json.dumps([info.entrypoint, info.metadata, info.runtime_env], default=str)
    assert remote_head.token not in shipped
    trainer = json.loads(
        next(
            (tmp_path / "ray" / "quick").glob("checkpoint-step-00000003/state/*/trainer.json")
        ).read_text()
    )
    assert trainer["step"] == 3


def test_a_failed_job_shows_its_message_and_fetch_says_why(head, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, run_name="broken")
    raw = load_config(config).model_dump()
    raw["data"].update(
        source="tiff", paths=[str(tmp_path / "img.tif")], label_paths=[str(tmp_path / "img.tif")]
    )
    (tmp_path / "img.tif").write_bytes(b"not a tiff")
    save_config(type(load_config(config)).model_validate(raw), config)
    assert main(["submit", "--config", str(config), "--follow"]) == 1
    out = capsys.readouterr().out
    job = _job_id(out)
    assert f"job {job}: FAILED" in out
    assert main(["fetch", job]) == 2
    assert "has no consolidated checkpoint" in capsys.readouterr().err
