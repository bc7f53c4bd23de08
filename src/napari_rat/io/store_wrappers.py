"""zarr store wrappers: record the keys read (to prove what a reader touches), hide a subtree."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from zarr.storage import WrapperStore

__all__ = ["METADATA_KEYS", "KeyRecordingStore", "SubtreeHidingStore"]

METADATA_KEYS = ("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata")


class KeyRecordingStore(WrapperStore):
    """Wrap a store and record every key read through ``get`` / ``get_partial_values``.

    ``chunk_reads`` lists the keys that are not metadata documents: chunks (or shards).
    """

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        self.reads: list[str] = []

    def _with_store(self, store: Any) -> KeyRecordingStore:
        new = type(self)(store)
        new.reads = self.reads  # one shared log, whatever zarr derives from the store
        return new

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        self.reads.append(key)
        return await self._store.get(key, prototype, byte_range)

    async def get_partial_values(
        self, prototype: Any, key_ranges: Iterable[tuple[str, Any]]
    ) -> list[Any]:
        key_ranges = list(key_ranges)
        self.reads.extend(k for k, _ in key_ranges)
        return await self._store.get_partial_values(prototype, key_ranges)

    @property
    def chunk_reads(self) -> list[str]:
        """Keys read that are not metadata documents."""
        return [k for k in self.reads if k.rsplit("/", 1)[-1] not in METADATA_KEYS]


class SubtreeHidingStore(WrapperStore):
    """Wrap a store so that every key under ``prefix`` reads as missing.

    Used to validate an image group without its ``labels`` (validated one by one instead), so
    that one faulty labels group does not make the image itself unreadable.
    """

    def __init__(self, store: Any, prefix: str) -> None:
        super().__init__(store)
        self.prefix = prefix.rstrip("/") + "/"

    def _with_store(self, store: Any) -> SubtreeHidingStore:
        return type(self)(store, self.prefix)

    def _hidden(self, key: str) -> bool:
        return key.startswith(self.prefix)

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        if self._hidden(key):
            return None
        return await self._store.get(key, prototype, byte_range)

    async def get_partial_values(
        self, prototype: Any, key_ranges: Iterable[tuple[str, Any]]
    ) -> list[Any]:
        key_ranges = list(key_ranges)
        values = await self._store.get_partial_values(prototype, key_ranges)
        return [
            None if self._hidden(k) else v for (k, _), v in zip(key_ranges, values, strict=True)
        ]

    async def exists(self, key: str) -> bool:
        if self._hidden(key):
            return False
        return await self._store.exists(key)
