"""Attention dock widget: click a point, see what the model groups with it.

For the clicked point (2D or 3D, world coordinates) the widget runs the backbone on a window
around it and shows, per block, that point's attention over the input pixels
(:func:`napari_rat.model.attention_maps.point_attention`) as image layers, and the native
grouping of each block (:func:`~napari_rat.model.attention_maps.native_grouping`) as labels
layers, all aligned with the source layer in world coordinates. The maps are computed on demand
in a worker thread (:func:`napari_rat.inference.attention_at_point.attention_at_point`, on a
snapshot of the layer taken when asked), never materialised as full ``N x N`` matrices.

"as trained" shows the attention the model learned: a dense-attention model is run with the
dense maths (``exact``) over a window of its training crop, as its training validated it
(:func:`~napari_rat.inference.model_loading.as_trained`); by default it runs windowed
(``local``) over the window chosen, as ``napari-rat predict`` runs it.
"""

from __future__ import annotations

from functools import partial

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, LineEdit, PushButton, SpinBox

from napari_rat._widgets.dock_base import ModelDock
from napari_rat._widgets.layer_input import (
    brightest_on_ray,
    channel_axis,
    check_not_rgb,
    layer_input,
    snapshot_layer,
)
from napari_rat._widgets.model_imports import keep_triton_out

#: How far (screen pixels) the mouse may move between press and release for a click; further
#: is a drag (panning, rotating), which shows nothing.
CLICK_SLOP_PX = 4

#: The names of the maps' layers, per block.
MAP_LAYERS = (("attention block {}", "image"), ("grouping block {}", "labels"))


def parse_point(text: str, ndim: int) -> list[float]:
    """The ``ndim`` world coordinates typed in the point field (commas or spaces between).

    Raises ``ValueError`` with a message for the dock's status line.
    """
    values = text.replace(",", " ").split()
    if not values:
        raise ValueError(f"type a point ({ndim} numbers, e.g. {_example(ndim)}) or click")
    for value in values:
        try:
            float(value)
        except ValueError:
            raise ValueError(
                f"{value!r} in the point is not a number; give {ndim} numbers, "
                f"e.g. {_example(ndim)}"
            ) from None
    if len(values) != ndim:
        raise ValueError(
            f"the point needs {ndim} coordinates, got {len(values)}; e.g. {_example(ndim)}"
        )
    return [float(v) for v in values]


def _example(ndim: int) -> str:
    return "'" + ", ".join((["12.5", "30", "4", "8"] + ["0"] * ndim)[:ndim]) + "'"


def attention_job(checkpoint, device, layer, data_point, window, ray=None, trained=False):
    """Worker: the maps for ``data_point`` (level-0 data pixels of ``layer``, a
    :class:`~napari_rat._widgets.layer_input.LayerSnapshot` taken on the GUI thread).

    Cuts a ``window``-pixel box around the point and hands it to the core
    (:func:`napari_rat.inference.attention_at_point.attention_at_point`). With ``ray`` (a 3D
    click: where the view ray enters and leaves the layer), the point is the brightest voxel on
    it instead (:func:`brightest_on_ray`). With ``trained``, the model runs as trained
    (:func:`~napari_rat.inference.model_loading.as_trained`): a dense-attention model with the
    dense maths over a box of its training crop instead of ``window``.
    """
    keep_triton_out()
    from napari_rat.inference import resolve_device
    from napari_rat.inference.attention_at_point import attention_at_point
    from napari_rat.inference.model_loading import as_trained, load_model_for_inference

    attention, tile, halo = as_trained(checkpoint) if trained else (None, None, None)
    if ray is not None:
        data_point = brightest_on_ray(layer, *ray)
    step = [int(round(v)) for v in data_point]
    model = load_model_for_inference(checkpoint, device=resolve_device(device), attention=attention)
    dims = model.spatial_dims
    # the training crop is the tile and its halo on both sides (training_tiles)
    size = [window] * dims if tile is None else [t + 2 * h for t, h in zip(tile, halo, strict=True)]
    half = np.asarray(size, float) / 2
    centre = np.asarray(data_point[-dims:], float)
    box = np.zeros((2, layer.ndim))
    box[0, -dims:] = centre - half
    box[1, -dims:] = centre + half - 1
    source = layer_input(layer, dims, "view", step, 0, box)
    world = np.asarray(layer.data_to_world(data_point))
    maps = attention_at_point(model, source, world[-dims:])
    return source, maps.attention, maps.grouping, world


def click_ray(layer, position, view_direction, dims_displayed):
    """Where a 3D view's click ray enters and leaves ``layer``, in its data coordinates.

    ``position``, ``view_direction`` and ``dims_displayed`` are the mouse event's (world, the
    viewer's axes). Returns ``(start, end)`` over all the layer's axes (the hidden ones at the
    viewer's current point), ``(None, None)`` when the ray misses the layer, or ``None`` when
    fewer than 3 of the layer's axes are shown (a 2D layer in a 3D view: a plain click).
    """
    from napari.layers.utils.layer_utils import dims_displayed_world_to_layer

    position = np.asarray(position, float)
    shown = dims_displayed_world_to_layer(
        list(dims_displayed), ndim_world=len(position), ndim_layer=layer.ndim
    )
    if len(shown) != 3:
        return None
    # The layer's own world axes (the last ones); napari keeps the hidden axes of the ray in
    # world coordinates, so they are set to the data coordinates of the clicked point.
    mine = position[-layer.ndim :]
    direction = np.asarray(view_direction, float)[-layer.ndim :]
    start, end = layer.get_ray_intersections(mine, direction, shown, world=True)
    if start is None:
        return None, None
    point = np.asarray(layer.world_to_data(mine), float)
    hidden = [axis for axis in range(layer.ndim) if axis not in shown]
    start, end = np.asarray(start, float), np.asarray(end, float)
    start[hidden] = end[hidden] = point[hidden]
    return start, end


class AttentionWidget(ModelDock):
    """Per-block attention of a clicked point, and each block's native grouping.

    The maps are layers named ``attention block <i>`` and ``grouping block <i>``: a new point
    updates them in place, and those of blocks the current model does not have are removed.
    """

    CALLBACKS = (*ModelDock.CALLBACKS, "show_point", "_on_click", "_window_choice")

    def __init__(self, napari_viewer):
        self.window = SpinBox(label="window (px)", min=16, max=1024, step=16, value=128)
        self.as_trained = CheckBox(text="as trained", value=False)
        self.as_trained.tooltip = (
            "the attention the model learned: a dense-attention model with the dense maths over "
            "a window of its training crop (the window box is off meanwhile); other models as "
            "they are stored"
        )
        self.pick = ComboBox(
            label="on click", choices=["show attention", "off"], value="show attention"
        )
        self.point = LineEdit(label="point (world)", value="")
        self.show_button = PushButton(text="Show")
        super().__init__(
            napari_viewer,
            options=[self.window, self.as_trained],
            actions=[self.pick, self.point, self.show_button],
            status="click a point in the viewer",
        )
        self.show_button.clicked.connect(lambda: self.show_point())
        self.as_trained.changed.connect(self._window_choice)
        self.viewer.mouse_drag_callbacks.append(self._on_click)

    def _window_choice(self, *_) -> None:
        """The window box is the user's unless the model runs as trained (its crop then)."""
        self.window.enabled = not self.as_trained.value

    def _on_click(self, viewer, event):
        """A click (press and release without dragging) on the canvas shows its attention.

        A drag pans or rotates the view, and a click that paints or adds points (the active
        layer in a mode other than pan/zoom) is the layer's: neither computes anything. In a
        3D view the click's ray picks the brightest voxel it crosses.
        """
        if self.pick.value == "off" or event.type != "mouse_press" or event.button != 1:
            return
        if event.modifiers:
            return  # e.g. space-drag panning over a labels layer, or napari's own shortcuts
        active = viewer.layers.selection.active
        if getattr(active, "mode", "pan_zoom") not in ("pan_zoom", "transform"):
            return
        press = np.asarray(event.pos, float)
        position = tuple(event.position)
        view_direction = getattr(event, "view_direction", None)
        dims_displayed = list(getattr(event, "dims_displayed", []))
        yield
        while event.type == "mouse_move":
            if np.abs(np.asarray(event.pos, float) - press).max() > CLICK_SLOP_PX:
                return  # a drag
            yield
        ray = None
        if len(dims_displayed) == 3 and view_direction is not None:
            layer = self.chosen_layer()
            if layer is None:
                return
            ray = click_ray(layer, position, view_direction, dims_displayed)
            if ray is not None and ray[0] is None:
                self._set_status("the click missed the image", error=True)
                return
        self.point.value = ", ".join(f"{v:.3f}" for v in position)
        self.show_point(ray=ray)

    def show_point(self, *, ray=None):
        """Compute the maps for the point in the ``point`` field (world coordinates).

        ``ray``: ``(start, end)`` of a 3D click's view ray in the layer's data coordinates; the
        point is then the brightest voxel on it, and the field shows it once found.
        """
        if self.worker is not None:
            self._set_status("busy: wait for the current maps", error=True)
            return
        layer = self.chosen_layer()
        if layer is None:
            return
        try:
            check_not_rgb(layer)
            world = parse_point(self.point.value, self.viewer.dims.ndim)
            checkpoint = self.model.selection(layer.ndim - (channel_axis(layer) is not None))
        except ValueError as exc:
            self._set_status(f"error: {exc}", error=True)
            return
        data_point = np.asarray(layer.world_to_data(world), float)
        if ray is None and (
            np.any(data_point < -0.5) or np.any(data_point > np.asarray(layer.data.shape) - 0.5)
        ):
            self._set_status("the point is outside the image", error=True)
            return
        self._set_status("computing attention…")
        self._start(
            attention_job,
            checkpoint,
            self.device.value,
            snapshot_layer(layer),  # the worker never touches the live layer
            data_point,
            self.window.value,
            ray,
            self.as_trained.value,
            returned=self._on_result,
        )

    def _put(self, name, data, kind, meta):
        """Show ``data`` in the layer ``name``: updated in place when it is of the ``kind``.

        ``isinstance``, not the type's name: through napari's plugin entry points the dock
        holds a ``PublicOnlyProxy`` of the viewer, whose layers are proxies too.
        """
        from napari.layers import Image, Labels

        cls = Image if kind == "image" else Labels
        if name in self.viewer.layers and isinstance(self.viewer.layers[name], cls):
            target = self.viewer.layers[name]
            if target.ndim != np.ndim(data):  # a 2D map over a 3D one: napari needs a new layer
                self.viewer.layers.remove(name)
            else:
                target.data = data
                target.scale, target.translate = meta["scale"], meta["translate"]
                if kind == "image":
                    target.contrast_limits = (0.0, 1.0)
                return target
        if kind == "image":
            return self.viewer.add_image(
                data, name=name, colormap="inferno", blending="additive", **meta
            )
        return self.viewer.add_labels(data, name=name, **meta)

    def _stale_maps(self, blocks: int) -> list[str]:
        """The map layers of blocks ``blocks`` and above (a previous, deeper model's)."""
        stale, block = [], blocks
        while True:
            names = [pattern.format(block) for pattern, _ in MAP_LAYERS]
            present = [name for name in names if name in self.viewer.layers]
            if not present:
                return stale
            stale.extend(present)
            block += 1

    def _remove_layer(self, name: str) -> None:
        """One layer out, one step: napari (0.9.2, vispy 0.17, Mesa) crashes on its next draw
        after two layers are removed in one event-loop turn while others remain."""
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)

    def _on_result(self, value):
        source, maps, groups, world = value
        # The point the maps are for (a 3D click's picked voxel), on the viewer's axes.
        point = parse_point(self.point.value, len(self.point.value.replace(",", " ").split()))
        point[len(point) - len(world) :] = world
        self.point.value = ", ".join(f"{v:.3f}" for v in point)
        meta = source.placement()
        steps = []
        for block, (att, grp) in enumerate(zip(maps, groups, strict=True)):
            att = att / max(float(att.max()), 1e-12)
            att = source.to_layer_shape(att.astype(np.float32))
            grp = source.to_layer_shape((grp + 1).astype(np.int32))
            steps.append(partial(self._put, f"attention block {block}", att, "image", meta))
            steps.append(partial(self._put, f"grouping block {block}", grp, "labels", meta))
        steps.extend(partial(self._remove_layer, name) for name in self._stale_maps(len(maps)))
        message = f"attention of the point over {len(maps)} blocks"
        self._then(*steps, partial(self._set_status, message))
