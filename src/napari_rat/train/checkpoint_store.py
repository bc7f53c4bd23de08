"""Where the loop keeps its resumable state, never half-written.

A state is a folder (``step-00000120``) holding what the engine saves (weights, optimiser,
schedule, or DeepSpeed's shards) and ``trainer.json`` (epoch, step, best score).

- :class:`LocalStore`: ``<run>/state/``. Every rank writes into ``.tmp-<tag>``; after a barrier
  rank 0 renames it to ``<tag>`` and then rewrites the ``latest`` pointer atomically, so a crash
  at any moment leaves the previous state usable. Older states beyond ``keep`` are removed.
- :class:`napari_rat.train.ray_backend.RayStore`: each rank saves into a fresh local folder and
  reports it with ``ray.train.report``; Ray merges the ranks' files and keeps ``num_to_keep``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from napari_rat.atomic_files import atomic_path


class Engine(Protocol):
    """What a store needs from an engine."""

    def save_state(self, folder: Path, trainer_state: dict[str, Any], is_main: bool) -> None: ...

    def load_state(self, folder: Path) -> dict[str, Any]: ...


class StateStore(Protocol):
    """Where resumable state goes (see the module docstring)."""

    def load_latest(self, engine: Engine) -> dict[str, Any] | None: ...

    def save(
        self, engine: Engine, trainer_state: dict[str, Any], metrics: dict[str, Any]
    ) -> None: ...


def _tag(step: int) -> str:
    return f"step-{step:08d}"


class LocalStore:
    """Resumable state in a local (or shared) folder; see the module docstring."""

    def __init__(
        self,
        folder: str | os.PathLike,
        *,
        keep: int = 2,
        is_main: bool = True,
        barrier: Callable[[], None] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.keep = keep
        self.is_main = is_main
        self.barrier = barrier or (lambda: None)

    def latest_path(self) -> Path | None:
        """The folder ``latest`` points to, or ``None``."""
        pointer = self.folder / "latest"
        if not pointer.is_file():
            return None
        path = self.folder / pointer.read_text().strip()
        return path if path.is_dir() else None

    def load_latest(self, engine: Engine) -> dict[str, Any] | None:
        """Restore the newest complete state into ``engine``; ``None`` when there is none."""
        path = self.latest_path()
        return None if path is None else engine.load_state(path)

    def save(self, engine: Engine, trainer_state: dict[str, Any], metrics: dict[str, Any]) -> None:
        """Write a new state and point ``latest`` at it (collective: every rank calls it)."""
        tag = _tag(int(trainer_state["step"]))
        tmp = self.folder / f".tmp-{tag}"
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.barrier()
        engine.save_state(tmp, trainer_state, self.is_main)
        self.barrier()
        if self.is_main:
            final = self.folder / tag
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            with atomic_path(self.folder / "latest") as t:
                t.write_text(tag)
            self._prune(tag)
        self.barrier()

    def _prune(self, current: str) -> None:
        states = sorted(p for p in self.folder.glob("step-*") if p.is_dir())
        for old in states[: max(len(states) - self.keep, 0)]:
            if old.name != current:
                shutil.rmtree(old, ignore_errors=True)
        for tmp in self.folder.glob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)
