"""Memory a forward pass freed goes back to the system between tiles (glibc only)."""

import sys

import pytest

from napari_rat.inference.heap import release_freed_memory


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_heap_holes_are_returned():
    if not release_freed_memory():
        pytest.skip("this C library has no malloc_trim")
    # 64 KiB blocks come from the heap (below glibc's mmap threshold); freeing every other
    # one leaves holes that glibc keeps, since they are not at the top of the heap.
    blocks = [bytearray(64 * 1024) for _ in range(4000)]
    for b in blocks:
        b[::4096] = b"\x01" * len(b[::4096])  # touch every page
    kept = blocks[1::2]
    del blocks
    before = _rss()
    assert release_freed_memory()
    after = _rss()
    assert before - after > 50 * 2**20, (before, after)
    # Only the holes went back: the blocks still in use keep their pages and their bytes.
    assert all(b[::4096] == b"\x01" * 16 and not any(b[1:4096]) for b in kept)
