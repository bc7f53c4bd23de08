"""Where labelled images come from: OME-Zarr, TIFF pairs, generated and bundled nuclei, and
arrays held in memory (:class:`InMemoryImage`: a napari layer's corrected labels or scribbles).

Every source gives :class:`LabeledImage` objects: a normalised image ``[C, *spatial]`` with its
instance labels, the physical spacing and, for OME-Zarr, the coarser pyramid levels (used for
multi-scale inputs instead of downsampling level 0 again).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_rat.config import DataConfig, ModelConfig
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
    #: Painted class targets (scribbles): ``-1`` not painted, ``0`` background, ``k`` the head's
    #: class ``k``. Where painted they win over ``labels``; ``None``: classes follow ``labels``.
    classes: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape."""
        return tuple(self.labels.shape)


def check_label_array(
    labels: Any,
    spatial_shape: Sequence[int],
    *,
    what: str = "labels",
    kind: str = "instance labels",
    empty: str = "paint or correct some objects first (0 is background)",
    error: type[ValueError] = DatasetError,
) -> np.ndarray:
    """``labels`` as an array after checking it can annotate an image of ``spatial_shape``:
    the same shape, integer values >= 0, not all 0. ``what`` names it in the messages, ``kind``
    says what it should be and ``empty`` what to do about an empty one.

    Raises
    ------
    DatasetError
        (or ``error``) naming the problem and the fix.
    """
    labels = np.asarray(labels)
    if labels.shape != tuple(spatial_shape):
        raise error(
            f"the {what}' shape {labels.shape} is not the image's spatial shape "
            f"{tuple(spatial_shape)}; choose the Labels layer painted on this image"
        )
    if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise error(f"the {what} are {labels.dtype}, not {kind}; use a Labels layer")
    if not labels.any():
        raise error(f"the {what} are empty: {empty}")
    if labels.min() < 0:
        raise error(
            f"the {what} have negative values (min {labels.min()}); 0 is unlabelled "
            "background and objects are positive: use a Labels layer"
        )
    return labels


@dataclass(frozen=True)
class InMemoryImage:
    """An image and its annotations held in memory (``data.source: in_memory``).

    Parameters
    ----------
    image
        Raw intensities ``[*spatial]`` or ``[C, *spatial]`` (normalised like every source).
    spacing
        Physical pixel size per spatial axis, in the model's unit.
    labels
        Instance labels (0 background, each object its own value); every pixel counts.
    scribbles
        Painted classes: 0 not painted (ignored by the loss), 1 background, 2 the head's first
        class after background, and so on. Where painted they win over ``labels``.
    name
        What the model card calls the image.
    """

    image: np.ndarray
    spacing: Sequence[float]
    labels: np.ndarray | None = None
    scribbles: np.ndarray | None = None
    name: str = "in-memory image"

    def spatial_shape(self, spatial_dims: int) -> tuple[int, ...]:
        """The image's spatial shape (raises :class:`DatasetError` for wrong axes)."""
        return tuple(_with_channels(np.asarray(self.image), spatial_dims).shape[1:])

    def check(self, model: ModelConfig) -> None:
        """Raise :class:`DatasetError` naming what makes this unusable to train ``model``."""
        dims = model.spatial_dims
        shape = self.spatial_shape(dims)
        channels = 1 if np.ndim(self.image) == dims else int(np.shape(self.image)[0])
        if channels != model.input_features:
            raise DatasetError(
                f"{self.name}: the image has {channels} channel(s) but the model takes "
                f"{model.input_features}; choose an image with {model.input_features}"
            )
        spacing = [float(s) for s in self.spacing]
        if len(spacing) != dims or not all(np.isfinite(s) and s > 0 for s in spacing):
            raise DatasetError(
                f"{self.name}: spacing {spacing} must be {dims} positive numbers (one per "
                "spatial axis)"
            )
        if self.labels is None and self.scribbles is None:
            raise DatasetError(
                f"{self.name}: nothing to learn from; give corrected instance labels, "
                "scribbles, or both"
            )
        if self.labels is not None:
            check_label_array(self.labels, shape)
        if self.scribbles is not None:
            classes = list(model.head.class_names)
            scribbles = check_label_array(
                self.scribbles,
                shape,
                what="scribbles",
                kind="painted classes",
                empty=f"paint background (1) and {classes[1]} (2) first",
            )
            top = int(scribbles.max())
            if top > len(classes):
                raise DatasetError(
                    f"the scribbles use value {top} but the model has {len(classes)} classes "
                    f"({', '.join(f'{i + 1} {c}' for i, c in enumerate(classes))}); repaint "
                    f"those pixels with a value from 1 to {len(classes)}"
                )

    def note(self, class_names: Sequence[str]) -> dict[str, Any]:
        """What a model card says this image taught: shape, spacing, objects and pixels."""
        out: dict[str, Any] = {
            "name": self.name,
            "shape": list(np.shape(self.image)),
            "spacing": [float(s) for s in self.spacing],
        }
        if self.labels is not None:
            labels = np.asarray(self.labels)
            out["objects"] = int(np.unique(labels[labels > 0]).size)
            out["labelled_pixels"] = int(labels.size)
        if self.scribbles is not None:
            values, counts = np.unique(np.asarray(self.scribbles), return_counts=True)
            out["scribbled_pixels"] = {
                class_names[int(v) - 1]: int(n)
                for v, n in zip(values, counts, strict=True)
                if 0 < v <= len(class_names)
            }
        return out


def in_memory_images(
    sources: Sequence[InMemoryImage], spatial_dims: int, norm: Normalization
) -> list[LabeledImage]:
    """The :class:`LabeledImage` of each in-memory image: labels ``-1`` where only scribbles
    say anything, scribbles as :attr:`LabeledImage.classes` (value minus one)."""
    out = []
    for src in sources:
        shape = src.spatial_shape(spatial_dims)
        labels = np.full(shape, -1, np.int32) if src.labels is None else src.labels
        item = _finish(src.name, src.image, labels, src.spacing, norm, spatial_dims)
        if src.scribbles is not None:
            item.classes = np.asarray(src.scribbles).astype(np.int32) - 1
        out.append(item)
    return out


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


def synthetic_spacings(config: DataConfig, spatial_dims: int) -> list[list[float]]:
    """The spacing of each generated image: the config's, with the z spacing spread log-evenly
    over ``synthetic_z_anisotropy`` when set (3D)."""
    spacing = list(config.spacing or [1.0] * spatial_dims)
    n = config.synthetic_images
    if config.synthetic_z_anisotropy is None:
        return [spacing] * n
    lo, hi = np.log(config.synthetic_z_anisotropy)
    ratios = np.exp(np.linspace(lo, hi, n)) if n > 1 else [np.exp((lo + hi) / 2)]
    return [[spacing[0] * float(r), *spacing[1:]] for r in ratios]


def synthetic_images(
    config: DataConfig, spatial_dims: int, norm: Normalization, seed_offset: int = 0
) -> list[LabeledImage]:
    """Generated nuclei (``napari_rat.synthetic.synthetic_nuclei``) at the config's spacing
    (see :func:`synthetic_spacings`); a coarser z keeps the volume's physical depth. With
    ``synthetic_decoy_radius`` every second image (odd index) holds decoys of that radius,
    unlabelled."""
    from napari_rat.synthetic import synthetic_nuclei

    if config.synthetic_shape is not None:
        shape = config.synthetic_shape
    else:
        per_axis = 4 if spatial_dims < 3 else 2
        shape = [c * per_axis for c in config.crop_size]
    base = config.spacing or [1.0] * spatial_dims
    out = []
    for i, spacing in enumerate(synthetic_spacings(config, spatial_dims)):
        seed = config.seed * 1000 + seed_offset + i
        pixels = [max(1, round(n * b / s)) for n, b, s in zip(shape, base, spacing, strict=True)]
        decoys = config.synthetic_decoy_radius is not None and i % 2 == 1
        image, labels = synthetic_nuclei(
            pixels,
            spacing,
            radius=config.synthetic_decoy_radius if decoys else config.synthetic_radius,
            seed=seed,
            touching=config.synthetic_touching,
        )
        if decoys:
            labels = np.zeros_like(labels)
        out.append(
            _finish(f"synthetic-{seed}", image, labels, spacing, norm, spatial_dims, synthetic=True)
        )
    return out


def stardist_images(
    config: DataConfig, spatial_dims: int, norm: Normalization
) -> list[LabeledImage]:
    """The bundled 2D nuclei image or 3D nuclei volume (``napari_rat.sample_data``)."""
    from napari_rat import sample_data

    dims = 2 if config.source == "stardist_nuclei_2d" else 3
    if spatial_dims != dims:
        raise DatasetError(
            f"data.source {config.source!r} is a {dims}D image but model.spatial_dims is "
            f"{spatial_dims}"
        )
    if dims == 2:
        (image, labels), native = sample_data.nuclei_2d(), sample_data.NUCLEI_2D_SPACING
    else:
        (image, labels), native = sample_data.nuclei_3d(), sample_data.NUCLEI_3D_SPACING
    spacing = config.spacing or list(native)
    return [_finish(config.source, image, labels, spacing, norm, spatial_dims)]


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


def load_images(
    config: DataConfig,
    spatial_dims: int,
    in_memory: Sequence[InMemoryImage] | None = None,
) -> tuple[list[LabeledImage], Normalization]:
    """Every labelled image of ``config.data``'s source plus generated nuclei if mixed in.

    ``in_memory``: the images of ``data.source: in_memory``.

    Raises
    ------
    DatasetError
        For a missing file or unreadable data, naming it.
    """
    norm = normalization_from_config(config)
    if (config.source == "in_memory") != bool(in_memory):
        raise DatasetError(
            "data.source 'in_memory' trains on images handed to the loop in code "
            "(napari_rat.train.quick_tune); to train from files, export them with "
            "napari_rat.train.training_set and use data.source: ome_zarr"
            if config.source == "in_memory"
            else f"in-memory images were given but data.source is {config.source!r}; "
            "set data.source: in_memory"
        )
    if config.source == "in_memory":
        images = in_memory_images(in_memory, spatial_dims, norm)
    elif config.source == "synthetic":
        images = synthetic_images(config, spatial_dims, norm)
    elif config.source in ("stardist_nuclei_2d", "stardist_nuclei_3d"):
        images = stardist_images(config, spatial_dims, norm)
    elif config.source == "tiff":
        images = tiff_images(config, spatial_dims, norm)
    else:
        images = ome_zarr_images(config, spatial_dims, norm)
    if config.source != "synthetic" and config.synthetic_fraction > 0:
        images += synthetic_images(config, spatial_dims, norm, seed_offset=500)
    return images, norm
