"""Importing the model from a dock: without crashing the viewer, and before the first Run.

**triton.** Loading the model imports ``timm``, which imports ``torchvision``, which imports
``torch._dynamo``, which imports ``triton`` when it is installed (it comes with torch's CUDA
wheels). triton's library carries its own LLVM, and Mesa's OpenGL drivers (llvmpipe under Xvfb
or without a GPU, radeonsi, ...) load the system's ``libLLVM`` when napari's canvas first draws.
Loading triton after that crashes the process (measured: napari 0.9, Mesa with libLLVM-15,
triton 3.8: segmentation fault on the first Run of a dock); before it, all is well, which is
why the tests and ``napari-rat demo --headless``, which load the model first, never saw it. A
dock cannot choose the order (the canvas may start drawing while the model is still being
imported), so it tells Python that triton is absent, unless it is already loaded; torch then
runs without it (triton only serves ``torch.compile``, which napari-rat does not use).

**Preloading.** Importing torch and torchvision holds the GIL for up to ~0.5 s at a time (their
libraries load inside the import; measured on 2 CPU cores), which froze the viewer during the
first Run. The docks start these imports in a background thread when they open, so a Run finds
them done. The same thread does the one-time work of napari's first Labels layer (see
:func:`_warm_first_labels_layer`), which otherwise fell into the GUI thread with the results.
"""

from __future__ import annotations

import importlib
import sys
import threading

_preload_lock = threading.Lock()
_preload_thread: threading.Thread | None = None


def keep_triton_out() -> bool:
    """On Linux, mark ``triton`` as not importable unless it is already loaded.

    Call before the model is first imported in a process that shows a napari canvas. Returns
    whether triton was kept out (``import triton`` then raises ``ImportError``).
    """
    if not sys.platform.startswith("linux") or "triton" in sys.modules:
        return False
    sys.modules["triton"] = None  # the import system's "known to be missing"
    return True


def _import_model_stack() -> None:
    keep_triton_out()
    import napari_rat.inference  # noqa: F401  (torch)
    import napari_rat.inference.model_loading  # noqa: F401
    import napari_rat.model  # noqa: F401  (timm, torchvision, the layer packages)

    _warm_first_labels_layer()


def _warm_first_labels_layer() -> None:
    """Do now, off the GUI thread, the one-time work of napari's first Labels layer.

    When the results arrive, the first Labels layer of a session imports pandas (features) and
    scikit-image's colour modules (colormaps), and vispy fills its dash-pattern cache for the
    labels polygon overlay's lines (an ``lru_cache``; ~0.26 s of numpy). Measured on 2 CPU
    cores under Xvfb: the first ``add_labels`` of a 1536^2 result took 0.63-1.06 s in the GUI
    thread, a later one 0.27-0.30 s. All three are pure Python/numpy, safe in a thread, and
    hold the GIL only in short steps.
    """
    for module in ("pandas", "skimage.color.colorconv", "skimage.exposure"):
        try:
            importlib.import_module(module)
        except ImportError:  # not installed: napari will not use it either
            pass
    try:
        from vispy.visuals.line.dash_atlas import DashAtlas
    except ImportError:  # no napari, no vispy
        return
    DashAtlas()


def preload_model_stack() -> threading.Thread:
    """Start importing the model stack in a daemon thread (once per process); return it.

    triton is kept out here, in the caller's thread, before any thread can import torch: a
    dock's worker started right after the dock opened raced the preload thread to it.
    """
    global _preload_thread
    keep_triton_out()
    with _preload_lock:
        if _preload_thread is None:
            _preload_thread = threading.Thread(
                target=_import_model_stack, name="napari-rat-preload", daemon=True
            )
            _preload_thread.start()
        return _preload_thread
