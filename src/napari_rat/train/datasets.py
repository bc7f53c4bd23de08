"""Training and validation data built from a config: crops, targets and region splits.

Each image is split by region (bands along its last axis, see
:func:`napari_rat.train.crops.split_regions`): training crops come from the training band,
validation and evaluation predict the whole validation or hold-out band. Generated nuclei mixed
into a real dataset (``data.synthetic_fraction``) are training-only.

Targets per level: ``classes`` (0 background, 1 foreground, -1 ignored) and ``boundary``
(:func:`napari_rat.inference.instances.boundary_from_instances` of the instance labels, its
band measured at the crop level's spacing; -1 where unknown) and ``contact`` (its part where
two instances touch, :func:`~napari_rat.inference.instances.contact_pixels`, which
``training.contact_weight`` weights). Scribbled classes (in-memory images) win over the
labels where painted; a scribble tells no boundary, except that background is never one.

In-memory images (``data.source: in_memory``) are training-only, and their crops are drawn
around what is annotated (:func:`annotated_box`), so sparse scribbles are not missed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from napari_rat.config import DataConfig, ExperimentConfig
from napari_rat.inference.instances import boundary_bands
from napari_rat.train.crops import Region, sample_crop, spacing_factor, split_regions
from napari_rat.train.data_sources import DatasetError, InMemoryImage, LabeledImage, load_images
from napari_rat.train.normalization import Normalization


@dataclass
class EvalRegion:
    """A band of one image to predict whole: image ``[C, *spatial]``, labels, spacing."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, ...]


@dataclass
class DataBundle:
    """Everything the loop needs from the data section."""

    train: CropDataset
    val: list[EvalRegion]
    holdout: list[EvalRegion]
    normalization: Normalization
    spacing: tuple[float, ...]
    #: What the in-memory images taught (:meth:`InMemoryImage.note`), for the model card.
    notes: list[dict[str, Any]] = field(default_factory=list)


def targets_from_labels(
    labels: np.ndarray,
    classes: np.ndarray | None = None,
    boundary_width: int = 1,
    spacing: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(classes int64, boundary float32, contact bool)`` from instance labels (``-1`` =
    ignore) and, where painted (``>= 0``), scribbled ``classes``; boundary (a band of
    ``boundary_width`` pixels of the finest axis of ``spacing``) ``-1`` where it is unknown;
    contact where two instances touch (never where painted)."""
    target = np.where(labels < 0, -1, (labels > 0).astype(np.int64))
    band, contact = boundary_bands(labels, boundary_width, spacing)
    boundary = np.where(labels < 0, -1.0, band)
    if classes is not None:
        painted = classes >= 0
        target = np.where(painted, classes, target)
        # Background is never boundary (inner contours only); painted objects say nothing.
        boundary = np.where(painted, np.where(classes == 0, 0.0, -1.0), boundary)
    contact &= boundary > 0
    return target.astype(np.int64), boundary.astype(np.float32), contact


class CropDataset(torch.utils.data.Dataset):
    """Random training crops; deterministic for ``(seed, rank, epoch, index)``.

    One spacing-augmentation factor per batch (``index // batch_size``), as the model takes one
    spacing per level per batch. With several ranks, each has its own stream of crops.
    """

    def __init__(
        self,
        images: list[LabeledImage],
        regions: list[Region],
        config: DataConfig,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        boundary_width: int = 1,
    ) -> None:
        if not regions:
            raise DatasetError("no training region: every image is held out or too small")
        self.images = images
        self.regions = regions
        self.config = config
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.boundary_width = boundary_width
        self.epoch = 0
        real = [r for r in regions if not images[r.image].synthetic]
        synth = [r for r in regions if images[r.image].synthetic]
        self._pools = [(real, 1.0 - config.synthetic_fraction), (synth, config.synthetic_fraction)]
        if not real or not synth:
            self._pools = [(real or synth, 1.0)]

    def set_epoch(self, epoch: int) -> None:
        """Change the crops drawn (call at the start of every epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return max(self.batch_size, self.config.num_samples // self.world_size)

    def _pick(self, rng: np.random.Generator) -> Region:
        weights = np.array([w for _, w in self._pools])
        pool = self._pools[int(rng.choice(len(self._pools), p=weights / weights.sum()))][0]
        sizes = np.array([float(np.prod(r.shape)) for r in pool])
        return pool[int(rng.choice(len(pool), p=sizes / sizes.sum()))]

    def __getitem__(self, index: int) -> dict:
        cfg = self.config
        key = (cfg.seed, self.rank, self.epoch)
        batch_rng = np.random.default_rng((*key, index // self.batch_size, 7))
        factor = spacing_factor(batch_rng, cfg.spacing_augmentation)
        if cfg.z_spacing_augmentation is not None:
            z = spacing_factor(batch_rng, cfg.z_spacing_augmentation)
            factor = (factor * z, *[factor] * (len(cfg.crop_size) - 1))
        rng = np.random.default_rng((*key, index))
        region = self._pick(rng)
        sample = sample_crop(
            self.images[region.image],
            region,
            cfg.crop_size,
            cfg.scales,
            rng,
            factor=factor,
            flips=cfg.flips,
            rotations=cfg.rotations,
        )
        painted = sample.classes or [None] * len(sample.labels)
        classes, boundary, contact = zip(
            *(
                targets_from_labels(lab, cls, self.boundary_width, spacing)
                for lab, cls, spacing in zip(sample.labels, painted, sample.spacings, strict=True)
            ),
            strict=True,
        )
        return {
            "images": [torch.from_numpy(a) for a in sample.images],
            "classes": [torch.from_numpy(c) for c in classes],
            "boundary": [torch.from_numpy(b) for b in boundary],
            "contact": [torch.from_numpy(c) for c in contact],
            "spacings": sample.spacings,
        }


def level_factors(config: DataConfig) -> list[list[int]]:
    """The pyramid levels the crops feed the model: per level, the factor per spatial axis.

    Each level of a crop is ``crop_size // scale`` pixels over the same physical box (see
    :func:`napari_rat.train.crops.level_shapes`), so ``scale`` applies to every axis, also on
    anisotropic data. The checkpoint stores these, and inference feeds the same levels.
    """
    return [[int(s)] * len(config.crop_size) for s in config.scales]


def collate(items: list[dict]) -> dict:
    """Stack samples level by level; the batch shares each level's spacing."""
    levels = len(items[0]["images"])
    return {
        key: [torch.stack([it[key][lv] for it in items]) for lv in range(levels)]
        for key in ("images", "classes", "boundary", "contact")
    } | {"spacings": items[0]["spacings"]}


def _band(image: LabeledImage, box, kind: str) -> EvalRegion | None:
    if box is None:
        return None
    sl = tuple(slice(a, b) for a, b in zip(*box, strict=True))
    return EvalRegion(
        f"{image.name}[{kind}]",
        image.image[(slice(None), *sl)],
        image.labels[sl],
        image.spacing,
    )


def annotated_box(image: LabeledImage, crop_size: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """``(start, stop)`` of the box around every annotated pixel (labels ``>= 0`` or painted
    classes), widened to at least ``crop_size`` where the image allows."""
    annotated = image.labels >= 0
    if image.classes is not None:
        annotated |= image.classes >= 0
    if not annotated.any():
        raise DatasetError(f"{image.name}: nothing is annotated; paint labels or scribbles")
    start, stop = [], []
    for axis, (size, crop) in enumerate(zip(image.shape, crop_size, strict=True)):
        other = tuple(a for a in range(annotated.ndim) if a != axis)
        hits = np.flatnonzero(annotated.any(axis=other))
        lo, hi = int(hits[0]), int(hits[-1]) + 1
        grow = max(int(crop) - (hi - lo), 0)
        lo = max(lo - grow // 2, 0)
        hi = min(max(hi + (grow - grow // 2), lo + int(crop)), size)
        start.append(lo)
        stop.append(hi)
    return tuple(start), tuple(stop)


def build_data(
    config: ExperimentConfig,
    *,
    rank: int = 0,
    world_size: int = 1,
    in_memory: Sequence[InMemoryImage] | None = None,
) -> DataBundle:
    """Load the images, split them by region and build the training dataset.

    ``in_memory``: the images of ``data.source: in_memory`` (checked against the model first).

    Raises
    ------
    DatasetError
        For a missing file or unreadable data, naming it.
    """
    data = config.data
    for source in in_memory or []:
        source.check(config.model)
    images, norm = load_images(data, config.model.spatial_dims, in_memory)
    regions: list[Region] = []
    val: list[EvalRegion] = []
    holdout: list[EvalRegion] = []
    for i, image in enumerate(images):
        if image.synthetic and data.source != "synthetic" and not data.split_synthetic:
            regions.append(Region(i, (0,) * len(image.shape), image.shape))
            continue
        if data.source == "in_memory":
            regions.append(Region(i, *annotated_box(image, data.crop_size)))
            continue
        boxes = split_regions(image.shape, data.val_fraction, data.holdout_fraction)
        if boxes["train"] is not None:
            regions.append(Region(i, *boxes["train"]))
        for kind, out in (("val", val), ("holdout", holdout)):
            band = _band(image, boxes[kind], kind)
            if band is not None:
                out.append(band)
    train = CropDataset(
        images,
        regions,
        data,
        config.training.batch_size,
        rank=rank,
        world_size=world_size,
        boundary_width=config.model.head.boundary_width,
    )
    spacing = tuple(data.spacing) if data.spacing else images[0].spacing
    names = config.model.head.class_names
    notes = [source.note(names) for source in in_memory or []]
    return DataBundle(train, val, holdout, norm, spacing, notes)
