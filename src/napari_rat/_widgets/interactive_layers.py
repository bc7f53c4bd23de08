"""The RAT interactive dock's layers: their names, how they are made (placed like the image)
and checked, and the images the dock takes.

A layer of a dock name that is of another kind or shape than the image's is never changed:
the dock says so and the user renames or removes it. A dock layer removed by hand is made
again when next needed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from napari_rat._widgets.attention_widget import click_ray
from napari_rat._widgets.interactive_session import prediction_box
from napari_rat._widgets.layer_input import (
    brightest_on_ray,
    channel_axis,
    check_not_rgb,
    view_box,
)

SCRIBBLES = "RAT scribbles"
PREDICTION = "RAT scribble prediction"
CLICKS = "RAT clicks"
CURRENT = "RAT current object"
COMMITTED = "RAT committed"
#: The sign of a click and its colour.
SIGN_COLOURS = {"positive": "#33dd55", "negative": "#ee3333"}
#: The current object in one colour of its own (committed objects and scribbles take
#: napari's label colours).
CURRENT_COLOURS = {None: "transparent", 0: "transparent", 1: "#ffd21f"}


def check_image(layer) -> tuple[int, ...]:
    """The image's level-0 shape; ``ValueError`` for what the dock cannot segment (RGB, a
    channel axis, other than 2 or 3 dimensions)."""
    check_not_rgb(layer)
    if channel_axis(layer) is not None:
        raise ValueError(
            f"layer {layer.name!r} has a channel axis: split it (right-click > Split Stack) "
            "and choose one channel"
        )
    shape = tuple(int(n) for n in (layer.level_shapes[0] if layer.multiscale else layer.data.shape))
    if len(shape) not in (2, 3):
        raise ValueError(
            f"layer {layer.name!r} has {len(shape)} dimensions {shape}; the interactive dock "
            "takes a 2D image or a 3D volume: choose one (e.g. a time point) first"
        )
    return shape


def layer_shape(layer) -> tuple[int | None, ...]:
    """A Labels or Image layer's (level-0) shape; a Points layer's dimensions only."""
    from napari.layers import Points

    if getattr(layer, "multiscale", False):
        return tuple(int(n) for n in layer.level_shapes[0])
    if isinstance(layer, Points):
        return (None,) * layer.ndim
    return tuple(int(n) for n in layer.data.shape)


def fits(layer, shape: Sequence[int]) -> bool:
    """Whether ``layer`` can be the dock's for an image of ``shape`` (points: same axes)."""
    have = layer_shape(layer)
    return len(have) == len(shape) and all(h in (None, n) for h, n in zip(have, shape, strict=True))


def check_layers(viewer, names: Iterable[str], shape: Sequence[int]) -> None:
    """``ValueError`` naming the first of the layers ``names`` present in ``viewer`` whose
    shape is not ``shape``, and the way out."""
    for name in names:
        if name in viewer.layers and not fits(viewer.layers[name], shape):
            have = layer_shape(viewer.layers[name])
            raise ValueError(
                f"layer {name!r} has shape {have} and the image {tuple(shape)}: choose a "
                f"layer of the image's shape, or rename or remove {name!r}"
            )


def dock_layer(viewer, session, name: str, kind: str, *, create=True, sign="positive"):
    """The layer ``name`` of ``kind`` (``"labels"`` or ``"points"``) for ``session``'s image;
    made empty and placed like the image when missing and ``create`` (else ``None``).

    Raises ``ValueError`` (leaving it alone) when a layer of that name is of another kind
    or shape.
    """
    from napari.layers import Labels, Points

    cls = Points if kind == "points" else Labels
    if name in viewer.layers:
        layer = viewer.layers[name]
        if isinstance(layer, cls) and fits(layer, session.layer_shape):
            return layer
        raise ValueError(
            f"layer {name!r} is not a {kind} layer of the image's shape "
            f"{session.layer_shape}: rename or remove it"
        )
    if not create:
        return None
    if kind == "points":
        layer = Points(
            np.empty((0, len(session.layer_shape))),
            name=name,
            features={"sign": np.array([], dtype=object)},
            feature_defaults={"sign": sign},
            face_color="sign",
            face_color_cycle=SIGN_COLOURS,
            size=max(3.0, min(session.shape[-2:]) / 40) * min(session.placement["scale"]),
            **session.placement,
        )
        layer.mode = "add"
    else:
        # committed objects: int32, room for every id; the others hold a few values
        dtype = np.int32 if name == COMMITTED else np.uint8
        layer = Labels(
            np.zeros(session.layer_shape, dtype), name=name, **_look(name), **session.placement
        )
    viewer.add_layer(layer)
    return layer


def put_labels(viewer, session, name: str, data: np.ndarray) -> None:
    """Show ``data`` (layer-shaped) in the Labels layer ``name``: swapped in, or a new layer
    placed like the image."""
    layer = dock_layer(viewer, session, name, "labels", create=False)
    if layer is None:
        viewer.add_labels(data, name=name, **_look(name), **session.placement)
    else:
        layer.data = data


def _look(name: str) -> dict:
    return {"colormap": CURRENT_COLOURS} if name == CURRENT else {}


def view_region(viewer, session, layer) -> tuple[slice, ...]:
    """The box of ``session``'s features a scribble update predicts, from what ``viewer``
    shows of ``layer`` (placed like the image; see
    :func:`~napari_rat._widgets.interactive_session.prediction_box`)."""
    ndim, world = layer.ndim, len(viewer.dims.point)
    displayed = [d - (world - ndim) for d in viewer.dims.displayed]
    point = np.asarray(viewer.dims.point, float)
    step = np.asarray(layer.world_to_data(point), float)
    centre = step
    if viewer.dims.ndisplay == 3:
        point[list(viewer.dims.displayed)] = viewer.camera.center
        centre = np.asarray(layer.world_to_data(point), float)
    view = view_box(viewer, layer)
    return prediction_box(session, view, displayed, step, viewer.dims.ndisplay, centre)


def snap_to_brightest(viewer, session, layer, indices) -> bool:
    """Move the points ``indices`` of ``layer`` (new clicks in a 3D view) to the brightest
    voxel of the session's image on the view ray through each (what the volume rendering
    shows there), as the attention dock picks a 3D click; whether any moved."""
    if session.image_name not in viewer.layers:
        return False
    image = viewer.layers[session.image_name]
    data = np.asarray(layer.data, float).copy()
    direction = np.zeros(len(viewer.dims.point))
    displayed = list(viewer.dims.displayed)
    direction[displayed] = viewer.camera.view_direction
    moved = False
    for i in np.asarray(indices, int) % max(1, len(data)):
        world = np.asarray(layer.data_to_world(data[i]), float)
        ray = click_ray(image, world, direction, displayed)
        if not ray or ray[0] is None:
            continue
        point = brightest_on_ray(image, *ray)
        moved |= not np.allclose(point, data[i])
        data[i] = point
    if moved:
        layer.data = data
    return moved
