"""Shared fixtures for the OME-Zarr tests: tiny images on disk and a local HTTP server."""

from __future__ import annotations

import http.server
import os
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from ome_zarr_helpers import SPACING_3D, TRANSLATION_3D, volume

from napari_rat._widgets.model_imports import keep_triton_out
from napari_rat.io import Channel, write_image


@pytest.fixture
def make_napari_viewer(make_napari_viewer):
    """napari's fixture, with triton kept out as the docks keep it: a later test of this
    folder that imports the model (timm -> torchvision -> triton) after a canvas has drawn
    would crash the process (triton's LLVM against Mesa's; see model_imports)."""
    keep_triton_out()
    return make_napari_viewer


@pytest.fixture(params=["0.4", "0.5"])
def version(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def image_3d(tmp_path: Path, version: str) -> Path:
    """A 2-channel anisotropic CZYX image with a non-zero translation, 3 levels."""
    data = np.stack([volume(), volume()[::-1]])
    return write_image(
        tmp_path / f"image-{version}.zarr",
        data,
        axes="czyx",
        scale=SPACING_3D,
        translation=TRANSLATION_3D,
        levels=3,
        ngff_version=version,
        chunks=(1, 4, 16, 16),
        channels=[Channel("dapi", "0000FF", (0, 200)), Channel("gfp", "00FF00", (10, 150))],
    )


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    delay = 0.0

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.delay:
            time.sleep(self.delay)
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that gave up (the timeout test) leaves a broken pipe: expected.
        pass


class _Server:
    def __init__(self, root: Path, delay: float = 0.0) -> None:
        handler = type("Handler", (_QuietHandler,), {"delay": delay})
        self.httpd = _QuietServer(("127.0.0.1", 0), partial(handler, directory=os.fspath(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[_Server]:
    """Serve ``tmp_path / "served"`` on 127.0.0.1 at a free port; shut down after the test."""
    root = tmp_path / "served"
    root.mkdir()
    server = _Server(root)
    server.root = root  # type: ignore[attr-defined]
    yield server
    server.close()


@pytest.fixture
def slow_http_server(tmp_path: Path) -> Iterator[_Server]:
    """A server that waits 3 s before every answer (for timeouts)."""
    root = tmp_path / "slow"
    root.mkdir()
    server = _Server(root, delay=3.0)
    yield server
    server.close()
