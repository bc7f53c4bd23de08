"""``napari_rat.io`` stays headless, and remote options follow the environment."""

from __future__ import annotations

import subprocess
import sys

from napari_rat.io.zarr_stores import is_remote, remote_storage_options


def test_importing_io_imports_no_gui_or_cluster_stack():
    code = (
        "import sys, napari_rat.io; "
        "bad = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'napari', 'qtpy', 'PyQt5', 'PyQt6', 'ray', 'deepspeed'}); "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_s3_is_anonymous_without_credentials(monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    opts = remote_storage_options("s3://bucket/image.zarr", timeout=7)
    assert opts["anon"] is True
    assert opts["config_kwargs"] == {"connect_timeout": 7, "read_timeout": 7}
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    opts = remote_storage_options("s3://bucket/image.zarr")
    assert "anon" not in opts
    assert opts["client_kwargs"] == {"endpoint_url": "http://127.0.0.1:9000"}


def test_is_remote():
    assert is_remote("HTTPS://host/a.zarr") and is_remote("s3://b/a.zarr")
    assert not is_remote("/data/a.zarr") and not is_remote("file.zarr")
