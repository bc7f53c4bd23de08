"""Helpers shared by the OME-Zarr tests (imported by name: tests/io is on sys.path)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

SPACING_3D = (3.0, 0.5, 0.25)
TRANSLATION_3D = (12.0, -4.0, 7.5)


def volume(shape: tuple[int, ...] = (8, 32, 24), dtype: str = "uint16") -> np.ndarray:
    """A deterministic, non-constant test volume."""
    return (np.arange(int(np.prod(shape))) % 251).astype(dtype).reshape(shape)


def tree_digest(path: Path) -> str:
    """Hash of every file name and content under ``path`` (to prove nothing changed)."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()
