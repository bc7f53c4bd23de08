"""``napari-rat bench interactive --gui``: does the viewer stay responsive while the RAT
interactive dock works?

One napari viewer (Xvfb when there is no display), the 2D nuclei scene of ``bench interactive``
(the bundled image tiled to ``size``), the real
:class:`~napari_rat._widgets.interactive_widget.InteractiveWidget`. The event loop's latency
(:mod:`napari_rat.bench._loop_latency`) is measured side by side: idle, while the dock imports
the model stack, while it computes the image's features (a fresh cache: the model runs), and
while scripted scribble strokes (from the ground truth, as ``bench interactive`` draws them) are
painted one by one, each waiting for its update. Issue 14's target: a p99 lateness of at most
100 ms while the features compute.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def measure_interactive_dock(
    viewer,
    image: np.ndarray,
    truth: np.ndarray,
    *,
    strokes: int = 10,
    idle_s: float = 5.0,
    timeout_s: float = 1800.0,
) -> dict[str, Any]:
    """Event-loop latency of ``viewer`` idle, then while the interactive dock works.

    Returns ``{phase: LoopLatency}`` for ``idle``, ``dock opened``, ``features`` (until the
    dock holds them), ``adding the input layers`` and ``scribble updates`` (the first adds the
    prediction layer), with ``update_s`` (each stroke's time until its prediction was shown)
    and ``status`` (the dock's status line after the features).
    """
    from napari_rat._widgets.interactive_layers import SCRIBBLES
    from napari_rat._widgets.interactive_widget import InteractiveWidget
    from napari_rat._widgets.model_imports import preload_model_stack
    from napari_rat.bench._loop_latency import contrast_toggle, measure_event_loop
    from napari_rat.bench.interactive import scripted_strokes

    layer = viewer.add_image(image, name="nuclei")
    interact = contrast_toggle(layer)
    out: dict[str, Any] = {}
    out["idle"] = measure_event_loop(viewer, seconds=idle_s, interact=interact)
    widget = InteractiveWidget(viewer)
    viewer.window.add_dock_widget(widget, name="RAT interactive")
    widget.image_layer.value = layer.name
    preload = preload_model_stack()
    out["dock opened"] = measure_event_loop(
        viewer, until=lambda: not preload.is_alive(), interact=interact
    )
    widget.compute_features()
    out["features"] = measure_event_loop(
        viewer,
        until=lambda: widget.session is not None or not widget.busy,
        interact=interact,
        timeout_s=timeout_s,
    )
    if widget.session is None:
        raise RuntimeError(f"the interactive dock computed no features: {widget.status.value}")
    # then the dock adds its input layers (napari's own per-layer cost: see bench widget)
    out["adding the input layers"] = measure_event_loop(
        viewer,
        until=lambda: not widget.busy and SCRIBBLES in viewer.layers,
        interact=interact,
        timeout_s=timeout_s,
        tail_s=0.5,
    )
    out["status"] = widget.status.value
    scribbles = viewer.layers[SCRIBBLES]
    painted = np.zeros(scribbles.data.shape, scribbles.data.dtype)
    updates, times = [], []
    for value, index in scripted_strokes(truth, strokes):
        painted[index] = value
        start = time.perf_counter()
        scribbles.data = painted.copy()  # as a finished brush stroke: the debounced update
        updates.append(
            measure_event_loop(
                viewer,
                until=lambda: not widget.update_pending and not widget.busy,
                interact=interact,
                timeout_s=timeout_s,
            )
        )
        times.append(time.perf_counter() - start)
    out["scribble updates"] = _joined(updates)
    out["update_s"] = times
    widget.release_shortcuts()
    return out


def _joined(results: list):
    """One LoopLatency of several measurements (their series concatenated)."""
    from napari_rat.bench._loop_latency import LoopLatency

    joined = LoopLatency(start=results[0].start, seconds=0.0, tick_ms=results[0].tick_ms)
    for r in results:
        joined.seconds += r.seconds
        for name in ("lateness_ms", "tick_at", "response_ms", "redraw_ms", "probe_at"):
            getattr(joined, name).extend(getattr(r, name))
    return joined


def run_gui(size: int, strokes: int, idle_s: float) -> str:
    """Open a viewer (on Xvfb without a display), measure, and return the report."""
    import napari

    from napari_rat.bench.interactive import _scene
    from napari_rat.errors import CommandError
    from napari_rat.virtual_display import virtual_display

    image, truth, _ = _scene(2, size)
    with virtual_display() as have_display:
        if not have_display:
            raise CommandError("no display and no Xvfb: install xvfb or run under xvfb-run")
        viewer = napari.Viewer(title="napari-rat bench interactive --gui", show=True)
        try:
            result = measure_interactive_dock(viewer, image, truth, strokes=strokes, idle_s=idle_s)
        finally:
            viewer.close()
    return format_gui_report(result, size)


def format_gui_report(result: dict[str, Any], size: int) -> str:
    """A Markdown table of the phases and the verdict on the 100 ms target."""
    lines = [
        f"The RAT interactive dock in a viewer ({size}x{size}, starter model, fresh cache):",
        "",
        "| phase | time | timer lateness median / p99 / max | interaction handled median / p99"
        " / max |",
        "|---|---|---|---|",
    ]
    for phase in ("idle", "dock opened", "features", "adding the input layers", "scribble updates"):
        r = result[phase]
        s = r.summary()
        cells = [
            " / ".join(f"{s[k][q]:.1f}" for q in ("median", "p99", "max")) + " ms"
            for k in ("lateness_ms", "response_ms")
        ]
        lines.append(f"| {phase} | {r.seconds:.1f} s | {cells[0]} | {cells[1]} |")
    p99 = result["features"].summary()["lateness_ms"]["p99"]
    updates = np.asarray(result["update_s"])
    lines += [
        "",
        f"- while the features compute, timer lateness p99 {p99:.1f} ms: target 100 ms "
        + ("met" if p99 <= 100 else "NOT met"),
        f"- scribble updates until shown (debounce included): median {np.median(updates):.2f} s, "
        f"max {updates.max():.2f} s over {len(updates)} strokes",
        f"- dock status after the features: {result['status']}",
    ]
    return "\n".join(lines)
