"""The cluster client's checks that need no cluster: addresses, tokens, CA files."""

from __future__ import annotations

import pytest

from napari_rat.cluster.client import ClusterError, connect, resolve_token

pytest.importorskip("ray")


def test_tokens_come_from_the_argument_then_the_file_then_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_TOKEN", " from-env \n")
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    assert resolve_token("given", token_file, "MY_TOKEN") == "given"
    assert resolve_token(None, token_file, "MY_TOKEN") == "from-file"
    assert resolve_token(None, None, "MY_TOKEN") == "from-env"
    assert resolve_token(None, None, "UNSET_TOKEN_VAR") is None
    token_file.write_text("  \n")
    with pytest.raises(ClusterError, match="is empty"):
        resolve_token(None, token_file, "MY_TOKEN")
    with pytest.raises(ClusterError, match="cannot read the token file"):
        resolve_token(None, tmp_path / "missing", "MY_TOKEN")


def test_bad_addresses_and_files_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_RAT_STATE_DIR", str(tmp_path / "state"))
    with pytest.raises(ClusterError, match="no local Ray head is running"):
        connect()
    # a recorded head that died is noticed (and its record dropped)
    import subprocess

    from napari_rat.cluster.local_head import RECORD_NAME, state_dir
    from napari_rat.train.ray_head import RayHead

    gone = subprocess.Popen(["true"])
    gone.wait()
    record = RayHead(gone.pid, 1, 2, "secret", str(tmp_path), str(tmp_path / "log"))
    record.save(state_dir() / RECORD_NAME)
    with pytest.raises(ClusterError, match="no local Ray head is running"):
        connect()
    assert not (state_dir() / RECORD_NAME).exists()
    with pytest.raises(ClusterError, match="not a Ray dashboard URL"):
        connect("127.0.0.1:8265", token="x")
    with pytest.raises(ClusterError, match="not a Ray dashboard URL"):
        connect("ray://127.0.0.1:10001", token="x")
    with pytest.raises(ClusterError, match="the CA file .* does not exist"):
        connect("https://127.0.0.1:8265", token="x", ca_file=tmp_path / "ca.pem")


def test_plain_http_beyond_loopback_warns_once(caplog):
    """The token would cross the network unencrypted: said once per host, not for loopback.
    The host is this machine's own non-loopback address, on a port where nothing listens, so
    nothing leaves the machine and the connection is refused at once."""
    import socket

    psutil = pytest.importorskip("psutil")
    own = [
        a.address
        for name, addrs in psutil.net_if_addrs().items()
        for a in addrs
        if a.family == socket.AF_INET and not a.address.startswith("127.")
    ]
    if not own:
        pytest.skip("this machine has no non-loopback IPv4 address")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    caplog.set_level("WARNING", logger="napari_rat.cluster.client")
    for host in ("127.0.0.2", "localhost", own[0], own[0]):
        with pytest.raises(ClusterError, match="cannot reach the Ray dashboard"):
            connect(f"http://{host}:{port}", token="x", timeout=2)
    warned = [r.getMessage() for r in caplog.records if "plain http" in r.getMessage()]
    assert len(warned) == 1 and own[0] in warned[0], warned
