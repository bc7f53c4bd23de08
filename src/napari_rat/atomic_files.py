"""Atomic writes: build aside, then move into place.

:func:`atomic_path` is the one way this package writes a file or a folder (a zarr store, a
training set) that someone may be reading, or that a crash must not leave half-written: the
new content is built in a hidden scratch folder beside the destination
(``.NAME.partial-XXXXXXXX``, on the same file system, so the final move is a rename) and moved
into place only when the ``with`` block ends normally. On any exception, ``KeyboardInterrupt``
and a generator's ``close()`` included, the scratch folder is removed and the destination is
left as it was (the old file or folder, byte for byte, or nothing). A new file gets the
permissions a plain ``open(path, "w")`` would give.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["DestinationExistsError", "StagingError", "atomic_path"]


class DestinationExistsError(FileExistsError):
    """The destination exists and ``overwrite`` was not given."""


class StagingError(OSError):
    """The scratch folder beside the destination could not be made; ``errno`` is the cause's
    (``EACCES``/``EPERM``/``EROFS``: a read-only folder, ``ENOENT``: a missing one)."""


def _scratch_for(dest: Path, make_parents: bool) -> Path:
    if make_parents:
        dest.parent.mkdir(parents=True, exist_ok=True)
    scratch = dest.parent / f".{dest.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        os.mkdir(scratch)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            why, fix = f"the folder {dest.parent} does not exist", "create it first"
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            why = f"{dest.parent} is read-only ({exc.strerror})"
            fix = "choose a writable folder"
        else:
            why, fix = f"cannot create a scratch folder in {dest.parent} ({exc})", "check it"
        raise StagingError(exc.errno, f"cannot write {dest}: {why} ({fix})") from None
    return scratch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _move_into_place(built: Path, dest: Path, scratch: Path) -> None:
    """Rename ``built`` to ``dest``. A file replaces a file in one atomic step; anything else
    that exists is first renamed into ``scratch`` (removed with it), and put back if the
    second rename fails."""
    if not dest.exists() and not dest.is_symlink():
        os.rename(built, dest)
        return
    if not built.is_dir() and not dest.is_dir():
        os.replace(built, dest)
        return
    aside = scratch / ".old"
    os.rename(dest, aside)
    try:
        os.rename(built, dest)
    except BaseException:
        os.rename(aside, dest)
        raise


@contextmanager
def atomic_path(
    path: str | os.PathLike[str], *, overwrite: bool = True, make_parents: bool = True
) -> Iterator[Path]:
    """Yield a path to build ``path``'s new content at; move it to ``path`` on success.

    The yielded path has ``path``'s name, in a fresh hidden folder beside ``path``, and does
    not exist yet: create a file or a folder (e.g. a zarr store) there. When the block ends
    normally, it replaces ``path``; when it raises (anything, ``KeyboardInterrupt`` too), it
    is deleted and ``path`` is untouched.

    Parameters
    ----------
    path
        Local destination, a file or a folder.
    overwrite
        Replace an existing ``path``. Without it an existing ``path`` raises
        :class:`DestinationExistsError`, both before the block runs and (should one have
        appeared meanwhile) instead of the move.
    make_parents
        Create ``path``'s missing parent folders; without it a missing parent raises
        :class:`StagingError` (``errno.ENOENT``).

    Raises
    ------
    DestinationExistsError
        ``path`` exists and ``overwrite`` is false.
    StagingError
        The scratch folder cannot be made beside ``path`` (read-only or missing folder).
    FileNotFoundError
        The block ended normally without creating anything at the yielded path.
    """
    if "://" in os.fspath(path):
        raise ValueError(
            f"{os.fspath(path)}: only local paths can be written atomically; write to a "
            "local folder"
        )
    dest = Path(path)
    if not overwrite and (dest.exists() or dest.is_symlink()):
        raise DestinationExistsError(
            errno.EEXIST, f"{dest} already exists (pass overwrite=True to replace it)"
        )
    scratch = _scratch_for(dest, make_parents)
    built = scratch / dest.name
    try:
        yield built
        if not built.exists():
            raise FileNotFoundError(
                errno.ENOENT, f"nothing was written for {dest} (the block created no {built})"
            )
        if built.is_file():
            # Some writers (safetensors) create files owner-only; a new file gets what a plain
            # open() would give it, whoever wrote it.
            os.chmod(built, 0o666 & ~_umask())
        if not overwrite and (dest.exists() or dest.is_symlink()):
            raise DestinationExistsError(
                errno.EEXIST, f"{dest} appeared while it was being written; nothing replaced"
            )
        _move_into_place(built, dest, scratch)
    finally:
        _remove(scratch)
