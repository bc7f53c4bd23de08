"""``napari-rat bench widget``: does the viewer stay responsive while the inference dock runs?

One napari viewer, one synthetic nuclei image. The event loop's latency
(:mod:`napari_rat.bench._loop_latency`: lateness of a 10 ms timer, and the time until a
contrast-limits change posted from another thread every 100 ms is handled and drawn) is measured
twice, side by side: with the viewer **idle**, then while the real inference dock
(:class:`~napari_rat._widgets.inference_widget.InferenceWidget`) segments the whole image with
the bundled starter model, up to and including the first draw of the result layers. The issue's
target: the loop answers within 100 ms during inference.

Needs a display with OpenGL: without ``DISPLAY`` a private Xvfb is started (as ``napari-rat
demo --headless`` does); ``QT_QPA_PLATFORM=offscreen`` has no OpenGL for napari's canvas.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

SPACING = (1.0, 1.0)  # the starter model's nominal pixel size
DEFAULT_SIZE = 1536  # ~30 s of inference with the starter model on 2 idle CPU cores


def nuclei_image(size: int, seed: int = 0) -> np.ndarray:
    """A ``size`` x ``size`` synthetic nuclei image, tiled from a generated 256^2 patch."""
    from napari_rat.synthetic import synthetic_nuclei

    patch, _ = synthetic_nuclei((min(size, 256),) * 2, SPACING, seed=seed)
    reps = math.ceil(size / patch.shape[0])
    return np.ascontiguousarray(np.tile(patch, (reps, reps))[:size, :size])


def _wait_for_draw(viewer, timeout_s: float = 10.0) -> None:
    """Process events until the canvas has drawn once (the start is not part of a measurement)."""
    from qtpy.QtCore import QCoreApplication

    drawn = []
    events = viewer.window._qt_viewer.canvas.events.draw
    events.connect(drawn.append)
    viewer.window._qt_viewer.canvas.native.update()
    deadline = time.perf_counter() + timeout_s
    try:
        while not drawn and time.perf_counter() < deadline:
            QCoreApplication.processEvents()
            time.sleep(0.005)
    finally:
        events.disconnect(drawn.append)


#: Phases of a run, split where the dock received the worker's progress: until the first tile
#: (imports, model, input statistics, first tile), the other tiles, the instance labels, and
#: the results (layers added and drawn, plus the tail).
PHASES = ("loading, first tile", "tiles", "instances", "results")


def measure_widget_inference(
    viewer,
    image: np.ndarray,
    *,
    idle_s: float = 10.0,
    tile: int = 256,
    device: str = "cpu",
    checkpoint: str | Path | None = None,
    tick_ms: int = 10,
    probe_ms: int = 100,
    tail_s: float = 1.0,
    timeout_s: float = 3600.0,
) -> dict[str, Any]:
    """Event-loop latency with ``viewer`` idle, then during inference from the dock.

    Parameters
    ----------
    viewer
        A shown napari viewer; the image layer and the dock are added to it.
    image
        2D image to segment (the whole image is the region).
    idle_s
        Length of the idle baseline (0: none).
    tile, device
        The dock's tile size and device.
    checkpoint
        A checkpoint file; ``None`` uses the bundled starter model (the dock's default).
    tick_ms, probe_ms, tail_s, timeout_s
        See :func:`napari_rat.bench._loop_latency.measure_event_loop`.

    Returns
    -------
    dict
        ``idle``, ``dock opened`` (while the dock imports the model stack in the background)
        and ``inference`` (:class:`~napari_rat.bench._loop_latency.LoopLatency`);
        ``phases``: ``(name, start, end)`` in ``perf_counter`` seconds, split where the dock
        received the worker's progress (:data:`PHASES`); ``status`` (the dock's last status
        line); ``layers`` (names added by the dock).
    """
    from napari_rat._widgets.inference_widget import InferenceWidget
    from napari_rat._widgets.model_imports import preload_model_stack
    from napari_rat.bench._loop_latency import contrast_toggle, measure_event_loop

    layer = viewer.add_image(image, name="nuclei", scale=SPACING)
    _wait_for_draw(viewer)
    interact = contrast_toggle(layer)
    common = {"interact": interact, "tick_ms": tick_ms, "probe_ms": probe_ms}
    idle = measure_event_loop(viewer, seconds=idle_s, **common) if idle_s > 0 else None
    widget = InferenceWidget(viewer)
    viewer.window.add_dock_widget(widget, name="RAT inference")
    if checkpoint is not None:
        widget.model.use_checkpoint(checkpoint)
    widget.image_layer.value = layer.name
    widget.region.value = "whole image"
    widget.tile.value = tile
    widget.device.value = device
    # The dock started importing the model stack in the background; a user picks options
    # meanwhile. Measured apart from the run.
    preload = preload_model_stack()
    opening = measure_event_loop(
        viewer, until=lambda: not preload.is_alive(), tail_s=tail_s, **common
    )
    before = {lyr.name for lyr in viewer.layers}
    marks = {"run": time.perf_counter()}

    def mark(p) -> None:
        now = time.perf_counter()
        marks.setdefault(f"first {p.stage}", now)
        marks[f"last {p.stage}"] = now

    widget.run()
    if widget.worker is None:
        raise RuntimeError(f"the inference dock did not start: {widget.status.value}")
    widget.worker.yielded.connect(mark)
    busy = measure_event_loop(
        viewer,
        until=lambda: widget.worker is None,
        tail_s=tail_s,
        timeout_s=timeout_s,
        **common,
    )
    end = (busy.tick_at[-1] if busy.tick_at else time.perf_counter()) + 1e-6
    first_tiles = marks.get("first tiles", end)
    last_tiles = marks.get("last tiles", first_tiles)
    last_instances = marks.get("last instances", last_tiles)
    bounds = [marks["run"], first_tiles, last_tiles, last_instances, end]
    added = [lyr.name for lyr in viewer.layers if lyr.name not in before]
    floor = _measure_tiny_layers(viewer, [viewer.layers[name] for name in added], common, tail_s)
    return {
        "idle": idle,
        "dock opened": opening,
        "inference": busy,
        "napari floor": floor,
        "phases": list(zip(PHASES, bounds[:-1], bounds[1:], strict=True)),
        "status": widget.status.value,
        "layers": added,
    }


def _measure_tiny_layers(viewer, like: list, common: dict, tail_s: float):
    """napari's own cost of adding layers: 64^2 copies of the result layers (same kind and
    display settings), added one per event-loop turn as the dock adds its results, measured
    the same way. ``None`` when the dock added nothing."""
    from napari.layers import Layer
    from qtpy.QtCore import QTimer

    from napari_rat.bench._loop_latency import measure_event_loop

    if not like:
        return None
    queue = []
    for layer in like:
        data, meta, kind = layer.as_layer_data_tuple()
        tiny = np.asarray(data)[(0,) * (np.ndim(data) - 2) + (slice(0, 64), slice(0, 64))]
        queue.append((tiny.copy(), {**meta, "name": f"{meta['name']} (64^2 copy)"}, kind))
    added = []

    def add_next() -> None:
        added.append(viewer.add_layer(Layer.create(*queue[len(added)])))
        if len(added) < len(queue):
            QTimer.singleShot(0, add_next)

    QTimer.singleShot(0, add_next)
    floor = measure_event_loop(
        viewer, until=lambda: len(added) == len(queue), tail_s=tail_s, **common
    )
    for layer in added:
        viewer.layers.remove(layer)
    return floor


SERIES = {
    "lateness_ms": "timer tick lateness",
    "response_ms": "probe handled",
    "redraw_ms": "probe drawn",
}


def _stat_row(what: str, seconds: float, s: dict[str, float], label: str) -> str:
    return (
        f"| {what} | {seconds:.1f} s | {label} | {s['n']} | {s['median']:.1f} ms "
        f"| {s['p99']:.1f} ms | {s['max']:.1f} ms |"
    )


def format_report(result: dict[str, Any], args: argparse.Namespace | None = None) -> str:
    """Markdown tables (idle, inference, inference by phase) and the inference/idle figures."""
    head = "napari-rat bench widget"
    if args is not None:
        head += f" ({args.size}^2 image, tile {args.tile}, device {args.device}, "
        head += f"torch threads {args.torch_threads_seen})"
    lines = [
        head,
        "",
        "| viewer | time | series | n | median | p99 | max |",
        "|---|---|---|---|---|---|---|",
    ]
    sums = {}
    for name in ("idle", "dock opened", "inference", "napari floor"):
        res = result.get(name)
        if res is None:
            continue
        sums[name] = res.summary()
        lines += [_stat_row(name, res.seconds, sums[name][k], v) for k, v in SERIES.items()]
    busy = result["inference"]
    lines += ["", "By phase of the run (timer ticks and probes):", ""]
    lines += ["| phase | time | series | n | median | p99 | max |", "|---|---|---|---|---|---|---|"]
    for name, a, b in result["phases"]:
        s = busy.summary(between=(a, b))
        for key in ("lateness_ms", "response_ms"):
            lines.append(_stat_row(name, max(b - a, 0.0), s[key], SERIES[key]))
    lines.append("")
    if "idle" in sums:
        for key, label in SERIES.items():
            idle, run = sums["idle"][key], sums["inference"][key]
            lines.append(
                f"- {label}: inference/idle median {run['median']:.1f}/{idle['median']:.1f} ms, "
                f"p99 {run['p99']:.1f}/{idle['p99']:.1f} ms, max {run['max']:.1f}/"
                f"{idle['max']:.1f} ms"
            )
    worst = max(sums["inference"][k]["max"] for k in ("lateness_ms", "response_ms"))
    verdict = "met" if worst <= 100 else "NOT met"
    lines.append(f"- target (the loop answers within 100 ms): {verdict}, worst {worst:.0f} ms")
    if result.get("napari floor") is not None:
        a, b = result["phases"][-1][1:]
        results = busy.summary(between=(a, b))
        floor = sums["napari floor"]
        lines.append(
            "- adding the result layers vs napari's floor (64^2 copies of them, added the same "
            f"way): timer lateness max {results['lateness_ms']['max']:.0f}/"
            f"{floor['lateness_ms']['max']:.0f} ms, probe handled max "
            f"{results['response_ms']['max']:.0f}/{floor['response_ms']['max']:.0f} ms"
        )
    lines.append(f"- dock status: {result['status']}; layers added: {', '.join(result['layers'])}")
    return "\n".join(lines)


def _main(args: argparse.Namespace) -> int:
    from napari_rat.errors import CommandError
    from napari_rat.virtual_display import virtual_display

    try:
        import napari
    except ImportError:
        raise CommandError('napari is not installed: pip install "napari-rat[napari]"') from None
    if args.torch_threads:
        # Importing torch here, before the viewer, spares the run the import (as in a session
        # where torch was already used); without the option the run pays it, as a fresh one does.
        import torch

        torch.set_num_threads(args.torch_threads)
    image = nuclei_image(args.size)
    with virtual_display() as have_display:
        if not have_display:
            raise CommandError("no display and no Xvfb: install xvfb or run under xvfb-run")
        viewer = napari.Viewer(title="napari-rat bench widget", show=True)
        try:
            result = measure_widget_inference(
                viewer,
                image,
                idle_s=args.idle_seconds,
                tile=args.tile,
                device=args.device,
                checkpoint=args.checkpoint,
                tick_ms=args.tick_ms,
                probe_ms=args.probe_ms,
            )
            import torch

            args.torch_threads_seen = torch.get_num_threads()
        finally:
            viewer.close()
    report = format_report(result, args)
    print(report)
    if args.output:
        Path(args.output).write_text(report + "\n")
    return 0 if result["status"].startswith("done") else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "widget", help="event-loop latency of the viewer while the inference dock runs"
    )
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help="image side in pixels")
    p.add_argument("--idle-seconds", type=float, default=10.0, help="idle baseline length")
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    p.add_argument("--checkpoint", help="a checkpoint file instead of the starter model")
    p.add_argument("--torch-threads", type=int, help="torch.set_num_threads before the run")
    p.add_argument("--tick-ms", type=int, default=10)
    p.add_argument("--probe-ms", type=int, default=100)
    p.add_argument("--output", help="also write the report here")
    p.set_defaults(func=_main)
