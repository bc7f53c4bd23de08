"""Giving memory freed by a tile's forward pass back to the system (glibc).

glibc keeps freed blocks in its heaps for reuse. A forward pass of the RAT frees hundreds of MB
of activations in blocks of many sizes, and glibc raises its mmap threshold after each freed
large block, so later large blocks come from the heap too; what stays behind between tiles
grows and fragments, and the peak of a long run grows with it. Measured with the quick 3D model
(``configs/quick.yaml``, local attention, 64^3 tiles, 2 CPU cores), on a 64x512x512 volume:
memory held between tiles 357-394 MB without :func:`release_freed_memory` after each tile,
47-52 MB with it, at the same speed; in the benchmark the peak of a 128x1024x1024 volume had
reached 1.48x that of the 64x512x512 one. (Fixing glibc's mmap threshold instead,
``MALLOC_MMAP_THRESHOLD_=131072``, gave a lower peak but ran 1.9x slower.)
"""

from __future__ import annotations

import ctypes
import sys

_malloc_trim = None


def release_freed_memory() -> bool:
    """Ask glibc to return its free heap memory to the system (``malloc_trim(0)``).

    Returns whether it could (``False`` off Linux or on a C library without it, e.g. musl).
    """
    global _malloc_trim
    if _malloc_trim is None:
        _malloc_trim = False
        if sys.platform.startswith("linux"):
            try:
                _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
                _malloc_trim.argtypes = [ctypes.c_size_t]
                _malloc_trim.restype = ctypes.c_int
            except (OSError, AttributeError):
                _malloc_trim = False
    if not _malloc_trim:
        return False
    _malloc_trim(0)
    return True
