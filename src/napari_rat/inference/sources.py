"""What a prediction reads and where its results go back: OME-Zarr pyramids and arrays.

:class:`PredictionInput` is what every prediction path takes: the model's input ``[C, *spatial]``
with its physical spacing, origin and units. :func:`input_from_pyramid` cuts one from an
OME-Zarr image (a :class:`PyramidInput`: a level, channels and a region; lazy); the docks cut
one from a napari layer (``napari_rat._widgets.layer_input.LayerInput``).
:func:`write_prediction` writes a :class:`~napari_rat.inference.Prediction` as a new OME-Zarr
image (probabilities) with its instance labels; :func:`write_prediction_into_labels` puts the
instance labels into the source image as ``labels/<name>``, at level-0 resolution, placed where
the prediction was made.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from napari_rat.inference.tiled_predict import Prediction


@runtime_checkable
class PredictionInput(Protocol):
    """A model input with its placement, as :func:`predict_input` and
    :func:`~napari_rat.inference.attention_at_point.attention_at_point` read it."""

    @property
    def image(self):
        """The pixels, ``[C, *spatial]`` (a NumPy, dask or zarr array)."""

    @property
    def spacing(self) -> tuple[float, ...]:
        """The physical size of a pixel along each spatial axis."""

    @property
    def translation(self) -> tuple[float, ...]:
        """The physical position of the first pixel's centre."""

    @property
    def units(self) -> Sequence[str | None] | None:
        """The spatial axes' length units (``None``: unknown, taken as the model's)."""


@dataclass(frozen=True)
class PyramidInput:
    """A model input cut from an OME-Zarr pyramid (a :class:`PredictionInput`): ``image`` is
    ``[C, *spatial]``, with the level, region, address, channels (``None``: all) and time
    index it came from."""

    image: object
    spacing: tuple[float, ...]
    translation: tuple[float, ...]
    axis_names: tuple[str, ...]
    units: tuple[str | None, ...]
    level: int = 0
    region: Mapping[str, tuple[int, int]] | None = None
    uri: str | None = None
    channels: tuple[int, ...] | None = None
    time_index: int = 0


def input_from_pyramid(
    pyramid,
    level: int = 0,
    channels: Sequence[int] | None = None,
    region: Mapping[str, tuple[int, int]] | None = None,
    time_index: int = 0,
) -> PyramidInput:
    """The model input for one level of a :class:`~napari_rat.io.Pyramid`.

    ``region`` is ``{axis: (start, stop)}`` in level-0 voxels; ``channels`` selects channels
    (all by default); a time axis is indexed at ``time_index``.
    """
    if not 0 <= level < len(pyramid.levels):
        raise ValueError(
            f"{pyramid.uri}: level {level} does not exist; "
            f"it has levels 0..{len(pyramid.levels) - 1}"
        )
    view = pyramid.select([level], region) if region else pyramid.select([level])
    lv = view.levels[0]
    data = lv.data
    names = pyramid.axis_names
    index: list = []
    for i, axis in enumerate(pyramid.axes):
        if axis.type == "time" or (
            axis.type not in ("space", "channel") and i != pyramid.channel_axis
        ):
            if not 0 <= time_index < data.shape[i]:
                raise ValueError(f"{pyramid.uri}: index {time_index} outside axis {axis.name!r}")
            index.append(time_index)
        else:
            index.append(slice(None))
    data = data[tuple(index)]
    kept = [i for i, a in enumerate(pyramid.axes) if not isinstance(index[i], int)]
    c_axis = pyramid.channel_axis
    if c_axis is not None:
        pos = kept.index(c_axis)
        data = (
            np.moveaxis(data, pos, 0)
            if isinstance(data, np.ndarray)
            else data.transpose([pos] + [j for j in range(data.ndim) if j != pos])
        )
        if channels is not None:
            data = data[list(channels)]
    else:
        if channels not in (None, [0], (0,)):
            raise ValueError(f"{pyramid.uri} has no channel axis; do not select channels")
        data = data[None]
    spatial = pyramid.spatial_axes
    return PyramidInput(
        image=data,
        spacing=tuple(lv.scale[i] for i in spatial),
        translation=tuple(lv.translation[i] for i in spatial),
        axis_names=tuple(names[i] for i in spatial),
        units=tuple(pyramid.axes[i].unit for i in spatial),
        level=level,
        region=dict(region) if region else None,
        uri=pyramid.uri,
        channels=None if channels is None else tuple(int(c) for c in channels),
        time_index=time_index,
    )


def write_prediction(
    prediction: Prediction,
    dest: str | os.PathLike,
    axis_names: Sequence[str],
    units: Sequence[str | None] | str | None = "micrometer",
    ngff_version: str = "0.5",
    labels_name: str = "instances",
    progress=None,
) -> Path:
    """Write the probabilities as an OME-Zarr image (``c`` + spatial axes) with its labels."""
    import dask.array as da

    from napari_rat.io import Channel, write_image, write_labels

    probs = da.from_array(prediction.probabilities, chunks=(1, *_chunks(prediction)))
    channels = [
        Channel(name=n, window=(0.0, 1.0), limits=(0.0, 1.0)) for n in prediction.channel_names
    ]
    if isinstance(units, str) or units is None:
        units = [units] * len(axis_names)
    path = write_image(
        dest,
        probs,
        axes="c" + "".join(axis_names),
        scale=prediction.spacing,
        translation=prediction.translation,
        units=list(units),
        ngff_version=ngff_version,
        channels=channels,
        method="mean",
        progress=progress,
    )
    if prediction.labels is not None:
        write_labels(
            path,
            da.from_array(prediction.labels, chunks=_chunks(prediction))[None],
            labels_name,
            progress=progress,
        )
    return path


def _chunks(prediction: Prediction) -> tuple[int, ...]:
    labels = prediction.labels if prediction.labels is not None else prediction.semantic
    chunks = getattr(labels, "chunks", None)
    return tuple(chunks) if chunks else tuple(min(256, n) for n in labels.shape)


def predict_input(model, source: PredictionInput, **kwargs):
    """:func:`~napari_rat.inference.predict` on ``source``: its image, spacing, origin and
    units; ``kwargs`` go to ``predict`` (``options``, ``store``, ``cancel``, ``stats``)."""
    from napari_rat.inference.tiled_predict import predict

    return predict(
        model, source.image, source.spacing, source.translation, units=source.units, **kwargs
    )


def check_labels_target(pyramid, name: str, overwrite: bool = False) -> None:
    """Refuse, before anything is computed, labels that :func:`write_prediction_into_labels`
    could not write into ``pyramid`` as ``labels/<name>`` (``ValueError``)."""
    from napari_rat.io.label_writer import check_labels_target as check_writable

    extra = [a.name for a in pyramid.axes if a.type not in ("space", "channel")]
    if extra:
        raise ValueError(
            f"{pyramid.uri} has non-spatial axes {extra}; write labels with napari_rat.io instead"
        )
    check_writable(pyramid.uri, name, overwrite)  # an OmeZarrError is a ValueError


def write_prediction_into_labels(
    prediction: Prediction,
    source: PredictionInput,
    pyramid,
    name: str,
    overwrite: bool = False,
    progress=None,
) -> Path:
    """Write the instance labels into the source OME-Zarr as ``labels/<name>``.

    Labels predicted on a coarser level are repeated onto the level-0 grid (nearest
    neighbour); a region is placed at its position, with 0 elsewhere.
    """
    import dask.array as da

    from napari_rat.io import write_labels

    if prediction.labels is None:
        raise ValueError("the prediction has no instance labels (instances were turned off)")
    check_labels_target(pyramid, name, overwrite)
    spatial = pyramid.spatial_axes
    level0 = pyramid.levels[0]
    full = [level0.shape[i] for i in spatial]
    lab = da.from_array(prediction.labels, chunks=_chunks(prediction))
    factors = [
        max(1, round(s / level0.scale[i])) for s, i in zip(prediction.spacing, spatial, strict=True)
    ]
    for axis, f in enumerate(factors):
        if f > 1:
            lab = da.repeat(lab, f, axis=axis)
    # Where the prediction's first voxel lies on the level-0 grid: a voxel of a level f times
    # coarser covers level-0 voxels s..s+f-1 and is centred on their middle. (A region cut from
    # a coarser level starts on that level's voxels, not at the region's level-0 start.)
    starts = [
        round((t - level0.translation[i]) / level0.scale[i] - (f - 1) / 2)
        for t, i, f in zip(prediction.translation, spatial, factors, strict=True)
    ]
    pads = []
    for axis in range(len(spatial)):
        skip = max(0, -starts[axis])  # below level 0's first voxel: cut off
        start = max(0, starts[axis])
        size = max(0, min(lab.shape[axis] - skip, full[axis] - start))
        lab = lab[(slice(None),) * axis + (slice(skip, skip + size),)]
        pads.append((start, full[axis] - start - size))
    if any(p != (0, 0) for p in pads):
        lab = da.pad(lab, pads, mode="constant", constant_values=0)
    if pyramid.channel_axis is not None:
        lab = lab[None]
    return write_labels(
        pyramid.uri, lab.astype(np.int32), name, overwrite=overwrite, progress=progress
    )
