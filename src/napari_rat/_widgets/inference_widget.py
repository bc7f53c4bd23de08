"""Inference dock widget: pick a model and an image layer, Run/Cancel, results as layers.

The widget only gathers choices; the work is :func:`napari_rat.inference.predict`, run in a
``thread_worker`` so the viewer stays responsive. Results carry the source layer's ``scale``,
``translate``, ``units`` and ``axis_labels`` (see :mod:`napari_rat._widgets.layer_input`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import numpy as np
from magicgui.widgets import ComboBox, ProgressBar, PushButton, SpinBox

from napari_rat._widgets.dock_base import ModelDock
from napari_rat._widgets.layer_input import LayerInput, layer_input
from napari_rat._widgets.model_imports import keep_triton_out

REGIONS = {"whole image": "whole", "current view": "view", "current slice": "slice"}


def _prediction_job(checkpoint, device, layer, region, step, level, view_box, tile, levels):
    """Generator run in the worker: load the model, cut the input, predict."""
    keep_triton_out()
    from napari_rat.inference import PredictOptions, resolve_device
    from napari_rat.inference.model_loading import load_model_for_inference
    from napari_rat.inference.sources import predict_input

    model = load_model_for_inference(checkpoint, device=resolve_device(device))
    source = layer_input(layer, model.spatial_dims, region, step, level, view_box)
    check_result_memory(source.image.shape[1:], _ways_out(layer, region, level))
    options = PredictOptions(tile=(tile,) * model.spatial_dims, levels=levels, device=device)
    result = yield from predict_input(model, source, options=options)
    return result, source, result_arrays(result, source)


#: Memory a dock run holds per input pixel (or voxel) at its end: the engine's in-memory
#: results (measured 43 B/px with the starter model's 3 outputs on a 2048^2 image:
#: probabilities, classes, labels and the stitching buffers) plus the result layers' data and
#: textures (foreground float32, labels uint16).
RESULT_BYTES_PER_PIXEL = 56


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def check_result_memory(
    shape: Sequence[int], ways_out: Sequence[str] = (), available: int | None = None
) -> None:
    """Refuse, before predicting, a run whose results would not fit in the free memory.

    The dock keeps its results in memory to show them; running out of it would kill the
    viewer with the user's unsaved layers. ``shape``: the spatial shape of the input;
    ``ways_out``: what the user can choose instead in the dock (writing to disk from the
    command line is always offered); ``available``: free bytes (default: the system's
    available memory, when ``psutil`` can tell).
    """
    if available is None:
        try:
            import psutil
        except ImportError:
            return
        available = psutil.virtual_memory().available
    count = math.prod(shape)
    need = count * RESULT_BYTES_PER_PIXEL
    if need > available:
        unit = "pixels" if len(shape) <= 2 else "voxels"
        ways = [
            *ways_out,
            "write the results to disk with `napari-rat predict IMAGE.zarr --into-labels NAME`",
        ]
        raise ValueError(
            f"the region ({' x '.join(map(str, shape))}) has {count:,} {unit}; its results "
            f"need about {_gb(need)} of memory and {_gb(available)} is free. Instead, "
            + "; or ".join(ways)
        )


def _ways_out(layer, region: str, level: int) -> list[str]:
    """What the dock offers for a smaller run: the view, a coarser level."""
    ways = [] if region == "view" else ["choose 'current view' and zoom in"]
    levels = len(layer.data) if getattr(layer, "multiscale", False) else 1
    if level + 1 < levels:
        ways.append(f"choose a coarser level (up to {levels - 1})")
    return ways


def result_arrays(result, source: LayerInput) -> dict[str, np.ndarray]:
    """The result layers' data (foreground probability, instance labels), shaped like the layer.

    Built in the worker: on a large image this is whole-image array work the GUI thread
    should not do. Instance labels become ``uint16`` when they fit (below 65535; labels the
    user paints later can go up to 65535): napari then shows them as they are, where wider
    labels are hashed into a texture on every refresh (~0.1 s per 1536^2 refresh on 2 CPU
    cores).
    """
    arrays = {"foreground": source.to_layer_shape(1.0 - np.asarray(result.probabilities[0]))}
    if result.labels is not None:
        labels = np.asarray(result.labels)
        if labels.size and 0 <= labels.min() and labels.max() < np.iinfo(np.uint16).max:
            labels = labels.astype(np.uint16, copy=False)
        arrays["instances"] = source.to_layer_shape(labels)
    return arrays


def result_layers(source: LayerInput, arrays: dict[str, np.ndarray], name: str) -> list[tuple]:
    """The result layers as napari layer-data tuples ``(data, meta, layer_type)``.

    Placement comes from ``source`` (cut from the layer by the run) and ``name`` is the
    layer's name when Run was pressed, not a lookup in the layer list, so renaming or removing
    the source layer during a run neither fails nor misplaces the results.
    """
    meta = source.placement()
    foreground = {
        "name": f"{name} foreground (RAT)",
        "colormap": "magma",
        "blending": "additive",
        "contrast_limits": (0.0, 1.0),
    }
    layers = [(arrays["foreground"], {**foreground, **meta}, "image")]
    if "instances" in arrays:
        layers.append((arrays["instances"], {"name": f"{name} instances (RAT)", **meta}, "labels"))
    return layers


class InferenceWidget(ModelDock):
    """Segment an image layer with RAT; the viewer stays responsive while it runs.

    Progress shows on the dock's own bar, set by the worker's progress events, and on napari's
    activity bar (a ``napari.utils.progress``), created once per run before the worker starts
    and brought up to date by a timer, never by a progress event: napari's progress widgets
    process events while they update, and a progress event handled inside them nested the
    dock's handlers (a second bar per nesting, layers changed mid-draw: napari crashed).
    """

    CALLBACKS = (*ModelDock.CALLBACKS, "run", "cancel", "_on_progress", "_sync_progress")

    #: How often (ms) napari's activity bar catches up with the run's progress.
    PROGRESS_SYNC_MS = 100

    def __init__(self, napari_viewer):
        from qtpy.QtCore import QTimer

        self.region = ComboBox(label="region", choices=list(REGIONS), value="whole image")
        self.level = SpinBox(label="level", min=0, max=16, value=0)
        self.tile = SpinBox(label="tile (px)", min=16, max=4096, step=16, value=256)
        self.levels = SpinBox(label="levels fed", min=1, max=4, value=1)
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        super().__init__(
            napari_viewer,
            options=[self.region, self.level, self.tile, self.levels],
            actions=[self.run_button, self.cancel_button, self.progress],
        )
        self._napari_progress = None
        self._latest = None  # the run's last Progress, for the activity bar
        self._syncing = False
        self._finish_pending = False
        self._progress_timer = QTimer(self.native)
        self._progress_timer.setInterval(self.PROGRESS_SYNC_MS)
        self._progress_timer.timeout.connect(self._sync_progress)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)

    # ---------------------------------------------------------------- running
    def run(self):
        """Start the prediction in a worker thread (no-op while one is running)."""
        if self.worker is not None or self._napari_progress is not None:
            return
        layer = self.chosen_layer()
        if layer is None:
            return
        region = REGIONS[self.region.value]
        view_box = None
        if region == "view":
            view_box = self._view_box(layer)
        layer_step = [int(round(v)) for v in layer.world_to_data(self.viewer.dims.point)]
        try:
            checkpoint = self.model.selection()
        except ValueError as exc:
            self._set_status(str(exc), error=True)
            return
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.value = 0
        self._set_status(f"running on {layer.name}…")
        self._start_progress()
        self._start(
            _prediction_job,
            checkpoint,
            self.device.value,
            layer,
            region,
            layer_step,
            self.level.value,
            view_box,
            self.tile.value,
            self.levels.value,
            yielded=self._on_progress,
            returned=partial(self._on_result, source_name=layer.name),
        )

    def _view_box(self, layer) -> np.ndarray:
        """What the canvas shows of ``layer``: a ``(2, ndim)`` box in level-0 data pixels.

        In a 2D view, the displayed axes span the canvas (camera centre, zoom and the size of
        the canvas, or of one cell in grid mode: the world rectangle on screen, mapped through
        the layer's transform); every other axis, and every axis of a 3D view, spans the whole
        layer (a 3D model on a 2D view of a volume gets the view's box through the whole
        stack). ``layer.corner_pixels`` is not used: napari widens it to whole chunks (a NumPy
        pyramid level is one chunk).
        """
        shape = np.asarray(layer.level_shapes[0] if layer.multiscale else layer.data.shape)
        box = np.stack([np.zeros(layer.ndim), shape - 1.0])
        displayed = list(self.viewer.dims.displayed)
        if len(displayed) != 2:
            return box
        canvas = getattr(self.viewer, "canvas", None)
        if canvas is not None:  # napari >= 0.9; one grid cell when the grid is on
            height, width = canvas.viewbox_size(self.viewer.layers)
        else:
            height, width = self.viewer._canvas_size
        half = np.array([height, width], float) / self.viewer.camera.zoom / 2
        centre = np.asarray(self.viewer.camera.center, float)[-2:]
        point = np.asarray(self.viewer.dims.point, float)
        corners = []
        for dy in (-1, 1):
            for dx in (-1, 1):
                world = point.copy()
                world[displayed] = centre + np.array([dy, dx]) * half
                corners.append(np.asarray(layer.world_to_data(world), float))
        corners = np.asarray(corners)
        offset = len(point) - layer.ndim
        for axis in (d - offset for d in displayed if d >= offset):
            box[:, axis] = corners[:, axis].min(), corners[:, axis].max()
        return box

    def cancel(self):
        """Ask the worker to stop after the current tile; nothing partial is added."""
        if self.worker is not None:
            self._set_status("cancelling…")
            self.worker.quit()

    def _start_progress(self) -> None:
        """napari's activity bar for this run, made before the worker starts (it processes
        events while it is made: no progress event may be waiting for it)."""
        from napari.utils import progress

        self._close_progress()
        self._latest = None
        self._napari_progress = progress(total=0, desc="napari-rat")
        self._progress_timer.start()

    def _on_progress(self, p):
        """A progress event: the dock's bar and status only (nothing here processes events)."""
        if self.worker is None:  # a late event after the run ended
            return
        self._latest = p
        self.progress.max = p.total
        self.progress.value = p.done
        self._set_status(f"{p.stage}: {p.done}/{p.total}")

    def _sync_progress(self) -> None:
        """Timer: bring napari's activity bar up to the latest progress (it processes events;
        a timer is not re-entered, and the flag keeps it so)."""
        bar, p = self._napari_progress, self._latest
        if self._syncing or bar is None or p is None:
            return
        self._syncing = True
        try:
            if bar.total != p.total:
                bar.total = p.total
                bar.n = 0
            bar.set_description(f"napari-rat: {p.stage}")
            bar.update(p.done - bar.n)
        finally:
            self._syncing = False
        if self._finish_pending:  # the worker finished while the bar processed events
            self._finish_pending = False
            self._on_finished()

    def _close_progress(self) -> None:
        self._progress_timer.stop()
        bar, self._napari_progress = self._napari_progress, None
        if bar is not None:
            bar.close()

    def _on_result(self, value, source_name: str):
        result, source, arrays = value
        steps = [
            partial(self._add_layer, layer_data)
            for layer_data in result_layers(source, arrays, source_name)
        ]
        self._then(*steps, partial(self._set_status, f"done: {result.num_instances} instances"))

    def _add_layer(self, layer_data: tuple):
        from napari.layers import Layer

        return self.viewer.add_layer(Layer.create(*layer_data))

    def _on_finished(self):
        if self._syncing:
            # Inside napari's bar (it processes events): finish once out of it, not nested.
            self._finish_pending = True
            return
        self._close_progress()
        if self.worker is not None and self.worker.abort_requested:
            self._drop_steps()
            self._set_status("cancelled: no layer added")
        # The model is done: what is left (adding the layers) is not cancelled halfway.
        self.cancel_button.enabled = False
        super()._on_finished()

    def _end_run(self):
        self._close_progress()
        super()._end_run()
        self.run_button.enabled = True
        self.cancel_button.enabled = False
