"""Inference dock widget: pick a model and an image layer, Run/Cancel, results as layers.

The widget only gathers choices; the work is :func:`napari_rat.inference.predict`, run in a
``thread_worker`` so the viewer stays responsive. Results carry the source layer's ``scale``,
``translate``, ``units`` and ``axis_labels`` (see :mod:`napari_rat._widgets.layer_input`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Label, ProgressBar, PushButton, SpinBox

from napari_rat._widgets.dock_base import ModelDock, wrap_status_label
from napari_rat._widgets.layer_input import (
    LayerInput,
    LayerSnapshot,
    axis_name,
    channel_axis,
    check_not_rgb,
    describe_plane,
    layer_input,
    snapshot_layer,
    stack_axes,
    view_box,
)
from napari_rat._widgets.model_imports import keep_triton_out

REGIONS = {
    "whole image": "whole",
    "every plane": "planes",
    "current view": "view",
    "current slice": "slice",
}
ALL_CHANNELS = "all"
#: Where a run computes: here, or across the local Ray head (started if none runs).
RUN_ON = {"this machine": None, "local cluster": "local"}


@dataclass(frozen=True)
class RunResult:
    """What a dock run hands the GUI thread: the result layers' data and what to say."""

    arrays: dict[str, np.ndarray]
    source: LayerInput  # where the results go
    num_instances: int
    nan_pixels: int
    plan: str


def run_plan(layer, model_dims: int, region: str, step, level: int) -> str:
    """What a run will segment, said before it runs ("" when it is plainly the whole image).

    A 2D model on a stack segments one plane unless ``region`` is ``"planes"``.
    """
    axes = stack_axes(layer, model_dims)
    if not axes:
        return ""
    model = f"{model_dims}D model"
    if region == "planes":
        data = layer.data[level] if getattr(layer, "multiscale", False) else layer.data
        count = math.prod(data.shape[a] for a in axes)
        kind = "planes" if model_dims == 2 else "volumes"
        return f"{model}: every one of the {count} {kind}, one after the other"
    whole = "the stack" if model_dims == 2 else "every volume"
    where = describe_plane(layer, model_dims, step, level)
    return f"{model}: {where}; choose 'every plane' to segment {whole}"


@dataclass(frozen=True)
class RunRequest:
    """A dock run's choices, gathered on the GUI thread; the worker reads only these.

    ``layer``: a :class:`~napari_rat._widgets.layer_input.LayerSnapshot` (the worker never
    touches the live layer). ``step``: the viewer's position in the layer's data indices.
    ``cluster``: ``None`` (here) or a cluster for
    :func:`napari_rat.cluster.predict.predict_on_cluster` with ``workers`` (every plane of a
    stack still runs here, one plane after the other). ``resample``: each tile resampled to
    the model's training spacing and back (``napari-rat predict --resample``).
    ``as_trained``: the model's own attention and tiles instead of ``tile``
    (``napari-rat predict --as-trained``).
    """

    checkpoint: str
    device: str
    layer: LayerSnapshot
    region: str
    step: Sequence[int]
    level: int
    tile: int
    levels: int
    channel: int | None = None
    view_box: np.ndarray | None = None
    cluster: str | None = None
    workers: int = 2
    resample: bool = False
    as_trained: bool = False


def _prediction_job(request: RunRequest):
    """Generator run in the worker: load the model, say the plan, cut the input, predict."""
    keep_triton_out()
    from napari_rat.inference import PredictOptions, resolve_device
    from napari_rat.inference.model_loading import as_trained, load_model_for_inference
    from napari_rat.inference.sources import predict_input

    r = request
    layer, region, level = r.layer, r.region, r.level
    attention, tile, halo = as_trained(r.checkpoint) if r.as_trained else (None, None, None)
    model = load_model_for_inference(r.checkpoint, resolve_device(r.device), attention)
    dims = model.spatial_dims
    plan = run_plan(layer, dims, region, r.step, level)
    if plan:
        yield plan
    check_channels(layer, r.channel, model.backbone.input_features)
    options = PredictOptions(
        tile=tile if r.as_trained else (r.tile,) * dims,
        halo=halo,
        levels=r.levels,
        device=r.device,
        resample_to_training_spacing=r.resample,
    )
    if region == "planes" and stack_axes(layer, dims):
        return (yield from _predict_planes(model, layer, level, r.channel, options, plan))
    whole = "whole" if region == "planes" else region
    source = layer_input(layer, dims, whole, r.step, level, r.view_box, r.channel)
    check_result_memory(source.image.shape[1:], _ways_out(layer, region, level))
    if r.cluster is not None:
        result, arrays = yield from _on_cluster(model, source, options, r.cluster, r.workers)
    else:
        result = yield from predict_input(model, source, options=options)
        arrays = result_arrays(result, source)
    return RunResult(arrays, source, result.num_instances, result.nan_pixels, plan)


def _on_cluster(model, source, options, cluster, workers):
    """The run across a Ray cluster, built in a scratch store read back into memory (the
    result layers) and removed, whether it finishes or not."""
    import shutil
    import tempfile
    from pathlib import Path

    from napari_rat.cluster.predict import predict_on_cluster

    scratch = Path(tempfile.mkdtemp(prefix="napari-rat-dock-cluster-"))
    try:
        result = yield from predict_on_cluster(
            model,
            source.image,
            source.spacing,
            source.translation,
            units=source.units,
            store=scratch / "prediction.zarr",
            options=options,
            cluster=cluster,
            workers=workers,
        )
        return result, result_arrays(result, source)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def check_channels(layer, channel: int | None, model_channels: int) -> None:
    """Refuse (``ValueError``) a channel choice the model cannot take, saying what to choose."""
    axis = channel_axis(layer)
    if axis is None or channel is not None:
        given = 1
    else:
        shape = layer.level_shapes[0] if layer.multiscale else layer.data.shape
        given = int(shape[axis])
    if given == model_channels:
        return
    if axis is None:
        raise ValueError(
            f"the model takes {model_channels} channels and layer {layer.name!r} has no channel "
            "axis: label its channel axis 'c' (layer.axis_labels)"
        )
    if channel is None:
        raise ValueError(
            f"layer {layer.name!r} has {given} channels on {axis_name(layer, axis)}; the model "
            f"takes {model_channels}: choose one in 'channel'"
        )
    raise ValueError(f"the model takes {model_channels} channels; choose 'all' in 'channel'")


def _predict_planes(model, layer, level, channel, options, plan):
    """Every plane (or volume) of a stack through
    :func:`~napari_rat.inference.planes.predict_planes`, shaped like the layer."""
    from napari_rat.inference.planes import predict_planes

    c_axis = channel_axis(layer)
    axes = layer.ndim - (c_axis is not None)
    source = layer_input(layer, axes, "whole", None, level, channel=channel)
    check_result_memory(source.image.shape[1:], ["choose one plane"])
    result = yield from predict_planes(
        model,
        source.image,
        source.spacing,
        source.translation,
        options=options,
        units=source.units,
    )
    arrays = result_arrays(result, source)
    return RunResult(arrays, source, result.num_instances, result.nan_pixels, plan)


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
        arrays["instances"] = source.to_layer_shape(_narrow_labels(np.asarray(result.labels)))
    return arrays


def _narrow_labels(labels: np.ndarray) -> np.ndarray:
    if labels.size and 0 <= labels.min() and labels.max() < np.iinfo(np.uint16).max:
        return labels.astype(np.uint16, copy=False)
    return labels


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

    CALLBACKS = (
        *ModelDock.CALLBACKS,
        "run",
        "cancel",
        "_on_progress",
        "_sync_progress",
        "_tile_choice",
    )

    #: How often (ms) napari's activity bar catches up with the run's progress.
    PROGRESS_SYNC_MS = 100

    def __init__(self, napari_viewer):
        from qtpy.QtCore import QTimer

        self.region = ComboBox(label="region", choices=list(REGIONS), value="whole image")
        self.level = SpinBox(label="level", min=0, max=16, value=0)
        self.tile = SpinBox(label="tile (px)", min=16, max=4096, step=16, value=256)
        self.levels = SpinBox(label="levels fed", min=1, max=4, value=1)
        self.run_on = ComboBox(label="run on", choices=list(RUN_ON), value="this machine")
        self.run_on.tooltip = (
            "local cluster: the same prediction spread over the local Ray head's workers "
            "(started if none runs; `napari-rat cluster stop` stops it)"
        )
        self.workers = SpinBox(label="cluster workers", min=1, max=256, value=2)
        self.resample = CheckBox(text="resample to the training spacing", value=False)
        self.resample.tooltip = (
            "off: RAT is told the image's true spacing. On: each tile is resampled to the "
            "spacing the model was trained at and the result back (`napari-rat predict "
            "--resample`); for images much coarser than the training data this scored "
            "better with the bundled starters (README, 'Starter model')"
        )
        self.as_trained = CheckBox(text="run as trained", value=False)
        self.as_trained.tooltip = (
            "off: windowed attention in tiles of the size above (fast, linear in pixels). On: "
            "the model's training attention in tiles of its training crop, as its training "
            "scored it (`napari-rat predict --as-trained`; about 9x slower with the 2D "
            "starter): for a model whose answer rests on the told spacing "
            "(docs/starter_model.md)"
        )
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.channel = ComboBox(label="channel", choices=self._channels)
        self.plan = Label(value="")
        super().__init__(
            napari_viewer,
            options=[
                self.region,
                self.channel,
                self.level,
                self.tile,
                self.levels,
                self.resample,
                self.as_trained,
                self.run_on,
                self.workers,
            ],
            actions=[self.run_button, self.cancel_button, self.progress, self.plan],
        )
        wrap_status_label(self.plan.native)
        self.image_layer.changed.connect(self.channel.reset_choices)
        self.as_trained.changed.connect(self._tile_choice)
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
        spatial = layer.ndim - (channel_axis(layer) is not None)
        try:
            check_not_rgb(layer)
            checkpoint = self.model.selection(spatial)
        except ValueError as exc:
            self._set_status(f"error: {exc}", error=True)
            return
        channel = None if self.channel.value in (None, ALL_CHANNELS) else int(self.channel.value)
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.value = 0
        self._show_plan("")
        self._set_status(f"running on {layer.name}…")
        self._start_progress()
        request = RunRequest(
            checkpoint=checkpoint,
            device=self.device.value,
            layer=snapshot_layer(layer),  # the worker never touches the live layer
            region=region,
            step=layer_step,
            level=self.level.value,
            tile=self.tile.value,
            levels=self.levels.value,
            channel=channel,
            view_box=view_box,
            cluster=RUN_ON[self.run_on.value],
            workers=self.workers.value,
            resample=self.resample.value,
            as_trained=self.as_trained.value,
        )
        self._start(
            _prediction_job,
            request,
            yielded=self._on_progress,
            returned=partial(self._on_result, source_name=layer.name),
        )

    def _tile_choice(self, *_) -> None:
        """ "run as trained" chooses the tiles: the tile box is off while it is on."""
        self.tile.enabled = not self.as_trained.value

    def _view_box(self, layer) -> np.ndarray:
        """What the canvas shows of ``layer`` (see :func:`view_box`)."""
        return view_box(self.viewer, layer)

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

    def _channels(self, *_) -> list[str]:
        """``all``, then each channel of the chosen layer's channel axis (if it has one)."""
        name = self.image_layer.value if hasattr(self, "image_layer") else None
        layer = self.viewer.layers[name] if name and name in self.viewer.layers else None
        axis = channel_axis(layer) if layer is not None else None
        if axis is None:
            return [ALL_CHANNELS]
        shape = layer.level_shapes[0] if layer.multiscale else layer.data.shape
        return [ALL_CHANNELS, *(str(c) for c in range(int(shape[axis])))]

    def _show_plan(self, text: str) -> None:
        self.plan.native.setText(text)
        self.plan.native.setToolTip(text)

    def _on_progress(self, p):
        """A progress event: the dock's bar and status only (nothing here processes events).

        A text is the run's plan (what it segments), said before the model runs.
        """
        if self.worker is None:  # a late event after the run ended
            return
        if isinstance(p, str):
            self._show_plan(p)
            self._set_status(p)
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

    def _on_result(self, value: RunResult, source_name: str):
        done = f"done: {value.num_instances} instances"
        if value.plan:
            done += f" ({value.plan})"
        error = False
        if value.nan_pixels:
            done += (
                f"; {value.nan_pixels:,} NaN (or infinite) pixels were taken as background, "
                "with no instance there"
            )
            error = True  # said in red: the user's image has holes
        steps = [
            partial(self._add_layer, layer_data)
            for layer_data in result_layers(value.source, value.arrays, source_name)
        ]
        self._then(*steps, partial(self._set_status, done, error))

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
