"""Where labelled images come from: OME-Zarr, TIFF pairs, generated and bundled nuclei.

Every source gives :class:`LabeledImage` objects: a normalised image ``[C, *spatial]`` with its
instance labels, the physical spacing and, for OME-Zarr, the coarser pyramid levels (used for
multi-scale inputs instead of downsampling level 0 again).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_rat.config import DataConfig
from napari_rat.train.normalization import Normalization


class DatasetError(ValueError):
    """A dataset that cannot be read; the message names the file and the fix."""


@dataclass
class LabeledImage:
    """One image with instance labels, ``image`` ``[C, *spatial]`` already normalised."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, ...]
    #: Coarser stored pyramid levels: ``(image [C, *spatial], spacing)``, finest first.
    levels: list[tuple[np.ndarray, tuple[float, ...]]] = field(default_factory=list)
    synthetic: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape."""
        return tuple(self.labels.shape)


def normalization_from_config(config: DataConfig) -> Normalization:
    """The :class:`Normalization` a data config asks for."""
    return Normalization(config.normalization, tuple(config.normalization_percentiles))


def _with_channels(image: np.ndarray, spatial_dims: int) -> np.ndarray:
    if image.ndim == spatial_dims:
        return image[None]
    if image.ndim == spatial_dims + 1:
        return image
    raise DatasetError(
        f"image has {image.ndim} axes; expected {spatial_dims} spatial axes (plus an optional "
        "leading channel axis)"
    )


def _finish(
    name: str,
    image: np.ndarray,
    labels: np.ndarray,
    spacing: Sequence[float],
    norm: Normalization,
    spatial_dims: int,
    *,
    levels: list[tuple[np.ndarray, tuple[float, ...]]] | None = None,
    synthetic: bool = False,
) -> LabeledImage:
    image = _with_channels(np.asarray(image), spatial_dims)
    labels = np.asarray(labels)
    if tuple(image.shape[1:]) != tuple(labels.shape):
        raise DatasetError(
            f"{name}: image shape {tuple(image.shape[1:])} and label shape {labels.shape} differ"
        )
    stats = norm.statistics(image)
    norm.measured.append({"image": name, "offset": list(stats.offset), "scale": list(stats.scale)})
    return LabeledImage(
        name=name,
        image=norm.apply(image, stats),
        labels=labels.astype(np.int32),
        spacing=tuple(float(s) for s in spacing),
        levels=[
            (norm.apply(_with_channels(np.asarray(a), spatial_dims), stats), sp)
            for a, sp in (levels or [])
        ],
        synthetic=synthetic,
    )


def synthetic_images(
    config: DataConfig, spatial_dims: int, norm: Normalization, seed_offset: int = 0
) -> list[LabeledImage]:
    """Generated nuclei (``napari_rat.synthetic.synthetic_nuclei``) at the config's spacing."""
    from napari_rat.synthetic import synthetic_nuclei

    spacing = config.spacing or [1.0] * spatial_dims
    if config.synthetic_shape is not None:
        shape = config.synthetic_shape
    else:
        per_axis = 4 if spatial_dims < 3 else 2
        shape = [c * per_axis for c in config.crop_size]
    out = []
    for i in range(config.synthetic_images):
        seed = config.seed * 1000 + seed_offset + i
        image, labels = synthetic_nuclei(shape, spacing, radius=config.synthetic_radius, seed=seed)
        out.append(
            _finish(f"synthetic-{seed}", image, labels, spacing, norm, spatial_dims, synthetic=True)
        )
    return out


def stardist_images(
    config: DataConfig, spatial_dims: int, norm: Normalization
) -> list[LabeledImage]:
    """The bundled real 2D nuclei image (``napari_rat.sample_data.nuclei_2d``)."""
    if spatial_dims != 2:
        raise DatasetError(
            f"data.source 'stardist_nuclei_2d' is a 2D image but model.spatial_dims is "
            f"{spatial_dims}"
        )
    from napari_rat.sample_data import NUCLEI_2D_SPACING, nuclei_2d

    image, labels = nuclei_2d()
    spacing = config.spacing or list(NUCLEI_2D_SPACING)
    return [_finish("stardist_nuclei_2d", image, labels, spacing, norm, spatial_dims)]


def _need(path: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"dataset file {path!r} does not exist; check data.paths")
    return p


def tiff_images(config: DataConfig, spatial_dims: int, norm: Normalization) -> list[LabeledImage]:
    """Image/label TIFF pairs (``data.paths`` with ``data.label_paths``)."""
    import tifffile

    out = []
    for image_path, label_path in zip(config.paths, config.label_paths, strict=True):
        image = tifffile.imread(_need(image_path))
        labels = tifffile.imread(_need(label_path))
        spacing = config.spacing or [1.0] * spatial_dims
        out.append(_finish(Path(image_path).name, image, labels, spacing, norm, spatial_dims))
    return out


def read_ome_zarr_pair(
    path: str, label_name: str | None, spatial_dims: int
) -> tuple[list[tuple[np.ndarray, tuple[float, ...]]], np.ndarray]:
    """Pyramid levels ``(image [C, *spatial], spacing)`` and level-0 labels of an OME-Zarr.

    Uses :func:`napari_rat.io.open_pyramid` (spacing, axes and labels from the metadata).
    """
    from napari_rat.io import OmeZarrError, open_pyramid

    try:
        pyramid = open_pyramid(path)
    except OmeZarrError as exc:
        raise DatasetError(str(exc)) from None
    if not pyramid.labels:
        raise DatasetError(
            f"{path}: the OME-Zarr image has no labels/ group; write labels with "
            "napari_rat.io.write_labels or use data.source: tiff"
        )
    name = label_name or sorted(pyramid.labels)[0]
    if name not in pyramid.labels:
        raise DatasetError(
            f"{path}: no labels/{name}; it has {sorted(pyramid.labels)} (set data.label_name)"
        )
    spatial = list(pyramid.spatial_axes)[-spatial_dims:]
    channel = pyramid.channel_axis
    levels = []
    for level in pyramid.levels:
        data = np.asarray(level.data)
        keep = [i for i in range(data.ndim) if i in spatial or i == channel]
        # Drop singleton non-spatial axes (t, or c when it is not the channel axis).
        squeeze = tuple(i for i in range(data.ndim) if i not in keep)
        data = data.reshape([s for i, s in enumerate(data.shape) if i not in squeeze])
        spacing = tuple(float(level.scale[i]) for i in spatial)
        if channel is None:
            data = data[None]
        levels.append((data, spacing))
    label_level = pyramid.labels[name].levels[0]
    labels = np.asarray(label_level.data)
    labels = labels.reshape(labels.shape[-spatial_dims:]) if labels.ndim > spatial_dims else labels
    return levels, labels


def ome_zarr_images(
    config: DataConfig, spatial_dims: int, norm: Normalization
) -> list[LabeledImage]:
    """OME-Zarr images with a ``labels/`` group (``data.paths``, ``data.label_name``)."""
    out = []
    for path in config.paths:
        if "://" not in path:
            _need(path)
        levels, labels = read_ome_zarr_pair(path, config.label_name, spatial_dims)
        image, spacing = levels[0]
        if config.spacing is not None:
            ratio = [s / f for s, f in zip(config.spacing, spacing, strict=True)]
            spacing = tuple(config.spacing)
            levels = [(a, tuple(s * r for s, r in zip(sp, ratio, strict=True))) for a, sp in levels]
        out.append(
            _finish(
                Path(path.rstrip("/")).name,
                image,
                labels,
                spacing,
                norm,
                spatial_dims,
                levels=levels[1:],
            )
        )
    return out


def load_images(config: DataConfig, spatial_dims: int) -> tuple[list[LabeledImage], Normalization]:
    """Every labelled image of ``config.data``'s source plus generated nuclei if mixed in.

    Raises
    ------
    DatasetError
        For a missing file or unreadable data, naming it.
    """
    norm = normalization_from_config(config)
    if config.source == "synthetic":
        images = synthetic_images(config, spatial_dims, norm)
    elif config.source == "stardist_nuclei_2d":
        images = stardist_images(config, spatial_dims, norm)
    elif config.source == "tiff":
        images = tiff_images(config, spatial_dims, norm)
    else:
        images = ome_zarr_images(config, spatial_dims, norm)
    if config.source != "synthetic" and config.synthetic_fraction > 0:
        images += synthetic_images(config, spatial_dims, norm, seed_offset=500)
    return images, norm
