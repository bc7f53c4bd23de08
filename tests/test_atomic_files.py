"""The one staging helper: build aside, move into place; an interruption leaves nothing partial,
the old file or folder byte for byte, and no scratch."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_rat.atomic_files import DestinationExistsError, StagingError, atomic_path


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` (hidden ones included) with its bytes (``None``: a folder)."""
    return {
        str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
        for p in sorted(folder.rglob("*"))
    }


def write_store(path: Path, value: int) -> None:
    group = zarr.open_group(path, mode="w", zarr_format=3)
    arr = group.create_array("0", shape=(16, 16), chunks=(4, 4), dtype="uint8")
    arr[:] = value


def build_file(path: Path, value: int) -> None:
    path.write_bytes(bytes([value]) * 4096)


def build_store(path: Path, value: int) -> None:
    write_store(path, value)


BUILDERS = {"file": build_file, "zarr store": build_store}


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("kind", BUILDERS)
@pytest.mark.parametrize("old", [True, False], ids=["over old data", "new"])
@pytest.mark.parametrize("error", [Interrupted, KeyboardInterrupt])
def test_interrupted_build_leaves_the_old_data_and_no_scratch(tmp_path, kind, old, error):
    build = BUILDERS[kind]
    dest = tmp_path / ("out.zarr" if kind == "zarr store" else "out.bin")
    if old:
        build(dest, 1)
    before = snapshot(tmp_path)
    with pytest.raises(error):
        with atomic_path(dest) as staged:
            build(staged, 2)  # the new content is half there when the failure comes
            assert staged.exists() and staged.parent.parent == tmp_path
            assert staged.name == dest.name and staged.parent.name.startswith(".out.")
            raise error()
    assert snapshot(tmp_path) == before
    if old:
        if kind == "zarr store":
            assert np.all(zarr.open_array(dest / "0", mode="r")[:] == 1)
        else:
            assert dest.read_bytes() == bytes([1]) * 4096


@pytest.mark.parametrize("kind", BUILDERS)
def test_completed_build_replaces_the_old_data(tmp_path, kind):
    build = BUILDERS[kind]
    dest = tmp_path / ("out.zarr" if kind == "zarr store" else "out.bin")
    build(dest, 1)
    if kind == "zarr store":
        (dest / "stale-file").write_text("from the old store")
    with atomic_path(dest) as staged:
        build(staged, 2)
        # Nothing moves before the block ends.
        if kind == "zarr store":
            assert np.all(zarr.open_array(dest / "0", mode="r")[:] == 1)
        else:
            assert dest.read_bytes() == bytes([1]) * 4096
    assert sorted(p.name for p in tmp_path.iterdir()) == [dest.name]  # no scratch, no old copy
    if kind == "zarr store":
        assert np.all(zarr.open_array(dest / "0", mode="r")[:] == 2)
        assert not (dest / "stale-file").exists()
    else:
        assert dest.read_bytes() == bytes([2]) * 4096


def test_new_file_gets_the_permissions_of_a_plain_open(tmp_path):
    with open(tmp_path / "plain", "w") as fh:
        fh.write("x")
    with atomic_path(tmp_path / "sub" / "staged") as staged:  # missing parents are created
        staged.write_text("x")
        staged.chmod(0o600)  # as safetensors creates its files
    mode = os.stat(tmp_path / "plain").st_mode & 0o777
    assert os.stat(tmp_path / "sub" / "staged").st_mode & 0o777 == mode


def test_a_closed_generator_cleans_up(tmp_path):
    """A generator that builds under the helper and is closed between steps (a cancelled
    prediction) removes its scratch and leaves the old store."""
    dest = tmp_path / "prediction.zarr"
    write_store(dest, 1)
    before = snapshot(tmp_path)

    def steps():
        with atomic_path(dest, overwrite=True) as staged:
            group = zarr.open_group(staged, mode="w")
            arr = group.create_array("0", shape=(16, 16), chunks=(4, 4), dtype="uint8")
            for i in range(4):
                arr[i * 4 : (i + 1) * 4] = 2
                yield i

    gen = steps()
    assert next(gen) == 0
    assert len(list(tmp_path.iterdir())) == 2  # the store and the scratch
    gen.close()
    assert snapshot(tmp_path) == before


def test_existing_destination_is_refused_without_overwrite(tmp_path):
    dest = tmp_path / "out.zarr"
    write_store(dest, 1)
    before = snapshot(tmp_path)
    with pytest.raises(DestinationExistsError, match="already exists.*overwrite=True"):
        with atomic_path(dest, overwrite=False):
            pytest.fail("the block must not run")
    assert snapshot(tmp_path) == before


def test_destination_that_appears_meanwhile_is_kept(tmp_path):
    dest = tmp_path / "out.zarr"
    with pytest.raises(DestinationExistsError, match="appeared while"):
        with atomic_path(dest, overwrite=False) as staged:
            write_store(staged, 2)
            write_store(dest, 1)  # another writer got there first
    assert np.all(zarr.open_array(dest / "0", mode="r")[:] == 1)
    assert [p.name for p in tmp_path.iterdir()] == ["out.zarr"]


def test_failed_move_puts_the_old_folder_back(tmp_path, monkeypatch):
    dest = tmp_path / "out.zarr"
    write_store(dest, 1)
    before = snapshot(tmp_path)
    real_rename = os.rename

    def rename(src, dst):
        if Path(dst) == dest:  # the new store's move fails; the old one's returns
            if Path(src).name == dest.name:
                raise OSError(errno.EXDEV, "simulated failure", str(dst))
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="simulated failure"):
        with atomic_path(dest) as staged:
            write_store(staged, 2)
    assert snapshot(tmp_path) == before


def test_block_that_writes_nothing_changes_nothing(tmp_path):
    dest = tmp_path / "out.bin"
    build_file(dest, 1)
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with atomic_path(dest):
            pass
    assert dest.read_bytes() == bytes([1]) * 4096
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_missing_folder_without_make_parents(tmp_path):
    with pytest.raises(StagingError, match="does not exist.*create it first") as info:
        with atomic_path(tmp_path / "missing" / "out.zarr", make_parents=False):
            pytest.fail("the block must not run")
    assert info.value.errno == errno.ENOENT
    assert list(tmp_path.iterdir()) == []


def test_read_only_folder():
    # /sys refuses new folders even to root.
    with pytest.raises(StagingError, match="read-only.*writable folder") as info:
        with atomic_path("/sys/napari-rat-test.zarr", make_parents=False):
            pytest.fail("the block must not run")
    assert info.value.errno in (errno.EACCES, errno.EPERM, errno.EROFS)


def test_urls_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="only local paths"):
        with atomic_path("s3://bucket/out.zarr"):
            pytest.fail("the block must not run")
    assert list(tmp_path.iterdir()) == []  # no local "s3:" folder either
