"""The on-disk cache of per-pixel features (no Qt): computed once, reused across sessions.

Each entry is a zarr group (the engine's results store: ``features``, ``probabilities``,
``semantic``, ``labels``) in its own folder under the cache folder, named after the digest of
its :class:`FeatureKey`: the data's identity (a store path with its level, region, channels
and time index, or a content hash for in-memory arrays), the spacing and its units, the model
(a hash of its weights and of its attention layers' classes, so the same checkpoint run as
``local`` or ``exact`` are two entries) and the tile settings. Change any part and the digest
changes: the entry is missed, never reused by mistake.

Entries are written with :func:`napari_rat.atomic_files.atomic_path` (a half-written entry is
never seen), and the cache is bounded: after each write, the least recently used entries are
removed until the total fits ``max_bytes``. Using an entry (:meth:`FeatureCache.get`) marks it
as recently used, in any process.

The folder is ``$NAPARI_RAT_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/napari-rat/features``
(``~/.cache/napari-rat/features``); the bound is ``$NAPARI_RAT_CACHE_MAX_BYTES`` when set,
else :data:`DEFAULT_MAX_BYTES`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from napari_rat.atomic_files import atomic_path

CACHE_DIR_ENV = "NAPARI_RAT_CACHE_DIR"
MAX_BYTES_ENV = "NAPARI_RAT_CACHE_MAX_BYTES"
#: Default size bound of the cache: a 1024x1024 image's features with the starter model take
#: about 0.2 GB.
DEFAULT_MAX_BYTES = 4 * 1024**3
#: Bumped when the layout of an entry changes, so that older entries are missed.
FORMAT_VERSION = 1
_KEY_ATTR = "napari_rat_feature_key"


def default_cache_dir() -> Path:
    """Where the features are cached (see the module docstring)."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "napari-rat" / "features"


def default_max_bytes() -> int:
    """The cache's size bound: ``$NAPARI_RAT_CACHE_MAX_BYTES`` or :data:`DEFAULT_MAX_BYTES`."""
    env = os.environ.get(MAX_BYTES_ENV)
    if not env:
        return DEFAULT_MAX_BYTES
    try:
        value = int(env)
    except ValueError:
        raise ValueError(
            f"{MAX_BYTES_ENV}={env!r} is not a whole number of bytes; set it to e.g. 4000000000"
        ) from None
    if value <= 0:
        raise ValueError(f"{MAX_BYTES_ENV} must be positive, got {value}")
    return value


def model_fingerprint(model) -> str:
    """A hash of the model's weights and of the classes of its modules.

    Two loads of one checkpoint give the same fingerprint; another checkpoint, a fine-tuned
    copy or the same weights run by another attention implementation give another.
    """
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        t = tensor.detach().cpu().contiguous()
        h.update(str(t.dtype).encode())
        h.update(repr(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    for module in model.modules():
        h.update(type(module).__qualname__.encode())
    return h.hexdigest()


def array_fingerprint(image) -> str:
    """A content hash of an array (NumPy, dask or zarr; read once, in blocks along the first
    axis), with its shape and dtype."""
    h = hashlib.blake2b(digest_size=20)
    h.update(repr((tuple(image.shape), str(image.dtype))).encode())
    n = image.shape[0] if image.ndim else 1
    per = max(1, int(64 * 1024**2 // max(1, np.dtype(image.dtype).itemsize * image.size // n)))
    for start in range(0, n, per):
        block = np.ascontiguousarray(np.asarray(image[start : start + per]))
        h.update(block.view(np.uint8).tobytes() if block.size else b"")
    return h.hexdigest()


@dataclass(frozen=True)
class FeatureKey:
    """Everything the cached features depend on (see the module docstring)."""

    data: str
    spacing: tuple[float, ...]
    units: tuple[str | None, ...]
    model: str
    tile: tuple[int, ...]
    halo: tuple[int, ...]
    levels: tuple[tuple[int, ...], ...]
    precision: str
    device: str
    resample: bool
    version: int = FORMAT_VERSION

    def as_json(self) -> str:
        """The key as canonical JSON (what is stored with the entry)."""
        return json.dumps(asdict(self), sort_keys=True)

    def digest(self) -> str:
        """The entry's folder name."""
        return hashlib.sha256(self.as_json().encode()).hexdigest()[:32]


class FeatureCache:
    """A size-bounded folder of feature entries, least recently used evicted first.

    Parameters
    ----------
    root
        The cache folder (default :func:`default_cache_dir`).
    max_bytes
        The size bound (default :func:`default_max_bytes`).
    """

    def __init__(self, root: str | os.PathLike | None = None, max_bytes: int | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.max_bytes = int(max_bytes) if max_bytes is not None else default_max_bytes()
        if self.max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {self.max_bytes}")

    def path_for(self, key: FeatureKey) -> Path:
        """The folder of ``key``'s entry (whether it exists or not)."""
        return self.root / key.digest()

    def get(self, key: FeatureKey):
        """``key``'s entry as a read-only zarr group, marked as just used; ``None`` on a miss."""
        import zarr

        path = self.path_for(key)
        try:
            group = zarr.open_group(path, mode="r")
            stored = group.attrs.get(_KEY_ATTR)
        except (OSError, ValueError, KeyError):  # missing (FileNotFoundError) or not a group
            return None
        if stored != key.as_json():  # a digest collision or an entry of another format
            return None
        _touch(path)
        return group

    @contextmanager
    def writing(self, key: FeatureKey) -> Iterator[Path]:
        """Yield the path to build ``key``'s entry at (create a zarr group there); when the
        block ends normally, the entry is moved into place atomically, marked as just used, and
        what exceeds the bound is evicted. If the block raises (a cancel, a generator's
        ``close()``), nothing is left behind."""
        import zarr

        dest = self.path_for(key)
        with atomic_path(dest) as built:
            yield built
            zarr.open_group(built, mode="r+").attrs[_KEY_ATTR] = key.as_json()
        _touch(dest)
        self.evict(keep=dest)

    def entries(self) -> list[tuple[Path, float, int]]:
        """``(folder, last used time, bytes)`` of every entry, least recently used first."""
        if not self.root.is_dir():
            return []
        out = []
        for child in self.root.iterdir():
            if child.name.startswith(".") or not child.is_dir():
                continue  # scratch folders of writes in progress, and strays
            try:
                out.append((child, child.stat().st_mtime, _folder_bytes(child)))
            except FileNotFoundError:
                continue  # evicted meanwhile by another process
        return sorted(out, key=lambda e: e[1])

    def size_bytes(self) -> int:
        """The entries' total size."""
        return sum(size for _, _, size in self.entries())

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Remove least recently used entries (never ``keep``) until the cache fits its
        bound; return the removed folders."""
        entries = self.entries()
        total = sum(size for _, _, size in entries)
        removed = []
        for path, _, size in entries:
            if total <= self.max_bytes:
                break
            if keep is not None and path == keep:
                continue
            _remove_entry(path)
            total -= size
            removed.append(path)
        return removed

    def clear(self) -> None:
        """Remove every entry."""
        for path, _, _ in self.entries():
            _remove_entry(path)


def _touch(path: Path) -> None:
    now = time.time()
    try:
        os.utime(path, (now, now))
    except FileNotFoundError:
        pass


def _folder_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                pass
    return total


def _remove_entry(path: Path) -> None:
    # Renamed aside first: another process never opens half of a deleted entry.
    aside = path.parent / f".{path.name}.evicted-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)
