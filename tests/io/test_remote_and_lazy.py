"""Remote reading over a local http.server, and proof that opening reads no pixel chunk."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from ome_zarr_helpers import volume
from zarr.storage import LocalStore

from napari_rat.io import OmeZarrError, RemoteAccessError, open_pyramid, write_labels
from napari_rat.io.store_wrappers import KeyRecordingStore


def test_open_over_http(image_3d, http_server, version):
    write_labels(image_3d, (volume() > 100).astype(np.uint8), "mask")
    shutil.copytree(image_3d, http_server.root / "img.zarr")
    url = f"{http_server.url}/img.zarr"
    remote = open_pyramid(url, timeout=10)
    local = open_pyramid(image_3d)
    assert remote.uri == url
    assert remote.ngff_version == version
    assert [lv.shape for lv in remote.levels] == [lv.shape for lv in local.levels]
    assert [lv.scale for lv in remote.levels] == [lv.scale for lv in local.levels]
    assert remote.levels[0].translation == local.levels[0].translation
    assert [c.name for c in remote.channels] == ["dapi", "gfp"]
    np.testing.assert_array_equal(remote.levels[1].data.compute(), local.levels[1].data.compute())
    np.testing.assert_array_equal(
        remote.labels["mask"].levels[0].data.compute(), (volume() > 100).astype(np.uint8)
    )


def test_http_404_is_a_clear_error(http_server):
    with pytest.raises(OmeZarrError, match="404") as info:
        open_pyramid(f"{http_server.url}/missing.zarr", timeout=5)
    assert "missing.zarr" in str(info.value)


def test_http_timeout_is_a_clear_error(slow_http_server):
    with pytest.raises(RemoteAccessError, match=r"did not answer within 0\.5 s") as info:
        open_pyramid(f"{slow_http_server.url}/img.zarr", timeout=0.5)
    assert slow_http_server.url in str(info.value)


def test_opening_reads_metadata_only(tmp_path):
    import zarr

    from napari_rat.bench.io import make_sparse_pyramid

    path = make_sparse_pyramid(tmp_path / "big.zarr", "0.5")
    store = KeyRecordingStore(LocalStore(path, read_only=True))
    pyramid = open_pyramid(store)
    assert len(pyramid.levels) == 5
    assert pyramid.levels[0].shape == (512, 2048, 2048)
    assert store.reads, "the recording store saw no reads at all"
    assert store.chunk_reads == []
    # Computing one voxel then reads exactly one chunk of level 0.
    pyramid.levels[0].data[100, 300, 700].compute()
    assert store.chunk_reads == ["0/c/1/1/2"]
    assert isinstance(zarr.open_group(path, mode="r")["0"], zarr.Array)
