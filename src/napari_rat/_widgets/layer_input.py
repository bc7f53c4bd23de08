"""From a napari image layer to a model input and back, without importing Qt or napari.

:func:`snapshot_layer` captures, on the GUI thread, what a worker needs of a layer (its arrays
and placement): workers never touch a live layer, which the user may edit, move or remove while
they run. :func:`layer_input` takes such a snapshot (or a layer), the model's dimensionality,
the region choice and the viewer's current step, and returns the ``[C, *spatial]`` input with
its physical spacing and origin (a :class:`~napari_rat.inference.sources.PredictionInput`),
plus the ``scale``/``translate`` the result layers need so that they land exactly on the source
(sliced axes become length-1 axes at the slice position).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Region = Literal["whole", "view", "slice"]


@dataclass(frozen=True)
class LayerInput:
    """The model input cut from a layer and where its results go."""

    image: object
    spacing: tuple[float, ...]
    translation: tuple[float, ...]
    out_scale: tuple[float, ...]
    out_translate: tuple[float, ...]
    sliced_axes: tuple[int, ...]
    level: int
    layer_meta: tuple[tuple[str, tuple], ...] = ()

    @property
    def units(self) -> tuple[str, ...] | None:
        """The length units of the model input's axes (the layer's last ones), if it has any."""
        units = dict(self.layer_meta).get("units")
        return tuple(units[-len(self.spacing) :]) if units else None

    def placement(self) -> dict:
        """``scale``/``translate`` of the result plus the source layer's units and axis labels.

        Units and axis labels are those the layer had when the input was cut, so a layer
        renamed or removed while the model runs does not change where the results go.
        """
        return {"scale": self.out_scale, "translate": self.out_translate, **dict(self.layer_meta)}

    def to_layer_shape(self, array):
        """Add back the sliced axes (length 1) so a result has the layer's dimensionality."""
        for axis in self.sliced_axes:
            array = np.expand_dims(np.asarray(array), axis)
        return array


@dataclass(frozen=True, eq=False)
class LayerSnapshot:
    """An image layer's arrays and placement, as they were when captured (:func:`snapshot_layer`).

    It answers what :func:`layer_input`, :func:`brightest_on_ray` and the docks' jobs ask of a
    layer, with the same names (``data``, ``multiscale``, ``scale``, ``data_to_world``...).
    """

    name: str
    data: object  # the array, or the list of levels' arrays of a multiscale layer
    multiscale: bool
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    units: tuple[str, ...]
    axis_labels: tuple[str, ...]
    rgb: bool
    data_level: int
    #: ``(ndim + 1, ndim + 1)``: data coordinates to world coordinates (napari's whole
    #: transform: scale, translate, rotate, shear and affine).
    world_transform: np.ndarray

    @property
    def ndim(self) -> int:
        return len(self.scale)

    @property
    def level_shapes(self) -> np.ndarray:
        levels = self.data if self.multiscale else [self.data]
        return np.asarray([level.shape for level in levels])

    def data_to_world(self, position: Sequence[float]) -> np.ndarray:
        """World coordinates (the layer's axes) of a data position, as the layer had it."""
        point = np.append(np.asarray(position, float)[-self.ndim :], 1.0)
        return (self.world_transform @ point)[:-1]


def snapshot_layer(layer) -> LayerSnapshot:
    """Capture ``layer``'s arrays and placement: call on the GUI thread, hand to a worker.

    The arrays are the layer's own (not copied: a lazy array stays lazy); replacing the layer's
    data, moving it or removing it afterwards does not change the snapshot.
    """
    ndim = layer.ndim
    origin = np.asarray(layer.data_to_world(np.zeros(ndim)), float)
    columns = [np.asarray(layer.data_to_world(e), float) - origin for e in np.eye(ndim)]
    transform = np.eye(ndim + 1)
    transform[:ndim, :ndim] = np.stack(columns, axis=1)
    transform[:ndim, ndim] = origin
    multiscale = bool(getattr(layer, "multiscale", False))
    return LayerSnapshot(
        name=str(layer.name),
        data=list(layer.data) if multiscale else layer.data,
        multiscale=multiscale,
        scale=tuple(float(s) for s in layer.scale),
        translate=tuple(float(t) for t in layer.translate),
        units=tuple(str(u) for u in getattr(layer, "units", ())),
        axis_labels=tuple(str(a) for a in getattr(layer, "axis_labels", ())),
        rgb=bool(getattr(layer, "rgb", False)),
        data_level=int(getattr(layer, "data_level", 0)),
        world_transform=transform,
    )


def check_not_rgb(layer) -> None:
    """Refuse an RGB(A) layer (``ValueError``): its colour axis is not a model's channel."""
    if getattr(layer, "rgb", False):
        raise ValueError(
            f"layer {layer.name!r} is RGB; convert it to one channel first "
            "(right-click the layer, Split RGB, and choose one of the three)"
        )


def _level_factors(layer, level: int) -> np.ndarray:
    if not getattr(layer, "multiscale", False):
        return np.ones(layer.ndim)
    s0 = np.asarray(layer.data[0].shape[-layer.ndim :], float)
    sk = np.asarray(layer.data[level].shape[-layer.ndim :], float)
    return np.round(s0 / sk)


#: Axis labels that mark a layer's channel axis (``predict --channel``'s ``c`` axis).
CHANNEL_AXIS_LABELS = frozenset({"c", "ch", "channel", "channels"})


def channel_axis(layer) -> int | None:
    """The layer's channel axis: the one labelled ``c`` (or ``channel``), else ``None``."""
    labels = [str(label).strip().lower() for label in getattr(layer, "axis_labels", ())]
    for axis, label in enumerate(labels):
        if label in CHANNEL_AXIS_LABELS:
            return axis
    return None


def _level_data(layer, level: int):
    return layer.data[level] if getattr(layer, "multiscale", False) else layer.data


def stack_axes(layer, model_dims: int) -> list[int]:
    """The layer's axes a ``model_dims``-D model does not take: planes (or volumes) over them."""
    c_axis = channel_axis(layer)
    others = [axis for axis in range(layer.ndim) if axis != c_axis]
    return others[: max(0, len(others) - model_dims)]


def axis_name(layer, axis: int) -> str:
    """How messages name an axis: its label (``z``), or ``axis 0`` for napari's defaults."""
    labels = list(getattr(layer, "axis_labels", ()))
    label = str(labels[axis]) if axis < len(labels) else ""
    if not label or label.lstrip("-").isdigit() or label.startswith("axis"):
        return f"axis {axis}"
    return label


def describe_plane(layer, model_dims: int, step: Sequence[int], level: int = 0) -> str:
    """``"plane z=12 of 30"`` (``"plane t=2, z=12 of 4 x 30"``): which plane ``step`` is."""
    axes = stack_axes(layer, model_dims)
    data = _level_data(layer, level)
    factors = _level_factors(layer, level)
    where = ", ".join(f"{axis_name(layer, a)}={int(step[a] // factors[a])}" for a in axes)
    sizes = " x ".join(str(data.shape[a]) for a in axes)
    return f"{'plane' if model_dims == 2 else 'volume'} {where} of {sizes}"


def layer_input(
    layer,
    model_dims: int,
    region: Region = "whole",
    current_step: Sequence[int] | None = None,
    level: int = 0,
    view_box: np.ndarray | None = None,
    channel: int | None = None,
) -> LayerInput:
    """Cut the model input out of an image layer.

    Parameters
    ----------
    layer
        A napari Image layer (single or multiscale, not RGB).
    model_dims
        2 or 3: the model's spatial dimensions (the last axes of the layer).
    region
        ``"whole"`` image; ``"view"``: the bounding box ``view_box`` (``(2, ndim)`` in level-0
        data pixels) of what is on screen; ``"slice"``: the current plane of a 3D layer (2D
        models only) or the whole of the last ``model_dims`` axes.
    current_step
        The viewer's current step (level-0 pixels) for the leading axes.
    level
        Multiscale level to read.
    channel
        On a layer with a channel axis (:func:`channel_axis`), the channel to use; ``None``:
        all of them, as the model's input channels. The results get a length-1 axis there.

    Raises
    ------
    ValueError
        For an RGB layer, too few axes, a missing level or channel, or a ``current_step``
        outside the layer on an axis the model does not take (a plane that does not exist).
    """
    check_not_rgb(layer)
    ndim = layer.ndim
    c_axis = channel_axis(layer)
    others = [axis for axis in range(ndim) if axis != c_axis]
    if len(others) < model_dims:
        raise ValueError(
            f"layer {layer.name!r} has {len(others)} spatial dimensions; the model needs at "
            f"least {model_dims}"
        )
    if channel is not None and c_axis is None:
        raise ValueError(
            f"layer {layer.name!r} has no channel axis (an axis labelled 'c'); choose 'all'"
        )
    if region == "view" and view_box is None:
        raise ValueError("region 'view' needs the view's bounding box")
    levels = len(layer.data) if getattr(layer, "multiscale", False) else 1
    if not 0 <= level < levels:
        raise ValueError(f"layer {layer.name!r} has levels 0..{levels - 1}, not {level}")
    data = _level_data(layer, level)
    factors = _level_factors(layer, level)
    scale = np.asarray(layer.scale, float) * factors
    # napari centres level-k pixel i on level-0 pixel i * f + (f - 1) / 2 (the block it
    # averages): the level's origin is half a block minus half a pixel from level 0's.
    translate = np.asarray(layer.translate, float) + (factors - 1) / 2 * np.asarray(layer.scale)
    step = list(current_step) if current_step is not None else [0] * ndim
    spatial = others[-model_dims:]
    index: list = []
    out_translate = translate.copy()
    sliced = []
    for axis in range(ndim):
        n = data.shape[axis]
        if axis == c_axis:
            if channel is not None and not 0 <= channel < n:
                raise ValueError(
                    f"layer {layer.name!r} has channels 0..{n - 1} (axis {axis}), not {channel}"
                )
            first = channel or 0
            index.append(slice(None) if channel is None else slice(first, first + 1))
            out_translate[axis] = translate[axis] + first * scale[axis]
            sliced.append(axis)
            continue
        if axis not in spatial:
            i = int(step[axis] // factors[axis])  # the block holding it
            if not 0 <= i < n:
                raise ValueError(
                    f"the viewer's position on {axis_name(layer, axis)} (plane "
                    f"{int(step[axis])}) is outside layer {layer.name!r} (planes 0.."
                    f"{int(n * factors[axis]) - 1}); move the slider onto the layer"
                )
            index.append(slice(i, i + 1))
            out_translate[axis] = translate[axis] + i * scale[axis]
            sliced.append(axis)
            continue
        lo, hi = 0, n
        if region == "view":
            box = np.asarray(view_box, float)
            lo = int(np.clip(np.floor(box[0, axis] / factors[axis]), 0, n - 1))
            hi = int(np.clip(np.ceil((box[1, axis] + 1) / factors[axis]), lo + 1, n))
        index.append(slice(lo, hi))
        out_translate[axis] = translate[axis] + lo * scale[axis]
    image = data[tuple(index)]
    if c_axis is None:
        image = image.reshape(tuple(image.shape[a] for a in spatial))[None]
    else:  # channels first, then the model's axes (the sliced ones, length 1, last)
        rest = [a for a in range(ndim) if a != c_axis and a not in spatial]
        image = image.transpose([c_axis, *spatial, *rest])
        image = image.reshape((image.shape[0], *image.shape[1 : 1 + len(spatial)]))
    return LayerInput(
        image=image,
        spacing=tuple(float(scale[a]) for a in spatial),
        translation=tuple(float(out_translate[a]) for a in spatial),
        out_scale=tuple(float(s) for s in scale),
        out_translate=tuple(float(t) for t in out_translate),
        sliced_axes=tuple(sliced),
        level=level,
        layer_meta=tuple(
            (attr, tuple(str(v) for v in getattr(layer, attr)))
            for attr in ("units", "axis_labels")
            if hasattr(layer, attr)
        ),
    )


def view_box(viewer, layer) -> np.ndarray:
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
    displayed = list(viewer.dims.displayed)
    if len(displayed) != 2:
        return box
    canvas = getattr(viewer, "canvas", None)
    if canvas is not None:  # napari >= 0.9; one grid cell when the grid is on
        height, width = canvas.viewbox_size(viewer.layers)
    else:
        height, width = viewer._canvas_size
    half = np.array([height, width], float) / viewer.camera.zoom / 2
    centre = np.asarray(viewer.camera.center, float)[-2:]
    point = np.asarray(viewer.dims.point, float)
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


#: Largest box (in voxels) :func:`brightest_on_ray` reads at once; a longer ray through a bigger
#: box is read point by point.
RAY_BOX_VOXELS = 16 * 2**20


def brightest_on_ray(
    layer, start: Sequence[float], end: Sequence[float], level: int | None = None
) -> np.ndarray:
    """The point of a view ray where the layer is brightest: what a 3D click points at.

    ``start``/``end``: where the ray enters and leaves the layer (level-0 data coordinates, as
    napari's ``Layer.get_ray_intersections`` gives them). napari renders volumes as maximum
    intensity projections, so the voxel the user sees under the cursor is the brightest one on
    the ray. A multiscale layer is read at ``level`` (default: ``layer.data_level``, the level
    napari renders).
    Returns level-0 data coordinates (the centre of the chosen voxel).
    """
    multiscale = getattr(layer, "multiscale", False)
    level = (layer.data_level if level is None else level) if multiscale else 0
    data = layer.data[level] if multiscale else layer.data
    factors = _level_factors(layer, level)
    # Level-k voxel i is centred at level-0 coordinate i * f + (f - 1) / 2 (napari's layout).
    a = (np.asarray(start, float) - (factors - 1) / 2) / factors
    b = (np.asarray(end, float) - (factors - 1) / 2) / factors
    shape = np.asarray(data.shape[-layer.ndim :])
    count = int(np.ceil(np.abs(b - a).max())) + 1
    points = a + np.linspace(0.0, 1.0, count)[:, None] * (b - a)
    voxels = np.clip(np.floor(points + 0.5), 0, shape - 1).astype(int)
    voxels = voxels[np.r_[True, np.any(np.diff(voxels, axis=0) != 0, axis=1)]]
    lo, hi = voxels.min(axis=0), voxels.max(axis=0) + 1
    if np.prod(hi - lo) <= RAY_BOX_VOXELS:
        box = np.asarray(data[tuple(slice(i, j) for i, j in zip(lo, hi, strict=True))])
        values = box[tuple((voxels - lo).T)]
    else:
        values = np.array([np.asarray(data[tuple(v)]) for v in voxels])
    best = voxels[int(np.argmax(values))]
    return best * factors + (factors - 1) / 2
