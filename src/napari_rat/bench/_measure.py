"""Measure time and peak memory of one benchmark case in a fresh child process.

Each case runs in its own ``spawn``-ed process so that its peak resident memory (the kernel's
high-water mark, ``ru_maxrss``) belongs to that case alone. The child reports the peak above the
memory it held just before the timed call (imports, model and inputs excluded) and the absolute
peak. CUDA cases report ``torch.cuda.max_memory_allocated`` instead.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import resource
import time
import traceback
from dataclasses import dataclass
from typing import Any


@dataclass
class CaseResult:
    """What one benchmark case measured."""

    seconds: float | None
    peak_bytes: int | None
    absolute_peak_bytes: int | None
    result: Any = None
    error: str | None = None


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize()


def _child(conn, target: str, kwargs: dict[str, Any]) -> None:
    try:
        module_name, func_name = target.split(":")
        func = getattr(importlib.import_module(module_name), func_name)
        # ``func(**kwargs)`` returns a zero-argument callable holding the prepared inputs, so that
        # set-up (building the model, allocating inputs) is outside the measurement.
        run, device = func(**kwargs)
        if device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = _current_rss_bytes()
        start = time.perf_counter()
        result = run()
        if device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        if device.startswith("cuda"):
            import torch

            absolute = torch.cuda.max_memory_allocated()
        else:
            absolute = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        conn.send(CaseResult(seconds, max(absolute - base, 0), absolute, result))
    except BaseException:  # noqa: BLE001 - reported to the parent, never swallowed
        conn.send(CaseResult(None, None, None, error=traceback.format_exc(limit=3)))
    finally:
        conn.close()


def measure(target: str, timeout: float = 3600.0, **kwargs: Any) -> CaseResult:
    """Run ``target`` (``"module:function"``) in a child process and measure it.

    ``function(**kwargs)`` must return ``(run, device)`` where ``run()`` is the timed call.
    A child that dies (for example killed for memory) gives a result with ``error`` set.
    """
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, target, kwargs))
    proc.start()
    child.close()
    try:
        if parent.poll(timeout):
            out = parent.recv()
        else:
            out = CaseResult(None, None, None, error=f"timed out after {timeout:.0f} s")
    except EOFError:
        out = CaseResult(None, None, None, error="the case's process died (out of memory?)")
    proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join()
    return out


def format_bytes(n: int | None) -> str:
    """Human-readable size (``"1.23 GB"``), or ``"-"`` for ``None``."""
    if n is None:
        return "-"
    if n >= 1024**3:
        return f"{n / 1024**3:.2f} GB"
    if n >= 1024**2:
        return f"{n / 1024**2:.1f} MB"
    return f"{n / 1024:.1f} KB"
