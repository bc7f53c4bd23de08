"""The in-memory description of an OME-Zarr image: :class:`Pyramid` and its :class:`PyramidLevel`.

Pixels stay lazy (dask over zarr); everything else is plain metadata. Scales and translations
are already composed (per-level transforms followed by the multiscales-level ones), so world
position = ``index * scale + translation`` for every level and every axis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import dask.array as da


@dataclass(frozen=True)
class Axis:
    """One axis of an OME-Zarr image: ``name`` (``"z"``), ``type`` (``"space"``), ``unit``."""

    name: str
    type: str | None = None
    unit: str | None = None


@dataclass(frozen=True)
class Channel:
    """Display metadata of one channel (from ``omero``).

    ``color`` is ``"RRGGBB"``; ``window`` is the ``(start, end)`` contrast window and ``limits``
    the ``(min, max)`` range the window may move in.
    """

    name: str
    color: str | None = None
    window: tuple[float, float] | None = None
    limits: tuple[float, float] | None = None
    visible: bool = True


@dataclass(frozen=True)
class LabelProperties:
    """The ``image-label`` metadata of a label image: colours by value and the source image."""

    colors: Mapping[int, tuple[int, int, int, int]] = field(default_factory=dict)
    source: str | None = None


@dataclass(frozen=True)
class PyramidLevel:
    """One resolution level: a lazy array and where its voxels lie in the world.

    World position of index ``i`` along axis ``a`` is ``i * scale[a] + translation[a]``.
    """

    path: str
    data: da.Array
    scale: tuple[float, ...]
    translation: tuple[float, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the level's array."""
        return tuple(int(n) for n in self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        """Data type of the level's array."""
        return self.data.dtype

    @property
    def chunks(self) -> tuple[int, ...]:
        """Chunk shape (the first chunk along each axis) of the dask array."""
        return tuple(int(c[0]) for c in self.data.chunks)


@dataclass(frozen=True)
class Pyramid:
    """A multiscale OME-Zarr image (or label image) with physical placement.

    Attributes
    ----------
    uri
        Path or URL it was read from.
    ngff_version
        ``"0.4"`` or ``"0.5"``.
    axes
        One :class:`Axis` per array dimension.
    levels
        Finest first.
    channels
        From ``omero`` (empty when absent).
    labels
        Label images it carries (``labels/<name>``), each itself a :class:`Pyramid`.
    name
        The multiscale's name, if any.
    image_label
        Set when this pyramid *is* a label image.
    """

    uri: str
    ngff_version: str
    axes: tuple[Axis, ...]
    levels: tuple[PyramidLevel, ...]
    channels: tuple[Channel, ...] = ()
    labels: Mapping[str, Pyramid] = field(default_factory=dict)
    name: str | None = None
    image_label: LabelProperties | None = None

    @property
    def ndim(self) -> int:
        """Number of dimensions (axes)."""
        return len(self.axes)

    @property
    def axis_names(self) -> tuple[str, ...]:
        """Axis names, e.g. ``("c", "z", "y", "x")``."""
        return tuple(a.name for a in self.axes)

    @property
    def units(self) -> tuple[str | None, ...]:
        """Axis units (``None`` where not given)."""
        return tuple(a.unit for a in self.axes)

    @property
    def spatial_axes(self) -> tuple[int, ...]:
        """Indices of the ``space`` axes (the last 2 or 3 by the spec)."""
        return tuple(i for i, a in enumerate(self.axes) if a.type == "space")

    @property
    def channel_axis(self) -> int | None:
        """Index of the ``channel`` axis, or ``None``."""
        for i, a in enumerate(self.axes):
            if a.type == "channel":
                return i
        return None

    @property
    def spacing(self) -> tuple[float, ...]:
        """Level-0 voxel size along the spatial axes."""
        return tuple(self.levels[0].scale[i] for i in self.spatial_axes)

    def level_index(self, path: str) -> int:
        """Index of the level stored at ``path``."""
        for i, level in enumerate(self.levels):
            if level.path == path:
                return i
        raise KeyError(path)

    def select(
        self,
        levels: Sequence[int] | None = None,
        region: Mapping[str, tuple[int, int]] | None = None,
    ) -> Pyramid:
        """A view of a subset of levels, optionally cropped to a region.

        Parameters
        ----------
        levels
            Indices of the levels to keep (finest first); all when ``None``.
        region
            ``{axis_name: (start, stop)}`` in **level-0 voxels**. Each kept level is cropped to
            the voxels that cover the same world region, and its translation moves so the
            crop stays where it was. Axes not named are kept whole. With several levels kept,
            the crop widens to whole voxels of the coarsest one, so that voxel ``i`` of each
            cropped level still covers voxels ``i * f`` to ``(i + 1) * f - 1`` of the finest
            (how napari, and any pyramid reader, relates the levels of a multiscale image).

        Returns
        -------
        Pyramid
            A new pyramid; the pixels stay lazy.
        """
        chosen = list(range(len(self.levels))) if levels is None else sorted(set(levels))
        if not chosen or chosen[0] < 0 or chosen[-1] >= len(self.levels):
            raise ValueError(f"levels must be a non-empty subset of 0..{len(self.levels) - 1}")
        kept = [self.levels[i] for i in chosen]
        if region:
            unknown = set(region) - set(self.axis_names)
            if unknown:
                raise ValueError(f"unknown axes in region: {sorted(unknown)}")
            kept = _crop_levels(kept, self.levels[0], self.axis_names, region)
        labels = {}
        for name, lab in self.labels.items():
            lab_levels = [i for i in chosen if i < len(lab.levels)] or [len(lab.levels) - 1]
            lab_region = {k: v for k, v in (region or {}).items() if k in lab.axis_names}
            labels[name] = lab.select(lab_levels, lab_region or None)
        return replace(self, levels=tuple(kept), labels=labels)

    def summary(self) -> str:
        """A short multi-line, human-readable description (version, levels, axes, channels)."""
        lines = [f"OME-Zarr {self.ngff_version}: {self.uri}"]
        if self.name:
            lines.append(f"name: {self.name}")
        axes = ", ".join(
            f"{a.name} ({a.type or '?'}{', ' + a.unit if a.unit else ''})" for a in self.axes
        )
        lines.append(f"axes: {axes}")
        for i, lv in enumerate(self.levels):
            spacing = " x ".join(f"{s:g}" for s in lv.scale)
            shape = " x ".join(str(n) for n in lv.shape)
            lines.append(f"level {i} ({lv.path}): {shape} {lv.dtype}, spacing {spacing}")
        if self.channels:
            lines.append("channels: " + ", ".join(c.name for c in self.channels))
        if self.labels:
            lines.append("labels: " + ", ".join(self.labels))
        return "\n".join(lines)


def _crop_levels(
    levels: Sequence[PyramidLevel],
    base: PyramidLevel,
    names: Sequence[str],
    region: Mapping[str, tuple[int, int]],
) -> list[PyramidLevel]:
    """Crop ``levels`` (finest first) to ``region``, block-aligned across the levels.

    The finest level is cropped to cover the region; the crop then widens along the region's
    axes to multiples of each coarser level's integer factor, and each coarser level keeps
    exactly the voxels over it. Levels whose scales are not integer multiples of the finest
    one's are cropped each on its own.
    """
    finest = _crop_level(levels[0], base, names, region)
    if len(levels) == 1:
        return [finest]
    ratios = [np.asarray(lv.scale) / np.asarray(levels[0].scale) for lv in levels]
    factors = [np.round(r).astype(int) for r in ratios]
    nested = all(
        np.allclose(r, f, rtol=1e-3) and (f >= 1).all()
        for r, f in zip(ratios, factors, strict=True)
    )
    if not nested:
        return [finest] + [_crop_level(lv, base, names, region) for lv in levels[1:]]
    block = np.max(factors, axis=0)
    origin = np.asarray(levels[0].translation)
    start = np.round((np.asarray(finest.translation) - origin) / levels[0].scale).astype(int)
    stop = start + np.asarray(finest.shape)
    for axis, name in enumerate(names):
        if name in region:
            start[axis] -= start[axis] % block[axis]
            stop[axis] = min(-(-stop[axis] // block[axis]) * block[axis], levels[0].shape[axis])
    out = []
    for level, f in zip(levels, factors, strict=True):
        slices, translation = [], list(level.translation)
        for axis, name in enumerate(names):
            if name not in region:
                slices.append(slice(0, level.shape[axis]))
                continue
            lo = int(start[axis] // f[axis])
            hi = min(int(-(-stop[axis] // f[axis])), level.shape[axis])
            slices.append(slice(lo, hi))
            translation[axis] = level.translation[axis] + lo * level.scale[axis]
        out.append(replace(level, data=level.data[tuple(slices)], translation=tuple(translation)))
    return out


def _crop_level(
    level: PyramidLevel,
    base: PyramidLevel,
    names: Sequence[str],
    region: Mapping[str, tuple[int, int]],
) -> PyramidLevel:
    slices: list[slice] = []
    translation = list(level.translation)
    for axis, name in enumerate(names):
        size = level.shape[axis]
        if name not in region:
            slices.append(slice(0, size))
            continue
        start0, stop0 = region[name]
        if not 0 <= start0 < stop0 <= base.shape[axis]:
            raise ValueError(
                f"region {name}={start0}:{stop0} is outside level 0 (0:{base.shape[axis]})"
            )
        # World interval covered by the level-0 voxels, then the voxels of this level in it.
        lo = start0 * base.scale[axis] + base.translation[axis]
        hi = stop0 * base.scale[axis] + base.translation[axis]
        start = math.floor((lo - level.translation[axis]) / level.scale[axis] + 1e-6)
        stop = math.ceil((hi - level.translation[axis]) / level.scale[axis] - 1e-6)
        start, stop = max(0, start), min(size, max(stop, start + 1))
        slices.append(slice(start, stop))
        translation[axis] = level.translation[axis] + start * level.scale[axis]
    return replace(level, data=level.data[tuple(slices)], translation=tuple(translation))


def parse_region(text: str, axis_names: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Parse ``"z=10:50, y=0:512"`` (or positional ``"10:50, 0:512, 0:512"`` for the last axes).

    Returns ``{axis: (start, stop)}`` in level-0 voxels; empty text gives ``{}``.
    """
    text = text.strip()
    if not text:
        return {}
    parts = [p.strip() for p in text.split(",") if p.strip()]
    named = all("=" in p for p in parts)
    if not named and any("=" in p for p in parts):
        raise ValueError("use either 'axis=start:stop' for every part or none")
    if not named and len(parts) > len(axis_names):
        raise ValueError(f"{len(parts)} ranges for {len(axis_names)} axes")
    out: dict[str, tuple[int, int]] = {}
    names = list(axis_names)[-len(parts) :] if not named else []
    for i, part in enumerate(parts):
        axis, _, span = part.partition("=") if named else (names[i], "", part)
        axis = axis.strip()
        if axis not in axis_names:
            raise ValueError(f"unknown axis {axis!r}; axes are {', '.join(axis_names)}")
        start, sep, stop = span.partition(":")
        try:
            out[axis] = (int(start), int(stop))
        except ValueError:
            raise ValueError(f"{part!r} is not 'start:stop' with integers") from None
        if not sep:
            raise ValueError(f"{part!r} is not 'start:stop'")
    return out
